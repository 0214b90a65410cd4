//! `xenchan-broker`: the dom0 daemon. See `--help` and docs/BROKER.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use xenchan_broker::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald/collectors).
    Json,
}

/// The xenchan dom0 broker: finds each domain's channel socket, pushes the desired
/// configuration to the guest's agent and serves the control API.
#[derive(Debug, Parser)]
#[command(
    name = "xenchan-broker",
    version,
    after_help = "\
The configuration file is TOML; every key is optional and unknown keys are refused.
Print the effective configuration (all defaults filled in) with --check-config.

Examples:
  xenchan-broker                                   # /etc/xenchan/broker.toml if present
  xenchan-broker --config /etc/xenchan/broker.toml
  xenchan-broker --config ./test.toml --check-config
  RUST_LOG=xenchan_broker=debug xenchan-broker --log-format json

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or configuration valid;
2 usage; 69 another broker holds the state folder; 74 I/O error (store, folders);
78 configuration error (unreadable or invalid file, unusable socket path).
See docs/BROKER.md and docs/API.md."
)]
struct Args {
    /// Configuration file [default: /etc/xenchan/broker.toml; if that file does not exist the
    /// built-in defaults are used]. An explicitly given file must exist.
    #[arg(long, short = 'c', env = "XENCHAN_BROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate the configuration, print the effective configuration as TOML and exit
    /// (0 if valid, 78 if not).
    #[arg(long)]
    check_config: bool,

    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn load(args: &Args) -> Result<Config, xenchan_broker::ConfigFileError> {
    if let Some(p) = &args.config {
        return Config::load(p);
    }
    let p = PathBuf::from(DEFAULT_CONFIG_PATH);
    if p.exists() {
        Config::load(&p)
    } else {
        Ok(Config::default())
    }
}

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
    let config = match load(&args) {
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
