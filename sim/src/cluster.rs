//! Several simulated dom0 hosts on one etcd (`--hosts N`, docs/SIMULATOR.md "Cluster
//! mode"): a throwaway local etcd and one real broker per host in cluster mode
//! (`[store] backend = "etcd"`), each with its own socket folder, state folder and
//! control socket under `<dir>/h<i>/`, all on one etcd prefix, so that what etcd shares
//! between hosts (desired configurations, leases, ownership) is what is exercised.

use std::path::{Path, PathBuf};

use thiserror::Error;
use xenchan_api::client::Client;
use xenchan_api::config::{Backend, Config};
use xenchan_cluster::local::Etcd;

use crate::broker::{self, Broker};

/// Host names are `sim-h1`, `sim-h2`, ...
pub const HOST_PREFIX: &str = "sim-h";

/// The etcd prefix every host's broker uses.
pub const ETCD_PREFIX: &str = "/xenchan-sim/";

/// TTL of each host's etcd lease: how long after a host dies its domains can be taken
/// elsewhere. The broker's minimum, so a host loss plays out in seconds.
pub const HOST_TTL_MS: u64 = 2000;

/// Why the hosts could not be set up.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// No etcd binary.
    #[error(
        "--hosts {hosts} runs {hosts} brokers on one etcd, and no `etcd` binary was found on PATH \
         (install Debian's etcd-server, as scripts/setup.sh does, or set XENCHAN_ETCD to one); \
         --hosts 1 needs no etcd"
    )]
    NoEtcd {
        /// Hosts asked for.
        hosts: usize,
    },
    /// etcd did not answer the simulator's own client.
    #[error("etcd at {url}")]
    Etcd {
        /// Its client URL.
        url: String,
        /// Why.
        #[source]
        source: xenchan_cluster::ClusterError,
    },
    /// A host's folder could not be made.
    #[error("cannot make {}", path.display())]
    Dir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One simulated host: its folder and its broker.
#[derive(Debug)]
pub struct SimHost {
    /// Its name in the cluster (`store.host`): `sim-h<i>`.
    pub name: String,
    /// `<dir>/h<i>`: its broker's config, control socket, state and hooks.
    pub dir: PathBuf,
    /// `<dir>/h<i>/sockets`: where its QEMUs put their channel sockets.
    pub socket_dir: PathBuf,
    /// Its broker.
    pub broker: Broker,
    /// Its broker was killed on purpose (a lost host): it must not be running.
    pub lost: bool,
}

impl SimHost {
    /// An API client for its broker.
    pub fn client(&self) -> Client {
        self.broker.client()
    }
}

/// The hosts and their etcd.
pub struct SimCluster {
    /// The hosts, `sim-h1` first.
    pub hosts: Vec<SimHost>,
    /// The simulator's own etcd client (host `sim-observer`): reads who owns a domain,
    /// to judge the hand-offs from etcd itself rather than from a broker's account.
    pub observer: xenchan_cluster::Cluster,
    /// The etcd they share (killed when this is dropped, after the brokers stop).
    pub etcd: Etcd,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("hosts", &self.hosts)
            .field("etcd", &self.etcd.client_url)
            .finish_non_exhaustive()
    }
}

/// The simulator's observer on etcd at `url` (see [`SimCluster::observer`]).
pub async fn observer(url: &str) -> Result<xenchan_cluster::Cluster, ClusterError> {
    let config = xenchan_cluster::ClusterConfig {
        endpoints: vec![url.to_string()],
        prefix: ETCD_PREFIX.to_string(),
        host: "sim-observer".to_string(),
        timeouts: xenchan_cluster::Timeouts {
            connect: std::time::Duration::from_millis(500),
            request: std::time::Duration::from_secs(3),
            host_ttl: std::time::Duration::from_millis(HOST_TTL_MS),
        },
    };
    xenchan_cluster::Cluster::connect(&config)
        .await
        .map_err(|source| ClusterError::Etcd {
            url: url.to_string(),
            source,
        })
}

impl SimCluster {
    /// The host etcd names as the owner of the VM `uuid` (`None`: nobody owns it).
    pub async fn owner(&self, uuid: &str) -> Result<Option<String>, ClusterError> {
        let err = |source| ClusterError::Etcd {
            url: self.etcd.client_url.clone(),
            source,
        };
        let u = xenchan_cluster::Uuid::parse(uuid)
            .map_err(|e| err(xenchan_cluster::ClusterError::from(e)))?;
        Ok(self.observer.ownership(&u).await.map_err(err)?.owner)
    }
}

/// The folder of host number `i` (1-based) under the simulation folder.
pub fn host_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("h{i}"))
}

/// The name of host number `i` (1-based).
pub fn host_name(i: usize) -> String {
    format!("{HOST_PREFIX}{i}")
}

/// The control socket of host number `i` (1-based), known before its broker starts.
pub fn control_socket(dir: &Path, i: usize) -> PathBuf {
    host_dir(dir, i).join("broker.sock")
}

/// The broker config of host `name` whose folder is `host_dir`, on etcd at `etcd_url`:
/// every path under its folder, short etcd deadlines and the shortest host TTL.
pub fn host_config(host_dir: &Path, name: &str, etcd_url: &str) -> Config {
    let mut c = broker::config_for(host_dir, &host_dir.join("sockets"));
    c.store.backend = Backend::Etcd;
    c.store.endpoints = vec![etcd_url.to_string()];
    c.store.prefix = ETCD_PREFIX.to_string();
    c.store.host = Some(name.to_string());
    c.store.timeouts.connect = 500;
    c.store.timeouts.request = 3000;
    c.store.timeouts.host_ttl = HOST_TTL_MS;
    c
}

/// Checks that etcd can be run for `hosts` hosts (before anything is started).
pub fn require_etcd(hosts: usize) -> Result<(), ClusterError> {
    if xenchan_cluster::local::etcd_binary().is_none() {
        return Err(ClusterError::NoEtcd { hosts });
    }
    Ok(())
}
