//! The cluster backend (`[store] backend = "etcd"`, docs/CLUSTER.md): a thin adapter of
//! [`xenchan_cluster`] to the [`Store`] trait, with the SQLite store as this broker's
//! cache and journal.
//!
//! What must be the same on every host lives in etcd, keyed by the VM's UUID (a domain's
//! identity in cluster mode; its name is for display and the socket path): the desired
//! configuration with its cluster-wide generation, the VM's leases (taken in one
//! compare-and-swap transaction, so two brokers never both win an address), what the agent
//! applied, and which host runs the domain. Every write goes to etcd first and then to the
//! local SQLite store with the generation etcd gave, so a broker that loses etcd still
//! serves (and re-attaches) the domains it runs from its cache, while writes answer 503
//! naming the outage; one that starts while etcd is down does the same until it joins
//! ([`join`]). Reads, results, facts and the event log stay local.

mod applied;
mod discovered;
mod join;
mod names;
mod prefetch;
mod spelling;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use xenchan_cluster::{Cluster, ClusterConfig, ClusterError, Start, Uuid};
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};

use crate::api::types::ClusterHealth;
use crate::leases::{Lease, LeaseConflict};
use crate::store::{
    Deleted, DomainRecord, EventRow, HistoryRow, LeaseRow, PrepareRefusal, PrepareRequest,
    Prepared, PutOutcome, PutRefusal, PutRequest, SqliteStore, Store, StoreError, StoreFuture,
};
use applied::record_applied_task;
pub use join::JoinError;
pub(crate) use join::join_when_etcd_answers;
use names::Names;
use prefetch::Prefetched;
use spelling::{bad_uuid, lease_text, runs_elsewhere};
pub use spelling::{cluster_config, lease_key, store_error};

/// The etcd-backed store.
#[derive(Debug)]
pub struct EtcdStore {
    /// `[store]`: this host's name, the endpoints, and what joining again needs.
    config: ClusterConfig,
    /// The cluster once joined: at start, or, after a start during an outage, when etcd
    /// first answers ([`join_when_etcd_answers`]). Until then every write answers 503.
    joined: OnceLock<Arc<Cluster>>,
    /// Why it is not joined (what those 503s say).
    unjoined: Mutex<String>,
    local: SqliteStore,
    /// Name <-> UUID of the domains in the local cache (the cache's key is the name;
    /// etcd's is the UUID).
    uuids: Mutex<Names>,
    /// The cluster's lineage (every broker on this prefix pushes under it).
    lineage: xenchan_protocol::Lineage,
    /// Requests to the cluster watch (`cluster_sync`), and their receiving end until
    /// the watch task takes it.
    sync_tx: mpsc::UnboundedSender<SyncRequest>,
    sync_rx: Mutex<Option<mpsc::UnboundedReceiver<SyncRequest>>>,
    /// What agents applied, on its way to etcd.
    applied: Mutex<AppliedSink>,
    /// The reads of the PUTs' lease checks, for their writes.
    prefetched: Prefetched,
}

/// One applied state for etcd: the domain's name (for the log), its UUID, the record.
type AppliedRecord = (String, Uuid, xenchan_cluster::Applied);

/// Where [`EtcdStore::publish_applied`] puts what agents applied. Only the owner may
/// record it, so until the cluster watch has claimed this host's domains (after joining)
/// the latest state of each domain is held; then the held ones go out first.
#[derive(Debug)]
enum AppliedSink {
    Held(HashMap<String, (Uuid, xenchan_cluster::Applied)>),
    /// To the task that records them in batches ([`record_applied_task`]).
    Live(mpsc::UnboundedSender<AppliedRecord>),
}

/// Why a write cannot go to etcd before this broker joined (the source of the 503).
#[derive(Debug, thiserror::Error)]
#[error(
    "not joined to the etcd cluster at {endpoints}: {why}; the cached domains are served meanwhile"
)]
struct NotJoined {
    endpoints: String,
    why: String,
}

/// What the lifecycle calls and discovery ask of the cluster watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// The domain runs here: claim it now, or when the host owning it gives it up or its
    /// lease expires (a migration's destination, a domain restarted after host loss).
    Wait(Uuid),
    /// The domain no longer runs here.
    Forget(Uuid),
    /// Discovery saw it stop here: give its ownership up if nothing here runs it.
    Gone(Uuid),
}

impl EtcdStore {
    /// The store over `local`, joined when `cluster` is given.
    fn new(
        config: &ClusterConfig,
        local: SqliteStore,
        lineage: xenchan_protocol::Lineage,
        cluster: Option<Cluster>,
    ) -> EtcdStore {
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        EtcdStore {
            config: config.clone(),
            joined: cluster.map_or_else(OnceLock::new, |c| OnceLock::from(Arc::new(c))),
            unjoined: Mutex::new(String::new()),
            local,
            lineage,
            uuids: Mutex::new(Names::default()),
            sync_tx,
            sync_rx: Mutex::new(Some(sync_rx)),
            applied: Mutex::new(AppliedSink::Held(HashMap::new())),
            prefetched: Prefetched::default(),
        }
    }

    /// The cluster handle (watch, ownership, migration); 503 naming the outage while
    /// this broker has not joined.
    ///
    /// # Errors
    /// `Unavailable` before the broker joined the cluster.
    pub fn cluster(&self) -> Result<Arc<Cluster>, StoreError> {
        self.joined().ok_or_else(|| StoreError::Unavailable {
            backend: "etcd",
            source: Box::new(NotJoined {
                endpoints: self.config.endpoints.join(","),
                why: self.unjoined.lock().expect("unjoined").clone(),
            }),
        })
    }

    /// The cluster, once joined.
    pub fn joined(&self) -> Option<Arc<Cluster>> {
        self.joined.get().cloned()
    }

    fn set_joined(&self, cluster: Arc<Cluster>) {
        // Joined once, by the cluster watch: there is no second value to lose.
        let _ = self.joined.set(cluster);
    }

    fn set_unjoined(&self, why: String) {
        *self.unjoined.lock().expect("unjoined") = why;
    }

    /// Where this broker stands with the cluster, for `GET /v1/health`.
    pub fn health(&self) -> ClusterHealth {
        let joined = self.joined.get().is_some();
        ClusterHealth {
            host: self.config.host.clone(),
            endpoints: self.config.endpoints.clone(),
            joined,
            not_joined: (!joined).then(|| {
                let why = self.unjoined.lock().expect("unjoined").clone();
                if why.is_empty() {
                    "etcd has not answered yet".to_string()
                } else {
                    why
                }
            }),
        }
    }

    /// This broker's name in the cluster (`store.host`).
    pub fn host(&self) -> &str {
        &self.config.host
    }

    /// Sends what agents applied to etcd from now on, the states held until now first
    /// (the cluster watch calls it once it has claimed this host's domains).
    pub(crate) fn record_applied_from_now(&self, cluster: Arc<Cluster>) {
        let mut sink = self.applied.lock().expect("applied sink");
        if let AppliedSink::Held(held) = &mut *sink {
            let (tx, rx) = mpsc::unbounded_channel();
            for (name, (uuid, applied)) in held.drain() {
                let _ = tx.send((name, uuid, applied));
            }
            tokio::spawn(record_applied_task(cluster, rx));
            *sink = AppliedSink::Live(tx);
        }
    }

    /// The requests of the lifecycle calls to the cluster watch (taken once, by it).
    pub(crate) fn take_sync_requests(&self) -> Option<mpsc::UnboundedReceiver<SyncRequest>> {
        self.sync_rx.lock().expect("sync receiver").take()
    }

    fn ask_sync(&self, r: SyncRequest) {
        let _ = self.sync_tx.send(r); // after the watch task stopped, nobody waits
    }

    /// Forgets the cached copy of a domain this host neither runs nor receives.
    pub fn forget_uuid(&self, name: &str) {
        self.uuids.lock().expect("uuid map").remove(name);
    }

    /// The local cache.
    pub fn local(&self) -> &SqliteStore {
        &self.local
    }

    /// The UUID of a cached domain.
    pub fn uuid_of(&self, name: &str) -> Option<Uuid> {
        self.uuids.lock().expect("uuid map").uuid(name).cloned()
    }

    /// The cached domain with this UUID.
    pub fn name_of(&self, uuid: &Uuid) -> Option<String> {
        self.uuids.lock().expect("uuid map").name(uuid).cloned()
    }

    /// Records that the cached domain `name` is VM `uuid`.
    pub fn remember_uuid(&self, name: &str, uuid: &Uuid) {
        self.uuids
            .lock()
            .expect("uuid map")
            .insert(name, uuid.clone());
    }

    fn remember(&self, name: &str, uuid: Option<&str>) {
        if let Some(u) = uuid.and_then(|u| Uuid::parse(u).ok()) {
            self.uuids.lock().expect("uuid map").insert(name, u);
        }
    }

    /// Who holds a lease, for an answer: the holder's name when etcd has its desired
    /// configuration, else its UUID.
    async fn holder_name(&self, holder: &str) -> String {
        let Ok(cluster) = self.cluster() else {
            return holder.to_string();
        };
        match Uuid::parse(holder) {
            Ok(u) => match cluster.desired(&u).await {
                Ok(Some(d)) => d.name,
                _ => holder.to_string(),
            },
            Err(_) => holder.to_string(),
        }
    }

    async fn put(&self, req: PutRequest<'_>) -> Result<Result<PutOutcome, PutRefusal>, StoreError> {
        let known = self.uuid_of(req.name);
        let uuid = match (req.uuid, &known) {
            (Some(u), _) => match Uuid::parse(u) {
                Ok(u) => u,
                Err(_) => return Ok(Err(bad_uuid(u))),
            },
            (None, Some(u)) => u.clone(),
            (None, None) => {
                return Ok(Err(PutRefusal::BadField {
                    path: "uuid".into(),
                    error: format!(
                        "domain {} has no VM UUID: in cluster mode (store.backend = \"etcd\") a \
                         domain's identity is its UUID; give it with ?uuid= on the first PUT",
                        req.name
                    ),
                }));
            }
        };
        if known.is_none() && self.uuids.lock().expect("uuid map").len() >= req.max_domains {
            return Ok(Err(PutRefusal::TooManyDomains(req.max_domains)));
        }
        let keys: Vec<String> = req.leases.iter().map(lease_key).collect();
        let json = req.config.canonical_json();
        // Leases and the document in one transaction, planned on what the lease check
        // read (`conflict`), if it did.
        let read = self.prefetched.take(req.name, &uuid);
        let done = match self
            .cluster()?
            .put_domain_after(&uuid, req.name, &json, &keys, read)
            .await
        {
            Ok(d) => d,
            Err(ClusterError::Conflict { lease, holder }) => {
                let lease = req
                    .leases
                    .iter()
                    .find(|l| lease_key(l) == lease)
                    .cloned()
                    .unwrap_or(Lease {
                        kind: "lease",
                        value: lease,
                        path: ".".into(),
                    });
                let holder = self.holder_name(&holder).await;
                return Ok(Err(PutRefusal::Lease(LeaseConflict { lease, holder })));
            }
            Err(ClusterError::Invalid(i)) => {
                return Ok(Err(PutRefusal::BadField {
                    path: i.field.to_string(),
                    error: i.to_string(),
                }));
            }
            Err(e) => return Err(store_error(e)),
        };
        let (outcome, existed) = (done.outcome, done.existed);
        let generation = outcome.generation();
        let cached = self
            .local
            .put_config_at(
                PutRequest {
                    uuid: Some(uuid.as_str()),
                    ..req
                },
                generation,
            )
            .await?;
        self.remember(req.name, Some(uuid.as_str()));
        let d = Arc::clone(cached.desired());
        Ok(Ok(match outcome {
            xenchan_cluster::PutOutcome::Unchanged { .. } => PutOutcome::Unchanged(d),
            xenchan_cluster::PutOutcome::Changed { .. } if existed => PutOutcome::Updated(d),
            xenchan_cluster::PutOutcome::Changed { .. } => PutOutcome::Created(d),
        }))
    }

    async fn delete(&self, name: &str, keep_row: bool) -> Result<Deleted, StoreError> {
        let mut released_cluster = Vec::new();
        let mut removed_cluster = false;
        if let Some(uuid) = self.uuid_of(name) {
            let cluster = self.cluster()?;
            released_cluster = cluster.release_leases(&uuid).await.map_err(store_error)?;
            removed_cluster = cluster.delete_desired(&uuid).await.map_err(store_error)?;
        }
        let local = self.local.delete_config(name, keep_row).await?;
        self.uuids.lock().expect("uuid map").remove(name);
        let mut released: Vec<String> = released_cluster.iter().map(|k| lease_text(k)).collect();
        for l in local.released {
            if !released.contains(&l) {
                released.push(l);
            }
        }
        released.sort();
        Ok(Deleted {
            removed: local.removed || removed_cluster,
            released,
        })
    }

    async fn do_prepare(
        &self,
        req: PrepareRequest<'_>,
    ) -> Result<Result<Prepared, PrepareRefusal>, StoreError> {
        let prepared = match self.local.prepare(req).await? {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        let uuid = prepared
            .uuid
            .as_deref()
            .or(req.uuid)
            .and_then(|u| Uuid::parse(u).ok())
            .or_else(|| self.uuid_of(req.name));
        let Some(uuid) = uuid else {
            return Ok(Ok(prepared)); // no identity in the cluster
        };
        // Before this broker joined: 503 as during any outage (the watch claims the
        // domains running here when it joins).
        let cluster = self.cluster()?;
        if req.check_only {
            // Refused before any hook runs when another live host runs the domain.
            return match cluster.check_start(&uuid).await {
                Ok(_) => Ok(Ok(prepared)),
                Err(e) => Ok(Err(runs_elsewhere(e)?)),
            };
        }
        self.remember(req.name, prepared.uuid.as_deref());
        match cluster.start_here(&uuid).await {
            Ok(Start::Claim) => {}
            Ok(Start::AwaitMigration) => {
                tracing::info!(domain = %req.name, %uuid,
                    "domain prepared here as a migration's destination: owned here at `complete`");
                self.ask_sync(SyncRequest::Wait(uuid));
            }
            Err(e) => {
                let refusal = runs_elsewhere(e)?;
                // Another host started it between the check and now: it runs there, so
                // it is not running here (undo the local prepare).
                tracing::warn!(domain = %req.name, %uuid, "prepare refused: {refusal:?}");
                self.local.release(req.name).await?;
                return Ok(Err(refusal));
            }
        }
        Ok(Ok(prepared))
    }

    async fn do_release(&self, name: &str) -> Result<Option<bool>, StoreError> {
        let released = self.local.release(name).await?;
        if let Some(uuid) = self.uuid_of(name) {
            self.ask_sync(SyncRequest::Forget(uuid.clone()));
            // A VM that stops here while a migration to here is prepared is a failed
            // migration (libvirt's `release end` on the destination): the source keeps
            // it. Then give up what this host owns. Stopping a VM must not fail on an
            // outage; the host lease bounds how long a stale key lasts.
            let cluster = match self.cluster() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(domain = %name, %uuid,
                        "released before this broker joined the cluster: ownership in etcd left to expire: {}",
                        xenchan_basics::chain(&e));
                    return Ok(released);
                }
            };
            let host = self.host();
            match cluster.cancel_migrate(&uuid, host).await {
                Ok(true) => tracing::info!(domain = %name, %uuid,
                    "released during an incoming migration: migration cancelled, the source keeps the domain"),
                Ok(false) => {}
                Err(e) => tracing::warn!(domain = %name, %uuid,
                    "cannot cancel the incoming migration in etcd: {}", xenchan_basics::chain(&e)),
            }
            if let Err(e) = cluster.disown(&uuid).await {
                tracing::warn!(domain = %name, %uuid, "cannot give up ownership in etcd: {}",
                    xenchan_basics::chain(&e));
            }
        }
        Ok(released)
    }

    /// Records what the agent applied in etcd (best effort, in the background: a session
    /// never waits on etcd; the local store has it either way).
    fn publish_applied(&self, name: &str, generation: u64, digest: String, lineage: String) {
        let Some(uuid) = self.uuid_of(name) else {
            return;
        };
        let a = xenchan_cluster::Applied {
            lineage,
            generation,
            digest,
        };
        match &mut *self.applied.lock().expect("applied sink") {
            AppliedSink::Held(held) => {
                held.insert(name.to_string(), (uuid, a));
            }
            // The task lives as long as the store; it ends only when the store is dropped.
            AppliedSink::Live(tx) => {
                let _ = tx.send((name.to_string(), uuid, a));
            }
        }
    }
}

impl Store for EtcdStore {
    fn lineage(&self) -> &xenchan_protocol::Lineage {
        &self.lineage
    }

    fn as_cluster(&self) -> Option<&EtcdStore> {
        Some(self)
    }

    fn load_all(&self) -> StoreFuture<'_, Vec<DomainRecord>> {
        Box::pin(async move {
            let records = self.local.load_all().await?;
            for r in &records {
                self.remember(&r.name, r.uuid.as_deref());
            }
            Ok(records)
        })
    }

    fn lease_conflict<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [Lease],
    ) -> StoreFuture<'a, Option<LeaseConflict>> {
        Box::pin(self.conflict(name, wanted))
    }

    fn put_config<'a>(
        &'a self,
        req: PutRequest<'a>,
    ) -> StoreFuture<'a, Result<PutOutcome, PutRefusal>> {
        Box::pin(self.put(req))
    }

    fn delete_config<'a>(&'a self, name: &'a str, keep_row: bool) -> StoreFuture<'a, Deleted> {
        Box::pin(self.delete(name, keep_row))
    }

    fn forget_unconfigured<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        self.local.forget_unconfigured(name)
    }

    fn prepare<'a>(
        &'a self,
        req: PrepareRequest<'a>,
    ) -> StoreFuture<'a, Result<Prepared, PrepareRefusal>> {
        Box::pin(self.do_prepare(req))
    }

    fn release<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<bool>> {
        Box::pin(self.do_release(name))
    }

    fn record_applied<'a>(
        &'a self,
        name: &'a str,
        applied: Option<&'a Applied>,
        reported_uuid: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local
                .record_applied(name, applied, reported_uuid)
                .await?;
            if let Some(a) = applied {
                self.publish_applied(
                    name,
                    a.generation,
                    a.digest.to_string(),
                    a.lineage
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                );
            }
            Ok(())
        })
    }

    fn record_result<'a>(
        &'a self,
        name: &'a str,
        result: &'a ApplyResult,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let at = self.local.record_result(name, result).await?;
            if result.all_ok() {
                self.publish_applied(
                    name,
                    result.generation,
                    result.digest.to_string(),
                    String::new(),
                );
            }
            Ok(at)
        })
    }

    fn record_facts<'a>(&'a self, name: &'a str, facts: &'a GuestFacts) -> StoreFuture<'a, ()> {
        self.local.record_facts(name, facts)
    }

    fn set_error<'a>(&'a self, name: &'a str, error: Option<&'a str>) -> StoreFuture<'a, ()> {
        self.local.set_error(name, error)
    }

    fn event<'a>(
        &'a self,
        domain: Option<&'a str>,
        kind: &'a str,
        detail: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.local.event(domain, kind, detail)
    }

    fn recent_events(&self, n: usize) -> StoreFuture<'_, Vec<EventRow>> {
        self.local.recent_events(n)
    }

    fn leases(&self) -> StoreFuture<'_, Vec<LeaseRow>> {
        self.local.leases()
    }

    fn history<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Vec<HistoryRow>> {
        self.local.history(name)
    }
}
