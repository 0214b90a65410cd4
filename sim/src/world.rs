//! A whole simulation: a folder, xenstore, a broker (optional), and domains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use xenchan_api::client::Client;
use xenchan_api::config::Config;

use crate::binaries::{Binaries, BinariesError};
use crate::bridge::MAX_SOCKET_PATH;
use crate::broker::{self, Broker, BrokerError};
use crate::cluster::{self, ClusterError, SimCluster, SimHost};
use crate::domain::{Domain, DomainError, DomainSpec, SimEnv};

/// Prefix of the simulation folders made under `$TMPDIR`.
pub const TEMP_PREFIX: &str = "xcs-";

/// The longest domain name the simulator accepts (like the broker's rule).
pub const MAX_NAME: usize = 64;

/// Why the simulation failed.
#[derive(Debug, Error)]
pub enum SimError {
    /// The binaries are not available.
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    /// The folder cannot be used.
    #[error("cannot use {}", path.display())]
    Dir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Socket paths would be too long for unix sockets.
    #[error("{} is too long for unix socket paths ({len} bytes with a 16-character domain name; at most {MAX_SOCKET_PATH}); use a shorter folder (e.g. TMPDIR=/tmp)", path.display())]
    PathTooLong {
        /// The folder.
        path: PathBuf,
        /// The longest resulting socket path's length.
        len: usize,
    },
    /// A domain name the broker would ignore.
    #[error(
        "invalid domain name {0:?}: 1-64 characters of A-Z a-z 0-9 _ . -, not starting with '.'"
    )]
    BadName(String),
    /// A domain with this name exists.
    #[error("domain {0} exists already")]
    Duplicate(String),
    /// No such domain.
    #[error("no domain named {0}")]
    NoDomain(String),
    /// A domain operation failed.
    #[error("domain {name}")]
    Domain {
        /// Which.
        name: String,
        /// Why.
        #[source]
        source: DomainError,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The simulation has no broker.
    #[error("no broker is running in this simulation")]
    NoBroker,
    /// The hosts (`--hosts N`) could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// No such host.
    #[error("no host number {0} in this simulation")]
    NoHost(usize),
}

/// Where and how a simulation runs.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The folder; `None` makes a fresh one under `$TMPDIR` (removed at the end unless
    /// `keep`).
    pub dir: Option<PathBuf>,
    /// Keep the folder at the end.
    pub keep: bool,
    /// Where the binaries are (see [`Binaries::locate`]).
    pub bin_dir: Option<PathBuf>,
}

/// A running simulation.
#[derive(Debug)]
pub struct Sim {
    env: Arc<SimEnv>,
    temp: Option<tempfile::TempDir>,
    broker: Option<Broker>,
    /// Several hosts on one etcd (`--hosts N`, N >= 2); `broker` is then `None`.
    cluster: Option<Box<SimCluster>>,
    domains: BTreeMap<String, Domain>,
    numbered: u32,
    started: std::time::Instant,
}

/// Checks a domain name like the broker does (`xenchan_api::DomainName`).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Sim {
    /// Locates the binaries, makes the folder and starts xenstore.
    pub async fn new(opts: SimOptions) -> Result<Sim, SimError> {
        let bin_dir = opts.bin_dir.clone();
        let bins = tokio::task::spawn_blocking(move || Binaries::locate(bin_dir.as_deref()))
            .await
            .map_err(|e| SimError::Binaries(BinariesError::NoExe(std::io::Error::other(e))))??;
        Sim::with_binaries(&opts, bins)
    }

    /// Like [`Sim::new`] with binaries already located.
    pub fn with_binaries(opts: &SimOptions, bins: Binaries) -> Result<Sim, SimError> {
        if let Some(d) = &opts.dir {
            let len = d.join("sockets/vm-with-a-16ch.sock").as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(SimError::PathTooLong {
                    path: d.clone(),
                    len,
                });
            }
        }
        let (dir, temp) = if let Some(d) = &opts.dir {
            std::fs::create_dir_all(d).map_err(|source| SimError::Dir {
                path: d.clone(),
                source,
            })?;
            (d.clone(), None)
        } else {
            let t = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempdir()
                .map_err(|source| SimError::Dir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (t.path().to_path_buf(), Some(t))
        };
        // `<dir>/sockets/<name>.sock` must fit in sun_path for names of a usual length;
        // longer names are refused when their socket is made.
        let len = dir.join("sockets/vm-with-a-16ch.sock").as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SimError::PathTooLong { path: dir, len });
        }
        let env = SimEnv::new(&dir, bins).map_err(|source| SimError::Domain {
            name: "(simulation)".into(),
            source,
        })?;
        let temp = if opts.keep {
            temp.map(tempfile::TempDir::keep);
            None
        } else {
            temp
        };
        Ok(Sim {
            env: Arc::new(env),
            temp,
            broker: None,
            cluster: None,
            domains: BTreeMap::new(),
            numbered: 0,
            started: std::time::Instant::now(),
        })
    }

    /// The simulation folder.
    pub fn dir(&self) -> &Path {
        &self.env.dir
    }

    /// What domains share (paths, binaries, xenstore).
    pub fn env(&self) -> &Arc<SimEnv> {
        &self.env
    }

    /// The broker config this simulation uses (before [`start_broker`](Self::start_broker)
    /// tweaks it).
    pub fn broker_config(&self) -> Config {
        broker::config_for(&self.env.dir, &self.env.socket_dir)
    }

    /// Starts the broker with this simulation's paths and `tweak` applied to its config.
    pub async fn start_broker(
        &mut self,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<&mut Broker, SimError> {
        let mut config = self.broker_config();
        tweak(&mut config);
        let b = Broker::start(
            &self.env.bins.broker,
            &self.env.dir,
            &self.env.logs_dir,
            config,
        )
        .await?;
        Ok(self.broker.insert(b))
    }

    /// Starts `hosts` hosts (2 or more) on one new local etcd: `sim-h1`, `sim-h2`...,
    /// each with its own broker in cluster mode (`tweak` applied to each config) and its
    /// socket folder, state and control socket under `<dir>/h<i>/`. Their logs are
    /// `<dir>/logs/broker-h<i>.log`.
    pub async fn start_hosts(
        &mut self,
        hosts: usize,
        tweak: impl Fn(&mut Config),
    ) -> Result<(), SimError> {
        cluster::require_etcd(hosts)?;
        let etcd = xenchan_cluster::local::Etcd::start().await;
        let observer = cluster::observer(&etcd.client_url).await?;
        let mut started = Vec::with_capacity(hosts);
        for i in 1..=hosts {
            let name = cluster::host_name(i);
            let dir = cluster::host_dir(&self.env.dir, i);
            let socket_dir = dir.join("sockets");
            std::fs::create_dir_all(&socket_dir).map_err(|source| ClusterError::Dir {
                path: socket_dir.clone(),
                source,
            })?;
            let mut config = cluster::host_config(&dir, &name, &etcd.client_url);
            tweak(&mut config);
            let b = Broker::start_at(
                &self.env.bins.broker,
                &dir.join("broker.toml"),
                &self.env.logs_dir.join(format!("broker-h{i}.log")),
                config,
            )
            .await;
            match b {
                Ok(broker) => started.push(SimHost {
                    name,
                    dir,
                    socket_dir,
                    broker,
                    lost: false,
                }),
                Err(e) => {
                    for mut h in started {
                        h.broker.stop().await;
                    }
                    return Err(e.into());
                }
            }
        }
        self.cluster = Some(Box::new(SimCluster {
            hosts: started,
            observer,
            etcd,
        }));
        Ok(())
    }

    /// The hosts and their etcd, when there are several hosts.
    pub fn cluster(&self) -> Option<&SimCluster> {
        self.cluster.as_deref()
    }

    /// The hosts (empty unless [`start_hosts`](Self::start_hosts) ran).
    pub fn hosts(&self) -> &[SimHost] {
        self.cluster.as_ref().map_or(&[], |c| c.hosts.as_slice())
    }

    /// Host number `i` (0-based index into [`hosts`](Self::hosts)), to act on it.
    pub fn host_mut(&mut self, i: usize) -> Result<&mut SimHost, SimError> {
        self.cluster
            .as_mut()
            .and_then(|c| c.hosts.get_mut(i))
            .ok_or(SimError::NoHost(i + 1))
    }

    /// The index of the host the domain `name` runs on (whose socket folder holds its
    /// socket); `None` without hosts.
    pub fn host_of(&self, name: &str) -> Option<usize> {
        let d = self.domains.get(name)?;
        self.hosts()
            .iter()
            .position(|h| h.socket_dir == d.socket_dir())
    }

    /// An API client for the broker serving `name`: its host's, or the only broker.
    pub fn client_for(&self, name: &str) -> Result<Client, SimError> {
        match self.host_of(name) {
            Some(i) => Ok(self.hosts()[i].client()),
            None => self.client(),
        }
    }

    /// The broker (with hosts: the first host's).
    pub fn broker(&mut self) -> Result<&mut Broker, SimError> {
        if let Some(c) = self.cluster.as_mut() {
            return c
                .hosts
                .first_mut()
                .map(|h| &mut h.broker)
                .ok_or(SimError::NoBroker);
        }
        self.broker.as_mut().ok_or(SimError::NoBroker)
    }

    /// An API client for the broker (with hosts: the first host's).
    pub fn client(&self) -> Result<Client, SimError> {
        if let Some(h) = self.hosts().first() {
            return Ok(h.client());
        }
        self.broker
            .as_ref()
            .map(Broker::client)
            .ok_or(SimError::NoBroker)
    }

    /// A spec for the next numbered domain (`<prefix><NN>`, MAC and UUID of its own).
    pub fn next_spec(&mut self, prefix: &str) -> DomainSpec {
        self.numbered += 1;
        DomainSpec::new(format!("{prefix}{:02}", self.numbered), self.numbered)
    }

    /// Creates and boots domains, all at once.
    pub async fn add_domains(&mut self, specs: Vec<DomainSpec>) -> Result<(), SimError> {
        let agents = self.domains.len() + specs.len();
        if let Some(limit) = inotify_instance_limit()
            && agents + 8 > limit
        {
            tracing::warn!(
                "{agents} agents each need an inotify instance and this user may have {limit} \
                 (fs.inotify.max_user_instances): agents past the limit will fail to start; \
                 raise it with `sysctl fs.inotify.max_user_instances=1024`"
            );
            eprintln!(
                "warning: {agents} agents need {agents} inotify instances; fs.inotify.max_user_instances is {limit} \
                 (raise it: sysctl fs.inotify.max_user_instances=1024)"
            );
        }
        for s in &specs {
            if !valid_name(&s.name) {
                return Err(SimError::BadName(s.name.clone()));
            }
            if self.domains.contains_key(&s.name) {
                return Err(SimError::Duplicate(s.name.clone()));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for s in specs {
            let env = Arc::clone(&self.env);
            set.spawn(async move {
                let name = s.name.clone();
                Domain::create(env, s)
                    .await
                    .map_err(|source| SimError::Domain { name, source })
            });
        }
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(d)) => {
                    self.domains.insert(d.name().to_string(), d);
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(SimError::Domain {
                        name: "(task)".into(),
                        source: DomainError::NotRunning(e.to_string()),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// A domain.
    pub fn domain(&self, name: &str) -> Result<&Domain, SimError> {
        self.domains
            .get(name)
            .ok_or_else(|| SimError::NoDomain(name.into()))
    }

    /// A domain, to act on it.
    pub fn domain_mut(&mut self, name: &str) -> Result<&mut Domain, SimError> {
        self.domains
            .get_mut(name)
            .ok_or_else(|| SimError::NoDomain(name.into()))
    }

    /// All domains by name.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// All domain names.
    pub fn names(&self) -> Vec<String> {
        self.domains.keys().cloned().collect()
    }

    /// Stops everything: agents (SIGTERM, so they say bye), domains, the broker; removes
    /// the folder unless it is kept. Returns whether the broker stopped cleanly.
    pub async fn shutdown(mut self) -> bool {
        self.write_transcripts();
        let mut set = tokio::task::JoinSet::new();
        for (_, mut d) in std::mem::take(&mut self.domains) {
            set.spawn(async move {
                d.shutdown().await;
            });
        }
        while set.join_next().await.is_some() {}
        let mut clean = match self.broker.as_mut() {
            Some(b) => b.stop().await,
            None => true,
        };
        if let Some(c) = self.cluster.take() {
            let mut c = *c;
            for h in &mut c.hosts {
                // A lost host's broker was killed on purpose: nothing to stop.
                let stopped = h.broker.stop().await;
                clean &= stopped || h.lost;
            }
            drop(c.etcd);
        }
        // Give the xenstore threads a moment to see their sockets go.
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(self.temp.take());
        clean
    }

    /// Writes each domain's channel transcript (what crossed it, decoded) to
    /// `<dir>/logs/<name>.channel.log`.
    pub fn write_transcripts(&self) {
        for d in self.domains.values() {
            let text = d.with_channel(|c| c.tap.transcript(self.started));
            let _ = std::fs::write(
                self.env.logs_dir.join(format!("{}.channel.log", d.name())),
                text,
            );
        }
    }

    /// Keeps the folder after the simulation ends (returns its path).
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.temp.take() {
            t.keep()
        } else {
            self.env.dir.clone()
        }
    }
}

/// `fs.inotify.max_user_instances`: how many inotify instances one user may hold (each
/// agent watches its channel folders with one).
pub fn inotify_instance_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()?
        .trim()
        .parse()
        .ok()
}
