//! The embedded backend: SQLite (WAL, `synchronous=FULL`) under the state folder.
//!
//! One dedicated thread owns the connection ([`thread`]); async code sends it jobs over a
//! channel and awaits the answer, so SQLite never blocks a runtime thread and every
//! write is ordered. A caller that awaits its write before answering (the API before
//! replying to a PUT, a session before reading the next frame) gets both durability (the
//! commit is fsynced before the answer) and backpressure (a flooding guest waits for its
//! own writes).
//!
//! Tables ([`schema`]): `domains` (desired config, applied state, facts, last error),
//! `history` (past desired configs per generation), `generations` (a counter per name
//! that never goes back, even across a delete), `items` (the last result per item),
//! `leases` (address/hostname -> domain), `events` (a log bounded per domain and in
//! all, each event with the API caller that caused it; [`retention`]) and `meta` (the
//! store's lineage). The queries are
//! split by who asks: [`config`] (the API's writes) and [`reports`] (what sessions
//! report, and reads).

mod config;
mod reports;
mod retention;
mod schema;
mod thread;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, Params, Row, params};
use xenchan_protocol::ItemStatus;

use super::StoreError;
use crate::api::types::CallerView;
use crate::clock::now_rfc3339;
pub use retention::EventRetention;
pub use thread::{SqliteStore, StoreThread};

/// The synchronous side of the store, used on the store thread.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    history: usize,
    retention: EventRetention,
    /// Events kept per domain (`None`: broker-wide), as far as this connection knows:
    /// counted up on insert, set from the table when pruned (an undone insert only makes
    /// a prune come early).
    event_counts: HashMap<Option<String>, usize>,
    /// Their sum.
    events_total: usize,
    /// The total above which the whole log is pruned next.
    events_next_global: usize,
    /// Domains that got an event since the last [`Db::after_event`].
    events_touched: RefCell<Vec<Option<String>>>,
    /// The API caller of the job running now (set by [`SqliteStore::call`]).
    caller: Option<CallerView>,
    /// A batch transaction is open (see [`run_batch`]).
    batch_open: Cell<bool>,
    /// `total_changes` when the batch transaction began: equal now means the batch has
    /// written nothing yet.
    batch_changes: Cell<u64>,
    /// The store's lineage ([`schema::lineage`]).
    lineage: xenchan_protocol::Lineage,
    /// Batches committed that wrote something ([`crate::store::Store::commits`]).
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The transaction of one job's writes ([`Db::tx`]): derefs to the connection;
/// [`JobTx::commit`] keeps the writes, dropping it without commit undoes them.
///
/// Inside a batch transaction that holds other jobs' writes this is a savepoint, so that
/// undoing it undoes only this job. A savepoint nested in a transaction makes SQLite copy
/// every page it is about to change into a sub-journal first (a fifth of the store
/// thread's CPU in the 10,000-domain benchmark, docs/PERFORMANCE.md). When the batch has
/// written nothing yet (always the case for a job alone in its batch), undoing the job is
/// undoing the batch so far, so no savepoint is taken: an undo rolls the batch
/// transaction back and begins it again.
struct JobTx<'a> {
    db: &'a Db,
    savepoint: bool,
    done: bool,
}

impl JobTx<'_> {
    /// Keeps the job's writes (they are committed with the batch).
    fn commit(mut self) -> rusqlite::Result<()> {
        if self.savepoint {
            self.db.conn.execute_batch("RELEASE job")?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for JobTx<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let db = self.db;
        if self.savepoint {
            let _ = db.conn.execute_batch("ROLLBACK TO job; RELEASE job");
        } else {
            let _ = db.conn.execute_batch("ROLLBACK");
            db.batch_open
                .set(db.conn.execute_batch("BEGIN IMMEDIATE").is_ok());
            db.batch_changes.set(db.conn.total_changes());
        }
    }
}

impl std::ops::Deref for JobTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.db.conn
    }
}

/// Runs one statement through the connection's statement cache: parsing SQL costs more
/// than running these small statements (a quarter of the broker's CPU at scale before).
fn exec<P: Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`Connection::query_row`] through the statement cache.
fn row<T, P: Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// A count or generation as an SQLite integer (saturating; nothing real gets near).
fn sql_int<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn status_from_str(s: &str) -> ItemStatus {
    match s {
        "applied" => ItemStatus::Applied,
        "unchanged" => ItemStatus::Unchanged,
        "unsupported" => ItemStatus::Unsupported,
        _ => ItemStatus::Failed,
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, keeping `events` events in all
    /// (and the default share per domain, see [`EventRetention::total`]).
    pub fn open(path: &Path, history: usize, events: usize) -> Result<Db, StoreError> {
        Db::open_with(path, history, EventRetention::total(events))
    }

    /// Opens (creating if needed) the database at `path`.
    pub fn open_with(
        path: &Path,
        history: usize,
        retention: EventRetention,
    ) -> Result<Db, StoreError> {
        let conn = Connection::open(path)?;
        // WAL keeps readers off the writer's way; FULL makes every commit durable, which is
        // what "a config accepted by the API is never lost" and "a result received is
        // never lost" need across kill -9 and power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement the store runs stays prepared (see `exec`).
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(schema::SCHEMA)?;
        schema::migrate(&conn)?;
        conn.pragma_update(None, "user_version", 2)?;
        let lineage = schema::lineage(&conn)?;
        let mut db = Db {
            lineage,
            conn,
            history,
            retention,
            event_counts: HashMap::new(),
            events_total: 0,
            events_next_global: 0,
            events_touched: RefCell::new(Vec::new()),
            caller: None,
            batch_open: Cell::new(false),
            batch_changes: Cell::new(0),
            commits: std::sync::Arc::default(),
        };
        db.count_events()?;
        Ok(db)
    }

    /// The store's lineage: random, made once, kept in the `meta` table.
    pub fn lineage(&self) -> &xenchan_protocol::Lineage {
        &self.lineage
    }

    /// Starts the transaction of a job's writes (see [`JobTx`]).
    fn tx(&self) -> rusqlite::Result<JobTx<'_>> {
        let bare = self.batch_open.get() && self.conn.total_changes() == self.batch_changes.get();
        if !bare {
            self.conn.execute_batch("SAVEPOINT job")?;
        }
        Ok(JobTx {
            db: self,
            savepoint: !bare,
            done: false,
        })
    }

    /// Appends to the event log, with the caller of the job's API call if any.
    fn insert_event(
        &self,
        conn: &Connection,
        domain: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let c = self.caller.as_ref();
        exec(
            conn,
            "INSERT INTO events(at, domain, kind, detail, caller_uid, caller_pid, caller_comm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now_rfc3339(),
                domain,
                kind,
                detail,
                c.map(|c| c.uid),
                c.and_then(|c| c.pid),
                c.and_then(|c| c.comm.as_deref())
            ],
        )?;
        self.events_touched
            .borrow_mut()
            .push(domain.map(str::to_string));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
