//! The durable store, behind the [`Store`] trait.
//!
//! The rest of the broker (API operations, sessions, the domain registry) talks to a
//! `dyn Store` and never sees a table: a backend keeps records (desired config, applied
//! state, facts, last error and result per domain), leases, results and a bounded event
//! log. [`sqlite`] is the embedded backend; [`etcd`] (cluster mode, issue 19) implements
//! the same trait over etcd with a SQLite store as its local cache.
//!
//! Every method is asynchronous and answers only once its writes are durable: the API
//! answers a PUT after its commit, and a session reads its next frame only after the
//! previous result is committed, so an answered write survives kill -9 and power loss
//! in every backend.
//!
//! Two kinds of "no": a write the store *refuses* (a lease held elsewhere, too many
//! domains, a UUID taken) is a normal answer (`Ok(Err(PutRefusal))`,
//! `Ok(Err(PrepareRefusal))`), decided by the rules in [`crate::leases`]; a store that
//! *cannot answer* returns a [`StoreError`], and [`StoreError::is_unavailable`] tells a
//! transient outage (try again later) from a broken store.

pub mod etcd;
mod records;
pub mod sqlite;

use futures::future::BoxFuture;
use thiserror::Error;
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};

use crate::leases::{Lease, LeaseConflict};
pub use etcd::EtcdStore;
pub use records::{
    Deleted, DesiredConfig, DomainRecord, EventFilter, EventRow, HistoryRow, LastResult, LeaseRow,
    PrepareRefusal, PrepareRequest, Prepared, PutOutcome, PutRefusal, PutRequest,
};
pub use sqlite::{SqliteStore, StoreThread};

/// Store failures: the store could not answer (a refusal is not an error, see the module
/// documentation).
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The store is closed (shutting down, or its thread failed).
    #[error("the store is closed")]
    Closed,
    /// A stored value does not decode.
    #[error("stored data for domain {domain} is unreadable: {message}")]
    Corrupt {
        /// Which domain.
        domain: String,
        /// What is wrong.
        message: String,
    },
    /// The store thread could not be started.
    #[error("cannot start the store thread")]
    Thread(#[source] std::io::Error),
    /// A remote backend cannot be reached or has no quorum now.
    #[error("the {backend} store is unavailable")]
    Unavailable {
        /// Which backend (`etcd`...).
        backend: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether the store may answer if asked again later (closed, unreachable, busy),
    /// as opposed to broken (unreadable data, a failed statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Closed | StoreError::Thread(_) | StoreError::Unavailable { .. } => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Sqlite(_) | StoreError::Corrupt { .. } => false,
        }
    }
}

/// The answer of a store method: durable once it resolves.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A durable store of domain records, leases, results and events. Boxed futures keep the
/// trait object-safe, so the broker holds an `Arc<dyn Store>` chosen at startup.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The store's lineage: random, made once when the store is created and kept in it
    /// (each backend its own), sent with every push so that an agent can refuse an older
    /// generation of the history it applied from (a restored backup, a stale broker).
    fn lineage(&self) -> &xenchan_protocol::Lineage;

    /// The cluster backend, when this store is one (`[store] backend = "etcd"`): what
    /// the migration calls need. `None` for the embedded store.
    fn as_cluster(&self) -> Option<&EtcdStore> {
        None
    }

    /// Every stored domain, by name.
    fn load_all(&self) -> StoreFuture<'_, Vec<DomainRecord>>;

    /// The first lease in `wanted` held by a domain other than `name`
    /// ([`crate::leases::first_conflict`] over the stored lease rows).
    fn lease_conflict<'a>(
        &'a self,
        name: &'a str,
        wanted: &'a [Lease],
    ) -> StoreFuture<'a, Option<LeaseConflict>>;

    /// Stores a new desired configuration: re-checks the leases, bumps the generation
    /// (which never goes back, even across a delete), keeps the history and replaces the
    /// domain's leases, atomically. The same document again changes nothing.
    fn put_config<'a>(
        &'a self,
        req: PutRequest<'a>,
    ) -> StoreFuture<'a, Result<PutOutcome, PutRefusal>>;

    /// Removes the desired configuration and releases the domain's leases; keeps the
    /// domain's other state when `keep_row` (a session is up).
    fn delete_config<'a>(&'a self, name: &'a str, keep_row: bool) -> StoreFuture<'a, Deleted>;

    /// Forgets a domain that has no desired configuration and is not running.
    fn forget_unconfigured<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;

    /// The lifecycle prepare: registers the domain, records its UUID and channel path,
    /// confirms the leases of its configuration, marks it running. Idempotent.
    fn prepare<'a>(
        &'a self,
        req: PrepareRequest<'a>,
    ) -> StoreFuture<'a, Result<Prepared, PrepareRefusal>>;

    /// The lifecycle release: drops the running marker (forgets an unconfigured domain).
    /// `None` if the store does not know the domain, else whether it was running.
    fn release<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<bool>>;

    /// Records what the agent says it has applied (from its hello).
    fn record_applied<'a>(
        &'a self,
        name: &'a str,
        applied: Option<&'a Applied>,
        reported_uuid: Option<&'a str>,
    ) -> StoreFuture<'a, ()>;

    /// Records a result (its items and the applied generation); returns when it was
    /// recorded (RFC 3339).
    fn record_result<'a>(
        &'a self,
        name: &'a str,
        result: &'a ApplyResult,
    ) -> StoreFuture<'a, String>;

    /// Records the guest's facts.
    fn record_facts<'a>(&'a self, name: &'a str, facts: &'a GuestFacts) -> StoreFuture<'a, ()>;

    /// Sets or clears the domain's last error (only for a known domain).
    fn set_error<'a>(&'a self, name: &'a str, error: Option<&'a str>) -> StoreFuture<'a, ()>;

    /// Appends to the event log.
    fn event<'a>(
        &'a self,
        domain: Option<&'a str>,
        kind: &'a str,
        detail: &'a str,
    ) -> StoreFuture<'a, ()>;

    /// The last `n` events, newest last.
    fn recent_events(&self, n: usize) -> StoreFuture<'_, Vec<EventRow>>;

    /// The events `filter` asks for, newest first (`GET /v1/events`). Events are
    /// recorded with the caller of the API call that caused them ([`crate::audit`]):
    /// a backend reads [`crate::audit::current`] when it records one.
    ///
    /// The default filters the last `filter.limit`-bounded window of
    /// [`Store::recent_events`] in memory (at most 100,000 events); a backend with an
    /// index should answer it itself.
    fn events<'a>(&'a self, filter: &'a EventFilter) -> StoreFuture<'a, Vec<EventRow>> {
        Box::pin(async move {
            let mut rows = self.recent_events(100_000).await?;
            rows.reverse();
            Ok(rows
                .into_iter()
                .filter(|r| filter.matches(r))
                .take(filter.limit)
                .collect())
        })
    }

    /// The leases held, by kind and value.
    fn leases(&self) -> StoreFuture<'_, Vec<LeaseRow>>;

    /// The generations kept in the history of `name`, oldest first.
    fn history<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Vec<HistoryRow>>;

    /// Durable commits that wrote something since the store opened (a group commit
    /// counts once: with `synchronous=FULL` each is an fsync), for the
    /// `xenchan_store_commits_total` metric; `None` for a backend that does not count.
    fn commits(&self) -> Option<u64> {
        None
    }
}
