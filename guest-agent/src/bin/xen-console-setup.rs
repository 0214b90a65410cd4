//! `xen-console-setup`: run by udev for Xen console devices; makes or removes
//! `/dev/xen-channel/<name>`. A thin wrapper over [`xenchan_agent::console_setup`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use xenchan_agent::console_setup::{self, Action, Outcome, SetupOptions};
use xenchan_agent::exit;

const LONG_ABOUT: &str = "Makes /dev/xen-channel/<name> for a Xen PV channel, or removes it.

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

const AFTER: &str = "Examples:
  ACTION=add DEVPATH=/devices/console-1 xen-console-setup
      What udev does: link /dev/xen-channel/<name> -> ../hvc1.
  xen-console-setup add --devpath /devices/console-1 --sysfs /tmp/sys --dev /tmp/dev \\
                    --xenstore /tmp/xenstore.sock
      The same against a fake sysfs, /dev and a test xenstore socket.

Exit status: 0 done (or nothing to do), 2 bad command line, 65 bad DEVPATH, nodename or \
channel name, 69 xenstore unreachable or unreadable, 74 filesystem error.";

#[derive(Debug, Parser)]
#[command(name = "xen-console-setup", version, about = "Make or remove /dev/xen-channel/<name> for a Xen console device (run by udev)", long_about = LONG_ABOUT, after_help = AFTER)]
struct Cli {
    /// `add` or `remove`. Other udev actions (change, bind, ...) do nothing.
    #[arg(value_name = "ACTION", env = "ACTION")]
    action: String,

    /// The device's path below sysfs, as udev's DEVPATH gives it (`/devices/console-N`).
    #[arg(long, value_name = "DEVPATH", env = "DEVPATH")]
    devpath: String,

    /// Where sysfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,

    /// Where device nodes are: links point at <dev>/hvcN.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev: PathBuf,

    /// Where the channel links go [default: <dev>/xen-channel]. Links are relative
    /// (`../hvcN`) when this is <dev>/xen-channel, absolute otherwise.
    #[arg(long, value_name = "DIR")]
    channel_dir: Option<PathBuf>,

    /// xenstore socket or xenbus device.
    #[arg(
        long,
        value_name = "PATH",
        env = "XENSTORED_PATH",
        default_value = "/dev/xen/xenbus"
    )]
    xenstore: PathBuf,

    /// Deadline in milliseconds for the xenstore read.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60000))]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad command line");
            eprintln!(
                "xen-console-setup: {} (see xen-console-setup --help)",
                line.strip_prefix("error: ").unwrap_or(line)
            );
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let action = match cli.action.as_str() {
        "add" => Action::Add,
        "remove" => Action::Remove,
        "change" | "move" | "bind" | "unbind" | "online" | "offline" => return ExitCode::SUCCESS,
        other => {
            eprintln!(
                "xen-console-setup: unknown action `{other}` (add or remove; see xen-console-setup --help)"
            );
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let opts = SetupOptions {
        action,
        channel_dir: cli
            .channel_dir
            .unwrap_or_else(|| cli.dev.join("xen-channel")),
        devpath: cli.devpath,
        sysfs: cli.sysfs,
        dev: cli.dev,
        xenstore: cli.xenstore,
        timeout: Duration::from_millis(cli.timeout_ms),
    };
    match console_setup::run(&opts) {
        Ok(outcome) => {
            match outcome {
                Outcome::Linked { name, link, target } => eprintln!(
                    "xen-console-setup: channel {name}: {} -> {}",
                    link.display(),
                    target.display()
                ),
                Outcome::Removed { links } => {
                    for l in links {
                        eprintln!("xen-console-setup: removed {}", l.display());
                    }
                }
                Outcome::AlreadyLinked { .. } | Outcome::NotAChannel { .. } => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("xen-console-setup: {:#}", anyhow::Error::from(e));
            ExitCode::from(code as u8)
        }
    }
}
