//! The `xenchan registry` subcommand, for the `xenchan` binary to mount:
//!
//! ```ignore
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     #[command(subcommand, about = xenchan_registry::cli::ABOUT,
//!               after_help = xenchan_registry::cli::AFTER_HELP)]
//!     Registry(xenchan_registry::cli::RegistryCommand),
//! }
//! // ...
//! let code = match xenchan_registry::cli::run(cmd, &registry_dir, &mut stdout, &mut stderr) {
//!     Ok(code) => code,
//!     Err(e) => { eprintln!("xenchan: {}", xenchan_registry::error_chain(&e)); e.exit_code() }
//! };
//! ```
//!
//! `examples/registry.rs` is a complete mount.

use std::io::{self, Write};
use std::path::Path;

use crate::check::{Verdict, check};
use crate::format::{Entry, EntryError, write};
use crate::registry::{LoadError, Origin, Registered, Registry};
use crate::store::{StoreError, store_local_entry};

/// Exit codes of `xenchan registry` (sysexits where one fits).
pub mod exit {
    /// Success; `check`: the name is fine.
    pub const OK: i32 = 0;
    /// `check`: the name is usable but poor. `lookup`: the name is not registered.
    pub const POOR: i32 = 1;
    /// `lookup`: the name is not registered.
    pub const NOT_FOUND: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// `check`/`add`: the name is invalid or clashes (EX_DATAERR).
    pub const DATA: i32 = 65;
    /// Output or the local entry could not be written (EX_IOERR).
    pub const IO: i32 = 74;
    /// A local registry file is unreadable or malformed (EX_CONFIG).
    pub const CONFIG: i32 = 78;
}

/// One-line summary for the `registry` subcommand.
pub const ABOUT: &str = "Look up, check and register xen-pv-channel(7) channel names";

/// Help text shown under `xenchan registry --help`.
pub const AFTER_HELP: &str = "\
The registry holds the channel names of xen-pv-channel(7): the man page's own
entries, names seen in the wild (QEMU guest agent, SPICE, libguestfs, oVirt...)
and xenchan's org.xenchan.agent.1, plus local entries read from every file in
the registry folder (--registry-dir, default /etc/xenchan/registry.d). A local
entry overrides a built-in one of the same name, with a warning.

Names are compared exactly and case-sensitively, as xl compares them.

Examples:
  xenchan registry lookup org.qemu.guest_agent.0
  xenchan registry check org.example.cloud.agent.1
  xenchan registry list --json
  xenchan registry add --name org.example.cloud.agent.1 \\
      --contact 'Cloud team <cloud@example.org>' \\
      --description 'Example Cloud first-boot configuration agent'

Exit codes: 0 ok; 1 poor name (check) or not registered (lookup); 2 usage;
65 invalid or clashing name; 74 I/O error; 78 bad local registry file.
The file format and naming rules: docs/REGISTRY.md.";

/// Help text for the parent's `--registry-dir` option.
pub const REGISTRY_DIR_HELP: &str = "Folder of local channel-name registry files; every \
     file in it holds entries in the xen-pv-channel(7) registry format (N:/C:/D:). Hidden \
     files, `*~` and package-manager leftovers are ignored. A missing folder means no local \
     entries";

/// The `xenchan registry` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum RegistryCommand {
    /// Show the entry registered under exactly NAME.
    #[command(after_help = "\
Prints the entry in the registry format, preceded by a comment saying where it
comes from (built-in registry, or a local file and line). The comparison is
exact and case-sensitive, as xl's: `Org.Qemu.Guest_agent.0` does not find
`org.qemu.guest_agent.0` (a hint names such near misses).

Exit codes: 0 found; 1 not registered; 78 bad local registry file.

Examples:
  xenchan registry lookup org.qemu.guest_agent.0
  xenchan registry --registry-dir ./registry.d lookup org.example.cloud.agent.1")]
    Lookup {
        /// The channel name to look up.
        name: String,
    },
    /// Judge NAME as a name for a new program: ok, poor or clash.
    #[command(after_help = "\
A name is:
  invalid  when it cannot work: empty, longer than 255 bytes, containing '/',
           whitespace or control characters, only dots, or one of , = \" (xl
           reads those as syntax in `channel = [ \"name=...\" ]`);
  clash    when it is registered already, is a prefix of a registered name
           (org.qemu.guest_agent vs org.qemu.guest_agent.0) or extends one;
  poor     when it works but breaks the convention: no reverse-DNS domain part,
           no numeric version part (.1), odd characters, or differs only in case
           or version from a registered name;
  ok       otherwise.
Use `lookup` to see who owns a registered name.

Exit codes: 0 ok; 1 poor; 65 invalid or clash; 78 bad local registry file.

Examples:
  xenchan registry check org.example.cloud.agent.1    # ok
  xenchan registry check myagent                      # poor: no domain part
  xenchan registry check 'name=x,y'                   # invalid
  xenchan registry check org.qemu.guest_agent.0       # clash")]
    Check {
        /// The channel name to judge.
        name: String,
    },
    /// List every registered name: built-in, then overridden or added locally.
    #[command(after_help = "\
Text output: one line per name, sorted bytewise: name, origin, first line of
the description. --json prints an array of objects with the keys name,
contact, description, origin (\"builtin\" or the file path) and line (null for
built-in entries).

Examples:
  xenchan registry list
  xenchan registry list --json | jq -r '.[].name'")]
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register a name locally: check it, then write <registry-dir>/<NAME>.
    #[command(after_help = "\
The name is checked first (see `check`): an invalid name is refused; a name
that clashes with a registered one is refused unless --force (which lets a local
entry override a built-in one or replace an earlier local one); a poor name is
written with warnings. The file is written atomically (temporary file, fsync,
rename, fsync of the folder) with mode 0644; the folder is created if missing.

Exit codes: 0 written; 65 invalid name or value, or clash without --force;
74 the file could not be written; 78 bad local registry file.

Examples:
  xenchan registry add --name org.example.cloud.agent.1 \\
      --contact 'Cloud team <cloud@example.org>' \\
      --description 'Example Cloud first-boot configuration agent'
  # Let a local entry replace the built-in one of a forked agent:
  xenchan registry add --force --name org.qemu.guest_agent.0 \\
      --contact 'Platform team' --description 'Our patched qemu-ga build'
  # Try it out in a scratch folder first:
  xenchan registry --registry-dir /tmp/registry.d add --name org.example.x.1 \\
      --contact me --description 'experiment'")]
    Add {
        /// The channel name to register.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Who to ask about the name: person, team, address or URL.
        #[arg(long, value_name = "TEXT")]
        contact: String,
        /// What the channel is for; may span lines, blank lines are dropped.
        #[arg(long, value_name = "TEXT")]
        description: String,
        /// Write even when the name clashes with a registered one.
        #[arg(long)]
        force: bool,
    },
}

/// A `xenchan registry` failure that is not a verdict.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A local registry file is unreadable or malformed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The values given to `add` do not make an entry.
    #[error("cannot register this entry")]
    Entry(#[source] EntryError),
    /// `add` could not write the file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Standard output or error could not be written.
    #[error("cannot write output")]
    Output(#[from] io::Error),
}

impl CliError {
    /// The exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Load(_) => exit::CONFIG,
            CliError::Entry(_) | CliError::Store(StoreError::IgnoredFileName(_)) => exit::DATA,
            CliError::Store(StoreError::Io { .. }) | CliError::Output(_) => exit::IO,
        }
    }
}

/// Runs a `xenchan registry` subcommand with local entries from `registry_dir`.
///
/// Results go to `out`, warnings and verdict details to `err`. Returns the exit
/// code for outcomes that are answers (ok, poor, clash, not found); failures come
/// back as [`CliError`], whose [`CliError::exit_code`] gives their code.
pub fn run(
    cmd: RegistryCommand,
    registry_dir: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let (registry, warnings) = Registry::load(&[registry_dir])?;
    for w in &warnings {
        writeln!(err, "warning: {w}")?;
    }
    match cmd {
        RegistryCommand::Lookup { name } => lookup(&registry, &name, out, err),
        RegistryCommand::Check { name } => {
            let result = check(&registry, &name);
            writeln!(out, "{result}")?;
            Ok(match result.verdict {
                Verdict::Ok => exit::OK,
                Verdict::Poor(_) => exit::POOR,
                Verdict::Clash(_) | Verdict::Invalid(_) => exit::DATA,
            })
        }
        RegistryCommand::List { json } => {
            if json {
                list_json(&registry, out)?;
            } else {
                list_text(&registry, out)?;
            }
            Ok(exit::OK)
        }
        RegistryCommand::Add {
            name,
            contact,
            description,
            force,
        } => add(
            &registry,
            registry_dir,
            &Entry::new(&name, &contact, &description).map_err(CliError::Entry)?,
            force,
            out,
            err,
        ),
    }
}

fn lookup(
    registry: &Registry,
    name: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    if let Some(registered) = registry.get(name) {
        writeln!(out, "# {}", registered.location())?;
        write!(out, "{}", write(std::slice::from_ref(&registered.entry)))?;
        return Ok(exit::OK);
    }
    writeln!(err, "`{}` is not registered", name.escape_debug())?;
    for other in registry.entries() {
        if other.name() != name && other.name().eq_ignore_ascii_case(name) {
            writeln!(
                err,
                "note: `{}` is registered; names are case-sensitive",
                other.name()
            )?;
        }
    }
    Ok(exit::NOT_FOUND)
}

fn origin_label(r: &Registered) -> String {
    match r.origin {
        Origin::Builtin => "built-in".to_owned(),
        Origin::File(_) => r.location(),
    }
}

fn list_text(registry: &Registry, out: &mut dyn Write) -> io::Result<()> {
    let name_width = registry
        .entries()
        .map(|e| e.name().len())
        .max()
        .unwrap_or(0);
    let origin_width = registry
        .records()
        .map(|r| origin_label(r).len())
        .max()
        .unwrap_or(0);
    for r in registry.records() {
        let first = r.entry.description().lines().next().unwrap_or_default();
        writeln!(
            out,
            "{:name_width$}  {:origin_width$}  {first}",
            r.entry.name(),
            origin_label(r)
        )?;
    }
    Ok(())
}

fn list_json(registry: &Registry, out: &mut dyn Write) -> io::Result<()> {
    let items: Vec<serde_json::Value> = registry
        .records()
        .map(|r| {
            let (origin, line) = match &r.origin {
                Origin::Builtin => ("builtin".to_owned(), None),
                Origin::File(path) => (path.display().to_string(), Some(r.line)),
            };
            serde_json::json!({
                "name": r.entry.name(),
                "contact": r.entry.contact(),
                "description": r.entry.description(),
                "origin": origin,
                "line": line,
            })
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &items).map_err(io::Error::from)?;
    writeln!(out)
}

fn add(
    registry: &Registry,
    registry_dir: &Path,
    entry: &Entry,
    force: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let result = check(registry, entry.name());
    match &result.verdict {
        Verdict::Invalid(_) => {
            writeln!(err, "{result}")?;
            return Ok(exit::DATA);
        }
        Verdict::Clash(_) if !force => {
            writeln!(err, "{result}")?;
            writeln!(
                err,
                "refusing to register a clashing name; pick another, or use --force to \
                 override"
            )?;
            return Ok(exit::DATA);
        }
        Verdict::Clash(_) => writeln!(err, "warning: --force: {result}")?,
        Verdict::Poor(_) => writeln!(err, "warning: {result}")?,
        Verdict::Ok => {}
    }
    let path = store_local_entry(registry_dir, entry)?;
    writeln!(out, "registered `{}` in {}", entry.name(), path.display())?;
    Ok(exit::OK)
}
