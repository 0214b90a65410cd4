//! The connection to etcd: one `Cluster` per broker, holding the etcd client, this host's
//! etcd lease (kept alive by a task) and the deadline-bounded call wrapper every operation
//! goes through.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnResponse};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use xenchan_basics::Backoff;

use crate::config::{ClusterConfig, Timeouts};
use crate::error::{ClusterError, is_transient};
use crate::keys::Keyspace;

/// The end of one call: every retry of a transient error happens before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) op: &'static str,
    pub(crate) budget: Duration,
}

/// This host's etcd lease: the id ownership keys are bound to, and how many times it had to
/// be granted anew (each time, every ownership key of the old one is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLease {
    pub id: i64,
    /// 0 for the lease granted at connect; one more after each expiry.
    pub epoch: u64,
}

/// A broker's handle on the cluster.
pub struct Cluster {
    pub(crate) client: Client,
    pub(crate) keys: Keyspace,
    pub(crate) host: String,
    pub(crate) endpoints: String,
    pub(crate) timeouts: Timeouts,
    pub(crate) lease_id: Arc<AtomicI64>,
    lease_rx: watch::Receiver<HostLease>,
    keepalive: JoinHandle<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.host)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.keys.prefix())
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Without keepalives the host's lease expires after its TTL and its ownership keys
        // vanish, exactly as when the host dies: a dropped `Cluster` is a lost host.
        self.keepalive.abort();
    }
}

impl Cluster {
    /// Connects, grants this host's lease (TTL `timeouts.host_ttl`), writes the host's
    /// liveness key and starts the keepalive task. `Unavailable` when etcd does not answer
    /// within `timeouts.request`: the caller retries (with backoff) or runs on its cache.
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        let keys = config.check()?;
        let t = config.timeouts;
        let endpoints = config.endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(t.connect)
            .with_timeout(t.request)
            // Without a leader etcd would queue the request; fail fast and retry instead,
            // so that "no quorum" becomes `Unavailable` within the deadline.
            .with_require_leader(true)
            .with_keep_alive(t.connect, t.connect);
        let dl = deadline(&t, "connect");
        let client =
            match tokio::time::timeout_at(dl.at, Client::connect(&config.endpoints, Some(options)))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) if is_transient(&e) => {
                    return Err(ClusterError::timed_out(
                        &endpoints,
                        "connect",
                        t.request,
                        Some(e),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(ClusterError::Etcd {
                        op: "connect",
                        source: e,
                    });
                }
                Err(_) => {
                    return Err(ClusterError::timed_out(
                        &endpoints, "connect", t.request, None,
                    ));
                }
            };
        let id = grant(&client, &keys, &config.host, &endpoints, &t).await?;
        let lease_id = Arc::new(AtomicI64::new(id));
        let (tx, lease_rx) = watch::channel(HostLease { id, epoch: 0 });
        let keepalive = tokio::spawn(keepalive_task(
            client.clone(),
            keys.clone(),
            config.host.clone(),
            endpoints.clone(),
            t,
            Arc::clone(&lease_id),
            tx,
        ));
        Ok(Cluster {
            client,
            keys,
            host: config.host.clone(),
            endpoints,
            timeouts: t,
            lease_id,
            lease_rx,
            keepalive,
        })
    }

    /// This broker's identity in the cluster.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keys
    }

    /// The current host lease; `changed()` on the receiver wakes when it was granted anew
    /// after an expiry (then claim the running domains again).
    pub fn host_lease(&self) -> watch::Receiver<HostLease> {
        self.lease_rx.clone()
    }

    /// Leaves the cluster now: revokes the host lease, so every ownership key of this host
    /// vanishes at once instead of after the TTL.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.keepalive.abort();
        let id = self.lease_id.load(Ordering::SeqCst);
        let dl = self.deadline("leave");
        self.attempt(&dl, |mut c| async move { c.lease_revoke(id).await })
            .await
            .map(drop)
    }

    pub(crate) fn deadline(&self, op: &'static str) -> Deadline {
        deadline(&self.timeouts, op)
    }

    pub(crate) fn lease(&self) -> i64 {
        self.lease_id.load(Ordering::SeqCst)
    }

    /// Runs `f` until it succeeds, fails for good, or the deadline passes; transient
    /// failures (no connection, no leader) are retried with backoff inside the deadline.
    pub(crate) async fn attempt<T, F, Fut>(&self, dl: &Deadline, f: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        attempt(&self.client, &self.endpoints, dl, f).await
    }

    /// One key's current value, if any.
    pub(crate) async fn get_kv(
        &self,
        dl: &Deadline,
        key: &str,
    ) -> Result<Option<KeyValue>, ClusterError> {
        let key = key.to_string();
        let mut resp = self
            .attempt(dl, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// Every key under a prefix.
    pub(crate) async fn get_prefix(
        &self,
        dl: &Deadline,
        prefix: &str,
    ) -> Result<(i64, Vec<KeyValue>), ClusterError> {
        let prefix = prefix.to_string();
        let mut resp = self
            .attempt(dl, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        Ok((rev, resp.take_kvs()))
    }

    pub(crate) async fn txn(&self, dl: &Deadline, txn: Txn) -> Result<TxnResponse, ClusterError> {
        self.attempt(dl, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }
}

fn deadline(t: &Timeouts, op: &'static str) -> Deadline {
    Deadline {
        at: Instant::now() + t.request,
        op,
        budget: t.request,
    }
}

async fn attempt<T, F, Fut>(
    client: &Client,
    endpoints: &str,
    dl: &Deadline,
    f: F,
) -> Result<T, ClusterError>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    let mut last = None;
    loop {
        match tokio::time::timeout_at(dl.at, f(client.clone())).await {
            Err(_) => return Err(ClusterError::timed_out(endpoints, dl.op, dl.budget, last)),
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_lease_not_found(&e) => {
                return Err(ClusterError::LeaseLost);
            }
            Ok(Err(e)) if is_transient(&e) => {
                tracing::debug!(op = dl.op, error = %e, "etcd transient error, retrying");
                last = Some(e);
                let wake = (Instant::now() + backoff.next_delay()).min(dl.at);
                tokio::time::sleep_until(wake).await;
                if Instant::now() >= dl.at {
                    return Err(ClusterError::timed_out(endpoints, dl.op, dl.budget, last));
                }
            }
            Ok(Err(e)) => {
                return Err(ClusterError::Etcd {
                    op: dl.op,
                    source: e,
                });
            }
        }
    }
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("requested lease not found"))
}

/// Grants a lease of `host_ttl` and writes the host's liveness key bound to it.
async fn grant(
    client: &Client,
    keys: &Keyspace,
    host: &str,
    endpoints: &str,
    t: &Timeouts,
) -> Result<i64, ClusterError> {
    let ttl = i64::try_from(t.host_ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let dl = deadline(t, "grant host lease");
    let resp = attempt(client, endpoints, &dl, |mut c| async move {
        c.lease_grant(ttl, None).await
    })
    .await?;
    let id = resp.id();
    let key = keys.host(host);
    let value = host.to_string();
    attempt(client, endpoints, &dl, |mut c| {
        let (key, value) = (key.clone(), value.clone());
        async move {
            c.put(key, value, Some(PutOptions::new().with_lease(id)))
                .await
        }
    })
    .await?;
    Ok(id)
}

/// Keeps the host lease alive every third of its TTL. When etcd answers that the lease is
/// gone (TTL 0: keepalives could not reach a quorum for longer than the TTL), grants a new
/// one and announces it, so that the broker claims its domains again.
async fn keepalive_task(
    client: Client,
    keys: Keyspace,
    host: String,
    endpoints: String,
    t: Timeouts,
    lease_id: Arc<AtomicI64>,
    tx: watch::Sender<HostLease>,
) {
    let period = t.host_ttl / 3;
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        period.max(Duration::from_millis(200)),
    );
    let mut epoch = 0;
    loop {
        let id = lease_id.load(Ordering::SeqCst);
        match keep_alive_once(&client, id, &t).await {
            Ok(ttl) if ttl > 0 => {
                backoff.reset();
                tokio::time::sleep(period).await;
            }
            Ok(_) => {
                tracing::warn!(
                    host,
                    lease = id,
                    "host lease expired: ownership keys are gone, granting a new lease"
                );
                match grant(&client, &keys, &host, &endpoints, &t).await {
                    Ok(new) => {
                        epoch += 1;
                        lease_id.store(new, Ordering::SeqCst);
                        let _ = tx.send(HostLease { id: new, epoch });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "granting a new host lease failed");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(host, lease = id, error = %e, "host lease keepalive failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One keepalive round trip; the lease's remaining TTL (0 when it no longer exists).
async fn keep_alive_once(
    client: &Client,
    id: i64,
    t: &Timeouts,
) -> Result<i64, etcd_client::Error> {
    let mut c = client.clone();
    let round = async move {
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "stream closed".into(),
            )),
        }
    };
    tokio::time::timeout(t.request, round)
        .await
        .unwrap_or_else(|_| Err(etcd_client::Error::LeaseKeepAliveError("no answer".into())))
}
