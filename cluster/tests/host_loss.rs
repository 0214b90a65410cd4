//! Ownership keys are bound to the host's etcd lease: they vanish when the host leaves
//! (lease revoked) or dies (keepalives stop for the TTL), and not while it lives.

mod support;

use std::time::{Duration, Instant};

use support::{Etcd, connect, quick, uuid};
use xenchan_cluster::{ClusterError, WatchEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_drops_ownership_at_once() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/loss1/", "dom0-a", quick()).await;
    let b = connect(&urls, "/loss1/", "dom0-b", quick()).await;
    let vm = uuid(1, 1);
    a.claim(&vm).await.unwrap();
    a.claim(&vm).await.unwrap(); // claiming again is fine
    match b.claim(&vm).await {
        Err(ClusterError::NotOwner { owner, .. }) => assert_eq!(owner.as_deref(), Some("dom0-a")),
        r => panic!("B claimed A's domain: {r:?}"),
    }
    a.leave().await.unwrap();
    assert_eq!(b.ownership(&vm).await.unwrap().owner, None);
    b.claim(&vm).await.unwrap();
    assert_eq!(
        b.ownership(&vm).await.unwrap().owner.as_deref(),
        Some("dom0-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_keepalive_drops_ownership_after_the_ttl_and_the_survivor_is_told() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/loss2/", "dom0-a", quick()).await;
    let b = connect(&urls, "/loss2/", "dom0-b", quick()).await;
    let vm = uuid(1, 2);
    a.claim(&vm).await.unwrap();
    // Keepalives hold the key well past the TTL (2 s) while the host lives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        b.ownership(&vm).await.unwrap().owner.as_deref(),
        Some("dom0-a")
    );

    // A's watch sees its own loss; B learns nothing of a domain it does not run.
    let mut watch_b = b.watch([], b.revision().await.unwrap() + 1);
    drop(a); // the host dies: keepalives stop, nothing is revoked
    let died = Instant::now();
    let mut gone = None;
    while died.elapsed() < Duration::from_secs(15) {
        if b.ownership(&vm).await.unwrap().owner.is_none() {
            gone = Some(died.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = gone.expect("ownership key still there 15 s after the host died");
    eprintln!("ownership key vanished {gone:?} after the keepalives stopped (TTL 2 s)");
    assert!(
        gone >= Duration::from_millis(500),
        "vanished before the TTL: {gone:?}"
    );
    // The domain restarted on B: B claims it, and its watch says so.
    b.claim(&vm).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), watch_b.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, WatchEvent::Acquired { uuid: vm.clone() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_any_broker_reaches_the_owner() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/reach/", "dom0-a", quick()).await;
    let b = connect(&urls, "/reach/", "dom0-b", quick()).await;
    let (vm, elsewhere) = (uuid(1, 3), uuid(1, 4));
    a.claim(&vm).await.unwrap();
    let mut watch_a = a.watch([vm.clone()], a.revision().await.unwrap() + 1);
    b.put_desired(&elsewhere, "db1", b"{\"other\":true}")
        .await
        .unwrap();
    b.put_desired(&vm, "web1", b"{\"hostname\":\"web1\"}")
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), watch_a.next())
        .await
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Desired { uuid, desired } => {
            assert_eq!(uuid, vm);
            assert_eq!((desired.generation, desired.name.as_str()), (1, "web1"));
            assert_eq!(desired.config, b"{\"hostname\":\"web1\"}");
        }
        e => panic!("expected the desired configuration, got {e:?}"),
    }
}
