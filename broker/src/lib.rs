//! xenchan-broker: the dom0 side of xenchan (docs/ARCHITECTURE.md).
//!
//! It finds each domain's channel socket (`<socket_dir>/<vm>.sock`, or the console
//! backends in xenstore), keeps one session per domain with the guest's agent, pushes the desired configuration that operators put
//! through the control API, records what the agent reports in an embedded store, takes
//! and releases address and hostname leases, and runs hooks. See docs/BROKER.md.
//!
//! The entry point is [`run`]; [`client::Client`] talks to a running broker;
//! [`cli::Args`] is the binary's command line.

pub mod api;
pub mod audit;
pub mod budget;
pub mod cli;
/// The control API client (moved to the API crate; the path stays for the broker's code).
pub use xenchan_api::client;
mod clock;
mod cluster_sync;
pub mod config;
mod discovery;
mod domains;
pub mod fdlimit;
pub mod hooks;
pub mod leases;
mod lock;
pub mod metrics;
mod ops;
mod outq;
/// Name and path checks (moved to the API crate).
pub use xenchan_api::paths;
mod session;
pub mod store;
mod transport;
/// The control socket's ACL rule, public for the role tests (tests/tests/roles.rs).
pub use transport::acl;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use xenchan_basics::exit::{Exit, HasExit};

pub use config::{Config, ConfigFileError, Discovery, Mode};
pub use discovery::DiscoveryError;
pub use lock::LockError;
pub use store::StoreError;

use crate::domains::Shared;
use crate::hooks::Hooks;
use crate::lock::StateLock;
use crate::metrics::Metrics;
use crate::store::etcd::JoinError;
use crate::store::sqlite::EventRetention;
use crate::store::{EtcdStore, SqliteStore, Store};

/// Why the broker could not start (or stopped on an error).
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is not usable.
    #[error("invalid configuration")]
    Config(#[from] ConfigFileError),
    /// Another broker holds the state folder.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store could not be opened or read.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A folder or socket could not be set up.
    #[error("cannot set up {what} {}", path.display())]
    Io {
        /// What it was for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be bound.
    #[error("cannot serve the control API: {0}")]
    Control(String),
    /// The socket folder cannot be watched.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Cluster mode cannot start (docs/CLUSTER.md, "Failure modes").
    #[error(transparent)]
    Cluster(#[from] store::etcd::JoinError),
}

/// The sysexits code the binary exits with.
impl HasExit for BrokerError {
    fn exit(&self) -> Exit {
        match self {
            BrokerError::Config(_) | BrokerError::Control(_) => Exit::Config,
            BrokerError::Lock(_) => Exit::Unavailable,
            BrokerError::Store(_) | BrokerError::Io { .. } | BrokerError::Discovery(_) => {
                Exit::IoErr
            }
            BrokerError::Cluster(e) => match e {
                // etcd is a service the broker needs and, never joined, cannot do without.
                JoinError::NeverJoined(_) => Exit::Unavailable,
                // The cache is another cluster's: data, not a transient failure.
                JoinError::Mismatch { .. } => Exit::DataErr,
                JoinError::Cache(_) | JoinError::Etcd(_) => Exit::IoErr,
            },
        }
    }
}

fn make_dir(
    what: &'static str,
    path: &std::path::Path,
    mode: Option<u32>,
) -> Result<(), BrokerError> {
    let err = |source| BrokerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(err)?;
        if let Some(m) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).map_err(err)?;
        }
    }
    Ok(())
}

/// Runs the broker with `config` until `shutdown` completes, then stops gracefully:
/// sessions say bye, running API requests finish, the store is closed and the control
/// socket removed. Tells systemd READY once the control API listens.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BrokerError> {
    config.validate(std::path::Path::new("<config>"))?;
    let config = Arc::new(config);
    // The store holds ssh keys and addresses: private to the broker's user.
    make_dir("state folder", &config.state_dir, Some(0o700))?;
    if let Some(parent) = config.control_socket.parent() {
        make_dir("control socket folder", parent, None)?;
    }
    make_dir("socket folder", &config.socket_dir, None)?;
    let lock = StateLock::acquire(&config.lock_path())?;
    // A descriptor per session: raise the soft limit, and say so when it is still short.
    fdlimit::check(&config);
    // A hook timeout past the API's request timeout, or a request timeout past the
    // libvirt hook's deadline, turns a refusing hook into a timeout its caller cannot
    // read: said loudly at start (docs/OPERATING.md, "Deadlines").
    if let Err(why) = xenchan_api::config::check_deadline_order(&config) {
        tracing::warn!("timeouts out of order: {why}");
    }
    for warning in xenchan_registry::startup_check(&config.channel, &config.registry_dir) {
        tracing::warn!("{warning}");
    }

    let (sqlite, store_thread) = SqliteStore::open_with(
        &config.db_path(),
        config.limits.history,
        EventRetention {
            total: config.limits.events,
            per_domain: config.limits.events_per_domain(),
        },
    )?;
    let (store, cluster): (Arc<dyn Store>, Option<Arc<EtcdStore>>) = match config.store.backend {
        config::Backend::Sqlite => (Arc::new(sqlite), None),
        config::Backend::Etcd => {
            let etcd = Arc::new(connect_cluster(&config, sqlite).await?);
            (Arc::clone(&etcd) as Arc<dyn Store>, Some(etcd))
        }
    };
    let records = store.load_all().await?;
    tracing::info!(
        domains = records.len(),
        "store loaded from {}",
        config.db_path().display()
    );
    let stop_sync = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let hooks = Hooks::start(
        config.hooks_dir.clone(),
        config.timeouts.hook(),
        config.limits.hook_stderr,
        config.limits.hook_queue,
        config.limits.hook_queue_per_domain,
        Arc::clone(&metrics),
    );
    let shared = Arc::new(Shared::new(
        Arc::clone(&config),
        Arc::clone(&store),
        metrics,
        hooks,
        records,
    ));
    let _ = store.event(None, "start", "broker started").await;
    drop(store);
    let cluster_sync = cluster.map(|etcd| {
        tokio::spawn(cluster_sync::run(
            Arc::clone(&shared),
            etcd,
            stop_sync.clone(),
        ))
    });

    // Bound under a temporary name and renamed once it is 0660: the control socket
    // never exists with the umask's permissions.
    let listener = transport::bind_socket_with_mode(&config.control_socket, 0o660)
        .map_err(BrokerError::Control)?;
    // The socket's group is the operators'; read-only callers get in by an ACL entry.
    let ro = &config.control.read_only_group;
    if let Ok(Some(g)) = nix::unistd::Group::from_name(ro) {
        for problem in
            transport::acl::open_socket_to_group(&config.control_socket, g.gid.as_raw(), ro)
        {
            tracing::warn!("control.read_only_group: {problem}");
        }
    }
    let stop = CancellationToken::new();
    let server = tokio::spawn(api::serve(listener, Arc::clone(&shared), stop.clone()));

    let discovery = match config.mode {
        Mode::Connect => match discovery::start(Arc::clone(&shared), stop.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                stop.cancel();
                let _ = server.await;
                let _ = std::fs::remove_file(&config.control_socket);
                return Err(e.into());
            }
        },
        Mode::Listen => None,
    };
    // Listen mode's sockets, and prepared domains' sockets outside the socket folder.
    shared.resume();
    tracing::info!(
        control = %config.control_socket.display(),
        sockets = %config.socket_dir.display(),
        mode = ?config.mode,
        discovery = ?config.discovery,
        "broker ready"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    shutdown.await;

    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    stop_sync.cancel();
    if let Some(s) = cluster_sync {
        let _ = s.await;
    }
    if let Some(d) = discovery {
        let _ = d.await;
    }
    shared.stop_all().await;
    let _ = server.await;
    let _ = std::fs::remove_file(&config.control_socket);
    let _ = shared.store.event(None, "stop", "broker stopped").await;
    drop(shared);
    // Every write was committed before its caller went on; joining only makes sure the
    // database is closed before the lock is released.
    let joined = tokio::task::spawn_blocking(move || store_thread.join());
    let _ = tokio::time::timeout(config.timeouts.shutdown(), joined).await;
    drop(lock);
    Ok(())
}

/// Joins the etcd cluster of `[store]` over the local cache (cluster mode), or starts
/// from the cache when etcd cannot be reached and the cache knows the cluster.
async fn connect_cluster(config: &Config, local: SqliteStore) -> Result<EtcdStore, BrokerError> {
    let cc = store::etcd::cluster_config(config).map_err(|(key, message)| {
        BrokerError::Config(ConfigFileError::Invalid {
            path: PathBuf::from("<config>"),
            key,
            message,
        })
    })?;
    tracing::info!(
        endpoints = ?cc.endpoints,
        prefix = %cc.prefix,
        host = %cc.host,
        "joining the etcd cluster"
    );
    // Boxed: joining is a large future (etcd's client), and `run` awaits this one.
    Ok(Box::pin(EtcdStore::start(&cc, local)).await?)
}
