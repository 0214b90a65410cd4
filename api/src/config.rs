//! The broker's configuration file (`/etc/xenchan/broker.toml`): its schema, defaults and
//! validation. It lives in the API crate because it is a contract between programs: the
//! broker reads it, the simulator and tests write it, and none of them should need the
//! daemon's store or HTTP server to do so. The broker re-exports it as
//! `xenchan_broker::config` and adds what needs the host (xenstore locations).
//!
//! Every key is optional; unknown keys are refused with their name so that a typo never
//! silently falls back to a default. Every path and every limit the broker uses is here,
//! so tests run the broker in temporary folders with short timeouts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::defaults;
use crate::paths::{MAX_SOCKET_PATH, check_socket_path};
pub use crate::store_config::{Backend, StoreConfig, StoreTimeouts, check_store};

pub use crate::defaults::CONFIG_FILE as DEFAULT_CONFIG_PATH;

/// How the broker reaches each domain's channel socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The backend (QEMU) listens on `<socket_dir>/<vm>.sock`; the broker connects.
    Connect,
    /// The broker listens on `<socket_dir>/<vm>.sock` for each configured domain; the
    /// backend connects to it.
    Listen,
}

/// How the broker finds the domains' channel sockets (connect mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// `<socket_dir>/<vm>.sock` files, watched with inotify.
    SocketDir,
    /// The console backends in xenstore (`/local/domain/0/backend/console`): a backend
    /// with the broker's channel name and `connection=socket` gives the socket path; the
    /// domain's name and UUID come from its xenstore nodes.
    Xenstore,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder of `<vm>.sock` channel sockets.
    pub socket_dir: PathBuf,
    /// The control API's unix socket.
    pub control_socket: PathBuf,
    /// Folder of the SQLite store and the lock file.
    pub state_dir: PathBuf,
    /// Folder of hook executables.
    pub hooks_dir: PathBuf,
    /// Folder of local channel-name registry entries (checked at start).
    pub registry_dir: PathBuf,
    /// The channel name the broker announces in its hello.
    pub channel: String,
    /// Connect (QEMU listens) or listen (the backend connects).
    pub mode: Mode,
    /// Where the domains' sockets are found (connect mode).
    pub discovery: Discovery,
    /// The xenstore socket or device (`discovery = "xenstore"`). Unset: libxenstore's
    /// rules (the broker's `xenstore_candidates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xenstore_path: Option<PathBuf>,
    /// Deadlines, in milliseconds.
    pub timeouts: Timeouts,
    /// Size and count bounds.
    pub limits: Limits,
    /// What counts as a lease besides addresses.
    pub leases: Leases,
    /// Who may call the control API (roles by group).
    pub control: Control,
    /// Which backend keeps the broker's state (`[store]`: SQLite, or etcd in cluster mode).
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket_dir: PathBuf::from(defaults::SOCKET_DIR),
            control_socket: PathBuf::from(defaults::CONTROL_SOCKET),
            state_dir: PathBuf::from(defaults::STATE_DIR),
            hooks_dir: PathBuf::from(defaults::HOOKS_DIR),
            // The registry crate owns this default (`DEFAULT_REGISTRY_DIR`).
            registry_dir: PathBuf::from("/etc/xenchan/registry.d"),
            channel: xenchan_protocol::DEFAULT_CHANNEL.to_string(),
            mode: Mode::Connect,
            discovery: Discovery::SocketDir,
            xenstore_path: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            leases: Leases::default(),
            control: Control::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Deadlines in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a domain's socket.
    pub connect: u64,
    /// From our hello to the agent's answer (also bounds writing our hello).
    pub hello: u64,
    /// From the moment the backend has taken a push's last byte to its result.
    pub result: u64,
    /// Writing a push: from its first byte until the backend (QEMU) has taken the last
    /// one, which the guest's pace sets (its console ring is 1 KiB). A guest that has not
    /// taken the whole frame by then is given up on; the session reconnects.
    pub write: u64,
    /// Interval between pings; three unanswered ones mark the guest unresponsive.
    pub keepalive: u64,
    /// One hook run; the hook is killed past it.
    pub hook: u64,
    /// First reconnect delay (doubles up to `reconnect_max`, with jitter).
    pub reconnect_min: u64,
    /// Largest reconnect delay.
    pub reconnect_max: u64,
    /// One control-API request, body included.
    pub request: u64,
    /// Sessions' goodbye at shutdown.
    pub shutdown: u64,
    /// Connecting to xenstore, and each xenstore request (`discovery = "xenstore"`).
    pub xenstore: u64,
    /// The guest's facts are written to the store at most once per this interval per
    /// domain; the latest report inside an interval is written when it ends.
    pub facts: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: 2000,
            hello: 10_000,
            result: 30_000,
            write: 60_000,
            keepalive: 15_000,
            // hook < request < the libvirt hook's deadline: see check_deadline_order.
            hook: 5000,
            reconnect_min: 200,
            reconnect_max: 10_000,
            request: 8000,
            shutdown: 2000,
            xenstore: 5000,
            facts: 5000,
        }
    }
}

/// The libvirt hook's (`xenchan hook`) default deadline, in milliseconds: the `deadline`
/// of `/etc/xenchan/hook.toml` (there in seconds) when it is not set.
pub const LIBVIRT_HOOK_DEADLINE_MS: u64 = 10_000;

/// Checks that the deadlines nest: one broker hook run (`timeouts.hook`) ends before the
/// API request that waits for it (`timeouts.request`), which ends before the libvirt hook
/// gives up on the broker ([`LIBVIRT_HOOK_DEADLINE_MS`]). Out of order, a slow refusing
/// `prepare` hook is cut off by the outer deadline first: the caller gets a timeout
/// instead of the hook's message, and the libvirt hook (which treats an unreachable
/// broker as "go on") lets the VM start unregistered. The broker calls this at start-up.
///
/// # Errors
/// A sentence naming the two keys that are out of order and their values.
pub fn check_deadline_order(config: &Config) -> Result<(), String> {
    deadline_order(
        config.timeouts.hook,
        config.timeouts.request,
        LIBVIRT_HOOK_DEADLINE_MS,
    )
}

/// [`check_deadline_order`] on plain values (milliseconds), for any libvirt hook deadline.
///
/// # Errors
/// As [`check_deadline_order`].
pub fn deadline_order(hook: u64, request: u64, libvirt_hook: u64) -> Result<(), String> {
    if hook >= request {
        return Err(format!(
            "timeouts.hook ({hook} ms) must be below timeouts.request ({request} ms): \
             otherwise a slow prepare hook is cut off by the API request's timeout and the \
             caller never sees the hook's answer"
        ));
    }
    if request >= libvirt_hook {
        return Err(format!(
            "timeouts.request ({request} ms) must be below the libvirt hook's deadline \
             ({libvirt_hook} ms, `deadline` in /etc/xenchan/hook.toml): otherwise the \
             libvirt hook gives up first and lets the VM start unregistered"
        ));
    }
    Ok(())
}

/// A millisecond value as a [`Duration`].
fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Timeouts {
    /// `connect` as a duration.
    pub fn connect(&self) -> Duration {
        ms(self.connect)
    }
    /// `hello` as a duration.
    pub fn hello(&self) -> Duration {
        ms(self.hello)
    }
    /// `result` as a duration.
    pub fn result(&self) -> Duration {
        ms(self.result)
    }
    /// `write` as a duration.
    pub fn write(&self) -> Duration {
        ms(self.write)
    }
    /// `keepalive` as a duration.
    pub fn keepalive(&self) -> Duration {
        ms(self.keepalive)
    }
    /// `hook` as a duration.
    pub fn hook(&self) -> Duration {
        ms(self.hook)
    }
    /// `reconnect_min` as a duration.
    pub fn reconnect_min(&self) -> Duration {
        ms(self.reconnect_min)
    }
    /// `reconnect_max` as a duration.
    pub fn reconnect_max(&self) -> Duration {
        ms(self.reconnect_max)
    }
    /// `request` as a duration.
    pub fn request(&self) -> Duration {
        ms(self.request)
    }
    /// `shutdown` as a duration.
    pub fn shutdown(&self) -> Duration {
        ms(self.shutdown)
    }
    /// `xenstore` as a duration.
    pub fn xenstore(&self) -> Duration {
        ms(self.xenstore)
    }
    /// `facts` as a duration.
    pub fn facts(&self) -> Duration {
        ms(self.facts)
    }
}

/// Size and count bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest protocol frame, in bytes (a pushed config must fit in one).
    pub max_frame: usize,
    /// Most domains the broker manages (configured or with a socket).
    pub max_domains: usize,
    /// Largest control-API request body, in bytes.
    pub max_body: usize,
    /// Most configurations in one bulk PUT (`PUT /v1/domains`).
    pub max_bulk: usize,
    /// Largest bulk PUT body, in bytes (each configuration in it still fits in one
    /// protocol frame, `max_frame`).
    pub max_bulk_body: usize,
    /// Largest control-API request head (request line and headers), in bytes.
    pub max_header: usize,
    /// Most control-API connections served at once.
    pub max_connections: usize,
    /// Bytes of a hook's stderr kept (for logs and API errors).
    pub hook_stderr: usize,
    /// Older configurations kept per domain in the generation history.
    pub history: usize,
    /// Rows kept in the event log, all domains together. Past it, the domains with the
    /// most events lose their oldest first (a quiet domain keeps its history).
    pub events: usize,
    /// Rows kept in the event log per domain (broker-wide events count as one domain;
    /// at most `events`): a noisy domain drops its own oldest events, never another's.
    pub events_per_domain: usize,
    /// Hook runs waiting for the background hook runner, all domains together. Past it,
    /// the domain with the most queued runs loses its oldest (counted per domain).
    pub hook_queue: usize,
    /// Hook runs waiting per domain; a domain past it drops its own oldest run (counted),
    /// never another domain's.
    pub hook_queue_per_domain: usize,
    /// Per-domain budgets (docs/BROKER.md, "Budgets"): a domain may make the broker
    /// handle at most `<budget>_burst + <budget>_per_sec × t` of each in any span `t`;
    /// past it its socket is not read until the bucket refills (it is `throttled`).
    /// Frames read from the guest, per second.
    pub frames_per_sec: u32,
    /// Frames read from the guest, in a burst.
    pub frames_burst: u32,
    /// Store writes a guest's frames cause (hello, result, facts), per second.
    pub writes_per_sec: u32,
    /// Store writes, in a burst.
    pub writes_burst: u32,
    /// Configurations pushed, per second.
    pub pushes_per_sec: u32,
    /// Configurations pushed, in a burst.
    pub pushes_burst: u32,
    /// Notification hook runs, per second.
    pub hooks_per_sec: u32,
    /// Notification hook runs, in a burst.
    pub hooks_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: xenchan_protocol::MAX_FRAME_DEFAULT,
            max_domains: 20_000,
            max_body: 1024 * 1024,
            max_bulk: 1000,
            max_bulk_body: 16 * 1024 * 1024,
            max_header: 16 * 1024,
            max_connections: 64,
            hook_stderr: 4096,
            history: 20,
            events: 100_000,
            events_per_domain: 1000,
            hook_queue: 1024,
            hook_queue_per_domain: 32,
            frames_per_sec: 50,
            frames_burst: 200,
            writes_per_sec: 10,
            writes_burst: 50,
            pushes_per_sec: 2,
            pushes_burst: 10,
            hooks_per_sec: 2,
            hooks_burst: 20,
        }
    }
}

impl Limits {
    /// The per-domain event bound in effect: `events_per_domain`, at most `events`.
    pub fn events_per_domain(&self) -> usize {
        self.events_per_domain.min(self.events)
    }
}

/// What is leased to one domain at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Leases {
    /// A hostname is a lease too (addresses always are).
    pub hostname: bool,
}

impl Default for Leases {
    fn default() -> Self {
        Leases { hostname: true }
    }
}

/// Roles on the control socket (docs/API.md, "Roles"). The broker reads the caller's
/// uid, gid and pid from the connection (`SO_PEERCRED`) and its supplementary groups from
/// the process (or the group database); root and the broker's own user are operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Members may make every call.
    pub operator_group: String,
    /// Members may make GET calls (domains, events, health, metrics).
    pub read_only_group: String,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            operator_group: defaults::OPERATOR_GROUP.to_string(),
            read_only_group: defaults::READ_ONLY_GROUP.to_string(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The key, dotted (`timeouts.hello`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigFileError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigFileError::Parse {
            path: origin.to_path_buf(),
            message: e.message().to_string() + &span_hint(text, e.span()),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks values that serde cannot: ranges, path lengths, relations.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigFileError> {
        let bad = |key: &str, message: String| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key: key.to_string(),
            message,
        };
        for (key, p) in [
            ("socket_dir", Some(&self.socket_dir)),
            ("control_socket", Some(&self.control_socket)),
            ("state_dir", Some(&self.state_dir)),
            ("hooks_dir", Some(&self.hooks_dir)),
            ("registry_dir", Some(&self.registry_dir)),
            ("xenstore_path", self.xenstore_path.as_ref()),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(bad(key, format!("{} is not an absolute path", p.display())));
            }
        }
        if self.discovery == Discovery::Xenstore && self.mode == Mode::Listen {
            return Err(bad(
                "discovery",
                "`xenstore` finds the sockets QEMU listens on, so it needs mode = \"connect\""
                    .into(),
            ));
        }
        check_socket_path(&self.control_socket).map_err(|e| bad("control_socket", e))?;
        // The shortest possible domain socket must fit; longer names are refused one by
        // one with a clear error when they show up.
        let shortest = self.socket_dir.join("x.sock");
        if shortest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(bad(
                "socket_dir",
                format!(
                    "{} is too long: even `x.sock` in it exceeds the {MAX_SOCKET_PATH}-byte unix socket path limit",
                    self.socket_dir.display()
                ),
            ));
        }
        if self.channel.is_empty()
            || self.channel.len() > 255
            || self
                .channel
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '/')
        {
            return Err(bad(
                "channel",
                format!(
                    "`{}` is not a usable channel name (1-255 characters, no whitespace, control characters or `/`)",
                    self.channel.escape_debug()
                ),
            ));
        }
        let t = &self.timeouts;
        for (key, v) in [
            ("timeouts.connect", t.connect),
            ("timeouts.hello", t.hello),
            ("timeouts.result", t.result),
            ("timeouts.write", t.write),
            ("timeouts.keepalive", t.keepalive),
            ("timeouts.hook", t.hook),
            ("timeouts.reconnect_min", t.reconnect_min),
            ("timeouts.reconnect_max", t.reconnect_max),
            ("timeouts.request", t.request),
            ("timeouts.xenstore", t.xenstore),
            ("timeouts.facts", t.facts),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1 millisecond".into()));
            }
            if v > 24 * 3600 * 1000 {
                return Err(bad(key, format!("{v} ms is more than a day")));
            }
        }
        if t.reconnect_max < t.reconnect_min {
            return Err(bad(
                "timeouts.reconnect_max",
                format!(
                    "{} is below timeouts.reconnect_min ({})",
                    t.reconnect_max, t.reconnect_min
                ),
            ));
        }
        let l = &self.limits;
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(key, format!("{v} is out of range {lo}-{hi}")))
            }
        };
        range("limits.max_frame", l.max_frame, 1024, 16 * 1024 * 1024)?;
        range("limits.max_domains", l.max_domains, 1, 1_000_000)?;
        range("limits.max_body", l.max_body, 1024, 64 * 1024 * 1024)?;
        range("limits.max_bulk", l.max_bulk, 1, 100_000)?;
        range(
            "limits.max_bulk_body",
            l.max_bulk_body,
            1024,
            256 * 1024 * 1024,
        )?;
        range("limits.max_header", l.max_header, 8192, 1024 * 1024)?;
        range("limits.max_connections", l.max_connections, 1, 65_536)?;
        range("limits.hook_stderr", l.hook_stderr, 64, 1024 * 1024)?;
        range("limits.history", l.history, 1, 100_000)?;
        range("limits.events", l.events, 100, 100_000_000)?;
        range(
            "limits.events_per_domain",
            l.events_per_domain,
            10,
            100_000_000,
        )?;
        range("limits.hook_queue", l.hook_queue, 1, 1_000_000)?;
        for (key, g) in [
            ("control.operator_group", &self.control.operator_group),
            ("control.read_only_group", &self.control.read_only_group),
        ] {
            if g.is_empty()
                || g.len() > 64
                || g.chars()
                    .any(|c| c.is_control() || c == ':' || c.is_whitespace())
            {
                return Err(bad(
                    key,
                    format!("`{}` is not a group name", g.escape_debug()),
                ));
            }
        }
        check_store(&self.store, t.request).map_err(|(key, message)| bad(&key, message))?;
        Ok(())
    }

    /// The effective configuration as TOML (for `--check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serialises")
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("broker.db")
    }

    /// The lock file that keeps a second broker off the same state folder.
    pub fn lock_path(&self) -> PathBuf {
        self.state_dir.join("broker.lock")
    }

    /// The channel socket of domain `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }
}

/// ` (line L)` for a parse error's span, to point at the key in the file.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line = text
        .get(..span.start)
        .map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count())
        + 1;
    let mut s = String::new();
    let _ = write!(s, " (line {line})");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigFileError> {
        Config::parse(text, Path::new("broker.toml"))
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket_dir, Path::new("/run/xenchan/sockets"));
        assert_eq!(c.timeouts.keepalive, 15_000);
        assert_eq!(c.limits.max_frame, 65_536);
        assert!(c.leases.hostname);
        assert_eq!(c.mode, Mode::Connect);
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
socket_dir = "/tmp/s"
control_socket = "/tmp/b.sock"
state_dir = "/tmp/state"
hooks_dir = "/tmp/hooks"
channel = "org.example.agent.1"
mode = "listen"
discovery = "socket-dir"
[timeouts]
connect = 1
hello = 2
write = 3
reconnect_min = 5
reconnect_max = 5
[limits]
max_frame = 4096
[leases]
hostname = false
"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Listen);
        assert_eq!(c.timeouts.hello(), Duration::from_millis(2));
        assert_eq!(c.timeouts.write(), Duration::from_millis(3));
        assert_eq!(c.timeouts.result, 30_000);
        assert!(!c.leases.hostname);
        assert_eq!(c.limits.max_frame, 4096);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse("sockets_dir = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("sockets_dir"), "{e}");
        let e = parse("[timeouts]\nhelo = 3\n").unwrap_err().to_string();
        assert!(e.contains("helo"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse("[timeouts]\nhello = 0").unwrap_err().to_string();
        assert!(e.contains("timeouts.hello"), "{e}");
        let e = parse("state_dir = \"relative\"").unwrap_err().to_string();
        assert!(e.contains("state_dir"), "{e}");
        let e = parse("mode = \"both\"").unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        let e = parse("[timeouts]\nreconnect_min = 10\nreconnect_max = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reconnect_max"), "{e}");
    }

    #[test]
    fn xenstore_discovery_keys() {
        let c = parse("discovery = \"xenstore\"\nxenstore_path = \"/tmp/xs.sock\"\n[timeouts]\nxenstore = 700")
            .unwrap();
        assert_eq!(c.discovery, Discovery::Xenstore);
        assert_eq!(c.xenstore_path, Some(PathBuf::from("/tmp/xs.sock")));
        assert_eq!(c.timeouts.xenstore(), Duration::from_millis(700));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let e = parse("discovery = \"xenstore\"\nmode = \"listen\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`discovery`") && e.contains("connect"), "{e}");
        let e = parse("xenstore_path = \"xs.sock\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xenstore_path"), "{e}");
        let e = parse("discovery = \"inotify\"").unwrap_err().to_string();
        assert!(e.contains("inotify"), "{e}");
    }

    #[test]
    fn over_long_socket_paths_are_refused() {
        let long = format!("/{}", "d".repeat(120));
        let e = parse(&format!("control_socket = \"{long}/b.sock\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("control_socket") && e.contains("108"), "{e}");
        let e = parse(&format!("socket_dir = \"{long}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("socket_dir"), "{e}");
    }

    #[test]
    fn control_roles_and_event_retention_keys() {
        let c = parse("[control]\noperator_group = \"ops\"\nread_only_group = \"mon\"\n[limits]\nevents = 5000\nevents_per_domain = 50").unwrap();
        assert_eq!(c.control.operator_group, "ops");
        assert_eq!(c.control.read_only_group, "mon");
        assert_eq!(c.limits.events_per_domain, 50);
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let d = Config::default();
        assert_eq!(d.control.operator_group, "xenchan");
        assert_eq!(d.control.read_only_group, "xenchan-ro");
        let e = parse("[control]\noperator_group = \"a b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("control.operator_group"), "{e}");
        let e = parse("[control]\nadmin_group = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin_group"), "{e}");
        let e = parse("[limits]\nevents_per_domain = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.events_per_domain"), "{e}");
        // Per domain is capped by the whole log.
        let c = parse("[limits]\nevents = 100").unwrap();
        assert_eq!(c.limits.events_per_domain(), 100);
    }

    #[test]
    fn store_section_parses_and_round_trips() {
        let c = parse(
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/t/\"\nhost = \"dom0-a\"\n[store.timeouts]\nhost_ttl = 3000\n",
        )
        .unwrap();
        assert_eq!(c.store.backend, Backend::Etcd);
        assert_eq!(c.store.host.as_deref(), Some("dom0-a"));
        assert_eq!(c.store.timeouts.host_ttl, 3000);
        assert_eq!(c.store.timeouts.request, 5000);
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let e = parse("[store]\nbackend = \"etcd\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.endpoints"), "{e}");
        let e = parse("[store]\nbackend = \"zk\"").unwrap_err().to_string();
        assert!(e.contains("zk"), "{e}");
        let e = parse("[store]\nendpoint = []").unwrap_err().to_string();
        assert!(e.contains("endpoint"), "{e}");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::default();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn deadlines_nest_by_default_and_out_of_order_ones_are_named() {
        assert_eq!(check_deadline_order(&Config::default()), Ok(()));
        let d = Timeouts::default();
        assert!(d.hook < d.request && d.request < LIBVIRT_HOOK_DEADLINE_MS);
        for (hook, request, libvirt, bad) in [
            (5000, 8000, 10_000, None),
            (1, 2, 3, None),
            (8000, 8000, 10_000, Some("timeouts.hook (8000 ms)")),
            (9000, 8000, 10_000, Some("timeouts.hook (9000 ms)")),
            (5000, 10_000, 10_000, Some("timeouts.request (10000 ms)")),
            (
                5000,
                12_000,
                10_000,
                Some("libvirt hook's deadline (10000 ms"),
            ),
        ] {
            match (deadline_order(hook, request, libvirt), bad) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.contains(want), "{e}"),
                (got, want) => panic!("{hook}/{request}/{libvirt}: {got:?}, wanted {want:?}"),
            }
        }
        let mut c = Config::default();
        c.timeouts.hook = 10_000;
        assert!(
            check_deadline_order(&c)
                .unwrap_err()
                .contains("timeouts.hook")
        );
    }
}
