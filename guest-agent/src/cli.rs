//! The command lines of the two binaries, `xenchan-agent` ([`AgentArgs`]) and
//! `xen-console-setup` ([`ConsoleSetupArgs`]), as clap definitions in the library so that
//! man pages and shell completions can be generated from them (`cargo xtask man`). The
//! binaries parse these and call [`crate::run`] / [`crate::console_setup::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use xenchan_netconf::{LiveMode, RendererChoice};

use crate::logging::LogFormat;

/// `xenchan-agent`: the one-line description.
pub const AGENT_ABOUT: &str = "The xenchan guest agent: receives hostname and ssh keys from the xenchan broker in \
dom0 over a Xen PV channel (or a virtio-serial port) and applies them to this guest.";

/// `xenchan-agent --help`: the description.
pub const AGENT_LONG_ABOUT: &str =
    "The xenchan guest agent: receives hostname and ssh keys from the xenchan broker in \
dom0 over a Xen PV channel (or a virtio-serial port) and applies them to this guest.

It waits for the channel's device link to appear in --channel-dir (made by \
xen-console-setup from udev) or --virtio-dir (made by udev for virtio-serial), opens the \
device, announces itself until the broker answers, and then applies every configuration \
the broker pushes: /etc/hostname, the 127.0.1.1 line of /etc/hosts, the running hostname, \
and a managed block of each user's ~/.ssh/authorized_keys. What it applied is remembered \
in --state-dir so that a re-push changes nothing. Network items (interfaces chosen by \
MAC, addresses, routes, DNS, MTU) are written for the guest's network manager and, \
when none is running and --root is /, applied live over rtnetlink.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail.";

/// `xenchan-agent --help`: examples and exit codes.
pub const AGENT_EXAMPLES: &str = "Examples:
  xenchan-agent
      Serve org.xenchan.agent.1 with the defaults (what the systemd unit runs).
  xenchan-agent --device /dev/hvc1 --no-live-hostname
      Skip discovery and open /dev/hvc1; do not change the running hostname.
  xenchan-agent --root /mnt/guest --channel-dir /mnt/guest/dev/xen-channel \\
                --state-dir /mnt/guest/var/lib/xenchan-agent
      Configure a guest image mounted at /mnt/guest.
  xenchan-agent consoles
      List Xen console devices, hvc ttys and the channel links pointing at them.

Exit status: 0 after SIGTERM/SIGINT, 2 bad command line, 78 bad configuration \
(e.g. --root is not a folder), 74 state folder unusable. Without inotify (the user's \
fs.inotify.max_user_instances is reached) the agent warns and polls its folders every second.";

/// The `xenchan-agent` command line (the help text comes from the constants above).
#[derive(Debug, Parser)]
#[command(
    name = "xenchan-agent",
    version,
    about = AGENT_ABOUT,
    long_about = AGENT_LONG_ABOUT,
    after_help = AGENT_EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,

    /// Channel name to serve: the link name looked for in --channel-dir and --virtio-dir,
    /// and the name the broker's hello must carry. Must be a valid device name (no `/`,
    /// not `.` or `..`, registry rules).
    #[arg(long, value_name = "NAME", default_value = xenchan_protocol::DEFAULT_CHANNEL, value_parser = channel_name)]
    pub channel: String,

    /// Folder where xen-console-setup makes one link per named Xen PV channel
    /// (`<dir>/<name> -> ../hvcN`). Watched with inotify (polled every
    /// second when the user has no inotify instance left); it need not exist yet.
    #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_CHANNEL_DIR)]
    pub channel_dir: PathBuf,

    /// Folder where udev makes virtio-serial port links (`<dir>/<name> -> ../vportNpM`),
    /// the KVM-style transport. Watched too; the first folder holding the channel wins.
    #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_VIRTIO_DIR)]
    pub virtio_dir: PathBuf,

    /// Open this device (or link) instead of watching the two folders. It is retried
    /// until it opens.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,

    /// Root of the guest filesystem: every file the agent writes (/etc/hostname,
    /// /etc/hosts, passwd/shadow/group, home folders) and reads (/sys/hypervisor/uuid,
    /// /etc/os-release, /sys/class/net) is taken under it. The running hostname is only
    /// changed when this is `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Folder for applied.json (the applied generation, digest and per-item results).
    /// Made (mode 0700) if missing. Not taken under --root.
    #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Never call sethostname(2): only /etc/hostname and /etc/hosts are written.
    #[arg(long)]
    pub no_live_hostname: bool,

    /// The broker's keepalive interval in seconds; 3 intervals without any broker
    /// message mean the broker is gone and the agent announces itself again.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_secs: u64,

    /// Longest interval in seconds between announcements while no broker answers
    /// (they start at 1 s and double, with jitter).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub beacon_max_secs: u64,

    /// Folder of local channel-registry entries, checked at start-up for the channel
    /// name (warnings only). Not taken under --root.
    #[arg(long, value_name = "DIR", default_value = "/etc/xenchan/registry.d")]
    pub registry_dir: PathBuf,

    /// Which network manager's files to write: `auto` (the document's cloud-init
    /// `network.renderer` when the guest uses that manager, else detected in the guest
    /// root, in this order: netplan, NetworkManager, systemd-networkd, ifupdown, else
    /// none), `networkd`, `network-manager`, `netplan`, `ifupdown`, or `none` (live apply
    /// and /etc/resolv.conf only). When --root is `/`, each file is first checked by the
    /// manager's own parser (nmcli --offline, netplan generate, ifup --no-act) and a
    /// refusal fails the item. See docs/NETWORK.md.
    #[arg(long, value_name = "RENDERER", default_value = "auto", value_parser = network_renderer)]
    pub network_renderer: RendererChoice,

    /// Whether to configure the running kernel over rtnetlink (addresses, routes, MTU,
    /// link up, rolled back if a step fails): `auto` (when no network manager is
    /// running), `always`, or `never`. Only ever done when --root is `/`.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = network_live)]
    pub network_live: LiveMode,

    /// Configure the running kernel in this network namespace (a file such as
    /// /run/netns/<name>) instead of the agent's own: live apply, the link watch and the
    /// start-up restore of live-only addresses all happen there. For containers and
    /// tests; with it, live apply works under any --root.
    #[arg(long, value_name = "FILE")]
    pub netns: Option<PathBuf>,

    /// At most one facts report per this many seconds: changes in between (hostname,
    /// addresses, links) are coalesced and the latest state is sent.
    #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub facts_interval_secs: u64,

    /// A folder (absolute, in the guest) below which `write_files` may write; repeat
    /// for several. Replaces the default list /etc, /home, /srv, /opt. Paths elsewhere
    /// are answered `failed` naming this option.
    #[arg(long, value_name = "DIR", value_parser = absolute_dir)]
    pub write_files_allow: Vec<PathBuf>,

    /// Log line format on stderr: `text` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

// The subcommands of `xenchan-agent`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List Xen console devices (SUBSYSTEM=xen, console-*), hvc ttys and the channel
    /// links pointing at them, from udev's database. For diagnosis; changes nothing.
    Consoles {
        /// Folder of the channel links to match against the ttys.
        #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_CHANNEL_DIR)]
        channel_dir: PathBuf,
    },
    /// Prepare this system (or the image at --root) to be a template: empty the machine
    /// id, remove the ssh host keys, the agent's applied state, DHCP leases (dhclient,
    /// NetworkManager, systemd-networkd) and the random seeds. Prints one line per thing
    /// (also what was already absent). Run it last, then shut down and clone. Exit
    /// status: 0 sealed, 74 a file could not be cleared (the lines before say what was
    /// done).
    Seal {
        /// Root of the guest filesystem to seal.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// The agent's state folder [default: <root>/var/lib/xenchan-agent].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

fn network_renderer(s: &str) -> Result<RendererChoice, String> {
    Ok(match s {
        "auto" => RendererChoice::Auto,
        "networkd" => RendererChoice::Networkd,
        "network-manager" => RendererChoice::NetworkManager,
        "netplan" => RendererChoice::Netplan,
        "ifupdown" => RendererChoice::Ifupdown,
        "none" => RendererChoice::None,
        _ => {
            return Err(
                "expected auto, networkd, network-manager, netplan, ifupdown or none".into(),
            );
        }
    })
}

fn network_live(s: &str) -> Result<LiveMode, String> {
    Ok(match s {
        "auto" => LiveMode::Auto,
        "always" => LiveMode::Always,
        "never" => LiveMode::Never,
        _ => return Err("expected auto, always or never".into()),
    })
}

fn absolute_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s.trim_end_matches('/'));
    if !s.starts_with('/') || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err("expected an absolute folder without `..` (e.g. /srv)".into());
    }
    Ok(p)
}

fn channel_name(s: &str) -> Result<String, String> {
    xenchan_registry::validate_device_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// `xen-console-setup --help`: the description.
pub const CONSOLE_SETUP_LONG_ABOUT: &str =
    "Makes /dev/xen-channel/<name> for a Xen PV channel, or removes it.

udev runs this for SUBSYSTEM==\"xen\", KERNEL==\"console-[0-9]*\" add and remove events \
(see 60-xenchan-channels.rules); the action and device come from udev's ACTION and DEVPATH \
variables unless given on the command line.

On add: the console's xenstore node is read from <sysfs>/<devpath>/nodename (or taken to \
be device/console/N), the channel name from <node>/name in xenstore (read-only to the \
guest), the name is checked (no `/`, not `.` or `..`, registry rules), and \
<channel-dir>/<name> is made a symbolic link to the console's tty, hvcN, atomically. A \
console without a name is a plain console and is left alone.

On remove: every link in <channel-dir> that leads to that console's hvcN is removed; other \
links are left alone.";

/// `xen-console-setup --help`: examples and exit codes.
pub const CONSOLE_SETUP_AFTER: &str = "Examples:
  ACTION=add DEVPATH=/devices/console-1 xen-console-setup
      What udev does: link /dev/xen-channel/<name> -> ../hvc1.
  xen-console-setup add --devpath /devices/console-1 --sysfs /tmp/sys --dev /tmp/dev \\
                    --xenstore /tmp/xenstore.sock
      The same against a fake sysfs, /dev and a test xenstore socket.

Exit status: 0 done (or nothing to do), 2 bad command line, 65 bad DEVPATH, nodename or \
channel name, 69 xenstore unreachable or unreadable, 74 filesystem error.";

/// The `xen-console-setup` command line.
#[derive(Debug, Parser)]
#[command(name = "xen-console-setup", version, about = "Make or remove /dev/xen-channel/<name> for a Xen console device (run by udev)", long_about = CONSOLE_SETUP_LONG_ABOUT, after_help = CONSOLE_SETUP_AFTER)]
pub struct ConsoleSetupArgs {
    /// `add` or `remove`. Other udev actions (change, bind, ...) do nothing.
    #[arg(value_name = "ACTION", env = "ACTION")]
    pub action: String,

    /// The device's path below sysfs, as udev's DEVPATH gives it (`/devices/console-N`).
    #[arg(long, value_name = "DEVPATH", env = "DEVPATH")]
    pub devpath: String,

    /// Where sysfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,

    /// Where device nodes are: links point at <dev>/hvcN.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev: PathBuf,

    /// Where the channel links go [default: <dev>/xen-channel]. Links are relative
    /// (`../hvcN`) when this is <dev>/xen-channel, absolute otherwise.
    #[arg(long, value_name = "DIR")]
    pub channel_dir: Option<PathBuf>,

    /// xenstore socket or xenbus device.
    #[arg(
        long,
        value_name = "PATH",
        env = "XENSTORED_PATH",
        default_value = "/dev/xen/xenbus"
    )]
    pub xenstore: PathBuf,

    /// Deadline in milliseconds for the xenstore read.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60000))]
    pub timeout_ms: u64,
}

impl AgentArgs {
    /// The daemon's options as this command line sets them (everything it does not set
    /// keeps [`AgentOptions::default`]). The binaries that run the agent start from
    /// this, so they cannot drift apart.
    #[must_use]
    pub fn options(self) -> crate::AgentOptions {
        let mut opts = crate::AgentOptions {
            channel: self.channel,
            channel_dir: self.channel_dir,
            virtio_dir: self.virtio_dir,
            device: self.device,
            root: self.root,
            state_dir: self.state_dir,
            live_hostname: !self.no_live_hostname,
            registry_dir: Some(self.registry_dir),
            sd_notify: true,
            network: crate::NetworkOptions {
                renderer: self.network_renderer,
                live: self.network_live,
                netns: self.netns,
            },
            timing: crate::Timing {
                keepalive: std::time::Duration::from_secs(self.keepalive_secs),
                beacon_max: std::time::Duration::from_secs(self.beacon_max_secs),
                facts_min_interval: std::time::Duration::from_secs(self.facts_interval_secs),
                ..crate::Timing::default()
            },
            ..crate::AgentOptions::default()
        };
        if !self.write_files_allow.is_empty() {
            opts.write_files_allow = self.write_files_allow;
        }
        opts
    }
}
