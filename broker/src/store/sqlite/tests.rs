use super::thread::{Job, run_batch};
use super::*;
use crate::leases::{Lease, LeaseConflict, leases_of};
use std::path::PathBuf;

use crate::api::types::Lifecycle;
use crate::store::{
    Deleted, PrepareRefusal, PrepareRequest, PutOutcome, PutRefusal, PutRequest, Store,
};
use rusqlite::OptionalExtension;
use xenchan_protocol::ItemResult;
use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};

fn put(
    db: &mut Db,
    name: &str,
    uuid: Option<&str>,
    config: &GuestConfig,
    leases: &[Lease],
    max_domains: usize,
) -> Result<Result<PutOutcome, PutRefusal>, StoreError> {
    db.put_config(&PutRequest {
        name,
        uuid,
        config,
        leases,
        max_domains,
    })
}

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
    let out = put(&mut db, "d", None, &first, &leases(&first), 10)
        .unwrap()
        .unwrap();
    assert!(matches!(out, PutOutcome::Created(ref d) if d.generation == 1));
    let out = put(&mut db, "d", None, &first, &leases(&first), 10)
        .unwrap()
        .unwrap();
    assert!(matches!(out, PutOutcome::Unchanged(ref d) if d.generation == 1));
    let out = put(&mut db, "d", None, &second, &leases(&second), 10)
        .unwrap()
        .unwrap();
    assert!(matches!(out, PutOutcome::Updated(ref d) if d.generation == 2));
    for i in 0..3 {
        let next = cfg(&net(&format!("192.0.2.{}/24", 10 + i)));
        put(&mut db, "d", None, &next, &leases(&next), 10)
            .unwrap()
            .unwrap();
    }
    assert_eq!(db.history("d").unwrap().len(), 3, "history is pruned");
    let Deleted { removed, released } = db.delete_config("d", false).unwrap();
    assert!(removed);
    assert_eq!(released.len(), 2, "{released:?}");
    assert!(db.get("d").unwrap().is_none());
    let out = put(&mut db, "d", None, &first, &leases(&first), 10)
        .unwrap()
        .unwrap();
    assert_eq!(out.desired().generation, 6, "generations never go back");
    let Deleted { removed, .. } = db.delete_config("nope", false).unwrap();
    assert!(!removed);
}

#[test]
fn leases_conflict_across_domains_and_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("db"), 3, 1000).unwrap();
    let a = cfg(&net("192.0.2.1/24"));
    put(&mut db, "one", None, &a, &leases_of(&a, true), 10)
        .unwrap()
        .unwrap();
    let r = put(&mut db, "two", None, &a, &leases_of(&a, true), 10)
        .unwrap()
        .unwrap_err();
    let PutRefusal::Lease(c) = r else {
        panic!("{r:?}")
    };
    assert_eq!(c.holder, "one");
    assert_eq!(c.to_string(), "hostname h1 is leased to domain one");
    let r = put(&mut db, "two", None, &a, &leases_of(&a, false), 10)
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
    put(&mut db, "two", None, &a, &leases_of(&a, true), 10)
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
    put(&mut db, "a", None, &c, &[], 10).unwrap().unwrap();
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
    put(&mut db, "b", None, &cfg(r#"{"hostname":"h1"}"#), &[], 10)
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
    let d = put(&mut db, "d", Some("u-1"), &a, &[], 1).unwrap().unwrap();
    let r = put(&mut db, "e", None, &a, &[], 1).unwrap().unwrap_err();
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
    let items = &rec.last_result.items;
    assert_eq!(items[0].reason.as_deref(), Some("read-only"));
    assert_eq!(items[0].status, xenchan_protocol::ItemStatus::Failed);
    assert_eq!(items[0].generation, 1);
    assert_eq!(
        rec.applied,
        Some(Applied {
            generation: 1,
            digest: d.desired().digest.clone(),
            lineage: None,
        })
    );
    assert!(rec.last_result.at.is_some());
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
        .map(|e| e.detail)
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
    let (store, thread) = SqliteStore::open(&path, 3, 1000).unwrap();
    rt.block_on(async {
        let mut calls = Vec::new();
        for i in 0..300 {
            let c = cfg(&format!(r#"{{"hostname":"h{i}"}}"#));
            calls.push(
                store.call(move |db| {
                    put(db, &format!("d{i}"), None, &c, &[], 1000).map(|r| r.is_ok())
                }),
            );
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

/// The broker holds a `dyn Store`: every method through the trait object, answered
/// after its commit (a second connection sees it).
#[test]
fn the_trait_object_reads_its_own_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (sqlite, thread) = SqliteStore::open(&path, 3, 1000).unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(sqlite);
    let c = cfg(&net("192.0.2.7/24"));
    let leases = leases_of(&c, true);
    rt.block_on(async {
        let out = store
            .put_config(PutRequest {
                name: "d",
                uuid: None,
                config: &c,
                leases: &leases,
                max_domains: 10,
            })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(out, PutOutcome::Created(_)));
        // Committed: another connection reads it before anything else happens.
        let mut other = Db::open(&path, 3, 1000).unwrap();
        assert!(other.get("d").unwrap().is_some());
        let conflict = store.lease_conflict("e", &leases).await.unwrap().unwrap();
        assert_eq!(conflict.holder, "d");
        let held = store.leases().await.unwrap();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held.iter().all(|l| l.domain == "d"));
        let result = ApplyResult {
            generation: 1,
            digest: c.digest(),
            items: vec![ItemResult::new(
                "hostname",
                xenchan_protocol::ItemStatus::Applied,
            )],
        };
        store.record_result("d", &result).await.unwrap();
        store.set_error("d", Some("boom")).await.unwrap();
        let events = store.recent_events(10).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["config", "result", "error"]);
        assert_eq!(events[2].domain.as_deref(), Some("d"));
        assert_eq!(store.history("d").await.unwrap()[0].generation, 1);
        let records = store.load_all().await.unwrap();
        assert_eq!(records[0].last_error.as_deref(), Some("boom"));
        let gone = store.delete_config("d", false).await.unwrap();
        assert!(gone.removed);
        assert_eq!(gone.released.len(), 2);
    });
    drop(store);
    thread.join();
}

/// A database made before events had callers keeps its rows (caller `None`), gets the
/// columns and the per-domain index, and records callers from then on.
#[test]
fn events_of_an_older_database_get_the_caller_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT NOT NULL,
                domain TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL);
             INSERT INTO events(at, domain, kind, detail) VALUES ('t1', 'a', 'config', 'old');",
        )
        .unwrap();
    }
    let mut db = Db::open(&path, 3, 1000).unwrap();
    db.caller = Some(crate::api::types::CallerView {
        uid: 1001,
        pid: Some(42),
        comm: Some("curl".into()),
    });
    db.event(Some("a"), "delete", "new").unwrap();
    db.caller = None;
    let rows = db.recent_events(10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].caller, None);
    let c = rows[1].caller.as_ref().unwrap();
    assert_eq!(
        (c.uid, c.pid, c.comm.as_deref()),
        (1001, Some(42), Some("curl"))
    );
    let index: Option<String> = db
        .conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE name = 'events_by_domain'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    assert!(index.is_some());
    drop(db);
    let mut db = Db::open(&path, 3, 1000).unwrap();
    assert_eq!(db.recent_events(10).unwrap().len(), 2);
}

/// Per-domain and total bounds: a flood from one domain trims only that domain; past
/// the total, the domains with the most events lose theirs first and a quiet domain
/// keeps its few.
#[test]
fn event_retention_takes_from_the_noisiest_domains_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open_with(
        &dir.path().join("db"),
        3,
        EventRetention {
            total: 100,
            per_domain: 50,
        },
    )
    .unwrap();
    let count = |db: &mut Db, d: &str| {
        db.events(&crate::store::EventFilter {
            domain: Some(Some(d.to_string())),
            kind: None,
            since: None,
            until: None,
            before_id: None,
            limit: 100_000,
        })
        .unwrap()
    };
    for i in 0..3 {
        db.event(Some("quiet"), "config", &format!("q{i}")).unwrap();
    }
    for i in 0..1000 {
        db.event(Some("noisy"), "error", &format!("n{i}")).unwrap();
    }
    let noisy = count(&mut db, "noisy");
    assert!((50..=56).contains(&noisy.len()), "{}", noisy.len());
    assert_eq!(noisy[0].detail, "n999", "the newest stay");
    assert_eq!(count(&mut db, "quiet").len(), 3);
    // Many busy domains together: over the total, trimmed from the top.
    for d in 0..30 {
        for i in 0..20 {
            db.event(Some(&format!("busy{d}")), "result", &format!("{i}"))
                .unwrap();
        }
    }
    let total: usize = db.event_counts.values().sum();
    assert!(total <= 100 + 256, "{total}");
    let all = db.recent_events(100_000).unwrap();
    assert_eq!(all.len(), total);
    assert_eq!(
        count(&mut db, "quiet").len(),
        3,
        "the quiet domain keeps its events"
    );
}

#[test]
fn lineage_is_made_once_and_kept_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = Db::open(&path, 3, 1000).unwrap().lineage().clone();
    assert_eq!(first.as_str().len(), 32, "{first}");
    // Reopened (a broker restart, or a restored copy of the file): the same lineage.
    assert_eq!(*Db::open(&path, 3, 1000).unwrap().lineage(), first);
    let copy = dir.path().join("backup");
    std::fs::copy(&path, &copy).unwrap();
    assert_eq!(*Db::open(&copy, 3, 1000).unwrap().lineage(), first);
    // Another store: another lineage.
    let other = Db::open(&dir.path().join("other"), 3, 1000).unwrap();
    assert_ne!(*other.lineage(), first);
}

#[test]
fn the_cluster_lineage_is_kept_apart_from_the_stores_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = Db::open(&path, 3, 1000).unwrap();
    assert_eq!(db.cluster_lineage().unwrap(), None, "never joined");
    let cluster = xenchan_protocol::Lineage::from_bits(7);
    db.set_cluster_lineage(&cluster).unwrap();
    let own = db.lineage().clone();
    drop(db);
    // Kept across a restart, and the store's own lineage is untouched.
    let db = Db::open(&path, 3, 1000).unwrap();
    assert_eq!(db.cluster_lineage().unwrap(), Some(cluster));
    assert_eq!(*db.lineage(), own);
    // Replaced as a whole when set again.
    let other = xenchan_protocol::Lineage::from_bits(8);
    db.set_cluster_lineage(&other).unwrap();
    assert_eq!(db.cluster_lineage().unwrap(), Some(other));
    // A value no broker wrote is reported, naming what it is.
    db.conn
        .execute(
            "UPDATE meta SET value = 'not a lineage' WHERE key = 'cluster_lineage'",
            [],
        )
        .unwrap();
    let e = db.cluster_lineage().unwrap_err();
    assert!(e.to_string().contains("cluster lineage"), "{e}");
}
