//! `xenchan-broker`: the dom0 daemon. See `--help` and docs/BROKER.md.

use std::process::ExitCode;

use clap::Parser;
use xenchan_broker::cli::{Args, LogFormat};

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

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

async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the broker can still be killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenchan-broker: {}", chain(&e));
            return ExitCode::from(78);
        }
    };
    if args.check_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
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
            return ExitCode::from(74);
        }
    };
    match rt.block_on(xenchan_broker::run(config, signalled())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", chain(&e));
            eprintln!("xenchan-broker: {}", chain(&e));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
