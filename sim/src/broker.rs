//! The real broker as a child process: its TOML (written from the broker's own config
//! type, so the keys cannot drift), start and wait for its API, stop, kill, restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use xenchan_api::client::Client;
use xenchan_api::config::Config;

use crate::process::Proc;

/// How long the broker may take to answer `GET /v1/health` after start.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Why the broker could not be run.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// Its config could not be written.
    #[error("cannot write the broker config {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It could not be started.
    #[error("cannot start {}", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited during start-up.
    #[error("the broker exited during start-up with {status}; its log {} ends with:\n{tail}", log.display())]
    Exited {
        /// How.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// Its API did not answer in time.
    #[error("the broker's API at {} did not answer within {} s; see {}", socket.display(), READY_DEADLINE.as_secs(), log.display())]
    NotReady {
        /// The control socket.
        socket: PathBuf,
        /// Its log.
        log: PathBuf,
    },
}

/// The broker settings a simulation uses: every path under the simulation folder.
pub fn config_for(dir: &Path, socket_dir: &Path) -> Config {
    let mut c = Config {
        socket_dir: socket_dir.to_path_buf(),
        control_socket: dir.join("broker.sock"),
        state_dir: dir.join("broker-state"),
        hooks_dir: dir.join("hooks"),
        registry_dir: dir.join("registry.d"),
        ..Config::default()
    };
    // A rebooted guest's socket comes back within seconds here, not minutes.
    c.timeouts.reconnect_min = 100;
    c.timeouts.reconnect_max = 1000;
    c
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    config: Config,
    config_path: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    proc: Option<Proc>,
    starts: u32,
}

/// Last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `config` as TOML holding only what differs from the defaults, the way an operator
/// writes one. Besides being readable in a run's folder, it keeps the file valid for a
/// broker of an older version (the bench's `--baseline-bin-dir`): a field added since
/// that version is only written when a run sets it.
pub fn minimal_toml(config: &Config) -> Result<String, toml::ser::Error> {
    fn strip(value: &mut toml::Value, default: &toml::Value) {
        let (toml::Value::Table(t), toml::Value::Table(d)) = (value, default) else {
            return;
        };
        t.retain(|k, v| match d.get(k) {
            Some(dv) if dv == v => false,
            Some(dv @ toml::Value::Table(_)) => {
                strip(v, dv);
                !matches!(v, toml::Value::Table(t) if t.is_empty())
            }
            _ => true,
        });
    }
    let mut value = toml::Value::try_from(config)?;
    let default = toml::Value::try_from(Config::default())?;
    strip(&mut value, &default);
    toml::to_string(&value)
}

impl Broker {
    /// Writes `config` to `<dir>/broker.toml` and starts `bin` with it, logging to
    /// `<logs>/broker.log`.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        logs: &Path,
        config: Config,
    ) -> Result<Broker, BrokerError> {
        Broker::start_at(
            bin,
            &dir.join("broker.toml"),
            &logs.join("broker.log"),
            config,
        )
        .await
    }

    /// Writes `config` to `config_path` and starts `bin` with it, logging to `log` (one
    /// of several hosts' brokers).
    pub async fn start_at(
        bin: &Path,
        config_path: &Path,
        log: &Path,
        config: Config,
    ) -> Result<Broker, BrokerError> {
        let config_path = config_path.to_path_buf();
        let text = minimal_toml(&config).map_err(|e| BrokerError::Config {
            path: config_path.clone(),
            source: std::io::Error::other(e),
        })?;
        for d in [&config.hooks_dir, &config.registry_dir] {
            std::fs::create_dir_all(d).map_err(|source| BrokerError::Config {
                path: d.clone(),
                source,
            })?;
        }
        std::fs::write(&config_path, text).map_err(|source| BrokerError::Config {
            path: config_path.clone(),
            source,
        })?;
        let mut b = Broker {
            config,
            config_path,
            log: log.to_path_buf(),
            bin: bin.to_path_buf(),
            proc: None,
            starts: 0,
        };
        b.launch().await?;
        Ok(b)
    }

    async fn launch(&mut self) -> Result<(), BrokerError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config_path).env(
            "RUST_LOG",
            std::env::var("XENCHAN_SIM_BROKER_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut proc =
            Proc::spawn("broker", cmd, &self.log).map_err(|source| BrokerError::Spawn {
                path: self.bin.clone(),
                source,
            })?;
        self.starts += 1;
        let client = self.client().with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(st) = proc.try_wait() {
                return Err(BrokerError::Exited {
                    status: st.to_string(),
                    log: self.log.clone(),
                    tail: tail(&self.log, 20),
                });
            }
            if client.health().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = proc.kill().await;
                return Err(BrokerError::NotReady {
                    socket: self.config.control_socket.clone(),
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// An API client.
    pub fn client(&self) -> Client {
        Client::new(&self.config.control_socket)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Whether it is running (started and not exited).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.try_wait().is_none())
    }

    /// Graceful stop (SIGTERM; SIGKILL after 15 s). Returns whether it exited with 0.
    pub async fn stop(&mut self) -> bool {
        match self.proc.take() {
            Some(mut p) => p
                .terminate(Duration::from_secs(15))
                .await
                .is_ok_and(|s| s.success()),
            None => true,
        }
    }

    /// A crash: SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill().await;
        }
    }

    /// Starts it again with the same config (after [`stop`](Self::stop) or [`kill`](Self::kill)).
    pub async fn restart(&mut self) -> Result<(), BrokerError> {
        if self.proc.is_some() {
            self.stop().await;
        }
        self.launch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_holds_only_what_differs_and_reads_back_the_same() {
        let origin = Path::new("broker.toml");
        let default = minimal_toml(&Config::default()).unwrap();
        assert_eq!(default.trim(), "", "defaults are not written: {default}");
        let mut c = Config {
            socket_dir: PathBuf::from("/tmp/x/sockets"),
            ..Config::default()
        };
        c.timeouts.hello += 1;
        let text = minimal_toml(&c).unwrap();
        assert!(
            text.contains("socket_dir") && text.contains("hello"),
            "{text}"
        );
        assert!(
            !text.contains("facts"),
            "an unchanged field is left out: {text}"
        );
        assert_eq!(Config::parse(&text, origin).unwrap(), c);
    }
}
