//! Joining the cluster, at start or later (docs/CLUSTER.md, "Failure modes").
//!
//! A dom0 may reboot while etcd is down. Its broker then starts from its SQLite cache,
//! provided the cache knows the cluster's lineage (recorded the first time this broker
//! joined): the cached domains are served and their agents re-attach under the lineage
//! they applied, writes answer 503 naming the outage, and the cluster watch joins once
//! etcd answers ([`join_when_etcd_answers`]). A broker that never joined has nothing it
//! knows to be this cluster's and no lineage to push under: it refuses to start.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xenchan_basics::{Backoff, chain};
use xenchan_cluster::{Cluster, ClusterConfig, ClusterError};
use xenchan_protocol::Lineage;

use super::EtcdStore;
use crate::store::{SqliteStore, Store, StoreError};

/// The first and the longest wait between two attempts to join after a start during an
/// outage: short enough that writes work again seconds after etcd is back, long enough
/// that a cloud of rebooted hosts does not hammer an etcd that is coming up.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What etcd said when asked for the cluster's lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reached<'a> {
    /// It answered: the cluster's lineage.
    Lineage(&'a str),
    /// No answer (unreachable, no quorum, the deadline passed).
    Unreachable,
    /// An answer that is a refusal, or a lineage that is not one.
    Refused,
}

/// What a broker does about it, given the cluster lineage its cache recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Joined; `record` the lineage in the cache (the first time).
    Join { record: bool },
    /// Serve the cached domains under the cached lineage; join when etcd answers.
    FromCache,
    /// Refuse to start: never joined, so nothing is known to be this cluster's.
    NeverJoined,
    /// Refuse: the cache was filled in another cluster.
    Mismatch,
    /// Refuse: etcd's refusal, said as it is.
    Failed,
}

/// The decision, pure: see the table test below.
pub(crate) fn plan(reached: Reached<'_>, cached: Option<&str>) -> Plan {
    match (reached, cached) {
        (Reached::Lineage(_), None) => Plan::Join { record: true },
        (Reached::Lineage(l), Some(c)) if l == c => Plan::Join { record: false },
        (Reached::Lineage(_), Some(_)) => Plan::Mismatch,
        (Reached::Unreachable, Some(_)) => Plan::FromCache,
        (Reached::Unreachable, None) => Plan::NeverJoined,
        (Reached::Refused, _) => Plan::Failed,
    }
}

/// Why a broker in cluster mode cannot start (or stopped trying to join).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The local cache could not be read or written.
    #[error("cannot use the local cache")]
    Cache(#[from] StoreError),
    /// etcd unreachable, and the cache never joined the cluster.
    #[error(
        "etcd cannot be reached, and this broker has never joined its cluster (no cluster \
         lineage in its local cache): no cached domain is known to be this cluster's and the \
         lineage to push under is unknown, so it cannot start before etcd answers"
    )]
    NeverJoined(#[source] ClusterError),
    /// The cache was filled in another cluster than the one etcd holds now.
    #[error(
        "this broker's local cache was filled in another cluster: it records cluster lineage \
         {cached}, but etcd at {endpoints} (prefix {prefix}) has lineage {cluster}; etcd's data \
         under the prefix was replaced (wiped, or restored from another cluster) or \
         store.prefix changed: see docs/CLUSTER.md, \"Failure modes\""
    )]
    Mismatch {
        cached: String,
        cluster: String,
        endpoints: String,
        prefix: String,
    },
    /// etcd refused (not an outage).
    #[error("cannot join the etcd cluster")]
    Etcd(#[source] ClusterError),
}

impl JoinError {
    fn mismatch(config: &ClusterConfig, cached: &Lineage, cluster: &Lineage) -> JoinError {
        JoinError::Mismatch {
            cached: cached.to_string(),
            cluster: cluster.to_string(),
            endpoints: config.endpoints.join(","),
            prefix: config.prefix.clone(),
        }
    }
}

/// Connects (host lease, liveness key, keepalive) and reads the cluster's lineage; the
/// first broker on the prefix offers `offered`.
async fn reach(
    config: &ClusterConfig,
    offered: &Lineage,
) -> Result<(Cluster, Lineage), ClusterError> {
    let cluster = Cluster::connect(config).await?;
    let text = cluster.lineage(offered.as_str()).await?;
    let lineage = Lineage::try_from(text).map_err(|message| ClusterError::Corrupt {
        key: cluster.keyspace().lineage(),
        reason: format!("the cluster's lineage: {message}"),
    })?;
    Ok((cluster, lineage))
}

fn reached(e: &ClusterError) -> Reached<'static> {
    if e.is_unavailable() {
        Reached::Unreachable
    } else {
        Reached::Refused
    }
}

impl EtcdStore {
    /// Joins the cluster as `config`'s host over the opened local cache, or, when etcd
    /// cannot be reached and the cache knows the cluster's lineage, starts from the cache
    /// and leaves the joining to the cluster watch ([`join_when_etcd_answers`]).
    ///
    /// # Errors
    /// [`JoinError`]: etcd unreachable and the cache never joined; the cache of another
    /// cluster; etcd's refusal; the cache unreadable.
    pub async fn start(config: &ClusterConfig, local: SqliteStore) -> Result<EtcdStore, JoinError> {
        let cached = local.cluster_lineage().await?;
        let cached_text = cached.as_ref().map(Lineage::as_str);
        // The cluster-wide lineage; the first broker on this prefix offers its own.
        let offered = local.lineage().clone();
        match reach(config, &offered).await {
            Ok((cluster, lineage)) => {
                // The only other answer to a lineage is `Mismatch`: another cluster's cache.
                if let Plan::Join { record } = plan(Reached::Lineage(lineage.as_str()), cached_text)
                {
                    if record {
                        local.set_cluster_lineage(lineage.clone()).await?;
                    }
                    Ok(EtcdStore::new(config, local, lineage, Some(cluster)))
                } else {
                    let e =
                        JoinError::mismatch(config, cached.as_ref().unwrap_or(&offered), &lineage);
                    // Leave at once rather than after the host lease's TTL.
                    let _ = cluster.leave().await;
                    Err(e)
                }
            }
            Err(e) => match (plan(reached(&e), cached_text), cached) {
                (Plan::FromCache, Some(lineage)) => {
                    tracing::warn!(
                        endpoints = %config.endpoints.join(","),
                        "etcd cannot be reached at start: serving the domains in the local \
                         cache under the cluster's lineage it recorded; writes answer 503 until \
                         this broker joins, which it keeps trying: {}",
                        chain(&e)
                    );
                    let store = EtcdStore::new(config, local, lineage, None);
                    store.set_unjoined(format!(
                        "etcd was unreachable when this broker started; it keeps trying \
                         (last: {})",
                        chain(&e)
                    ));
                    Ok(store)
                }
                (Plan::NeverJoined | Plan::FromCache, _) => Err(JoinError::NeverJoined(e)),
                _ => Err(JoinError::Etcd(e)),
            },
        }
    }

    /// One attempt to join after a start from the cache: the cluster's lineage must be
    /// the cached one. On success the store is joined (writes go to etcd again).
    async fn try_join(&self) -> Result<Arc<Cluster>, JoinError> {
        let (cluster, lineage) = match reach(&self.config, &self.lineage).await {
            Ok(v) => v,
            Err(e) => {
                self.set_unjoined(format!(
                    "etcd was unreachable when this broker started, and it has not joined \
                     since; it keeps trying (last: {})",
                    chain(&e)
                ));
                return Err(JoinError::Etcd(e));
            }
        };
        // The cache knows the lineage, so the only other answer is `Mismatch`.
        if let Plan::Join { .. } = plan(
            Reached::Lineage(lineage.as_str()),
            Some(self.lineage.as_str()),
        ) {
            let cluster = Arc::new(cluster);
            self.set_joined(Arc::clone(&cluster));
            Ok(cluster)
        } else {
            let e = JoinError::mismatch(&self.config, &self.lineage, &lineage);
            self.set_unjoined(format!("{e}; restart the broker once resolved"));
            let _ = cluster.leave().await;
            Err(e)
        }
    }
}

/// The joined cluster: at once when the broker joined at start; else tries to join,
/// with the project's backoff, until etcd answers (`Some`), `stop` (`None`), or etcd
/// turns out to hold another cluster (`None`, logged as an error: the broker serves its
/// cache and answers writes 503 saying so until restarted).
pub(crate) async fn join_when_etcd_answers(
    etcd: &EtcdStore,
    stop: &CancellationToken,
) -> Option<Arc<Cluster>> {
    if let Some(c) = etcd.joined() {
        return Some(c);
    }
    let since = Instant::now();
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    // The start logged the outage once; what changes after is logged once too.
    let mut said = String::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
        let attempt = tokio::select! {
            () = stop.cancelled() => return None,
            r = etcd.try_join() => r,
        };
        match attempt {
            Ok(c) => {
                tracing::info!(
                    after = ?since.elapsed(),
                    "etcd answers: joined the cluster; claiming the domains running here, \
                     watching, writes accepted again"
                );
                return Some(c);
            }
            Err(e @ JoinError::Mismatch { .. }) => {
                tracing::error!("not joining the etcd cluster: {}", chain(&e));
                return None;
            }
            Err(JoinError::Etcd(e)) if !e.is_unavailable() && e.to_string() != said => {
                said = e.to_string();
                tracing::warn!("etcd refuses this broker's join, retrying: {}", chain(&e));
            }
            Err(e) => tracing::debug!("still not joined: {}", chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_join_decisions() {
        let (a, b) = ("aaaa", "bbbb");
        for (reached, cached, want) in [
            // First join: the lineage is recorded in the cache.
            (Reached::Lineage(a), None, Plan::Join { record: true }),
            (Reached::Lineage(a), Some(a), Plan::Join { record: false }),
            // etcd holds another cluster than the one the cache was filled in.
            (Reached::Lineage(a), Some(b), Plan::Mismatch),
            // An outage: served from the cache only if it ever joined.
            (Reached::Unreachable, Some(a), Plan::FromCache),
            (Reached::Unreachable, None, Plan::NeverJoined),
            // A refusal is not an outage: said as it is, cache or not.
            (Reached::Refused, Some(a), Plan::Failed),
            (Reached::Refused, None, Plan::Failed),
        ] {
            assert_eq!(plan(reached, cached), want, "{reached:?} {cached:?}");
        }
    }
}
