//! `xenchan-agent-consoles`: what `xenchan-agent consoles` prints (udev's view of the Xen
//! console devices, hvc ttys and channel links), in a binary of its own. The listing is
//! the only user of libudev: kept out of the agent daemon, libudev and its libraries are
//! not mapped into the long-running process (its idle memory, docs/PERFORMANCE.md).
//! `xenchan-agent consoles` runs this program; it can also be run directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenchan_basics::Exit;

/// List Xen console devices (SUBSYSTEM=xen, console-*), hvc ttys and the channel links
/// pointing at them, from udev's database. For diagnosis; changes nothing. The same as
/// `xenchan-agent consoles`.
#[derive(Debug, Parser)]
#[command(name = "xenchan-agent-consoles", version)]
struct Args {
    /// Folder of the channel links to match against the ttys.
    #[arg(long, value_name = "DIR", default_value = xenchan_agent::DEFAULT_CHANNEL_DIR)]
    channel_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match xenchan_agent::consoles::list(&args.channel_dir) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenchan-agent: cannot list consoles: {e}");
            Exit::Unavailable.into()
        }
    }
}
