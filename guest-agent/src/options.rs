//! What the agent is told to do: which channel, where to look for it, which guest root to
//! configure, and how fast to beacon and give up on a silent broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xenchan_protocol::{DEFAULT_CHANNEL, MAX_FRAME_DEFAULT};

/// Default folder of the links `xen-console-setup` makes for Xen PV channels.
pub const DEFAULT_CHANNEL_DIR: &str = "/dev/xen-channel";
/// Default folder of udev's virtio-serial port links.
pub const DEFAULT_VIRTIO_DIR: &str = "/dev/virtio-ports";
/// Default folder of the agent's own state (`applied.json`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xenchan-agent";

/// Everything [`crate::run`] needs. Every system path is here so that tests and the
/// simulator can point the agent at a temporary guest root.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The channel name to serve (the link name in `channel_dir` / `virtio_dir`, and the
    /// name the broker's hello must carry).
    pub channel: String,
    /// Folder where `xen-console-setup` makes `<channel>` links to hvc devices.
    pub channel_dir: PathBuf,
    /// Folder where udev makes virtio-serial port links (`/dev/virtio-ports/<channel>`).
    pub virtio_dir: PathBuf,
    /// Open this device instead of discovering `<channel>` in the two folders.
    pub device: Option<PathBuf>,
    /// The guest filesystem root every configuration write goes under, and where
    /// `sys/hypervisor/uuid`, `etc/os-release`, `sys/class/net` are read.
    pub root: PathBuf,
    /// Where `applied.json` (generation, digest, per-item results) is kept.
    pub state_dir: PathBuf,
    /// Set the running system's hostname too (only ever done when `root` is `/`).
    pub live_hostname: bool,
    /// Frame bound for the codec, both directions.
    pub max_frame: usize,
    /// Where local channel-registry entries live (for the start-up name check); `None`
    /// skips the check.
    pub registry_dir: Option<PathBuf>,
    /// Tell systemd (`sd_notify(READY=1)`) when the agent is watching for its device.
    pub sd_notify: bool,
    /// How network configuration is applied.
    pub network: NetworkOptions,
    /// Intervals and back-offs.
    pub timing: Timing,
    /// Folders (absolute, in the guest) that `write_files` may write below.
    pub write_files_allow: Vec<PathBuf>,
}

/// How the network applier works (see the `xenchan-netconf` crate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Which network manager's files to write (detected in the guest root by default).
    pub renderer: xenchan_netconf::RendererChoice,
    /// Whether to configure the running kernel over rtnetlink. Only ever done when the
    /// root is `/` or `netns` is given: under an image root, interface names found in
    /// its sysfs say nothing about this machine's interfaces.
    pub live: xenchan_netconf::LiveMode,
    /// Configure the running kernel in this network namespace (tests, containers).
    pub netns: Option<PathBuf>,
}

/// Intervals and back-offs of the agent. The defaults are the protocol's; tests shrink
/// them to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// First beacon interval while no broker has answered (doubles up to `beacon_max`).
    pub beacon_min: Duration,
    /// Longest beacon interval.
    pub beacon_max: Duration,
    /// The broker's keepalive interval; 3x this without any broker message means the
    /// broker is gone and the agent goes back to beaconing.
    pub keepalive: Duration,
    /// First retry delay when the device cannot be opened (ENODEV right after hotplug).
    pub reopen_min: Duration,
    /// Longest retry delay for opening the device.
    pub reopen_max: Duration,
    /// First pause after a read returned EOF (a virtio port with no host connected).
    pub eof_min: Duration,
    /// Longest pause after repeated EOFs.
    pub eof_max: Duration,
    /// Re-check the channel folders this often even without inotify events (covers an
    /// event queue overflow, or a folder whose parent does not exist yet).
    pub rescan: Duration,
    /// Look at the channel folders this often when no inotify instance can be had
    /// (`fs.inotify.max_user_instances` reached).
    pub poll: Duration,
    /// How long a `bye` may take to leave on shutdown.
    pub bye_timeout: Duration,
    /// Deadline for applying one pushed configuration (file system calls cannot be
    /// cancelled: past it the items are answered `failed` and the late outcome dropped).
    pub apply_timeout: Duration,
    /// Deadline of each facts source (os-release, kernel, hostname, interfaces); a source
    /// past it is reported empty. Gathering never holds up the session.
    pub facts_timeout: Duration,
    /// Facts are gathered again this often during a session, and sent when they changed
    /// (addresses, links, hostname).
    pub facts_poll: Duration,
    /// At most one facts report per this interval (from the end of one gathering to the
    /// start of the next): changes in between are coalesced, the latest state wins.
    pub facts_min_interval: Duration,
    /// First delay before failed items of a push are applied again (doubling, jittered).
    pub retry_min: Duration,
    /// Longest delay between retries of failed items.
    pub retry_max: Duration,
    /// After a link a failed push waits for appears, wait this long before applying
    /// (udev may still be renaming it; more links of a burst are taken together).
    pub link_settle: Duration,
    /// At most one apply triggered by links appearing per this interval.
    pub link_apply_gap: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            beacon_min: Duration::from_secs(1),
            beacon_max: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            reopen_min: Duration::from_millis(100),
            reopen_max: Duration::from_secs(5),
            eof_min: Duration::from_millis(100),
            eof_max: Duration::from_secs(2),
            rescan: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            bye_timeout: Duration::from_secs(1),
            apply_timeout: Duration::from_secs(60),
            facts_timeout: Duration::from_secs(5),
            facts_poll: Duration::from_secs(30),
            facts_min_interval: Duration::from_secs(2),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            link_settle: Duration::from_millis(500),
            link_apply_gap: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Millisecond-scale timing for tests: beacons every 20-200 ms, keepalive as given.
    pub fn fast(keepalive: Duration) -> Self {
        Timing {
            beacon_min: Duration::from_millis(20),
            beacon_max: Duration::from_millis(200),
            keepalive,
            reopen_min: Duration::from_millis(10),
            reopen_max: Duration::from_millis(200),
            eof_min: Duration::from_millis(20),
            eof_max: Duration::from_millis(200),
            rescan: Duration::from_secs(5),
            poll: Duration::from_millis(50),
            bye_timeout: Duration::from_millis(500),
            apply_timeout: Duration::from_secs(10),
            facts_timeout: Duration::from_secs(2),
            facts_poll: Duration::from_millis(500),
            facts_min_interval: Duration::from_millis(100),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_millis(800),
            link_settle: Duration::from_millis(20),
            link_apply_gap: Duration::from_millis(200),
        }
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            channel: DEFAULT_CHANNEL.to_string(),
            channel_dir: PathBuf::from(DEFAULT_CHANNEL_DIR),
            virtio_dir: PathBuf::from(DEFAULT_VIRTIO_DIR),
            device: None,
            root: PathBuf::from("/"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            live_hostname: true,
            max_frame: MAX_FRAME_DEFAULT,
            registry_dir: None,
            sd_notify: false,
            network: NetworkOptions::default(),
            timing: Timing::default(),
            write_files_allow: crate::apply::write_files::DEFAULT_ALLOW
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

impl AgentOptions {
    /// Options for a guest laid out under `root` the way the simulator makes it
    /// (`<root>/dev/xen-channel`, `<root>/dev/virtio-ports`, `<root>/var/lib/xenchan-agent`).
    pub fn under_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        AgentOptions {
            channel_dir: root.join("dev/xen-channel"),
            virtio_dir: root.join("dev/virtio-ports"),
            state_dir: root.join("var/lib/xenchan-agent"),
            root,
            ..AgentOptions::default()
        }
    }

    /// Whether the agent configures the running system (root is `/`), not an image.
    pub fn is_live_root(&self) -> bool {
        is_slash(&self.root)
    }

    /// Whether `sethostname` may be called.
    pub fn sets_live_hostname(&self) -> bool {
        self.live_hostname && self.is_live_root()
    }

    /// `<root>/<rel>` for a path given relative to the guest root.
    pub fn guest_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

/// Whether `p` is `/` (after resolving symlinks).
pub(crate) fn is_root_path(p: &Path) -> bool {
    is_slash(p)
}

fn is_slash(p: &Path) -> bool {
    p.canonicalize()
        .map_or(p == Path::new("/"), |c| c == Path::new("/"))
}
