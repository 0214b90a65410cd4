//! `xenchan`: the operator CLI over the broker's control API (docs/API.md), the libvirt
//! hook entry (`xenchan hook`, [`hook`]) and the xl configuration helper
//! (`xenchan xl-channel`, [`xl`]).
//!
//! The command line is [`Cli`] (also used to generate the man pages and shell
//! completions); the binary calls [`main`].

mod bulk;
pub mod domain_xml;
pub mod hook;
pub mod known_hosts;
mod output;
mod syslog;
pub mod xl;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use xenchan_api::client::{Client, ClientError};
use xenchan_api::query::{self, DomainQuery, EventQuery};
use xenchan_api::types::{BulkResult, DomainState, MigratePrepareRequest};
use xenchan_api::{DomainName, VmUuid};
use xenchan_basics::{Exit, chain};
use xenchan_protocol::config::{
    Cidr, ConfigError, DomainName as SearchDomain, Ethernet, GuestConfig, Hostname, InterfaceId,
    MacAddr, Match, Nameservers, Network, Route, RouteTarget, RunPolicy, SshKey, User, UserName,
};

/// Largest file read for --file and --ssh-key-file.
const MAX_INPUT: u64 = 4 * 1024 * 1024;
/// Largest file of many configurations read (`domain set --file` without a name).
const MAX_BULK_INPUT: u64 = 256 * 1024 * 1024;

/// Operate xenchan: set, inspect and push guest configurations through the broker.
#[derive(Debug, Parser)]
#[command(
    name = "xenchan",
    version,
    after_help = "\
Examples:
  xenchan domain set web1 --file web1.json
  xenchan domain set web1 --hostname web1.example.com --mac 00:16:3e:12:34:56 \\
      --address 192.0.2.10/24 --gateway 192.0.2.1 --dns 192.0.2.53 \\
      --ssh-key-file ~/.ssh/id_ed25519.pub
  xenchan domain list
  xenchan domain ls --state failed --prefix web
  xenchan domain get web1 --json | jq .state
  xenchan domain push web1
  xenchan domain rm web1
  xenchan status
  xenchan events --domain web1 --since 1h
  xenchan registry check org.example.cloud.agent.1
  xenchan xl-channel web1 --xl-4.17-workaround >> /etc/xen/web1.cfg
  xenchan hook web1 prepare begin - < web1.xml     (what a libvirt hook runs)

Exit codes:
  0  ok
  2  usage error (bad options)
  65 bad data: the broker refused the request (400 invalid config, 404 unknown domain,
     409 lease conflict, 422 prepare hook refused), or a local file is not valid
  69 the broker is unavailable (socket missing, refused, timed out, 5xx; 504: a
     prepare hook overran and was killed)
  74 I/O error (reading a file, a broken exchange)
  77 no permission: the call needs a role you do not have (403; groups xenchan for
     operators, xenchan-ro for read-only)
  78 configuration error (unusable socket path, bad registry files)"
)]
pub struct Cli {
    /// The broker's control socket.
    #[arg(
        long,
        global = true,
        env = "XENCHAN_SOCKET",
        default_value = "/run/xenchan/broker.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,

    /// Print the API's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the broker's answer.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,

    /// Folder of local channel-name registry files (for `xenchan registry`).
    #[arg(
        long,
        global = true,
        env = "XENCHAN_REGISTRY_DIR",
        default_value = xenchan_registry::DEFAULT_REGISTRY_DIR,
        value_name = "DIR",
        help = xenchan_registry::cli::REGISTRY_DIR_HELP
    )]
    registry_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage one domain's desired configuration.
    #[command(subcommand)]
    Domain(Box<DomainCommand>),
    /// Show the broker's health and how many domains are in each state.
    Status,
    /// Show the event log: what happened to which domain, and which caller did it.
    #[command(after_help = EVENTS_HELP)]
    Events(EventsArgs),
    #[command(about = xenchan_registry::cli::ABOUT, after_help = xenchan_registry::cli::AFTER_HELP)]
    /// Channel-name registry.
    #[command(subcommand)]
    Registry(xenchan_registry::cli::RegistryCommand),
    /// libvirt hook entry: register or release a domain with the broker as it starts or
    /// stops (for /etc/libvirt/hooks/libxl and /etc/libvirt/hooks/qemu).
    #[command(long_about = hook::LONG_ABOUT, after_help = hook::AFTER_HELP)]
    Hook(hook::HookArgs),
    /// Print the `channel = [...]` line of an xl domain configuration for xenchan.
    #[command(name = "xl-channel", long_about = xl::LONG_ABOUT, after_help = xl::AFTER_HELP)]
    XlChannel(xl::XlChannelArgs),
}

/// `xenchan domain ...`.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Set (create or replace) a domain's desired configuration.
    #[command(after_help = "\
The configuration is either a whole document (--file, JSON, the shape of
docs/PROTOCOL.md, section `The configuration document`: hostname, network
(cloud-init network-config v2), users), or built from the options below (one
interface, one user). The broker validates it, takes its leases (every address, and
the hostname unless disabled) and pushes it to the guest.

Without NAME, --file holds many configurations, sent with the bulk PUT and each
answered on its own: a JSON array of {\"name\", \"uuid\", \"config\"} items (config: the
document above; uuid optional), or such items one per document (JSON Lines, or
objects one after the other). One line per item is printed; the command exits
non-zero (65, or 69 if an item was not attempted or the store failed) when any item
was refused, and names them. Items go --batch at a time (the broker's
limits.max_bulk, 1000 by default).

Examples:
  xenchan domain set web1 --file web1.json
  xenchan domain set web1 --file - < web1.json
  xenchan domain set --file domains.json
  xenchan domain set --file domains.jsonl --batch 500
  xenchan domain set web1 --hostname web1 --mac 00:16:3e:00:00:01 --address 192.0.2.10/24
  xenchan domain set web1 --hostname web1 --ssh-key-file key.pub --user cloud --create-user
  xenchan domain set web1 --file web1.json --uuid 2c1f0a9e-5b7d-4e38-9f43-0e8c7d1b6a20

Exit codes: 0 accepted (every item, with a bulk file); 65 refused (invalid: the
message names the field; lease held by another domain; prepare hook refused); 69
broker unavailable; 74 unreadable file.")]
    Set(Box<SetArgs>),
    /// Show one domain: state, desired vs applied generation, items, facts.
    Get {
        /// The domain (its socket file stem).
        name: String,
    },
    /// List the domains the broker knows (all, or those the filters pass).
    #[command(visible_alias = "ls", after_help = LIST_HELP)]
    List(ListArgs),
    /// Remove a domain's configuration and release its leases (safe to repeat).
    Rm {
        /// The domain.
        name: String,
    },
    /// Print known_hosts lines for the domain from the ssh host keys its agent reported.
    #[command(name = "known-hosts", after_help = known_hosts::AFTER_HELP)]
    KnownHosts {
        /// The domain.
        name: String,
    },
    /// Migration hand-off between hosts (cluster mode, `[store] backend = "etcd"`).
    #[command(subcommand, after_help = MIGRATE_HELP)]
    Migrate(MigrateCommand),
    /// Push the desired configuration again, even if the agent reports it applied.
    Push {
        /// Override the generation order: the agent applies the configuration even if
        /// it applied a later generation from this broker's store (it refused it as
        /// `stale-generation`: a restored store, a stale broker). A deliberate rollback.
        #[arg(long)]
        force: bool,
        /// The domain.
        name: String,
    },
}

const MIGRATE_HELP: &str = "\
Cluster mode only (the broker's [store] backend = \"etcd\", docs/CLUSTER.md); with the
embedded store every step is refused (400 naming store.backend). Run each step on the
DESTINATION host's broker, naming the VM by its UUID. The libvirt hook does this by
itself (`xenchan hook --help`); these commands are for other orchestrators and repairs.
The VM's address and hostname leases stay held throughout: no step takes or gives any.

  prepare   the destination registers as the incoming host while the source still
            owns the domain; the domain shows on the destination (refused, 409, when
            the source does not own it or another destination is prepared)
  complete  ownership moves to the destination (409 when no migration to it is
            prepared); the destination's broker then serves the domain, pushing
            nothing its agent already applied
  cancel    the prepared migration is forgotten; the source keeps the domain

Examples:
  xenchan domain migrate prepare 2c1f0a9e-5b7d-4e38-9f43-0e8c7d1b6a20
  xenchan domain migrate prepare --name web1 2c1f0a9e-5b7d-4e38-9f43-0e8c7d1b6a20
  xenchan domain migrate complete 2c1f0a9e-5b7d-4e38-9f43-0e8c7d1b6a20
  xenchan domain migrate cancel 2c1f0a9e-5b7d-4e38-9f43-0e8c7d1b6a20

Exit codes: 0 done (or done already); 65 refused (the message names the owner or the
pending migration, or the field); 69 broker or etcd unavailable.";

/// `xenchan domain migrate ...`.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// On the destination: register this host as the incoming one; the source keeps
    /// the domain until `complete`.
    Prepare {
        /// The domain's name on this host (default: the name of its desired
        /// configuration in etcd; needed when it has none).
        #[arg(long, value_name = "NAME")]
        name: Option<DomainName>,
        /// The VM's UUID.
        uuid: VmUuid,
    },
    /// On the destination: move ownership here (the VM runs here now).
    Complete {
        /// The VM's UUID.
        uuid: VmUuid,
    },
    /// On the destination: forget the prepared migration; the source keeps the domain.
    Cancel {
        /// The VM's UUID.
        uuid: VmUuid,
    },
}

const LIST_HELP: &str = "\
Read-only callers (group xenchan-ro) may list. With --limit, the list is one page:
the command prints the --cursor of the next page on stderr when there is one.

Examples:
  xenchan domain ls
  xenchan domain ls --state failed
  xenchan domain ls --prefix web --limit 100
  xenchan domain ls --prefix web --limit 100 --cursor web0100";

/// `xenchan domain list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only domains in this state (pending, connecting, handshaking, pushing, configured,
    /// failed, unresponsive, identity-mismatch, version-mismatch, error, idle).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    state: Option<DomainState>,
    /// Only domains whose name starts with this.
    #[arg(long, value_name = "TEXT")]
    prefix: Option<String>,
    /// At most this many domains (one page).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    limit: Option<u64>,
    /// Continue after this name (the cursor the previous page printed).
    #[arg(long, value_name = "NAME")]
    cursor: Option<DomainName>,
}

fn parse_state(s: &str) -> Result<DomainState, String> {
    DomainState::ALL
        .into_iter()
        .find(|d| d.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = DomainState::ALL.iter().map(|d| d.as_str()).collect();
            format!("not a state (one of: {})", all.join(", "))
        })
}

const EVENTS_HELP: &str = "\
Events are listed oldest first, the newest last; each names the API caller that
caused it (uid, command and pid), or `-` for the broker's own doing (results from
guests, start, stop). The broker keeps limits.events_per_domain events per domain
and limits.events in all (docs/BROKER.md). Read-only callers may read them.

Times (--since, --until) are RFC 3339 in UTC (2026-01-02T03:04:05Z) or an age:
30s, 10m, 2h, 7d.

Examples:
  xenchan events
  xenchan events --domain web1 --since 1h
  xenchan events --kind config --limit 500
  xenchan events --domain - --kind start     (the broker's own events)
  xenchan events --follow --domain web1";

/// `xenchan events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this domain's events (`-`: the broker's own).
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Only events of this kind (config, delete, prepare, release, result, error...).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Only events at or after this time (RFC 3339 UTC, or an age: 10m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events before this time (RFC 3339 UTC, or an age).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Show the newest N events that pass the filters.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    /// Older events: the cursor printed after a page.
    #[arg(long, value_name = "CURSOR")]
    cursor: Option<String>,
    /// Keep printing new events as they are recorded (every second) until interrupted.
    #[arg(long, conflicts_with = "cursor")]
    follow: bool,
}

/// A `--since`/`--until` value: an RFC 3339 UTC time, or an age (`30s`, `10m`, `2h`,
/// `7d`) before `now_ms`.
fn instant_arg(flag: &str, v: &str, now_ms: i64) -> Result<String, Failure> {
    let bad = || {
        Failure::new(
            Exit::Usage,
            format!(
                "{flag} `{}`: expected an RFC 3339 UTC time (2026-01-02T03:04:05Z) or an age (30s, 10m, 2h, 7d)",
                v.escape_debug()
            ),
        )
    };
    if let Some(unit) = v.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = v[..v.len() - 1].parse::<i64>()
        && n >= 0
    {
        let per = match unit {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => 86_400_000,
        };
        return Ok(query::instant_from_unix_millis(
            now_ms.saturating_sub(n.saturating_mul(per)),
        ));
    }
    query::normalize_instant(v).map_err(|_| bad())
}

/// `xenchan domain set`. Every option parses into the protocol crate's typed field, so a
/// bad value is refused with the option's name before anything is sent.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The domain (its socket file stem, e.g. web1 for web1.sock). Without it, --file
    /// holds many configurations, each naming its domain.
    #[arg(required_unless_present = "file")]
    name: Option<DomainName>,

    /// The VM's UUID; the agent must report the same one or nothing is pushed.
    #[arg(long, value_name = "UUID", requires = "name")]
    uuid: Option<VmUuid>,

    /// Items per bulk request (a file of many configurations, without NAME).
    #[arg(long, value_name = "N", default_value_t = bulk::DEFAULT_BATCH,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,

    /// A whole configuration document (JSON), or without NAME a file of many (see
    /// below); `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with_all = [
        "hostname", "mac", "address", "gateway", "dns", "search", "mtu", "dhcp4",
        "ssh_key_file", "create_user"
    ])]
    file: Option<PathBuf>,

    /// Host name (FQDN allowed).
    #[arg(long, value_name = "NAME")]
    hostname: Option<Hostname>,

    /// Interface label in the document.
    #[arg(long, default_value = "eth0", value_name = "ID")]
    interface: InterfaceId,

    /// MAC of the interface (needed for any network option; Xen vifs start 00:16:3e).
    #[arg(long, value_name = "MAC")]
    mac: Option<MacAddr>,

    /// Static address in CIDR form; repeat for several.
    #[arg(long, value_name = "CIDR")]
    address: Vec<Cidr>,

    /// Default gateway (adds a `to: default` route).
    #[arg(long, value_name = "IP")]
    gateway: Vec<IpAddr>,

    /// DNS server; repeat for several.
    #[arg(long, value_name = "IP")]
    dns: Vec<IpAddr>,

    /// DNS search domain; repeat for several.
    #[arg(long, value_name = "DOMAIN")]
    search: Vec<SearchDomain>,

    /// Link MTU.
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,

    /// Use DHCP for IPv4 on the interface.
    #[arg(long)]
    dhcp4: bool,

    /// The user whose authorized_keys receive --ssh-key-file keys.
    #[arg(long, default_value = "cloud", value_name = "NAME")]
    user: UserName,

    /// File of OpenSSH public keys, one per line (# comments allowed); repeatable.
    #[arg(long, value_name = "FILE")]
    ssh_key_file: Vec<PathBuf>,

    /// Create the user in the guest if it does not exist.
    #[arg(long)]
    create_user: bool,
}

/// A failure with its exit code.
struct Failure {
    code: Exit,
    message: String,
}

impl Failure {
    fn new(code: Exit, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unavailable { .. } | ClientError::Timeout(_) => Exit::Unavailable,
            ClientError::PathTooLong(_) => Exit::Config,
            ClientError::Api { status, .. } if *status >= 500 || *status == 408 => {
                Exit::Unavailable
            }
            ClientError::Api { status: 403, .. } => Exit::NoPerm,
            ClientError::Api { .. } => Exit::DataErr,
            ClientError::Http(_) | ClientError::Decode { .. } | ClientError::TooLarge => {
                Exit::IoErr
            }
        };
        let mut message = chain(&e);
        if let ClientError::Api { error, .. } = &e {
            for fe in &error.errors {
                let _ = write!(message, "\n  {}: {}", fe.path, fe.message);
            }
            if error.errors.is_empty()
                && let Some(p) = &error.path
            {
                let _ = write!(message, "\n  at: {p}");
            }
        }
        if matches!(e, ClientError::Unavailable { .. }) {
            message.push_str(
                "\n  is xenchan-broker running? (--socket or XENCHAN_SOCKET choose the socket)",
            );
        }
        Failure::new(code, message)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, Failure> {
    read_bounded_to(path, MAX_INPUT)
}

/// Sends `items` with the bulk PUT, `batch` per request, and prints each one's answer
/// (or, with `--json`, every result as one document). Fails naming the refused items.
async fn set_many(
    client: &Client,
    json: bool,
    out: &mut dyn Write,
    items: Vec<serde_json::Value>,
    batch: usize,
) -> Result<(), Failure> {
    let total = items.len();
    let mut all = BulkResult {
        succeeded: 0,
        failed: 0,
        results: Vec::with_capacity(total),
    };
    let mut start = 0;
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<serde_json::Value> = rest.by_ref().take(batch).collect();
        let n = chunk.len();
        let body = serde_json::to_vec(&chunk).expect("JSON values serialise");
        let res = client.put_configs_json(body).await.map_err(|e| {
            let mut f = Failure::from(e);
            if start > 0 {
                let _ = write!(
                    f.message,
                    "\n  items 0-{} were sent and answered above; {} were not sent",
                    start - 1,
                    total - start
                );
            }
            f
        })?;
        for mut r in res.results {
            r.index += start;
            if !json {
                bulk::print_result(out, &r).map_err(out_err)?;
            }
            all.results.push(r);
        }
        all.succeeded += res.succeeded;
        all.failed += res.failed;
        start += n;
    }
    if json {
        print_json(out, &all)?;
    }
    let refused = bulk::refused_names(&all.results);
    if refused.is_empty() {
        return Ok(());
    }
    let retry = all
        .results
        .iter()
        .any(|r| !r.ok() && (r.status >= 500 || r.status == 408));
    let code = if retry {
        Exit::Unavailable
    } else {
        Exit::DataErr
    };
    Err(Failure::new(
        code,
        format!(
            "{} of {total} configurations refused: {}",
            refused.len(),
            refused.join(", ")
        ),
    ))
}

fn read_bounded_to(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    let io = |e: std::io::Error| {
        Failure::new(Exit::IoErr, format!("cannot read {}: {e}", path.display()))
    };
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
    } else {
        std::fs::File::open(path)
            .map_err(io)?
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
    }
    if buf.len() as u64 > max {
        return Err(Failure::new(
            Exit::DataErr,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// Builds a document from the `set` options (the values are typed already; this adds
/// the rules between options and the ssh keys read from files).
fn document_from_flags(a: &SetArgs) -> Result<GuestConfig, Failure> {
    let mut doc = GuestConfig {
        hostname: a.hostname.clone(),
        ..GuestConfig::default()
    };
    let wants_net = !a.address.is_empty()
        || !a.gateway.is_empty()
        || !a.dns.is_empty()
        || !a.search.is_empty()
        || a.mtu.is_some()
        || a.dhcp4;
    if wants_net {
        let Some(mac) = &a.mac else {
            return Err(Failure::new(
                Exit::Usage,
                "network options need --mac: interfaces are matched by MAC address",
            ));
        };
        let nameservers = (!a.dns.is_empty() || !a.search.is_empty()).then(|| Nameservers {
            addresses: a.dns.clone(),
            search: a.search.clone(),
        });
        let eth = Ethernet {
            matches: Match {
                macaddress: mac.clone(),
            },
            dhcp4: a.dhcp4,
            dhcp6: false,
            addresses: a.address.clone(),
            routes: a
                .gateway
                .iter()
                .map(|via| Route {
                    to: RouteTarget::Default,
                    via: *via,
                    metric: None,
                })
                .collect(),
            gateway4: None,
            gateway6: None,
            nameservers,
            mtu: a.mtu,
        };
        doc.network = Some(Network {
            version: 2,
            renderer: None,
            ethernets: [(a.interface.clone(), eth)].into(),
        });
    } else if a.mac.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            "--mac needs a network option (--address, --dhcp4, --gateway, --dns, --search or --mtu)",
        ));
    }
    if !a.ssh_key_file.is_empty() || a.create_user {
        let mut keys = Vec::new();
        for f in &a.ssh_key_file {
            keys.extend(ssh_keys(f, &read_bounded(f)?)?);
        }
        doc.users.push(User {
            name: a.user.clone(),
            ssh_authorized_keys: keys,
            create: a.create_user,
            groups: Vec::new(),
            shell: None,
            sudo: None,
            hashed_passwd: None,
            lock_passwd: None,
            plain_text_passwd: None,
            run: RunPolicy::default(),
        });
    }
    if doc == GuestConfig::default() {
        return Err(Failure::new(
            Exit::Usage,
            "nothing to set: give --file, or at least one of --hostname, --address/--dhcp4 with --mac, --ssh-key-file",
        ));
    }
    // The rules between fields (MTU against IPv6, duplicate addresses...), with the
    // field's path, before anything is sent.
    doc.validate().map_err(invalid_document)?;
    Ok(doc)
}

/// The keys of an authorized_keys-style file: one per line, blank lines and `#` comments
/// skipped; a bad line is named by file and line number.
fn ssh_keys(file: &Path, text: &[u8]) -> Result<Vec<SshKey>, Failure> {
    let text = std::str::from_utf8(text).map_err(|_| {
        Failure::new(
            Exit::DataErr,
            format!("{} is not UTF-8 text", file.display()),
        )
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.parse::<SshKey>().map_err(|reason| {
            Failure::new(
                Exit::DataErr,
                format!(
                    "{}:{}: not an ssh public key: {reason}",
                    file.display(),
                    n + 1
                ),
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// A refused document, every field with its path.
#[allow(clippy::needless_pass_by_value)] // used as map_err(invalid_document)
fn invalid_document(e: ConfigError) -> Failure {
    let mut msg = format!("invalid configuration: {e}");
    for fe in &e.errors {
        let _ = write!(msg, "\n  {}: {}", fe.path, fe.message);
    }
    Failure::new(Exit::DataErr, msg)
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).expect("API types serialise");
    writeln!(out, "{text}")
        .map_err(|e| Failure::new(Exit::IoErr, format!("cannot write output: {e}")))
}

#[allow(clippy::needless_pass_by_value)] // used as map_err(out_err)
fn out_err(e: std::io::Error) -> Failure {
    Failure::new(Exit::IoErr, format!("cannot write output: {e}"))
}

async fn run_domain(client: &Client, json: bool, cmd: DomainCommand) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DomainCommand::Set(a) if a.name.is_none() => {
            let file = a
                .file
                .as_deref()
                .expect("clap requires --file without NAME");
            let bytes = read_bounded_to(file, MAX_BULK_INPUT)?;
            let items = bulk::read_items(&bytes)
                .map_err(|e| Failure::new(Exit::DataErr, format!("{}: {e}", file.display())))?;
            let batch = usize::try_from(a.batch).unwrap_or(usize::MAX);
            set_many(client, json, &mut out, items, batch).await?;
        }
        DomainCommand::Set(a) => {
            // Parsed and validated here first (the same rules as the broker): the message
            // names the field even when the broker is unreachable.
            let config = if let Some(f) = &a.file {
                GuestConfig::from_json(&read_bounded(f)?).map_err(invalid_document)?
            } else {
                document_from_flags(&a)?
            };
            let name = a.name.as_ref().expect("matched above").as_str();
            let before = client.get_domain(name).await.ok();
            let v = client
                .put_config(name, &config, a.uuid.as_ref().map(VmUuid::as_str))
                .await?;
            if json {
                print_json(&mut out, &v)?;
            } else {
                let what = match (&before, before.as_ref().and_then(|b| b.desired_generation)) {
                    (_, Some(g)) if Some(g) == v.desired_generation => "unchanged",
                    (_, Some(_)) => "updated",
                    _ => "created",
                };
                writeln!(
                    out,
                    "{}: configuration {what}, generation {} ({})",
                    v.name,
                    v.desired_generation.unwrap_or(0),
                    v.state
                )
                .map_err(out_err)?;
            }
        }
        DomainCommand::Get { name } => {
            let v = client.get_domain(&name).await?;
            if json {
                print_json(&mut out, &v)?;
            } else {
                output::domain(&mut out, &v).map_err(out_err)?;
            }
        }
        DomainCommand::List(a) => {
            let q = DomainQuery {
                state: a.state,
                prefix: a.prefix,
                limit: a.limit.map(|n| n as usize),
                cursor: a.cursor.map(|c| c.as_str().to_string()),
            };
            let page = client.list_page(&q).await?;
            if json {
                print_json(&mut out, &page.domains)?;
            } else {
                output::domain_table(&mut out, &page.domains).map_err(out_err)?;
            }
            if let Some(next) = &page.next_cursor {
                eprintln!("xenchan: more domains follow: --cursor {next}");
            }
        }
        DomainCommand::Rm { name } => {
            let r = client.delete(&name).await?;
            if json {
                print_json(&mut out, &r)?;
            } else if r.removed {
                let released = if r.released.is_empty() {
                    "no leases".to_string()
                } else {
                    r.released.join(", ")
                };
                writeln!(
                    out,
                    "{}: configuration removed; released {released}",
                    r.name
                )
                .map_err(out_err)?;
            } else {
                writeln!(out, "{}: had no configuration (nothing to do)", r.name)
                    .map_err(out_err)?;
            }
        }
        DomainCommand::KnownHosts { name } => {
            let v = client.get_domain(&name).await?;
            let kh = known_hosts::render(v.config.as_ref(), v.facts.as_ref());
            for s in &kh.skipped {
                eprintln!("xenchan: {name}: left out {s}");
            }
            if kh.lines.is_empty() {
                return Err(Failure::new(
                    Exit::DataErr,
                    format!(
                        "{name}: no usable ssh host key reported by the guest (no sshd, an older agent, or not connected since its first boot)"
                    ),
                ));
            }
            for l in &kh.lines {
                writeln!(out, "{l}").map_err(out_err)?;
            }
        }
        DomainCommand::Migrate(m) => {
            let (step, v) = match m {
                MigrateCommand::Prepare { name, uuid } => {
                    let req = MigratePrepareRequest {
                        name: name.map(|n| n.as_str().to_string()),
                    };
                    (
                        "prepare",
                        client.migrate_prepare(uuid.as_str(), &req).await?,
                    )
                }
                MigrateCommand::Complete { uuid } => {
                    ("complete", client.migrate_complete(uuid.as_str()).await?)
                }
                MigrateCommand::Cancel { uuid } => {
                    ("cancel", client.migrate_cancel(uuid.as_str()).await?)
                }
            };
            if json {
                print_json(&mut out, &v)?;
            } else {
                writeln!(
                    out,
                    "{} ({}): migrate {step} {}; owner {}, incoming {}",
                    v.name.as_deref().unwrap_or("-"),
                    v.uuid,
                    if v.changed {
                        "done"
                    } else {
                        "was done already"
                    },
                    v.owner.as_deref().unwrap_or("none"),
                    v.incoming.as_deref().unwrap_or("none"),
                )
                .map_err(out_err)?;
            }
        }
        DomainCommand::Push { name, force } => {
            let v = if force {
                client.push_force(&name).await?
            } else {
                client.push(&name).await?
            };
            if json {
                print_json(&mut out, &v)?;
            } else {
                let when = if v.connected {
                    "now"
                } else {
                    "when the agent connects"
                };
                writeln!(
                    out,
                    "{}: {}re-push of generation {} requested ({when})",
                    v.name,
                    if force { "forced " } else { "" },
                    v.desired_generation.unwrap_or(0)
                )
                .map_err(out_err)?;
            }
        }
    }
    Ok(())
}

async fn run_events(client: &Client, json: bool, a: EventsArgs) -> Result<(), Failure> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut q = EventQuery {
        domain: a.domain,
        kind: a.kind,
        since: a
            .since
            .as_deref()
            .map(|v| instant_arg("--since", v, now_ms))
            .transpose()?,
        until: a
            .until
            .as_deref()
            .map(|v| instant_arg("--until", v, now_ms))
            .transpose()?,
        limit: Some(a.limit as usize),
        cursor: a.cursor,
    };
    let mut out = std::io::stdout().lock();
    let page = client.events(&q).await?;
    if json && !a.follow {
        return print_json(&mut out, &page);
    }
    let print = |out: &mut dyn Write, events: &[xenchan_api::types::EventView], header: bool| {
        if json {
            // One event per line, oldest first (JSON lines, for tools that follow).
            for e in events.iter().rev() {
                let line = serde_json::to_string(e).expect("API types serialise");
                writeln!(out, "{line}").map_err(out_err)?;
            }
            Ok(())
        } else {
            output::event_table(out, events, header).map_err(out_err)
        }
    };
    print(&mut out, &page.events, !a.follow || !page.events.is_empty())?;
    if !a.follow {
        if let Some(next) = &page.next_cursor {
            eprintln!("xenchan: older events: --cursor {next}");
        }
        return Ok(());
    }
    out.flush().map_err(out_err)?;
    // Follow: ask for what is newer than the last event seen, every second. The log
    // is newest first, so a burst of more than a page between two polls is read page by
    // page back to the last one seen.
    let mut last = page.events.first().map_or(0, |e| e.id);
    q.limit = Some(query::MAX_EVENT_LIMIT);
    q.since = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut fresh = Vec::new();
        q.cursor = None;
        loop {
            let p = client.events(&q).await?;
            let done = p.next_cursor.is_none() || p.events.iter().any(|e| e.id <= last);
            fresh.extend(p.events.into_iter().filter(|e| e.id > last));
            if done {
                break;
            }
            q.cursor = p.next_cursor;
        }
        if let Some(newest) = fresh.first() {
            last = newest.id;
            print(&mut out, &fresh, false)?;
            out.flush().map_err(out_err)?;
        }
    }
}

async fn run_status(client: &Client, json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let health = client.health().await?;
    if json {
        return print_json(&mut out, &health);
    }
    let list = client.list().await?;
    output::status(&mut out, &health, &list).map_err(out_err)
}

/// The `xenchan` binary: parses the command line, runs the command, prints errors on
/// stderr and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hook(args) => return hook::run(&cli.socket, &args),
        Command::XlChannel(args) => match xl::channel_line(&args) {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                match out.write_all(text.as_bytes()) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(out_err(e)),
                }
            }
            Err(e) => Err(Failure::new(Exit::Usage, e.to_string())),
        },
        Command::Registry(cmd) => {
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            match xenchan_registry::cli::run(cmd, &cli.registry_dir, &mut out, &mut err) {
                Ok(code) => return ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("xenchan: {}", chain(&e));
                    return ExitCode::from(e.exit_code() as u8);
                }
            }
        }
        cmd => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("xenchan: cannot start the async runtime: {e}");
                    return Exit::IoErr.into();
                }
            };
            let client =
                Client::new(&cli.socket).with_timeout(Duration::from_secs(cli.timeout.max(1)));
            rt.block_on(async {
                match cmd {
                    Command::Domain(d) => run_domain(&client, cli.json, *d).await,
                    Command::Status => run_status(&client, cli.json).await,
                    Command::Events(a) => run_events(&client, cli.json, a).await,
                    Command::Registry(_) | Command::Hook(_) | Command::XlChannel(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    };
    match result {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            eprintln!("xenchan: {}", f.message);
            f.code.into()
        }
    }
}
