//! The embedded store: SQLite (WAL, `synchronous=FULL`) under the state folder.
//!
//! One dedicated thread owns the connection; async code sends it closures over a channel
//! and awaits the answer, so SQLite never blocks a runtime thread and every write is
//! ordered. A caller that awaits its write before answering (the API before replying to a
//! PUT, a session before reading the next frame) gets both durability (the commit is
//! fsynced before the answer) and backpressure (a flooding guest waits for its own writes).
//!
//! Tables: `domains` (desired config, applied state, facts, last error), `history`
//! (past desired configs per generation), `generations` (a counter per name that never
//! goes back, even across a delete), `items` (the last result per item), `leases`
//! (address/hostname -> domain) and `events` (a bounded log).

use std::cell::Cell;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Params, Row, params};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::{ApplyResult, GuestFacts};
use xenchan_protocol::{Digest, ItemStatus};

use crate::api::types::{ItemView, Lifecycle};
use crate::clock::now_rfc3339;

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The store thread is gone (shutting down, or it failed).
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
}

/// A domain's desired configuration at one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConfig {
    /// Increases with every change.
    pub generation: u64,
    /// The digest of `config`.
    pub digest: Digest,
    /// The document.
    pub config: GuestConfig,
}

/// Everything stored about one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainRecord {
    /// The domain.
    pub name: String,
    /// The UUID the operator gave.
    pub uuid: Option<String>,
    /// The UUID the agent reported.
    pub reported_uuid: Option<String>,
    /// The desired configuration, if any.
    pub desired: Option<DesiredConfig>,
    /// What the agent last reported as applied (generation, digest).
    pub applied: Option<(u64, String)>,
    /// The last result per item.
    pub items: Vec<ItemView>,
    /// The last error.
    pub last_error: Option<String>,
    /// The last facts.
    pub facts: Option<GuestFacts>,
    /// When the last result arrived.
    pub last_result_at: Option<String>,
    /// Where the lifecycle endpoints left the domain (`None`: never used for it).
    pub lifecycle: Option<Lifecycle>,
    /// The channel socket the last prepare named, when it is not the default one.
    pub channel_path: Option<PathBuf>,
}

impl DomainRecord {
    /// Whether the last stored result is for `generation` and had no failed item.
    pub fn result_ok_for(&self, generation: u64) -> Option<bool> {
        let for_gen: Vec<_> = self
            .items
            .iter()
            .filter(|i| i.generation == generation)
            .collect();
        if for_gen.is_empty() {
            return None;
        }
        Some(
            for_gen
                .iter()
                .all(|i| matches!(i.status, ItemStatus::Applied | ItemStatus::Unchanged)),
        )
    }
}

/// One lease a configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `address` or `hostname`.
    pub kind: &'static str,
    /// The canonical value (an IP address without prefix; a lowercase hostname).
    pub value: String,
    /// Where in the document it comes from.
    pub path: String,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.value)
    }
}

/// A lease held by another domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConflict {
    /// The lease asked for.
    pub lease: Lease,
    /// Who holds it.
    pub holder: String,
}

impl std::fmt::Display for LeaseConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is leased to domain {}", self.lease, self.holder)
    }
}

/// The leases a configuration asks for: every static address, and the hostname when
/// `hostname_leases` is on.
pub fn leases_of(config: &GuestConfig, hostname_leases: bool) -> Vec<Lease> {
    let mut out = Vec::new();
    if hostname_leases && let Some(h) = &config.hostname {
        out.push(Lease {
            kind: "hostname",
            value: h.as_str().to_ascii_lowercase(),
            path: "hostname".into(),
        });
    }
    if let Some(net) = &config.network {
        for (id, eth) in &net.ethernets {
            for (i, a) in eth.addresses.iter().enumerate() {
                out.push(Lease {
                    kind: "address",
                    value: a.0.addr().to_string(),
                    path: format!("network.ethernets.{id}.addresses[{i}]"),
                });
            }
        }
    }
    out
}

/// What a stored PUT did.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// The domain had no desired configuration before.
    Created(DesiredConfig),
    /// A new generation replaced the old one.
    Updated(DesiredConfig),
    /// The same document (same digest and UUID) was already desired: nothing changed.
    Unchanged(DesiredConfig),
}

impl PutOutcome {
    /// The desired configuration now.
    pub fn desired(&self) -> &DesiredConfig {
        match self {
            PutOutcome::Created(d) | PutOutcome::Updated(d) | PutOutcome::Unchanged(d) => d,
        }
    }
}

/// Why a PUT was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRefusal {
    /// A lease is held by another domain.
    Lease(LeaseConflict),
    /// The broker already manages `limits.max_domains` domains.
    TooManyDomains(usize),
}

/// Why a lifecycle prepare was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareRefusal {
    /// Another registered domain has this UUID.
    UuidTaken {
        /// The UUID.
        uuid: String,
        /// The domain registered with it.
        holder: String,
    },
    /// The domain is registered with another UUID and its agent is connected.
    UuidChanged {
        /// The UUID recorded for the domain.
        recorded: String,
        /// The UUID asked for.
        asked: String,
    },
    /// A lease of the domain's configuration is held by another domain.
    Lease(LeaseConflict),
    /// The broker already manages `limits.max_domains` domains.
    TooManyDomains(usize),
}

/// What a stored lifecycle prepare did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The domain was not registered before.
    pub created: bool,
    /// The UUID recorded for the domain now.
    pub uuid: Option<String>,
    /// The leases the domain holds now (`address 192.0.2.10`).
    pub leases: Vec<String>,
}

/// What a lifecycle prepare asks the store for.
#[derive(Debug, Clone, Copy)]
pub struct PrepareRequest<'a> {
    /// The domain.
    pub name: &'a str,
    /// Its UUID, if the caller knows it (lowercase).
    pub uuid: Option<&'a str>,
    /// A channel socket path other than the default one.
    pub channel_path: Option<&'a str>,
    /// Whether hostnames are leases (`leases.hostname`).
    pub hostname_leases: bool,
    /// Whether the domain's agent is connected now (a UUID change is then refused).
    pub connected: bool,
    /// `limits.max_domains`.
    pub max_domains: usize,
    /// Only check (before the prepare hooks run): nothing is written.
    pub check_only: bool,
}

/// One event: (time, domain, kind, detail).
pub type EventRow = (String, Option<String>, String, String);

/// The synchronous side of the store, used on the store thread.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    history: usize,
    events: usize,
    events_since_prune: usize,
    /// A batch transaction is open (see [`run_batch`]).
    batch_open: Cell<bool>,
    /// `total_changes` when the batch transaction began: equal now means the batch has
    /// written nothing yet.
    batch_changes: Cell<u64>,
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    uuid TEXT,
    reported_uuid TEXT,
    desired_generation INTEGER,
    desired_digest TEXT,
    config TEXT,
    applied_generation INTEGER,
    applied_digest TEXT,
    last_error TEXT,
    facts TEXT,
    last_result_at TEXT,
    updated_at TEXT NOT NULL,
    lifecycle TEXT,
    channel_path TEXT
);
CREATE TABLE IF NOT EXISTS generations (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    digest TEXT NOT NULL,
    config TEXT NOT NULL,
    uuid TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, generation)
);
CREATE TABLE IF NOT EXISTS items (
    name TEXT NOT NULL,
    item TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    generation INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (name, item)
);
CREATE TABLE IF NOT EXISTS leases (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    domain TEXT NOT NULL,
    path TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX IF NOT EXISTS leases_by_domain ON leases(domain);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    domain TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

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
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, history: usize, events: usize) -> Result<Db, StoreError> {
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
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.pragma_update(None, "user_version", 2)?;
        Ok(Db {
            conn,
            history,
            events,
            events_since_prune: 0,
            batch_open: Cell::new(false),
            batch_changes: Cell::new(0),
        })
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

    /// Every stored domain, by name.
    pub fn load_all(&mut self) -> Result<Vec<DomainRecord>, StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM domains ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(r) = self.get(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One domain.
    pub fn get(&mut self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT uuid, reported_uuid, desired_generation, desired_digest, config,
                        applied_generation, applied_digest, last_error, facts, last_result_at,
                        lifecycle, channel_path
                 FROM domains WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            uuid,
            reported_uuid,
            dgen,
            ddigest,
            config,
            agen,
            adigest,
            err,
            facts,
            at,
            lifecycle,
            channel_path,
        )) = row
        else {
            return Ok(None);
        };
        let corrupt = |message: String| StoreError::Corrupt {
            domain: name.to_string(),
            message,
        };
        let desired = match (dgen, ddigest, config) {
            (Some(g), Some(d), Some(c)) => Some(DesiredConfig {
                generation: g as u64,
                digest: Digest::try_from(d).map_err(corrupt)?,
                config: serde_json::from_str(&c).map_err(|e| corrupt(e.to_string()))?,
            }),
            _ => None,
        };
        let facts = match facts {
            Some(f) => Some(serde_json::from_str(&f).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        };
        let items = self
            .conn
            .prepare_cached(
                "SELECT item, status, reason, generation FROM items WHERE name = ?1 ORDER BY rowid",
            )?
            .query_map([name], |r| {
                Ok(ItemView {
                    item: r.get(0)?,
                    status: status_from_str(&r.get::<_, String>(1)?),
                    reason: r.get(2)?,
                    generation: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(DomainRecord {
            name: name.to_string(),
            uuid,
            reported_uuid,
            desired,
            applied: agen.zip(adigest).map(|(g, d)| (g as u64, d)),
            items,
            last_error: err,
            facts,
            last_result_at: at,
            lifecycle: lifecycle.as_deref().and_then(Lifecycle::from_str_opt),
            channel_path: channel_path.map(PathBuf::from),
        }))
    }

    /// The first lease in `wanted` that a domain other than `name` holds.
    pub fn lease_conflict(
        &self,
        name: &str,
        wanted: &[Lease],
    ) -> Result<Option<LeaseConflict>, StoreError> {
        lease_conflict(&self.conn, name, wanted)
    }

    /// Stores a new desired configuration (prepare): re-checks the leases, bumps the
    /// generation, records it in the history and replaces the domain's leases, all in one
    /// transaction.
    pub fn put_config(
        &mut self,
        name: &str,
        uuid: Option<&str>,
        config: &GuestConfig,
        leases: &[Lease],
        max_domains: usize,
    ) -> Result<Result<PutOutcome, PutRefusal>, StoreError> {
        let digest = config.digest();
        let now = now_rfc3339();
        let history = self.history;
        let tx = self.tx()?;
        if let Some(c) = lease_conflict(&tx, name, leases)? {
            return Ok(Err(PutRefusal::Lease(c)));
        }
        let current: Option<(Option<i64>, Option<String>, Option<String>)> = row(
            &tx,
            "SELECT desired_generation, desired_digest, uuid FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
        let had_desired = matches!(current, Some((Some(_), Some(_), _)));
        if let Some((Some(g), Some(d), old_uuid)) = &current
            && d == digest.as_str()
            && (uuid.is_none() || uuid == old_uuid.as_deref())
        {
            // Same document: keep the generation, so the agent is not asked again.
            replace_leases(&tx, name, leases, &now)?;
            tx.commit()?;
            return Ok(Ok(PutOutcome::Unchanged(DesiredConfig {
                generation: *g as u64,
                digest,
                config: config.clone(),
            })));
        }
        if current.is_none() {
            let count: i64 = row(&tx, "SELECT count(*) FROM domains", [], |r| r.get(0))?;
            if count as usize >= max_domains {
                return Ok(Err(PutRefusal::TooManyDomains(max_domains)));
            }
        }
        let last: i64 = row(
            &tx,
            "SELECT last FROM generations WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
        let generation = last + 1;
        exec(
            &tx,
            "INSERT INTO generations(name, last) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET last = excluded.last",
            params![name, generation],
        )?;
        let json = String::from_utf8(config.canonical_json()).expect("JSON is UTF-8");
        exec(
            &tx,
            "INSERT OR REPLACE INTO history(name, generation, digest, config, uuid, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, generation, digest.as_str(), json, uuid, now],
        )?;
        exec(
            &tx,
            "DELETE FROM history WHERE name = ?1 AND generation <= ?2",
            params![name, generation - sql_int(history)],
        )?;
        exec(&tx,
            "INSERT INTO domains(name, uuid, desired_generation, desired_digest, config, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET
                uuid = coalesce(excluded.uuid, domains.uuid),
                desired_generation = excluded.desired_generation,
                desired_digest = excluded.desired_digest,
                config = excluded.config,
                updated_at = excluded.updated_at",
            params![name, uuid, generation, digest.as_str(), json, now],
        )?;
        replace_leases(&tx, name, leases, &now)?;
        insert_event(
            &tx,
            Some(name),
            "config",
            &format!("generation {generation} {digest}"),
        )?;
        tx.commit()?;
        self.after_event();
        let d = DesiredConfig {
            generation: generation as u64,
            digest,
            config: config.clone(),
        };
        Ok(Ok(if had_desired {
            PutOutcome::Updated(d)
        } else {
            PutOutcome::Created(d)
        }))
    }

    /// Removes the desired configuration and releases the domain's leases (remove +
    /// unprepare). Keeps the row (applied state, facts) when `keep_row`, i.e. while a
    /// session to the domain is up. Returns whether a configuration was removed and the
    /// leases released.
    pub fn delete_config(
        &mut self,
        name: &str,
        keep_row: bool,
    ) -> Result<(bool, Vec<String>), StoreError> {
        let tx = self.tx()?;
        let released: Vec<String> = tx
            .prepare("SELECT kind, value FROM leases WHERE domain = ?1 ORDER BY kind, value")?
            .query_map([name], |r| {
                Ok(format!(
                    "{} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ))
            })?
            .collect::<Result<_, _>>()?;
        exec(&tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
        let removed = row(
            &tx,
            "SELECT desired_generation IS NOT NULL FROM domains WHERE name = ?1",
            [name],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false);
        if keep_row {
            exec(
                &tx,
                "UPDATE domains SET desired_generation = NULL, desired_digest = NULL,
                    config = NULL, uuid = NULL, updated_at = ?2 WHERE name = ?1",
                params![name, now_rfc3339()],
            )?;
        } else {
            exec(&tx, "DELETE FROM domains WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        }
        if removed || !released.is_empty() {
            insert_event(&tx, Some(name), "delete", &released.join(", "))?;
        }
        tx.commit()?;
        self.after_event();
        Ok((removed, released))
    }

    /// Drops the row of a domain that has no desired configuration (its socket went
    /// away, so nothing about it matters any more).
    pub fn forget_unconfigured(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let n = exec(
            &tx,
            "DELETE FROM domains WHERE name = ?1 AND desired_generation IS NULL
                AND coalesce(lifecycle, '') != 'running'",
            [name],
        )?;
        if n > 0 {
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The lifecycle prepare: registers the domain (no configuration needed), records
    /// its UUID and channel path, takes or confirms the leases of its configuration and
    /// marks it running, in one transaction. Idempotent.
    pub fn prepare(
        &mut self,
        req: &PrepareRequest<'_>,
    ) -> Result<Result<Prepared, PrepareRefusal>, StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        let name = req.name;
        let current: Option<(Option<String>, Option<String>)> = row(
            &tx,
            "SELECT uuid, config FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        if let Some(u) = req.uuid {
            let holder: Option<String> = row(
                &tx,
                "SELECT name FROM domains WHERE uuid = ?1 AND name != ?2 ORDER BY name LIMIT 1",
                params![u, name],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(holder) = holder {
                return Ok(Err(PrepareRefusal::UuidTaken {
                    uuid: u.to_string(),
                    holder,
                }));
            }
            if let Some((Some(old), _)) = &current
                && old != u
                && req.connected
            {
                return Ok(Err(PrepareRefusal::UuidChanged {
                    recorded: old.clone(),
                    asked: u.to_string(),
                }));
            }
        }
        if current.is_none() {
            let count: i64 = row(&tx, "SELECT count(*) FROM domains", [], |r| r.get(0))?;
            if count as usize >= req.max_domains {
                return Ok(Err(PrepareRefusal::TooManyDomains(req.max_domains)));
            }
        }
        // The leases belong to the stored configuration (read here, inside the
        // transaction, so a PUT that raced with the prepare hooks is what counts).
        let leases = match current.as_ref().and_then(|c| c.1.as_deref()) {
            Some(json) => {
                let config: GuestConfig =
                    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
                        domain: name.to_string(),
                        message: e.to_string(),
                    })?;
                leases_of(&config, req.hostname_leases)
            }
            None => Vec::new(),
        };
        if let Some(c) = lease_conflict(&tx, name, &leases)? {
            return Ok(Err(PrepareRefusal::Lease(c)));
        }
        if req.check_only {
            return Ok(Ok(Prepared {
                created: current.is_none(),
                uuid: req
                    .uuid
                    .map(str::to_string)
                    .or_else(|| current.and_then(|c| c.0)),
                leases: leases.iter().map(ToString::to_string).collect(),
            }));
        }
        replace_leases(&tx, name, &leases, &now)?;
        exec(
            &tx,
            "INSERT INTO domains(name, uuid, lifecycle, channel_path, updated_at)
             VALUES (?1, ?2, 'running', ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET
                uuid = coalesce(excluded.uuid, domains.uuid),
                lifecycle = 'running',
                channel_path = excluded.channel_path,
                updated_at = excluded.updated_at",
            params![name, req.uuid, req.channel_path, now],
        )?;
        let uuid: Option<String> = row(
            &tx,
            "SELECT uuid FROM domains WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        let held: Vec<String> = leases.iter().map(ToString::to_string).collect();
        insert_event(
            &tx,
            Some(name),
            "prepare",
            &format!(
                "uuid {} leases [{}]",
                uuid.as_deref().unwrap_or("-"),
                held.join(", ")
            ),
        )?;
        tx.commit()?;
        self.after_event();
        Ok(Ok(Prepared {
            created: current.is_none(),
            uuid,
            leases: held,
        }))
    }

    /// The lifecycle release of a stopped VM: the running marker goes; the desired
    /// configuration and its leases stay (they are the orchestrator's). A domain with no
    /// configuration is forgotten. Returns whether the domain was marked running, or
    /// `None` if the store does not know it. Idempotent.
    pub fn release(&mut self, name: &str) -> Result<Option<bool>, StoreError> {
        let tx = self.tx()?;
        let row: Option<(bool, Option<String>)> = row(
            &tx,
            "SELECT desired_generation IS NOT NULL, lifecycle FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        let Some((configured, lifecycle)) = row else {
            return Ok(None);
        };
        let was_running = lifecycle.as_deref() == Some("running");
        if configured {
            exec(
                &tx,
                "UPDATE domains SET lifecycle = 'stopped', updated_at = ?2 WHERE name = ?1",
                params![name, now_rfc3339()],
            )?;
        } else {
            exec(&tx, "DELETE FROM domains WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
        }
        insert_event(
            &tx,
            Some(name),
            "release",
            if configured {
                "stopped; configuration kept"
            } else {
                "stopped; forgotten (no configuration)"
            },
        )?;
        tx.commit()?;
        self.after_event();
        Ok(Some(was_running))
    }

    fn ensure_row(tx: &Connection, name: &str, now: &str) -> Result<(), StoreError> {
        exec(
            tx,
            "INSERT OR IGNORE INTO domains(name, updated_at) VALUES (?1, ?2)",
            params![name, now],
        )?;
        Ok(())
    }

    /// Records what the agent says it has applied (from its hello).
    pub fn record_applied(
        &mut self,
        name: &str,
        applied: Option<(u64, &str)>,
        reported_uuid: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(
            &tx,
            "UPDATE domains SET applied_generation = ?2, applied_digest = ?3,
                reported_uuid = coalesce(?4, reported_uuid), updated_at = ?5 WHERE name = ?1",
            params![
                name,
                applied.map(|a| sql_int(a.0)),
                applied.map(|a| a.1),
                reported_uuid,
                now
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a result: the items, the applied generation and when. Durable before it
    /// returns; returns the time it recorded.
    pub fn record_result(
        &mut self,
        name: &str,
        result: &ApplyResult,
    ) -> Result<String, StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        for item in &result.items {
            exec(
                &tx,
                "INSERT OR REPLACE INTO items(name, item, status, reason, generation, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    item.item,
                    item.status.as_str(),
                    item.reason,
                    sql_int(result.generation),
                    now
                ],
            )?;
        }
        exec(
            &tx,
            "UPDATE domains SET applied_generation = ?2, applied_digest = ?3,
                last_result_at = ?4, updated_at = ?4 WHERE name = ?1",
            params![
                name,
                sql_int(result.generation),
                result.digest.as_str(),
                now
            ],
        )?;
        let failed = result
            .items
            .iter()
            .filter(|i| i.status == ItemStatus::Failed)
            .count();
        insert_event(
            &tx,
            Some(name),
            "result",
            &format!(
                "generation {} items {} failed {failed}",
                result.generation,
                result.items.len()
            ),
        )?;
        tx.commit()?;
        self.after_event();
        Ok(now)
    }

    /// Records the guest's facts.
    pub fn record_facts(&mut self, name: &str, facts: &GuestFacts) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let json = serde_json::to_string(facts).expect("facts serialise");
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(
            &tx,
            "UPDATE domains SET facts = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, json, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets or clears the domain's last error (only for domains with a row).
    pub fn set_error(&mut self, name: &str, error: Option<&str>) -> Result<(), StoreError> {
        exec(
            &self.conn,
            "UPDATE domains SET last_error = ?2 WHERE name = ?1",
            params![name, error],
        )?;
        if let Some(e) = error {
            insert_event(&self.conn, Some(name), "error", e)?;
            self.after_event();
        }
        Ok(())
    }

    /// Appends to the event log.
    pub fn event(
        &mut self,
        domain: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        insert_event(&self.conn, domain, kind, detail)?;
        self.after_event();
        Ok(())
    }

    /// The last `n` events, newest last: (time, domain, kind, detail).
    pub fn recent_events(&mut self, n: usize) -> Result<Vec<EventRow>, StoreError> {
        let mut rows: Vec<_> = self
            .conn
            .prepare("SELECT at, domain, kind, detail FROM events ORDER BY id DESC LIMIT ?1")?
            .query_map([sql_int(n)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// The leases held, as (kind, value, domain).
    pub fn leases(&mut self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT kind, value, domain FROM leases ORDER BY kind, value")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?)
    }

    /// Generations kept in the history of `name`, oldest first.
    pub fn history(&mut self, name: &str) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT generation, digest FROM history WHERE name = ?1 ORDER BY generation")?
            .query_map([name], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    fn after_event(&mut self) {
        self.events_since_prune += 1;
        if self.events_since_prune >= 256 {
            self.events_since_prune = 0;
            let _ = exec(
                &self.conn,
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
                [sql_int(self.events)],
            );
        }
    }
}

/// Brings a database made by an older broker up to this schema.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('domains')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (column, ddl) in [
        ("lifecycle", "ALTER TABLE domains ADD COLUMN lifecycle TEXT"),
        (
            "channel_path",
            "ALTER TABLE domains ADD COLUMN channel_path TEXT",
        ),
    ] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(ddl)?;
        }
    }
    // `events.id` was AUTOINCREMENT, whose `sqlite_sequence` row made every commit that
    // logs an event write one more page. Without it ids still only grow (the log is
    // pruned from the oldest, so the largest id stays); an older database's table is
    // rebuilt once.
    let events: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if events.is_some_and(|sql| sql.to_ascii_uppercase().contains("AUTOINCREMENT")) {
        let rebuilt = conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE events_rebuilt (
                 id INTEGER PRIMARY KEY,
                 at TEXT NOT NULL,
                 domain TEXT,
                 kind TEXT NOT NULL,
                 detail TEXT NOT NULL
             );
             INSERT INTO events_rebuilt(id, at, domain, kind, detail)
                 SELECT id, at, domain, kind, detail FROM events;
             DROP TABLE events;
             ALTER TABLE events_rebuilt RENAME TO events;
             DELETE FROM sqlite_sequence WHERE name = 'events';
             COMMIT;",
        );
        if let Err(e) = rebuilt {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(e.into());
        }
    }
    Ok(())
}

fn lease_conflict(
    conn: &Connection,
    name: &str,
    wanted: &[Lease],
) -> Result<Option<LeaseConflict>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT domain FROM leases WHERE kind = ?1 AND value = ?2")?;
    for l in wanted {
        let holder: Option<String> = stmt
            .query_row(params![l.kind, l.value], |r| r.get(0))
            .optional()?;
        if let Some(h) = holder
            && h != name
        {
            return Ok(Some(LeaseConflict {
                lease: l.clone(),
                holder: h,
            }));
        }
    }
    Ok(None)
}

fn replace_leases(
    tx: &Connection,
    name: &str,
    leases: &[Lease],
    now: &str,
) -> Result<(), StoreError> {
    exec(tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
    for l in leases {
        exec(
            tx,
            "INSERT OR REPLACE INTO leases(kind, value, domain, path, since) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![l.kind, l.value, name, l.path, now],
        )?;
    }
    Ok(())
}

fn insert_event(
    conn: &Connection,
    domain: Option<&str>,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO events(at, domain, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_rfc3339(), domain, kind, detail],
    )?;
    Ok(())
}

/// A job runs on the store thread and returns how to deliver its answer, which is
/// called once the job's writes are committed (with the commit's failure, if any).
type Job = Box<dyn FnOnce(&mut Db) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;

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
fn run_batch(db: &mut Db, batch: Vec<Job>) {
    db.batch_open
        .set(db.conn.execute_batch("BEGIN IMMEDIATE").is_ok());
    db.batch_changes.set(db.conn.total_changes());
    let replies: Vec<Reply> = batch.into_iter().map(|job| job(db)).collect();
    // Checked after the jobs: a job's undo may have had to end the transaction.
    let failure = if db.batch_open.replace(false) {
        match db.conn.execute_batch("COMMIT") {
            Ok(()) => None,
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
pub struct Store {
    tx: mpsc::UnboundedSender<Job>,
}

/// Joins the store thread once every [`Store`] handle is dropped.
#[derive(Debug)]
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    /// Waits until the thread has run every queued job and closed the database.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Store {
    /// Opens the database at `path` and starts its thread.
    pub fn open(
        path: &Path,
        history: usize,
        events: usize,
    ) -> Result<(Store, StoreThread), StoreError> {
        let mut db = Db::open(path, history, events)?;
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
        Ok((Store { tx }, StoreThread(handle)))
    }

    /// Runs `f` on the store thread and returns its answer.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let answer = f(db);
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

#[cfg(test)]
mod tests {
    use super::*;
    use xenchan_protocol::ItemResult;

    fn cfg(json: &str) -> GuestConfig {
        GuestConfig::from_json(json.as_bytes()).unwrap()
    }

    fn net(addr: &str) -> String {
        format!(
            r#"{{"hostname":"h1","network":{{"version":2,"ethernets":{{"eth0":{{"match":{{"macaddress":"00:16:3e:00:00:01"}},"addresses":["{addr}"]}}}}}}}}"#
        )
    }

    #[test]
    fn put_bumps_generations_and_keeps_them_across_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db"), 3, 1000).unwrap();
        let first = cfg(&net("192.0.2.1/24"));
        let second = cfg(&net("192.0.2.2/24"));
        let leases = |c: &GuestConfig| leases_of(c, true);
        let out = db
            .put_config("d", None, &first, &leases(&first), 10)
            .unwrap()
            .unwrap();
        assert!(matches!(out, PutOutcome::Created(ref d) if d.generation == 1));
        let out = db
            .put_config("d", None, &first, &leases(&first), 10)
            .unwrap()
            .unwrap();
        assert!(matches!(out, PutOutcome::Unchanged(ref d) if d.generation == 1));
        let out = db
            .put_config("d", None, &second, &leases(&second), 10)
            .unwrap()
            .unwrap();
        assert!(matches!(out, PutOutcome::Updated(ref d) if d.generation == 2));
        for i in 0..3 {
            let next = cfg(&net(&format!("192.0.2.{}/24", 10 + i)));
            db.put_config("d", None, &next, &leases(&next), 10)
                .unwrap()
                .unwrap();
        }
        assert_eq!(db.history("d").unwrap().len(), 3, "history is pruned");
        let (removed, released) = db.delete_config("d", false).unwrap();
        assert!(removed);
        assert_eq!(released.len(), 2, "{released:?}");
        assert!(db.get("d").unwrap().is_none());
        let out = db
            .put_config("d", None, &first, &leases(&first), 10)
            .unwrap()
            .unwrap();
        assert_eq!(out.desired().generation, 6, "generations never go back");
        let (removed, _) = db.delete_config("nope", false).unwrap();
        assert!(!removed);
    }

    #[test]
    fn leases_conflict_across_domains_and_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db"), 3, 1000).unwrap();
        let a = cfg(&net("192.0.2.1/24"));
        db.put_config("one", None, &a, &leases_of(&a, true), 10)
            .unwrap()
            .unwrap();
        let r = db
            .put_config("two", None, &a, &leases_of(&a, true), 10)
            .unwrap()
            .unwrap_err();
        let PutRefusal::Lease(c) = r else {
            panic!("{r:?}")
        };
        assert_eq!(c.holder, "one");
        assert_eq!(c.to_string(), "hostname h1 is leased to domain one");
        let r = db
            .put_config("two", None, &a, &leases_of(&a, false), 10)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            r,
            PutRefusal::Lease(LeaseConflict {
                lease: Lease {
                    kind: "address",
                    value: "192.0.2.1".into(),
                    path: "network.ethernets.eth0.addresses[0]".into()
                },
                holder: "one".into()
            })
        );
        db.delete_config("one", false).unwrap();
        db.put_config("two", None, &a, &leases_of(&a, true), 10)
            .unwrap()
            .unwrap();
    }

    fn prep<'a>(name: &'a str, uuid: Option<&'a str>) -> PrepareRequest<'a> {
        PrepareRequest {
            name,
            uuid,
            channel_path: None,
            hostname_leases: true,
            connected: false,
            max_domains: 10,
            check_only: false,
        }
    }

    #[test]
    fn prepare_registers_guards_uuids_and_release_keeps_configs() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db"), 3, 1000).unwrap();
        // A check writes nothing.
        let check = PrepareRequest {
            check_only: true,
            ..prep("a", Some("u-1"))
        };
        assert!(db.prepare(&check).unwrap().unwrap().created);
        assert!(db.get("a").unwrap().is_none());
        let p = db
            .prepare(&PrepareRequest {
                channel_path: Some("/q/a.sock"),
                ..prep("a", Some("u-1"))
            })
            .unwrap()
            .unwrap();
        assert!(p.created);
        let rec = db.get("a").unwrap().unwrap();
        assert_eq!(rec.lifecycle, Some(Lifecycle::Running));
        assert_eq!(rec.channel_path, Some(PathBuf::from("/q/a.sock")));
        assert!(rec.desired.is_none());
        // Idempotent; no UUID keeps the recorded one.
        let p = db.prepare(&prep("a", None)).unwrap().unwrap();
        assert!(!p.created);
        assert_eq!(p.uuid.as_deref(), Some("u-1"));
        assert_eq!(db.get("a").unwrap().unwrap().channel_path, None);
        // Another domain with the UUID; a new UUID while connected.
        let r = db.prepare(&prep("b", Some("u-1"))).unwrap().unwrap_err();
        assert_eq!(
            r,
            PrepareRefusal::UuidTaken {
                uuid: "u-1".into(),
                holder: "a".into()
            }
        );
        let connected = PrepareRequest {
            connected: true,
            ..prep("a", Some("u-2"))
        };
        assert!(matches!(
            db.prepare(&connected).unwrap().unwrap_err(),
            PrepareRefusal::UuidChanged { .. }
        ));
        assert_eq!(
            db.prepare(&prep("a", Some("u-2")))
                .unwrap()
                .unwrap()
                .uuid
                .as_deref(),
            Some("u-2")
        );
        // Leases of the stored config are taken; release keeps config and leases.
        let c = cfg(&net("192.0.2.9/24"));
        db.put_config("a", None, &c, &[], 10).unwrap().unwrap();
        db.prepare(&prep("a", None)).unwrap().unwrap();
        assert_eq!(db.leases().unwrap().len(), 2);
        assert_eq!(db.release("a").unwrap(), Some(true));
        assert_eq!(db.release("a").unwrap(), Some(false));
        let rec = db.get("a").unwrap().unwrap();
        assert_eq!(rec.lifecycle, Some(Lifecycle::Stopped));
        assert!(rec.desired.is_some());
        assert_eq!(db.leases().unwrap().len(), 2);
        // Another config with the same hostname, accepted while hostnames were not
        // leases, is refused at prepare, naming the holder.
        db.put_config("b", None, &cfg(r#"{"hostname":"h1"}"#), &[], 10)
            .unwrap()
            .unwrap();
        let r = db.prepare(&prep("b", None)).unwrap().unwrap_err();
        assert!(
            matches!(r, PrepareRefusal::Lease(ref c) if c.holder == "a"),
            "{r:?}"
        );
        // Without a configuration, release forgets; unknown is None.
        db.prepare(&prep("c", None)).unwrap().unwrap();
        assert_eq!(db.release("c").unwrap(), Some(true));
        assert!(db.get("c").unwrap().is_none());
        assert_eq!(db.release("zz").unwrap(), None);
        // A prepared domain outlives forget_unconfigured.
        db.prepare(&prep("d", None)).unwrap().unwrap();
        db.forget_unconfigured("d").unwrap();
        assert!(db.get("d").unwrap().is_some());
    }

    #[test]
    fn a_store_of_the_first_schema_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE domains (name TEXT PRIMARY KEY, uuid TEXT, reported_uuid TEXT,
                    desired_generation INTEGER, desired_digest TEXT, config TEXT,
                    applied_generation INTEGER, applied_digest TEXT, last_error TEXT,
                    facts TEXT, last_result_at TEXT, updated_at TEXT NOT NULL);
                 INSERT INTO domains(name, uuid, updated_at) VALUES ('old', 'u-9', 'x');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut db = Db::open(&path, 3, 1000).unwrap();
        let rec = db.get("old").unwrap().unwrap();
        assert_eq!(rec.uuid.as_deref(), Some("u-9"));
        assert_eq!(rec.lifecycle, None);
        db.prepare(&prep("old", None)).unwrap().unwrap();
        assert_eq!(
            db.get("old").unwrap().unwrap().lifecycle,
            Some(Lifecycle::Running)
        );
    }

    #[test]
    fn results_facts_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db"), 3, 1000).unwrap();
        let a = cfg(r#"{"hostname":"x"}"#);
        let d = db
            .put_config("d", Some("u-1"), &a, &[], 1)
            .unwrap()
            .unwrap();
        let r = db.put_config("e", None, &a, &[], 1).unwrap().unwrap_err();
        assert_eq!(r, PutRefusal::TooManyDomains(1));
        let result = ApplyResult {
            generation: d.desired().generation,
            digest: d.desired().digest.clone(),
            items: vec![ItemResult::failed("hostname", "read-only")],
        };
        db.record_result("d", &result).unwrap();
        db.record_facts("d", &GuestFacts::default()).unwrap();
        let rec = db.get("d").unwrap().unwrap();
        assert_eq!(rec.uuid.as_deref(), Some("u-1"));
        assert_eq!(rec.items[0].reason.as_deref(), Some("read-only"));
        assert_eq!(rec.result_ok_for(1), Some(false));
        assert_eq!(rec.applied, Some((1, d.desired().digest.to_string())));
        assert!(rec.last_result_at.is_some());
        db.delete_config("d", true).unwrap();
        let rec = db.get("d").unwrap().unwrap();
        assert!(rec.desired.is_none() && rec.facts.is_some());
        db.forget_unconfigured("d").unwrap();
        assert!(db.get("d").unwrap().is_none());
    }

    /// A database made before `events.id` lost AUTOINCREMENT keeps its events, in order,
    /// and new ones come after them.
    #[test]
    fn events_table_of_an_older_database_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
                    domain TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL);
                 INSERT INTO events(at, domain, kind, detail) VALUES ('t1', 'a', 'config', 'one');
                 INSERT INTO events(at, domain, kind, detail) VALUES ('t2', 'b', 'result', 'two');",
            )
            .unwrap();
        }
        let mut db = Db::open(&path, 3, 1000).unwrap();
        let sql: String = db
            .conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.to_ascii_uppercase().contains("AUTOINCREMENT"), "{sql}");
        db.event(Some("c"), "delete", "three").unwrap();
        let details: Vec<String> = db
            .recent_events(10)
            .unwrap()
            .into_iter()
            .map(|e| e.3)
            .collect();
        assert_eq!(details, ["one", "two", "three"]);
        drop(db);
        // Opening again changes nothing.
        let mut db = Db::open(&path, 3, 1000).unwrap();
        assert_eq!(db.recent_events(10).unwrap().len(), 3);
    }

    /// A job's transaction is a savepoint only when the batch already holds writes; a
    /// job undone without one (the first writer of its batch) leaves the batch as if it
    /// had not run, and the jobs after it still commit.
    #[test]
    fn first_writer_of_a_batch_needs_no_savepoint_and_can_still_be_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut db = Db::open(&path, 3, 1000).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let job = |name: &'static str, keep: bool| -> Job {
            let seen = std::sync::Arc::clone(&seen);
            Box::new(move |db: &mut Db| {
                let tx = db.tx().unwrap();
                seen.lock().unwrap().push((name, tx.savepoint));
                exec(
                    &tx,
                    "INSERT INTO generations(name, last) VALUES (?1, 1)",
                    [name],
                )
                .unwrap();
                if keep {
                    tx.commit().unwrap();
                }
                Box::new(|failure: Option<StoreError>| assert!(failure.is_none()))
            })
        };
        // Undone first writer, then two that keep their writes.
        run_batch(
            &mut db,
            vec![job("a", false), job("b", true), job("c", true)],
        );
        // A lone job that is undone, then a lone job that keeps its write.
        run_batch(&mut db, vec![job("d", false)]);
        run_batch(&mut db, vec![job("e", true)]);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("a", false),
                ("b", false),
                ("c", true),
                ("d", false),
                ("e", false)
            ]
        );
        assert!(db.conn.is_autocommit(), "no transaction left open");
        drop(db);
        let db = Db::open(&path, 3, 1000).unwrap();
        let names: Vec<String> = db
            .conn
            .prepare("SELECT name FROM generations ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, ["b", "c", "e"]);
    }

    /// Group commit: jobs queued together are committed together, each answered only
    /// after that commit; a job that fails undoes only its own writes.
    #[test]
    fn queued_jobs_commit_together_and_a_failing_one_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (store, thread) = Store::open(&path, 3, 1000).unwrap();
        rt.block_on(async {
            let mut calls = Vec::new();
            for i in 0..300 {
                let c = cfg(&format!(r#"{{"hostname":"h{i}"}}"#));
                calls.push(store.call(move |db| {
                    db.put_config(&format!("d{i}"), None, &c, &[], 1000)
                        .map(|r| r.is_ok())
                }));
            }
            let failing = store.call(|db| -> Result<(), StoreError> {
                let sp = db.conn.savepoint()?;
                exec(
                    &sp,
                    "INSERT INTO generations(name, last) VALUES ('ghost', 9)",
                    [],
                )?;
                Err(StoreError::Closed)
            });
            let (answers, failed) = tokio::join!(futures::future::join_all(calls), failing);
            assert!(answers.into_iter().all(|a| a.unwrap()));
            assert!(failed.is_err());
        });
        drop(store);
        thread.join();
        // What was answered is on disk; the failed job left nothing.
        let mut db = Db::open(&path, 3, 1000).unwrap();
        assert_eq!(db.load_all().unwrap().len(), 300);
        let ghost: Option<i64> = row(
            &db.conn,
            "SELECT last FROM generations WHERE name = 'ghost'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
        assert_eq!(ghost, None);
    }
}
