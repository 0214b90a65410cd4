//! The `xenchan-broker` command line, as a library item so that man pages and shell
//! completions can be generated from it (`clap_mangen::Man::new(Args::command())`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::config::{Config, ConfigFileError, DEFAULT_CONFIG_PATH};

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald/collectors).
    Json,
}

/// The xenchan dom0 broker: finds each domain's channel socket, pushes the desired
/// configuration to the guest's agent and serves the control API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "xenchan-broker",
    version,
    after_help = "\
The configuration file is TOML; every key is optional and unknown keys are refused.
Print the effective configuration (all defaults filled in) with --check-config.
Domains are found in the socket folder (discovery = \"socket-dir\", the default) or in
xenstore's console backends (discovery = \"xenstore\", xenstore_path = the xenstored
socket; default: $XENSTORED_PATH, else /run/xenstored/socket, else /dev/xen/xenbus).

Examples:
  xenchan-broker                                   # /etc/xenchan/broker.toml if present
  xenchan-broker --config /etc/xenchan/broker.toml
  xenchan-broker --config ./test.toml --check-config
  RUST_LOG=xenchan_broker=debug xenchan-broker --log-format json

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or configuration valid;
2 usage; 65 cluster mode: the local cache was filled in another etcd cluster;
69 another broker holds the state folder, or cluster mode: etcd unreachable and
this broker never joined its cluster; 74 I/O error (store, folders, etcd);
78 configuration error (unreadable or invalid file, unusable socket path).
See docs/BROKER.md and docs/API.md."
)]
pub struct Args {
    /// Configuration file [default: /etc/xenchan/broker.toml; if that file does not exist the
    /// built-in defaults are used]. An explicitly given file must exist.
    #[arg(long, short = 'c', env = "XENCHAN_BROKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print the effective configuration as TOML and exit
    /// (0 if valid, 78 if not).
    #[arg(long)]
    pub check_config: bool,

    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Args {
    /// Loads the configuration these arguments name: `--config` (which must exist), else
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else the built-in defaults.
    pub fn load_config(&self) -> Result<Config, ConfigFileError> {
        if let Some(p) = &self.config {
            return Config::load(p);
        }
        let p = PathBuf::from(DEFAULT_CONFIG_PATH);
        if p.exists() {
            Config::load(&p)
        } else {
            Ok(Config::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_is_well_formed_and_parses() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "xenchan-broker",
            "--config",
            "/x.toml",
            "--check-config",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/x.toml")));
        assert!(a.check_config);
        assert_eq!(a.log_format, LogFormat::Json);
        let e = Args::try_parse_from(["xenchan-broker", "--log-format", "xml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
