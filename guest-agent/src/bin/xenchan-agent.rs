//! `xenchan-agent`: the xenchan guest agent. A thin wrapper over [`xenchan_agent::run`].

use std::process::ExitCode;

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
        return match xenchan_agent::consoles::list(channel_dir) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xenchan-agent: cannot list consoles: {e}");
                Exit::Unavailable.into()
            }
        };
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
