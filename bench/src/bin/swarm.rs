//! `xenchan-bench-swarm --dir DIR [--first I] --count N [--prefix d] [--uuids]`: listens on N unix
//! sockets `DIR/<prefix>NNNNN.sock` (numbered from I) and answers the broker on each like an agent would (see
//! `xenchan_bench::swarm`). Prints `ready N` on stdout once every socket listens; runs
//! until SIGTERM/SIGINT or until stdin closes (its parent went away), then prints what
//! it did on stderr and removes the sockets.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Parser;
use std::io::Read;
use tokio::net::UnixListener;
use xenchan_bench::swarm::{Counters, serve_socket, socket_path, uuid_for};

/// Light guest emulator for the broker-scale benchmark.
#[derive(Debug, Parser)]
#[command(name = "xenchan-bench-swarm")]
struct Args {
    /// Folder for the sockets (keep it short: unix socket paths hold 107 bytes).
    #[arg(long)]
    dir: PathBuf,
    /// Number of the first domain (several swarms can share a folder: one process holds
    /// a listener and a connection per domain, and RLIMIT_NOFILE may not allow 20,000).
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// How many domains.
    #[arg(long)]
    count: usize,
    /// Socket name prefix (names are <prefix>NNNNN.sock).
    #[arg(long, default_value = "d")]
    prefix: String,
    /// Each domain's hellos report a VM UUID (`xenchan_bench::swarm::uuid_for`): cluster
    /// mode needs one, since a broker that recorded a UUID fails closed on an agent
    /// reporting none.
    #[arg(long)]
    uuids: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenchan-bench-swarm: {e:#}");
            xenchan_basics::Exit::IoErr.into()
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    // A listener and a connection per domain.
    let want = (args.count as u64) * 2 + 64;
    let got = xenchan_bench::procfs::raise_nofile(want);
    anyhow::ensure!(
        got >= want,
        "RLIMIT_NOFILE is {got}, {want} are needed for {} domains",
        args.count
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let counters = Arc::new(Counters::default());
        let mut paths = Vec::with_capacity(args.count);
        for i in args.first..args.first + args.count {
            let p = socket_path(&args.dir, &args.prefix, i);
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p).with_context(|| format!("bind {}", p.display()))?;
            let uuid = args.uuids.then(|| uuid_for(i));
            tokio::spawn(serve_socket(l, Arc::clone(&counters), uuid));
            paths.push(p);
        }
        println!("ready {}", args.count);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("signal handler")?;
        // The parent holds our stdin: EOF means it went away without stopping us.
        let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = gone_tx.send(());
        });
        let parent_gone = async {
            let _ = gone_rx.await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            () = parent_gone => {}
        }
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        eprintln!(
            "xenchan-bench-swarm: connections {} sessions {} results {}",
            counters.connections.load(Ordering::Relaxed),
            counters.sessions.load(Ordering::Relaxed),
            counters.results.load(Ordering::Relaxed)
        );
        anyhow::Ok(())
    })
}
