//! `xenchan hook`: the libvirt hook entry (`/etc/libvirt/hooks/libxl`, `.../qemu`, or a
//! script in `libxl.d/` / `qemu.d/`).
//!
//! libvirtd runs hooks synchronously as `<hook> <domain> <op> <subop> <extra>` with the
//! domain XML on stdin, waits for them, and aborts a start when a `prepare`/`start` hook
//! exits non-zero (its stderr becomes the error). So this entry:
//!
//! - reads at most [`MAX_XML`] bytes of stdin, and does everything within its deadline;
//! - never calls libvirt (libvirtd is waiting for us: a deadlock) and never writes to
//!   stdout (for `migrate` and `restore`, and for every script in a `.d` folder, stdout
//!   replaces the domain XML; empty output keeps it);
//! - touches the broker only for domains that have our channel;
//! - takes its settings from `/etc/xenchan/hook.toml` ([`settings`]): libvirtd gives hooks
//!   no environment but `LC_ALL`, `PATH` and `HOME`;
//! - at `prepare begin`, registers the domain (`POST /v1/domains/{name}/prepare`) and
//!   aborts the start when the broker *refuses* (a lease or UUID conflict, a prepare hook
//!   that says no (422) or overruns (504)); an *unreachable* broker or an unreadable XML
//!   follows `on_unreachable` / `on_bad_xml` (default: warn and go on);
//! - at `release end`, releases it (`POST /v1/domains/{name}/release`); never fails (a
//!   broker in cluster mode cancels a migration to here that never ran);
//! - at `migrate begin` (an incoming migration, on the destination), prepares the
//!   hand-off (`POST /v1/domains/{uuid}/migrate/prepare`, cluster mode) and aborts the
//!   migration when the broker refuses it; at `started begin`, completes a prepared one
//!   (`.../migrate/complete`); never fails there (libvirt would kill the domain);
//! - at `reconnect begin` / `attach begin` (libvirtd restarted with running domains),
//!   registers again but never fails: a failing reconnect hook makes libvirtd kill the
//!   running domain.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use xenchan_api::client::{Client, ClientError};
use xenchan_api::hook_config::{self, HookConfig, OnProblem};
use xenchan_api::types::ApiError;

use crate::domain_xml::{self, DomainXml, MAX_XML};
use crate::syslog::{self, Severity};
use xenchan_basics::{Exit, chain};

/// `--help` text.
pub const LONG_ABOUT: &str = "\
libvirt hook entry: registers a domain with the xenchan broker when libvirt prepares to \
start it, and releases it when libvirt has released it. Install it as (or call it from) \
/etc/libvirt/hooks/libxl (Xen through libvirt's libxl driver) and/or \
/etc/libvirt/hooks/qemu (QEMU/KVM); libvirt passes `<domain> <op> <subop> <extra>` and \
the domain XML on standard input. The package ships /usr/libexec/xenchan/libvirt-hook, \
which runs `xenchan hook -- \"$@\"`.

Only domains with a unix channel named --channel (`<channel type='unix'>` with \
`<target type='xen'|'virtio' name='org.xenchan.agent.1'/>`) are sent to the broker; \
every other domain is left alone, at once. The hook never writes to standard output \
(libvirt would take it as a replacement domain XML), never calls libvirt, reads at most \
4 MiB of XML and finishes within its deadline (10 s by default).

Settings come from /etc/xenchan/hook.toml (--config): libvirtd runs hooks with only \
LC_ALL, PATH and HOME in the environment, so its environment cannot configure them. \
Keys: socket, channel, deadline (seconds), on_unreachable and on_bad_xml (\"continue\" \
or \"abort\"). A missing file means the defaults. A malformed file is reported (stderr \
and the system log, naming the key) and aborts the start of any domain with a unix \
channel (exit 78) until fixed; reconnect and release go on with the defaults. The \
options below override the file, for trying the hook by hand.

What each libvirt call does (the same for the libxl and the qemu hook):

`prepare begin`: register the domain, its UUID and channels (POST \
/v1/domains/{name}/prepare). The broker checks that no other domain has this UUID, \
confirms the domain's leases and runs its own prepare hooks. If it refuses (4xx: 409 a \
UUID or lease conflict, or in cluster mode another live host runs the VM; 422 a \
prepare hook said no; or 504: a prepare hook overran), \
this exits 65 with the reason on stderr and libvirt aborts the start.

`start begin`, `stopped end`: nothing. The broker finds the channel socket when QEMU \
makes it, and sees it close.

`release end`: release the domain (POST /v1/domains/{name}/release): its session stops, \
its desired configuration stays. Never fails the operation.

`migrate begin` (on the destination of a migration): no output (the XML stays as it \
is). With a broker in cluster mode ([store] backend = \"etcd\"), prepare the hand-off \
(POST /v1/domains/{uuid}/migrate/prepare): this host becomes the incoming one while the \
source keeps the domain. If the broker refuses (409: the source does not own the VM, or \
a migration to another host is prepared), this exits 65 and libvirt does not migrate. \
A broker with the embedded store answers that migration needs etcd: nothing to do. The \
`prepare begin` that follows registers the domain on the destination; the source \
host's `release end` releases it there.

`started begin` after `migrate begin` (cluster mode): complete the hand-off (POST \
/v1/domains/{uuid}/migrate/complete): ownership moves to this host. Without a prepared \
migration (an ordinary start, or the embedded store) nothing changes. Never fails: a \
failing `started` hook makes libvirt kill the domain (a refusal is warned about; an \
unreachable broker was already reported at `prepare begin`). If this migration then fails, \
the destination's `release end` gives the domain up and the source, still running it, \
takes it back; a `release end` on the destination before any `started` cancels the \
prepared migration (the source keeps the domain).

`restore begin`: nothing, and no output (the XML stays as it is).

`reconnect begin`, `attach begin` (libvirtd restarted with running domains): register \
again, but never fail: a failing reconnect hook makes libvirtd kill the domain.

Anything else: nothing.

When the broker cannot be reached at `prepare` (no socket, refused, no answer within the \
deadline, 5xx but 504, a broker without these endpoints) or the XML cannot be read, \
the default (on_unreachable / on_bad_xml = \"continue\") does NOT abort the start: a \
warning goes to stderr and to the system log (libvirt only logs a hook's stderr when \
it fails), and the broker configures the domain anyway once its channel socket \
appears. \"abort\" in hook.toml (or --strict) aborts the start instead.";

/// `--help` epilogue.
pub const AFTER_HELP: &str = "\
Examples:
  /etc/libvirt/hooks/qemu.d/xenchan (and libxl.d/xenchan), executable:
      #!/bin/sh
      exec /usr/bin/xenchan hook -- \"$@\"
  or, where a single hook script exists already, call `xenchan hook -- \"$@\"` from it
  with the XML on stdin. Restart libvirtd after adding a hook.

  By hand (what libvirt does):
      virsh dumpxml web1 | xenchan hook -- web1 prepare begin -
      xenchan hook --strict -- web1 prepare begin - < web1.xml
      xenchan hook --config ./hook.toml -- web1 prepare begin - < web1.xml

  /etc/xenchan/hook.toml, aborting starts when the broker is down:
      on_unreachable = \"abort\"

Exit codes: 0 done, nothing to do, or a tolerated problem (warned); 65 the broker refused
the domain (the start is aborted), or the XML cannot be read and on_bad_xml = \"abort\";
69 the broker is unreachable and on_unreachable = \"abort\"; 78 the config file is
malformed (prepare of a domain with a unix channel); 2 bad command line.";

/// The arguments libvirt passes, and our options. The options are for trying the hook
/// by hand and for tests: libvirtd passes none and no environment but `LC_ALL`, `PATH`
/// and `HOME`, so the settings libvirt runs with are those of `--config`.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// The hook's settings (socket, channel, deadline, what to do when the broker cannot
    /// be reached). A missing file means the defaults; see /etc/xenchan/hook.toml.
    #[arg(long, value_name = "PATH", env = "XENCHAN_HOOK_CONFIG",
          default_value = hook_config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// Abort the start (exit non-zero) when the broker cannot be reached or the domain
    /// XML cannot be read at `prepare`, whatever the config file says (its
    /// `on_unreachable` / `on_bad_xml`). A refusal by the broker always aborts.
    /// In the environment, any value but an empty one, 0, false, no, off, n or f is on.
    #[arg(long, env = "XENCHAN_HOOK_STRICT",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub strict: bool,

    /// The channel name that marks a domain as ours (the target name of its unix
    /// channel); domains without such a channel are ignored. Overrides `channel` of the
    /// config file [default: org.xenchan.agent.1].
    #[arg(long, value_name = "NAME", env = "XENCHAN_CHANNEL")]
    pub channel: Option<String>,

    /// Seconds the whole hook may take (reading the XML and the broker's answer).
    /// Overrides `deadline` of the config file [default: 10]; keep it above the broker's
    /// `timeouts.request`.
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub deadline: Option<u64>,

    /// Datagram socket of the system log that warnings and refusals are also sent to
    /// (`none` sends nothing).
    #[arg(long, value_name = "PATH", default_value = "/dev/log")]
    pub syslog: PathBuf,

    /// The domain's name (libvirt's first argument).
    #[arg(value_name = "DOMAIN")]
    pub domain: String,

    /// The operation: prepare, start, started, stopped, release, migrate, restore,
    /// reconnect, attach.
    #[arg(value_name = "OP")]
    pub op: String,

    /// The sub-operation: begin, end or `-`.
    #[arg(value_name = "SUBOP")]
    pub subop: String,

    /// The extra argument: `-`, or (release, libvirt >= 10.5) the shutoff reason. Ignored.
    #[arg(value_name = "EXTRA")]
    pub extra: Vec<String>,
}

/// The settings a call runs with: the config file's, then the command line's and the
/// environment's on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The broker's control socket.
    pub socket: PathBuf,
    /// Our channel name.
    pub channel: String,
    /// The whole hook's deadline.
    pub deadline: Duration,
    /// Abort a prepare when the broker cannot be reached.
    pub abort_unreachable: bool,
    /// Abort a prepare when the XML cannot be read.
    pub abort_bad_xml: bool,
    /// Why the config file could not be used (then the rest are defaults + overrides).
    pub config_error: Option<String>,
}

/// Merges the config file (`Ok(None)`: there is none) with the overrides. `socket` is
/// the global `--socket`/`XENCHAN_SOCKET`: only a value other than the default
/// overrides the file's (clap cannot tell a default from an explicit value here).
pub fn settings(
    file: Result<Option<HookConfig>, String>,
    socket: &Path,
    args: &HookArgs,
) -> Settings {
    let (conf, config_error) = match file {
        Ok(c) => (c.unwrap_or_default(), None),
        Err(e) => (HookConfig::default(), Some(e)),
    };
    Settings {
        socket: if socket == Path::new(xenchan_api::defaults::CONTROL_SOCKET) {
            conf.socket
        } else {
            socket.to_path_buf()
        },
        channel: args.channel.clone().unwrap_or(conf.channel),
        deadline: Duration::from_secs(args.deadline.unwrap_or(conf.deadline)),
        abort_unreachable: args.strict || conf.on_unreachable == OnProblem::Abort,
        abort_bad_xml: args.strict || conf.on_bad_xml == OnProblem::Abort,
        config_error,
    }
}

/// Reads the config file: `Ok(None)` when it does not exist.
///
/// # Errors
/// The file cannot be read or is malformed: the message names the file and the key.
pub fn load_config(path: &Path) -> Result<Option<HookConfig>, String> {
    let text = match read_bounded(path, hook_config::MAX_SIZE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let text =
        String::from_utf8(text).map_err(|_| format!("{}: `-`: not UTF-8 text", path.display()))?;
    HookConfig::parse(&text, path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Reads at most `limit + 1` bytes (more is reported by the parser as too large).
fn read_bounded(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

/// What a libvirt call asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register the domain; a refusal aborts the start.
    Prepare,
    /// Register the domain again; never fail.
    Reattach,
    /// Release the domain; never fail (unless strict).
    Release,
    /// An incoming migration: prepare the hand-off; a refusal aborts the migration.
    MigrateIn,
    /// The domain runs: complete a prepared hand-off; never fail.
    Started,
    /// Nothing.
    Nothing,
}

impl Action {
    /// The action for libvirt's `<op> <subop>`.
    pub fn of(op: &str, subop: &str) -> Action {
        match (op, subop) {
            ("prepare", "begin") => Action::Prepare,
            ("reconnect" | "attach", "begin") => Action::Reattach,
            ("release", "end") => Action::Release,
            ("migrate", "begin") => Action::MigrateIn,
            ("started", "begin") => Action::Started,
            _ => Action::Nothing,
        }
    }
}

/// How a problem ends the hook.
enum Problem {
    /// The broker said no: always abort a prepare.
    Refused(String),
    /// The broker could not be asked.
    Unavailable(String),
    /// The XML could not be read.
    BadInput(String),
}

struct Reporter<'a> {
    syslog: Option<&'a Path>,
}

impl Reporter<'_> {
    fn say(&self, severity: Severity, message: &str) {
        eprintln!("xenchan hook: {message}");
        if let Some(s) = self.syslog {
            syslog::send(s, severity, message);
        }
    }
}

/// Runs the hook and returns its exit code. Prints nothing on stdout.
pub fn run(socket: &Path, args: &HookArgs) -> ExitCode {
    let s = settings(load_config(&args.config), socket, args);
    let end = Instant::now() + s.deadline;
    let reporter = Reporter {
        syslog: (args.syslog != Path::new("none") && !args.syslog.as_os_str().is_empty())
            .then_some(args.syslog.as_path()),
    };
    let action = Action::of(&args.op, &args.subop);
    // Drain stdin whatever the operation, so that libvirtd never writes into a closed
    // pipe; bounded in size and time.
    let input = read_input(MAX_XML, end);
    if action == Action::Nothing {
        return Exit::Ok.into();
    }
    let domain = &args.domain;
    let xml = input.and_then(|bytes| {
        let d = domain_xml::parse(&bytes).map_err(|e| chain(&e))?;
        match &d.name {
            Some(n) if n != domain => Err(format!(
                "the XML describes domain `{}`, but the hook was called for `{}`",
                n.escape_debug(),
                domain.escape_debug()
            )),
            _ => Ok(d),
        }
    });
    let shown = domain.escape_debug();
    if let Some(why) = &s.config_error {
        // The safe choice: a start that may be ours (any unix channel: the channel name
        // itself may be what is wrong) is aborted, so that the operator sees the error at
        // once; reconnect and release go on with the defaults (failing them cannot help:
        // a failing reconnect makes libvirtd kill the domain).
        let maybe_ours = xml.as_ref().map_or(true, |x| !x.channels.is_empty());
        if matches!(action, Action::Prepare | Action::MigrateIn) && maybe_ours {
            reporter.say(
                Severity::Error,
                &format!(
                    "start of domain {shown} aborted: the hook's config file is malformed: {why}"
                ),
            );
            return Exit::Config.into();
        }
        reporter.say(
            Severity::Warning,
            &format!(
                "the hook's config file is malformed, using the defaults for domain {shown}: {why}"
            ),
        );
    }
    let (socket, channel) = (s.socket.as_path(), s.channel.as_str());
    let shown = domain.escape_debug();
    match action {
        Action::Nothing => Exit::Ok.into(),
        Action::Prepare | Action::Reattach => {
            let tolerant = action == Action::Reattach;
            match prepare(socket, channel, domain, xml, end) {
                Ok(()) => Exit::Ok.into(),
                Err(Problem::Refused(why)) if !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!("the xenchan broker refused domain {shown}: {why}"),
                    );
                    Exit::DataErr.into()
                }
                Err(Problem::Refused(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!("the xenchan broker refused to re-register running domain {shown} (it keeps running): {why}"),
                    );
                    Exit::Ok.into()
                }
                Err(Problem::Unavailable(why)) if s.abort_unreachable && !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!("start of domain {shown} aborted (on_unreachable = \"abort\" or --strict): {why}"),
                    );
                    Exit::Unavailable.into()
                }
                Err(Problem::BadInput(why)) if s.abort_bad_xml && !tolerant => {
                    reporter.say(
                        Severity::Error,
                        &format!(
                            "start of domain {shown} aborted (on_bad_xml = \"abort\" or --strict): cannot read its domain XML: {why}"
                        ),
                    );
                    Exit::DataErr.into()
                }
                Err(Problem::Unavailable(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!(
                            "domain {shown} goes on without being registered with the xenchan broker: {why} \
                             (the broker still configures it once its channel socket appears{})",
                            if tolerant { "" } else { "; on_unreachable = \"abort\" in the hook's config file aborts the start instead" }
                        ),
                    );
                    Exit::Ok.into()
                }
                Err(Problem::BadInput(why)) => {
                    reporter.say(
                        Severity::Warning,
                        &format!(
                            "cannot read the domain XML of {shown}, so it is not registered with the xenchan broker: {why}{}",
                            if tolerant { "" } else { " (the start goes on; on_bad_xml = \"abort\" in the hook's config file aborts it instead)" }
                        ),
                    );
                    Exit::Ok.into()
                }
            }
        }
        Action::MigrateIn => match migrate(socket, channel, domain, xml, Step::Prepare, end) {
            Ok(()) => Exit::Ok.into(),
            Err(Problem::Refused(why)) => {
                reporter.say(
                    Severity::Error,
                    &format!("the xenchan broker refused the migration of domain {shown} to this host: {why}"),
                );
                Exit::DataErr.into()
            }
            Err(Problem::Unavailable(why)) if s.abort_unreachable => {
                reporter.say(
                    Severity::Error,
                    &format!("migration of domain {shown} aborted (on_unreachable = \"abort\" or --strict): {why}"),
                );
                Exit::Unavailable.into()
            }
            Err(Problem::BadInput(why)) if s.abort_bad_xml => {
                reporter.say(
                    Severity::Error,
                    &format!("migration of domain {shown} aborted (on_bad_xml = \"abort\" or --strict): cannot read its domain XML: {why}"),
                );
                Exit::DataErr.into()
            }
            Err(Problem::Unavailable(why) | Problem::BadInput(why)) => {
                reporter.say(
                    Severity::Warning,
                    &format!("the migration of domain {shown} goes on without the hand-off being prepared at the xenchan broker: {why} (this host takes the domain over when the source gives it up)"),
                );
                Exit::Ok.into()
            }
        },
        Action::Started => {
            // An unreachable broker or an unreadable XML was already reported by the
            // `prepare begin` of this very start; only a broker's refusal is news.
            if let Err(Problem::Refused(why)) =
                migrate(socket, channel, domain, xml, Step::Complete, end)
            {
                reporter.say(
                    Severity::Warning,
                    &format!("cannot complete the migration of domain {shown} to this host at the xenchan broker (the domain keeps running; this host takes it over when the source gives it up): {why}"),
                );
            }
            Exit::Ok.into()
        }
        Action::Release => match release(socket, channel, domain, &xml, end) {
            Ok(()) => Exit::Ok.into(),
            Err(p) => {
                let (why, code) = match p {
                    Problem::Refused(w) | Problem::BadInput(w) => (w, Exit::DataErr),
                    Problem::Unavailable(w) => (w, Exit::Unavailable),
                };
                reporter.say(
                    Severity::Warning,
                    &format!("cannot release domain {shown} at the xenchan broker: {why}"),
                );
                // A release cannot be undone by failing; only --strict reports it.
                if args.strict { code } else { Exit::Ok }.into()
            }
        },
    }
}

/// Reads stdin up to `limit` bytes (a terminal counts as empty), until `end`.
fn read_input(limit: usize, end: Instant) -> Result<Vec<u8>, String> {
    if std::io::stdin().is_terminal() {
        return Ok(Vec::new());
    }
    let (tx, rx) = mpsc::channel();
    // A plain thread: if libvirtd never closes our stdin, the process exits at the
    // deadline with the thread still blocked in read(2).
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        Ok(Ok(buf)) if buf.len() > limit => {
            Err(format!("the domain XML is larger than {limit} bytes"))
        }
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(format!("cannot read standard input: {e}")),
        Err(_) => Err("standard input was not closed before the hook's deadline".into()),
    }
}

/// The request body of `prepare` for our channels.
fn prepare_body(xml: &DomainXml, channel: &str) -> Value {
    let channels: Vec<Value> = xml
        .channels_named(channel)
        .map(|c| json!({"name": c.name, "path": c.path, "type": c.kind.as_str()}))
        .collect();
    json!({"uuid": xml.uuid, "channels": channels})
}

fn prepare(
    socket: &Path,
    channel: &str,
    domain: &str,
    xml: Result<DomainXml, String>,
    end: Instant,
) -> Result<(), Problem> {
    let xml = xml.map_err(Problem::BadInput)?;
    if xml.channels_named(channel).next().is_none() {
        return Ok(());
    }
    // The broker would refuse the name the same way (400); saying so here is clearer.
    xenchan_api::paths::check_domain_name(domain).map_err(|e| {
        Problem::Refused(format!(
            "{e}; xenchan cannot serve this domain: rename it or remove its {channel} channel"
        ))
    })?;
    let body = serde_json::to_vec(&prepare_body(&xml, channel)).expect("JSON serialises");
    call(socket, &format!("/v1/domains/{domain}/prepare"), body, end)
}

fn release(
    socket: &Path,
    channel: &str,
    domain: &str,
    xml: &Result<DomainXml, String>,
    end: Instant,
) -> Result<(), Problem> {
    // Releasing is always safe, so an unreadable XML still releases; a readable one
    // without our channel means the broker never heard of the domain from us.
    if let Ok(x) = xml
        && x.channels_named(channel).next().is_none()
    {
        return Ok(());
    }
    if xenchan_api::paths::check_domain_name(domain).is_err() {
        return Ok(());
    }
    call(
        socket,
        &format!("/v1/domains/{domain}/release"),
        b"{}".to_vec(),
        end,
    )
}

/// A migration step the hook takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Prepare,
    Complete,
}

/// Whether a refusal of a migration step means "nothing to hand off" rather than "no":
/// the embedded store (400 naming `store.backend`), nobody owning the VM at prepare
/// (409 on `owner` naming no host: the destination's `prepare` claims it), no migration
/// prepared at complete (409 on `incoming`: an ordinary start).
fn nothing_to_hand_off(step: Step, status: StatusCode, e: &ApiError) -> bool {
    match (step, status.as_u16(), e.path.as_deref()) {
        (_, 400, Some("store.backend")) | (Step::Complete, 409, Some("incoming")) => true,
        (Step::Prepare, 409, Some("owner")) => e.domain.is_none(),
        _ => false,
    }
}

/// `migrate begin` / `started begin`: the hand-off step for a domain with our channel.
fn migrate(
    socket: &Path,
    channel: &str,
    domain: &str,
    xml: Result<DomainXml, String>,
    step: Step,
    end: Instant,
) -> Result<(), Problem> {
    let xml = xml.map_err(Problem::BadInput)?;
    if xml.channels_named(channel).next().is_none() {
        return Ok(());
    }
    let Some(uuid) = xml.uuid.as_deref() else {
        return Err(Problem::BadInput(
            "the domain XML has no <uuid>: in cluster mode the UUID is the domain's identity"
                .into(),
        ));
    };
    if xenchan_api::paths::check_domain_name(domain).is_err() {
        return Ok(()); // never registered by this hook: nothing to hand off
    }
    let (path, body) = match step {
        Step::Prepare => (
            format!("/v1/domains/{uuid}/migrate/prepare"),
            serde_json::to_vec(&json!({ "name": domain })).expect("JSON serialises"),
        ),
        Step::Complete => (format!("/v1/domains/{uuid}/migrate/complete"), Vec::new()),
    };
    let (status, bytes) = post(socket, &path, body, end)?;
    if let Ok(e) = serde_json::from_slice::<ApiError>(&bytes)
        && !status.is_success()
        && nothing_to_hand_off(step, status, &e)
    {
        return Ok(());
    }
    verdict(socket, &path, status, &bytes)
}

/// POSTs `body` to `path` within the time left until `end`.
fn call(socket: &Path, path: &str, body: Vec<u8>, end: Instant) -> Result<(), Problem> {
    let (status, bytes) = post(socket, path, body, end)?;
    verdict(socket, path, status, &bytes)
}

/// POSTs `body` to `path` within the time left until `end`: the status and the body.
fn post(
    socket: &Path,
    path: &str,
    body: Vec<u8>,
    end: Instant,
) -> Result<(StatusCode, hyper::body::Bytes), Problem> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Problem::Unavailable(
            "the hook's deadline passed before the broker could be asked".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Problem::Unavailable(format!("cannot start the async runtime: {e}")))?;
    let client = Client::new(socket).with_timeout(left);
    let answer = rt.block_on(client.request(Method::POST, path, Some(body)));
    // The runtime has no task left but a connection driver; do not wait for it.
    rt.shutdown_background();
    answer.map_err(|e| {
        let mut why = chain(&e);
        if matches!(e, ClientError::Timeout(_)) {
            why.push_str(" (the hook's deadline)");
        }
        Problem::Unavailable(why)
    })
}

/// The broker's answer as the hook's outcome.
fn verdict(socket: &Path, path: &str, status: StatusCode, bytes: &[u8]) -> Result<(), Problem> {
    if status.is_success() {
        return Ok(());
    }
    let error = serde_json::from_slice::<ApiError>(bytes).map_or_else(
        |_| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                .trim()
                .to_string()
        },
        |e| e.error,
    );
    let at = socket.display();
    match status {
        // A broker older than the lifecycle endpoints: as if it were not there.
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Err(Problem::Unavailable(
            format!("the broker at {at} does not support {path} ({status}: {error})"),
        )),
        StatusCode::REQUEST_TIMEOUT => Err(Problem::Unavailable(format!(
            "the broker at {at} timed out ({status}: {error})"
        ))),
        // The broker answered: one of its prepare hooks overran and was killed. That is
        // its verdict on this domain, not an unreachable broker.
        StatusCode::GATEWAY_TIMEOUT => Err(Problem::Refused(error)),
        s if s.is_server_error() => Err(Problem::Unavailable(format!(
            "the broker at {at} failed ({status}: {error})"
        ))),
        _ => Err(Problem::Refused(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_operations_map_to_actions() {
        assert_eq!(Action::of("prepare", "begin"), Action::Prepare);
        assert_eq!(Action::of("release", "end"), Action::Release);
        assert_eq!(Action::of("reconnect", "begin"), Action::Reattach);
        assert_eq!(Action::of("attach", "begin"), Action::Reattach);
        assert_eq!(Action::of("migrate", "begin"), Action::MigrateIn);
        assert_eq!(Action::of("started", "begin"), Action::Started);
        for (op, sub) in [
            ("start", "begin"),
            ("stopped", "end"),
            ("migrate", "end"),
            ("restore", "begin"),
            ("prepare", "end"),
            ("frobnicate", "-"),
        ] {
            assert_eq!(Action::of(op, sub), Action::Nothing, "{op} {sub}");
        }
    }

    #[test]
    fn benign_migration_refusals_are_nothing_to_hand_off() {
        let e = |path: &str, domain: Option<&str>| ApiError {
            error: "x".into(),
            path: Some(path.into()),
            errors: Vec::new(),
            domain: domain.map(str::to_string),
        };
        let c = StatusCode::CONFLICT;
        let table = [
            (
                Step::Prepare,
                StatusCode::BAD_REQUEST,
                e("store.backend", None),
                true,
            ),
            (
                Step::Complete,
                StatusCode::BAD_REQUEST,
                e("store.backend", None),
                true,
            ),
            (Step::Prepare, c, e("owner", None), true),
            (Step::Prepare, c, e("owner", Some("dom0-c")), false),
            (Step::Prepare, c, e("incoming", Some("dom0-c")), false),
            (Step::Complete, c, e("incoming", None), true),
            (Step::Complete, c, e("owner", Some("dom0-c")), false),
            (
                Step::Prepare,
                StatusCode::BAD_REQUEST,
                e("uuid", None),
                false,
            ),
        ];
        for (step, status, err, want) in table {
            assert_eq!(
                nothing_to_hand_off(step, status, &err),
                want,
                "{step:?} {status} {err:?}"
            );
        }
    }

    #[test]
    fn the_prepare_body_lists_only_our_channels() {
        let xml = domain_xml::parse(
            b"<domain><name>w</name><uuid>6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a</uuid><devices>
              <channel type='unix'><source mode='bind' path='/s/w.sock'/><target type='xen' name='org.xenchan.agent.1'/></channel>
              <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
              </devices></domain>",
        )
        .unwrap();
        assert_eq!(
            prepare_body(&xml, "org.xenchan.agent.1"),
            json!({"uuid": "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a",
                   "channels": [{"name": "org.xenchan.agent.1", "path": "/s/w.sock", "type": "xen"}]})
        );
    }

    fn args(argv: &[&str]) -> HookArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: HookArgs,
        }
        T::try_parse_from(std::iter::once("hook").chain(argv.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn settings_come_from_the_file_and_the_command_line_overrides_them() {
        let default_sock = Path::new(xenchan_api::defaults::CONTROL_SOCKET);
        let file = HookConfig {
            socket: "/srv/b.sock".into(),
            channel: "org.example.1".into(),
            deadline: 20,
            on_unreachable: OnProblem::Abort,
            on_bad_xml: OnProblem::Continue,
        };
        let plain = args(&["d", "prepare", "begin", "-"]);
        // No file: the documented defaults.
        let s = settings(Ok(None), default_sock, &plain);
        assert_eq!(s.socket, default_sock);
        assert_eq!(s.channel, "org.xenchan.agent.1");
        assert_eq!(s.deadline, Duration::from_secs(10));
        assert!(!s.abort_unreachable && !s.abort_bad_xml);
        assert_eq!(s.config_error, None);
        // The file.
        let s = settings(Ok(Some(file.clone())), default_sock, &plain);
        assert_eq!(s.socket, Path::new("/srv/b.sock"));
        assert_eq!(s.channel, "org.example.1");
        assert_eq!(s.deadline, Duration::from_secs(20));
        assert!(s.abort_unreachable && !s.abort_bad_xml);
        // Overrides: a non-default --socket, --channel, --deadline, --strict.
        let over = args(&[
            "--strict",
            "--channel",
            "c",
            "--deadline",
            "3",
            "d",
            "prepare",
            "begin",
            "-",
        ]);
        let s = settings(Ok(Some(file)), Path::new("/tmp/t.sock"), &over);
        assert_eq!(s.socket, Path::new("/tmp/t.sock"));
        assert_eq!(s.channel, "c");
        assert_eq!(s.deadline, Duration::from_secs(3));
        assert!(s.abort_unreachable && s.abort_bad_xml);
        // A malformed file: defaults, and the reason kept for the caller to report.
        let s = settings(Err("hook.toml: `x`: bad".into()), default_sock, &plain);
        assert_eq!(s.deadline, Duration::from_secs(10));
        assert_eq!(s.config_error.as_deref(), Some("hook.toml: `x`: bad"));
    }

    #[test]
    fn the_config_file_is_optional_but_a_broken_one_is_named() {
        let dir = std::env::temp_dir().join(format!("xenchan-hook-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("hook.toml");
        assert_eq!(load_config(&p), Ok(None));
        std::fs::write(&p, "deadline = 7\n").unwrap();
        assert_eq!(load_config(&p).unwrap().unwrap().deadline, 7);
        std::fs::write(&p, "deadline = 700\n").unwrap();
        let e = load_config(&p).unwrap_err();
        assert!(
            e.contains("hook.toml: `deadline`: 700 is out of range"),
            "{e}"
        );
        std::fs::write(&p, vec![b'#'; hook_config::MAX_SIZE + 10]).unwrap();
        assert!(load_config(&p).unwrap_err().contains("larger than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
