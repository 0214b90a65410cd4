//! The operations over a real SQLite store and a real registry (no sockets: nothing is
//! attached, so no session runs).

use std::sync::Arc;
use std::time::Duration;

use xenchan_protocol::config::GuestConfig;

use super::*;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::store::{PutOutcome, SqliteStore, Store, StoreThread};

struct Fixture {
    sh: Arc<Shared>,
    thread: StoreThread,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        socket_dir: dir.path().join("sockets"),
        state_dir: dir.path().join("state"),
        hooks_dir: dir.path().join("hooks"),
        ..Config::default()
    };
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let (sqlite, thread) = SqliteStore::open(&config.db_path(), 3, 100).unwrap();
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let metrics = Arc::new(Metrics::default());
    let hooks = Hooks::start(
        config.hooks_dir.clone(),
        Duration::from_secs(5),
        1024,
        8,
        8,
        Arc::clone(&metrics),
    );
    let sh = Arc::new(Shared::new(
        Arc::new(config),
        store,
        metrics,
        hooks,
        Vec::new(),
    ));
    Fixture {
        sh,
        thread,
        _dir: dir,
    }
}

fn put(name: &str, json: &str) -> PutConfig {
    PutConfig {
        name: name.into(),
        uuid: None,
        config: GuestConfig::from_json(json.as_bytes()).unwrap(),
    }
}

/// Issue 16: a PUT waits only for writes to its own domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_for_different_domains_are_not_serialised() {
    let f = fixture();
    let sh = &f.sh;
    let held = sh.locks.lock("a").await;
    // "b" goes through while "a" is held...
    let b = tokio::time::timeout(
        Duration::from_secs(10),
        do_put_config(sh, put("b", r#"{"hostname":"b"}"#)),
    )
    .await
    .expect("a PUT for b does not wait for a's lock")
    .unwrap();
    assert!(matches!(b.outcome, PutOutcome::Created(_)));
    // ...while a PUT for "a" waits for it.
    let sh2 = Arc::clone(sh);
    let mut a =
        tokio::spawn(async move { do_put_config(&sh2, put("a", r#"{"hostname":"a"}"#)).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut a)
            .await
            .is_err(),
        "a PUT for a waits while a's lock is held"
    );
    assert!(sh.view("a").is_none(), "nothing of a is stored yet");
    drop(held);
    let a = tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("a proceeds once the lock is free")
        .unwrap()
        .unwrap();
    assert_eq!(a.view.desired_generation, Some(1));
    drop(f.sh);
    f.thread.join();
}

#[tokio::test]
async fn refusals_are_typed_and_memory_follows_the_store() {
    let f = fixture();
    let sh = &f.sh;
    let net = |host: &str| {
        format!(
            r#"{{"hostname":"{host}","network":{{"version":2,"ethernets":{{"eth0":{{"match":{{"macaddress":"00:16:3e:00:00:01"}},"addresses":["192.0.2.5/24"]}}}}}}}}"#
        )
    };
    let one = do_put_config(sh, put("one", &net("one"))).await.unwrap();
    assert!(matches!(one.outcome, PutOutcome::Created(_)));
    let again = do_put_config(sh, put("one", &net("one"))).await.unwrap();
    assert!(matches!(again.outcome, PutOutcome::Unchanged(_)));
    let Err(OpError::Lease(c)) = do_put_config(sh, put("two", &net("two"))).await else {
        panic!("the address is one's");
    };
    assert_eq!(c.holder, "one");
    assert_eq!(c.lease.path, "network.ethernets.eth0.addresses[0]");
    assert!(sh.view("two").is_none(), "a refused PUT leaves nothing");
    let Err(OpError::NothingToPush(n)) = do_push(sh, "two", false) else {
        panic!("two has no configuration");
    };
    assert_eq!(n, "two");
    assert!(do_push(sh, "one", true).is_ok());
    let d = sh.desired("one");
    assert_eq!(
        (d.force, d.force_order),
        (1, true),
        "a forced push overrides the order"
    );
    assert!(do_push(sh, "one", false).is_ok());
    let d = sh.desired("one");
    assert_eq!(
        (d.force, d.force_order),
        (2, false),
        "a plain re-push does not"
    );
    let gone = do_delete(sh, "one".into()).await.unwrap();
    assert!(gone.removed);
    assert_eq!(gone.released, ["address 192.0.2.5", "hostname one"]);
    assert!(sh.view("one").is_none());
    // The lease is free now.
    do_put_config(sh, put("two", &net("two"))).await.unwrap();
    assert!(sh.locks.is_empty(), "no lock entry outlives its operation");
    drop(f.sh);
    f.thread.join();
}
