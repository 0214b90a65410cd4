//! `xenchan-agent`: the xenchan guest agent. A thin wrapper over [`xenchan_agent::run`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{CommandFactory, Parser};
use xenchan_agent::cli::{AgentArgs, AgentCommand};
use xenchan_agent::logging;
use xenchan_basics::Exit;

fn main() -> ExitCode {
    let cli = match AgentArgs::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if let Some(AgentCommand::Consoles { channel_dir }) = &cli.command {
        return consoles(channel_dir);
    }
    if let Some(AgentCommand::Seal { root, state_dir }) = &cli.command {
        return seal(root, state_dir.as_deref());
    }
    logging::init(cli.log_format, "info");
    let opts = cli.options();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenchan-agent: cannot start the async runtime: {e}");
            return Exit::Unavailable.into();
        }
    };
    match runtime.block_on(xenchan_agent::run(opts, xenchan_basics::signal::shutdown())) {
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

/// `xenchan-agent seal`: one line per step on stdout, the failure on stderr.
fn seal(root: &std::path::Path, state_dir: Option<&std::path::Path>) -> ExitCode {
    let state_dir = state_dir.map_or_else(
        || root.join(xenchan_agent::DEFAULT_STATE_DIR.trim_start_matches('/')),
        std::path::Path::to_path_buf,
    );
    let mut lines = Vec::new();
    let result = xenchan_agent::seal::seal(root, &state_dir, &mut lines);
    for l in &lines {
        println!("{l}");
    }
    match result {
        Ok(()) => {
            println!(
                "sealed: shut down now and clone; each clone gets a new machine id, host keys and leases at first boot"
            );
            ExitCode::from(Exit::Ok.code())
        }
        Err(e) => {
            eprintln!("xenchan-agent seal: cannot clear {e}");
            ExitCode::from(Exit::IoErr.code())
        }
    }
}

/// The program that lists the consoles (it links libudev, which the daemon does not need).
const CONSOLES: &str = "xenchan-agent-consoles";

/// `xenchan-agent consoles`: replaced by `xenchan-agent-consoles`, found next to this
/// executable (a build folder, an unpacked archive) or where the package installs it.
fn consoles(channel_dir: &Path) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(CONSOLES))
        .filter(|p| p.is_file());
    let helper = beside.unwrap_or_else(|| PathBuf::from("/usr/libexec/xenchan").join(CONSOLES));
    let err = Command::new(&helper)
        .arg("--channel-dir")
        .arg(channel_dir)
        .exec();
    eprintln!(
        "xenchan-agent: cannot list consoles: cannot run {}: {err}",
        helper.display()
    );
    Exit::Unavailable.into()
}

/// Prints a clap error as one line (help and version are printed whole).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = AgentArgs::command().print_help();
        return Exit::Usage.into();
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line");
    let line = line.strip_prefix("error: ").unwrap_or(line);
    eprintln!("xenchan-agent: {line} (see xenchan-agent --help)");
    Exit::Usage.into()
}
