//! Ownership keys are bound to the host's etcd lease: they vanish when the host leaves
//! (lease revoked) or dies (keepalives stop for the TTL), and not while it lives.

mod support;

use std::time::{Duration, Instant};

use support::{Etcd, connect, kv_requests, quick, uuid};
use xenchan_cluster::{ClusterError, Start, WatchEvent};

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

/// libvirt's lock-manager rule: a VM runs on one host. Two hosts starting one domain at
/// once: exactly one owns it, the other is refused naming the owner and how long its
/// lease has left; a host that prepared a migration may start it (ownership moves at
/// `complete`); once the owner's lease is gone, the other host may start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_starts_on_one_host_at_a_time() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/start1/", "dom0-a", quick()).await;
    let b = connect(&urls, "/start1/", "dom0-b", quick()).await;
    let c = connect(&urls, "/start1/", "dom0-c", quick()).await;
    for n in 0..20 {
        let vm = uuid(2, n);
        let (ra, rb) = tokio::join!(a.start_here(&vm), b.start_here(&vm));
        let (winner, refused) = match (ra, rb) {
            (Ok(Start::Claim), Err(e)) => ("dom0-a", e),
            (Err(e), Ok(Start::Claim)) => ("dom0-b", e),
            r => panic!("round {n}: both or neither started the domain: {r:?}"),
        };
        match &refused {
            ClusterError::RunsElsewhere {
                owner,
                expires_within,
                ..
            } => {
                assert_eq!(owner, winner, "round {n}");
                let left = expires_within.expect("the owner's lease TTL is read");
                assert!(left <= Duration::from_secs(2), "{left:?} > TTL");
            }
            e => panic!("round {n}: refused with {e:?}"),
        }
        let text = refused.to_string();
        assert!(
            text.contains(winner) && text.contains("two hosts") && text.contains("at most"),
            "{text}"
        );
        assert_eq!(
            a.ownership(&vm).await.unwrap().owner.as_deref(),
            Some(winner)
        );
        // Starting it again where it runs is fine (libvirt retries a hook).
        let own = if winner == "dom0-a" { &a } else { &b };
        assert_eq!(own.start_here(&vm).await.unwrap(), Start::Claim);
    }
    // A prepared migration to c: c may start it and waits for `complete`.
    let vm = uuid(2, 0);
    let owner = a.ownership(&vm).await.unwrap().owner.unwrap();
    let src = if owner == "dom0-a" { &a } else { &b };
    assert!(matches!(
        c.check_start(&vm).await,
        Err(ClusterError::RunsElsewhere { .. })
    ));
    c.prepare_migrate(&vm, &owner, "dom0-c").await.unwrap();
    assert_eq!(c.check_start(&vm).await.unwrap(), Start::AwaitMigration);
    assert_eq!(c.start_here(&vm).await.unwrap(), Start::AwaitMigration);
    assert_eq!(
        src.ownership(&vm).await.unwrap().owner.as_deref(),
        Some(owner.as_str()),
        "starting a migration's destination moves nothing before `complete`"
    );
    // The owner leaves (its lease revoked): c may claim it now.
    if owner == "dom0-a" {
        a.leave().await.unwrap();
    } else {
        b.leave().await.unwrap();
    }
    assert_eq!(c.start_here(&vm).await.unwrap(), Start::Claim);
}

/// A first start is one round trip (planned on nobody owning the domain, the usual case);
/// when that guess is wrong the guard's failure brings back what etcd holds in the same
/// round trip, and the start is decided on that, never on the guess: the owner starting
/// it again claims it in two, another host is refused naming the live owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_is_one_round_trip_and_a_wrong_guess_is_decided_on_what_etcd_holds() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let url = etcd.client_url.as_str();
    let a = connect(&urls, "/loss4/", "dom0-a", quick()).await;
    let b = connect(&urls, "/loss4/", "dom0-b", quick()).await;
    let vm = uuid(4, 1);

    let q0 = kv_requests(url);
    assert!(matches!(a.start_here(&vm).await, Ok(Start::Claim)));
    assert_eq!(kv_requests(url) - q0, 1, "a first start is one round trip");

    let q1 = kv_requests(url);
    assert!(matches!(a.start_here(&vm).await, Ok(Start::Claim)));
    assert_eq!(
        kv_requests(url) - q1,
        2,
        "the owner starting it again: the failed guess, then the claim"
    );

    let q2 = kv_requests(url);
    match b.start_here(&vm).await {
        Err(ClusterError::RunsElsewhere { owner, .. }) => assert_eq!(owner, "dom0-a"),
        r => panic!("dom0-b started a domain dom0-a runs: {r:?}"),
    }
    // The failed guess (its reads decide), then the owner key's lease for the refusal's
    // "expires within" (the lease's TTL is not a KV request).
    assert_eq!(kv_requests(url) - q2, 2);
    assert_eq!(
        b.ownership(&vm).await.unwrap().owner.as_deref(),
        Some("dom0-a")
    );
}
