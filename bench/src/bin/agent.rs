//! `xenchan-bench-agent`: the real agent library run exactly as `xenchan-agent` runs it
//! (same command line, same options, current-thread runtime, sd_notify), with one
//! addition the binary does not expose: `NetworkOptions::netns` from the
//! `XENCHAN_BENCH_NETNS` environment variable (a path such as `/run/netns/NAME`), so the
//! live network part acts in a test namespace while files go under a temporary root.
//!
//! The process also enters that namespace before anything else, as the agent lives in
//! its guest's namespace (and qemu-guest-agent in the bench runs inside it under `ip
//! netns exec`): the netlink sockets are then made on the calling thread, where from the
//! host's namespace each would be made on a thread spawned to enter it, one per push,
//! which a real guest never pays and which was timed as the agent's.

use std::io;
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
    if let Some(path) = &netns {
        // Still one thread: every thread the runtime starts inherits the namespace.
        let entered = std::fs::File::open(path).and_then(|f| {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
        if let Err(e) = entered {
            eprintln!(
                "xenchan-bench-agent: cannot enter the network namespace {}: {e}",
                path.display()
            );
            return Exit::Unavailable.into();
        }
    }
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
