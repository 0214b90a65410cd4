//! The schema, and the migrations of databases made by older brokers.

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreError;

pub(super) const SCHEMA: &str = "
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
-- A prepare refuses a UUID another domain holds: without this, that check read every
-- row, and starting N domains cost O(N^2).
CREATE INDEX IF NOT EXISTS domains_by_uuid ON domains(uuid);
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    domain TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    caller_uid INTEGER,
    caller_pid INTEGER,
    caller_comm TEXT
);
";

/// Brings a database made by an older broker up to this schema.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
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
    // The caller of the API call that caused an event (older rows: none), and the index
    // of per-domain retention and of `GET /v1/events?domain=` (made after the rebuild
    // above, which would drop it).
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('events')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (column, ddl) in [
        (
            "caller_uid",
            "ALTER TABLE events ADD COLUMN caller_uid INTEGER",
        ),
        (
            "caller_pid",
            "ALTER TABLE events ADD COLUMN caller_pid INTEGER",
        ),
        (
            "caller_comm",
            "ALTER TABLE events ADD COLUMN caller_comm TEXT",
        ),
    ] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(ddl)?;
        }
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS events_by_domain ON events(domain, id)")?;
    Ok(())
}

/// The store's lineage (`meta` row `lineage`): made once, at random, when the database is
/// created (or first opened by a broker that knows lineages), and kept for its life. A
/// copy of the file (a backup) has the same lineage, which is the point: an agent that
/// applied a later generation of it refuses the older ones a restored backup would push.
pub(super) fn lineage(conn: &Connection) -> Result<xenchan_protocol::Lineage, StoreError> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'lineage'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(s) = stored {
        return xenchan_protocol::Lineage::try_from(s).map_err(|message| StoreError::Corrupt {
            domain: "(meta)".into(),
            message: format!("the store's lineage: {message}"),
        });
    }
    let fresh = xenchan_protocol::Lineage::from_bits(rand::random());
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('lineage', ?1)",
        [fresh.as_str()],
    )?;
    Ok(fresh)
}

/// `meta` row of the cluster's lineage (cluster mode).
const CLUSTER_LINEAGE: &str = "cluster_lineage";

impl super::Db {
    /// The lineage of the etcd cluster this store is the cache of (cluster mode), once
    /// learned: what lets a broker that starts while etcd is unreachable serve its cached
    /// domains under the lineage their agents applied (docs/CLUSTER.md, "Failure modes").
    pub fn cluster_lineage(&self) -> Result<Option<xenchan_protocol::Lineage>, StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [CLUSTER_LINEAGE],
                |r| r.get(0),
            )
            .optional()?;
        stored
            .map(|s| {
                xenchan_protocol::Lineage::try_from(s).map_err(|message| StoreError::Corrupt {
                    domain: "(meta)".into(),
                    message: format!("the cached cluster lineage: {message}"),
                })
            })
            .transpose()
    }

    /// Records the cluster's lineage (the first time this store's broker joins it).
    pub fn set_cluster_lineage(
        &self,
        lineage: &xenchan_protocol::Lineage,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [CLUSTER_LINEAGE, lineage.as_str()],
        )?;
        Ok(())
    }
}
