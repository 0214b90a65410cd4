//! `xenchan-bench-agent`: the real agent library run exactly as `xenchan-agent` runs it
//! (same command line, same options, current-thread runtime, sd_notify), with one
//! addition the binary does not expose: `NetworkOptions::netns` from the
//! `XENCHAN_BENCH_NETNS` environment variable (a path such as `/run/netns/NAME`), so the
//! live network part acts in a test namespace while files go under a temporary root.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenchan_agent::cli::AgentArgs;
use xenchan_agent::logging;
use xenchan_basics::Exit;

fn main() -> ExitCode {
    let cli = match AgentArgs::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Exit::Usage.into();
        }
    };
    if cli.command.is_some() {
        eprintln!("xenchan-bench-agent: subcommands are the real xenchan-agent's");
        return Exit::Usage.into();
    }
    logging::init(cli.log_format, "info");
    let netns = std::env::var_os("XENCHAN_BENCH_NETNS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut opts = cli.options();
    opts.network.netns = netns;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenchan-bench-agent: cannot start the async runtime: {e}");
            return Exit::Unavailable.into();
        }
    };
    match runtime.block_on(xenchan_agent::run(opts, xenchan_basics::signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("xenchan-bench-agent: {:#}", anyhow::Error::from(e));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
