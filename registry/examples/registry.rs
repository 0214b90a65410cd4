//! A minimal host for the `registry` subcommand, mounted the way the `xenchan`
//! binary mounts it. Try:
//!
//! ```text
//! cargo run -p xenchan-registry --example registry -- registry --help
//! cargo run -p xenchan-registry --example registry -- --registry-dir /tmp/reg registry list
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenchan_registry::cli::{self, RegistryCommand};

/// Demo host for `xenchan registry`.
#[derive(Debug, Parser)]
#[command(name = "xenchan", bin_name = "xenchan")]
struct Args {
    #[arg(long, global = true, value_name = "DIR", env = "XENCHAN_REGISTRY_DIR",
          default_value = xenchan_registry::DEFAULT_REGISTRY_DIR, help = cli::REGISTRY_DIR_HELP)]
    registry_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(subcommand, about = cli::ABOUT, after_help = cli::AFTER_HELP)]
    Registry(RegistryCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Command::Registry(cmd) = args.command;
    let code = match cli::run(
        cmd,
        &args.registry_dir,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    ) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xenchan: {}", xenchan_registry::error_chain(&e));
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
