//! `xen-console-setup`: run by udev for Xen console devices; makes or removes
//! `/dev/xen-channel/<name>`. A thin wrapper over [`xenchan_agent::console_setup`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use xenchan_agent::cli::ConsoleSetupArgs;
use xenchan_agent::console_setup::{self, Action, Outcome, SetupOptions};
use xenchan_basics::Exit;

fn main() -> ExitCode {
    let cli = match ConsoleSetupArgs::try_parse() {
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
            return Exit::Usage.into();
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
            return Exit::Usage.into();
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
