//! `xenchan-agent`: the xenchan guest agent. A thin wrapper over [`xenchan_agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use xenchan_agent::logging::{self, LogFormat};
use xenchan_agent::{AgentOptions, NetworkOptions, Timing, exit};
use xenchan_netconf::{LiveMode, RendererChoice};

const ABOUT: &str = "The xenchan guest agent: receives hostname and ssh keys from the xenchan broker in \
dom0 over a Xen PV channel (or a virtio-serial port) and applies them to this guest.";

const LONG_ABOUT: &str =
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

const EXAMPLES: &str = "Examples:
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
(e.g. --root is not a folder), 74 state folder unusable, 69 inotify unavailable.";

#[derive(Debug, Parser)]
#[command(
    name = "xenchan-agent",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Channel name to serve: the link name looked for in --channel-dir and --virtio-dir,
    /// and the name the broker's hello must carry. Must be a valid device name (no `/`,
    /// not `.` or `..`, registry rules).
    #[arg(long, value_name = "NAME", default_value = xenchan_protocol::DEFAULT_CHANNEL, value_parser = channel_name)]
    channel: String,

    /// Folder where xen-console-setup makes one link per named Xen PV channel
    /// (`<dir>/<name> -> ../hvcN`). Watched with inotify; it need not exist yet.
    #[arg(long, value_name = "DIR", default_value = xenchan_agent::DEFAULT_CHANNEL_DIR)]
    channel_dir: PathBuf,

    /// Folder where udev makes virtio-serial port links (`<dir>/<name> -> ../vportNpM`),
    /// the KVM-style transport. Watched too; the first folder holding the channel wins.
    #[arg(long, value_name = "DIR", default_value = xenchan_agent::DEFAULT_VIRTIO_DIR)]
    virtio_dir: PathBuf,

    /// Open this device (or link) instead of watching the two folders. It is retried
    /// until it opens.
    #[arg(long, value_name = "PATH")]
    device: Option<PathBuf>,

    /// Root of the guest filesystem: every file the agent writes (/etc/hostname,
    /// /etc/hosts, passwd/shadow/group, home folders) and reads (/sys/hypervisor/uuid,
    /// /etc/os-release, /sys/class/net) is taken under it. The running hostname is only
    /// changed when this is `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,

    /// Folder for applied.json (the applied generation, digest and per-item results).
    /// Made (mode 0700) if missing. Not taken under --root.
    #[arg(long, value_name = "DIR", default_value = xenchan_agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Never call sethostname(2): only /etc/hostname and /etc/hosts are written.
    #[arg(long)]
    no_live_hostname: bool,

    /// The broker's keepalive interval in seconds; 3 intervals without any broker
    /// message mean the broker is gone and the agent announces itself again.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive_secs: u64,

    /// Longest interval in seconds between announcements while no broker answers
    /// (they start at 1 s and double, with jitter).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    beacon_max_secs: u64,

    /// Folder of local channel-registry entries, checked at start-up for the channel
    /// name (warnings only). Not taken under --root.
    #[arg(long, value_name = "DIR", default_value = "/etc/xenchan/registry.d")]
    registry_dir: PathBuf,

    /// Which network manager's files to write: `auto` (detect it in the guest root, in
    /// this order: netplan, NetworkManager, systemd-networkd, ifupdown, else none),
    /// `networkd`, `network-manager`, `netplan`, `ifupdown`, or `none` (live apply and
    /// /etc/resolv.conf only). See docs/NETWORK.md.
    #[arg(long, value_name = "RENDERER", default_value = "auto", value_parser = network_renderer)]
    network_renderer: RendererChoice,

    /// Whether to configure the running kernel over rtnetlink (addresses, routes, MTU,
    /// link up, rolled back if a step fails): `auto` (when no network manager is
    /// running), `always`, or `never`. Only ever done when --root is `/`.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = network_live)]
    network_live: LiveMode,

    /// Log line format on stderr: `text` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List Xen console devices (SUBSYSTEM=xen, console-*), hvc ttys and the channel
    /// links pointing at them, from udev's database. For diagnosis; changes nothing.
    Consoles {
        /// Folder of the channel links to match against the ttys.
        #[arg(long, value_name = "DIR", default_value = xenchan_agent::DEFAULT_CHANNEL_DIR)]
        channel_dir: PathBuf,
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

fn channel_name(s: &str) -> Result<String, String> {
    xenchan_registry::validate_device_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if let Some(Command::Consoles { channel_dir }) = &cli.command {
        return match xenchan_agent::consoles::list(channel_dir) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xenchan-agent: cannot list consoles: {e}");
                ExitCode::from(exit::UNAVAILABLE as u8)
            }
        };
    }
    logging::init(cli.log_format, "info");
    let opts = AgentOptions {
        channel: cli.channel,
        channel_dir: cli.channel_dir,
        virtio_dir: cli.virtio_dir,
        device: cli.device,
        root: cli.root,
        state_dir: cli.state_dir,
        live_hostname: !cli.no_live_hostname,
        registry_dir: Some(cli.registry_dir),
        sd_notify: true,
        network: NetworkOptions {
            renderer: cli.network_renderer,
            live: cli.network_live,
            netns: None,
        },
        timing: Timing {
            keepalive: Duration::from_secs(cli.keepalive_secs),
            beacon_max: Duration::from_secs(cli.beacon_max_secs),
            ..Timing::default()
        },
        ..AgentOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenchan-agent: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE as u8);
        }
    };
    match runtime.block_on(xenchan_agent::run(opts, shutdown_signal())) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("xenchan-agent: {:#}", anyhow::Error::from(e));
            ExitCode::from(code as u8)
        }
    }
}

/// Prints a clap error as one line (help and version are printed whole).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = Cli::command().print_help();
        return ExitCode::from(exit::USAGE as u8);
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line");
    let line = line.strip_prefix("error: ").unwrap_or(line);
    eprintln!("xenchan-agent: {line} (see xenchan-agent --help)");
    ExitCode::from(exit::USAGE as u8)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (terminate) still stops the agent.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
