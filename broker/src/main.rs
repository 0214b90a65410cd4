//! `xenchan-broker`: the dom0 daemon. See `--help` and docs/BROKER.md.

use std::process::ExitCode;

use clap::Parser;
use xenchan_basics::chain;
use xenchan_basics::exit::{Exit, HasExit};
use xenchan_broker::cli::{Args, LogFormat};

/// jemalloc, not glibc's malloc: the broker allocates and frees small buffers per
/// request, frame and etcd message on every core, where glibc's arenas spent a tenth of
/// its CPU (docs/PERFORMANCE.md: configuring 10,000 domains in one bulk PUT took a third
/// less CPU). It replaces malloc for SQLite's C code as well (unprefixed symbols).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenchan-broker: {}", chain(&e));
            return Exit::Config.into();
        }
    };
    if args.check_config {
        print!("{}", config.to_toml());
        return Exit::Ok.into();
    }
    init_logs(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xenchan-broker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenchan-broker: cannot start the async runtime: {e}");
            return Exit::IoErr.into();
        }
    };
    match rt.block_on(xenchan_broker::run(
        config,
        xenchan_basics::signal::shutdown(),
    )) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            tracing::error!("{}", chain(&e));
            eprintln!("xenchan-broker: {}", chain(&e));
            e.exit().into()
        }
    }
}
