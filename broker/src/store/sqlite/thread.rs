//! The store thread and its group commit, and the async handle ([`SqliteStore`]) that
//! implements [`Store`] by sending it jobs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use xenchan_protocol::Lineage;
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};

use super::{Db, EventRetention};
use crate::leases::{Lease, LeaseConflict};
use crate::store::{
    Deleted, DomainRecord, EventFilter, EventRow, HistoryRow, LeaseRow, PrepareRefusal,
    PrepareRequest, Prepared, PutOutcome, PutRefusal, PutRequest, Store, StoreError, StoreFuture,
};

/// A job runs on the store thread and returns how to deliver its answer, which is
/// called once the job's writes are committed (with the commit's failure, if any).
pub(super) type Job = Box<dyn FnOnce(&mut Db) -> Reply + Send>;
pub(super) type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Most jobs committed together (bounds how long the first one waits for the last).
const MAX_BATCH: usize = 256;

/// The error a job's caller gets when the commit of its batch failed.
fn commit_failed(e: &rusqlite::Error) -> StoreError {
    let code = match e {
        rusqlite::Error::SqliteFailure(f, _) => *f,
        _ => rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
    };
    StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        code,
        Some(format!("commit failed: {e}")),
    ))
}

/// Runs the jobs queued right now as one transaction (group commit): with
/// `synchronous=FULL` every commit is an fsync, so committing each job alone bounds the
/// broker to one job per fsync (~150 per second on a virtio disk). Each job's own writes
/// run in a savepoint, so a job that fails undoes only itself; answers are delivered only
/// after the commit, so "answered" still means "durable".
pub(super) fn run_batch(db: &mut Db, batch: Vec<Job>) {
    db.batch_open
        .set(db.conn.execute_batch("BEGIN IMMEDIATE").is_ok());
    db.batch_changes.set(db.conn.total_changes());
    let replies: Vec<Reply> = batch.into_iter().map(|job| job(db)).collect();
    // Checked after the jobs: a job's undo may have had to end the transaction.
    let failure = if db.batch_open.replace(false) {
        let wrote = db.conn.total_changes() != db.batch_changes.get();
        match db.conn.execute_batch("COMMIT") {
            Ok(()) => {
                if wrote {
                    db.commits.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Err(e) => {
                let _ = db.conn.execute_batch("ROLLBACK");
                Some(e)
            }
        }
    } else {
        // Without the outer transaction each job's savepoint was its own transaction.
        None
    };
    for reply in replies {
        reply(failure.as_ref().map(commit_failed));
    }
}

/// The async handle to the store thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    tx: mpsc::UnboundedSender<Job>,
    lineage: Lineage,
    commits: Arc<AtomicU64>,
}

/// Joins the store thread once every [`SqliteStore`] handle is dropped.
#[derive(Debug)]
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    /// Waits until the thread has run every queued job and closed the database.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl SqliteStore {
    /// Opens the database at `path` and starts its thread, keeping `events` events
    /// (and the default share per domain, [`EventRetention::total`]).
    pub fn open(
        path: &Path,
        history: usize,
        events: usize,
    ) -> Result<(SqliteStore, StoreThread), StoreError> {
        SqliteStore::open_with(path, history, EventRetention::total(events))
    }

    /// Opens the database at `path` and starts its thread.
    pub fn open_with(
        path: &Path,
        history: usize,
        retention: EventRetention,
    ) -> Result<(SqliteStore, StoreThread), StoreError> {
        let mut db = Db::open_with(path, history, retention)?;
        let lineage = db.lineage().clone();
        let commits = Arc::clone(&db.commits);
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("xenchan-store".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    run_batch(&mut db, batch);
                }
            })
            .map_err(StoreError::Thread)?;
        Ok((
            SqliteStore {
                tx,
                lineage,
                commits,
            },
            StoreThread(handle),
        ))
    }

    /// Caches a desired configuration whose generation another store (etcd, the cluster
    /// backend) gave: stored at exactly `generation`, its leases taken from any stale
    /// cached holder (the authoritative store already granted them).
    pub async fn put_config_at(
        &self,
        req: PutRequest<'_>,
        generation: u64,
    ) -> Result<PutOutcome, StoreError> {
        let name = req.name.to_string();
        let uuid = req.uuid.map(str::to_string);
        let config = req.config.clone();
        let leases = req.leases.to_vec();
        let max_domains = req.max_domains;
        self.call(move |db| {
            db.put_config_at(
                &PutRequest {
                    name: &name,
                    uuid: uuid.as_deref(),
                    config: &config,
                    leases: &leases,
                    max_domains,
                },
                generation,
            )
        })
        .await
    }

    /// The lineage of the etcd cluster this store caches, once learned (cluster mode).
    pub async fn cluster_lineage(&self) -> Result<Option<Lineage>, StoreError> {
        self.call(|db| db.cluster_lineage()).await
    }

    /// Records the lineage of the etcd cluster this store caches.
    pub async fn set_cluster_lineage(&self, lineage: Lineage) -> Result<(), StoreError> {
        self.call(move |db| db.set_cluster_lineage(&lineage)).await
    }

    /// Runs `f` on the store thread and returns its answer. The events it records name
    /// the API caller being served on this task, if any ([`crate::audit`]).
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let caller = crate::audit::current().map(|c| c.view());
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            db.caller = caller;
            let answer = f(db);
            db.caller = None;
            Box::new(move |commit: Option<StoreError>| {
                let _ = reply.send(match commit {
                    Some(e) => answer.and(Err(e)),
                    None => answer,
                });
            })
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Each method copies its borrowed input into a job for the store thread.
impl Store for SqliteStore {
    fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    fn commits(&self) -> Option<u64> {
        Some(self.commits.load(Ordering::Relaxed))
    }

    fn load_all(&self) -> StoreFuture<'_, Vec<DomainRecord>> {
        Box::pin(self.call(Db::load_all))
    }

    fn lease_conflict<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [Lease],
    ) -> StoreFuture<'a, Option<LeaseConflict>> {
        let (name, wanted) = (name.to_string(), wanted.to_vec());
        Box::pin(self.call(move |db| db.lease_conflict(&name, &wanted)))
    }

    fn put_config<'a>(
        &'a self,
        req: PutRequest<'a>,
    ) -> StoreFuture<'a, Result<PutOutcome, PutRefusal>> {
        let name = req.name.to_string();
        let uuid = req.uuid.map(str::to_string);
        let config = req.config.clone();
        let leases = req.leases.to_vec();
        let max_domains = req.max_domains;
        Box::pin(self.call(move |db| {
            db.put_config(&PutRequest {
                name: &name,
                uuid: uuid.as_deref(),
                config: &config,
                leases: &leases,
                max_domains,
            })
        }))
    }

    fn delete_config<'a>(&'a self, name: &'a str, keep_row: bool) -> StoreFuture<'a, Deleted> {
        let name = name.to_string();
        Box::pin(self.call(move |db| db.delete_config(&name, keep_row)))
    }

    fn forget_unconfigured<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        let name = name.to_string();
        Box::pin(self.call(move |db| db.forget_unconfigured(&name)))
    }

    fn prepare<'a>(
        &'a self,
        req: PrepareRequest<'a>,
    ) -> StoreFuture<'a, Result<Prepared, PrepareRefusal>> {
        let name = req.name.to_string();
        let uuid = req.uuid.map(str::to_string);
        let channel_path = req.channel_path.map(str::to_string);
        Box::pin(self.call(move |db| {
            db.prepare(&PrepareRequest {
                name: &name,
                uuid: uuid.as_deref(),
                channel_path: channel_path.as_deref(),
                ..req
            })
        }))
    }

    fn release<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<bool>> {
        let name = name.to_string();
        Box::pin(self.call(move |db| db.release(&name)))
    }

    fn record_applied<'a>(
        &'a self,
        name: &'a str,
        applied: Option<&'a Applied>,
        reported_uuid: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        let name = name.to_string();
        let applied = applied.cloned();
        let reported_uuid = reported_uuid.map(str::to_string);
        Box::pin(
            self.call(move |db| {
                db.record_applied(&name, applied.as_ref(), reported_uuid.as_deref())
            }),
        )
    }

    fn record_result<'a>(
        &'a self,
        name: &'a str,
        result: &'a ApplyResult,
    ) -> StoreFuture<'a, String> {
        let (name, result) = (name.to_string(), result.clone());
        Box::pin(self.call(move |db| db.record_result(&name, &result)))
    }

    fn record_facts<'a>(&'a self, name: &'a str, facts: &'a GuestFacts) -> StoreFuture<'a, ()> {
        let (name, facts) = (name.to_string(), facts.clone());
        Box::pin(self.call(move |db| db.record_facts(&name, &facts)))
    }

    fn set_error<'a>(&'a self, name: &'a str, error: Option<&'a str>) -> StoreFuture<'a, ()> {
        let (name, error) = (name.to_string(), error.map(str::to_string));
        Box::pin(self.call(move |db| db.set_error(&name, error.as_deref())))
    }

    fn event<'a>(
        &'a self,
        domain: Option<&'a str>,
        kind: &'a str,
        detail: &'a str,
    ) -> StoreFuture<'a, ()> {
        let domain = domain.map(str::to_string);
        let (kind, detail) = (kind.to_string(), detail.to_string());
        Box::pin(self.call(move |db| db.event(domain.as_deref(), &kind, &detail)))
    }

    fn recent_events(&self, n: usize) -> StoreFuture<'_, Vec<EventRow>> {
        Box::pin(self.call(move |db| db.recent_events(n)))
    }

    fn events<'a>(&'a self, filter: &'a EventFilter) -> StoreFuture<'a, Vec<EventRow>> {
        let filter = filter.clone();
        Box::pin(self.call(move |db| db.events(&filter)))
    }

    fn leases(&self) -> StoreFuture<'_, Vec<LeaseRow>> {
        Box::pin(self.call(Db::leases))
    }

    fn history<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Vec<HistoryRow>> {
        let name = name.to_string();
        Box::pin(self.call(move |db| db.history(&name)))
    }
}
