//! Cluster mode: a PUT through any broker reaches the broker running the domain, which
//! pushes it to the agent; an etcd outage refuses writes with 503 naming it while the
//! running domain stays served, and writes work again once etcd is back; a broker that
//! starts during an outage serves its cache and joins once etcd is back, unless it never
//! joined (or its cache is another cluster's): then it refuses to start, saying why.

mod support;

#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{applied_in_etcd, cluster_config, observer, owner_is, run_web1};
use support::{Dirs, PeerOptions, TestBroker, TestPeer, sample_config};
use xenchan_basics::chain;
use xenchan_basics::exit::{Exit, HasExit};
use xenchan_broker::BrokerError;
use xenchan_broker::api::types::{DomainState, PrepareRequest};
use xenchan_broker::store::etcd::JoinError;

const U: &str = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";

/// The domain's agent reports its VM's UUID: in cluster mode every domain has one
/// recorded, and identity fails closed (an agent reporting none gets nothing).
fn vm_peer() -> PeerOptions {
    PeerOptions {
        uuid: Some(U.to_string()),
        ..PeerOptions::default()
    }
}

macro_rules! require_etcd {
    () => {
        if etcd::etcd_binary().is_none() {
            eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_another_broker_reaches_the_owner_and_its_agent() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &server.client_url, "/w/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &server.client_url, "/w/", "dom0-b")).await;
    // web1 runs on host a: prepared there (the libvirt hook's call), its agent on a's
    // socket.
    let req = PrepareRequest {
        uuid: Some(U.into()),
        ..PrepareRequest::default()
    };
    a.client.prepare("web1", &req).await.unwrap();
    let peer = TestPeer::start(&da.sockets(), "web1", vm_peer());

    // The PUT goes through b, which does not run it.
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    let v = b.client.put_config("web1", &cfg, Some(U)).await.unwrap();
    assert_eq!(v.desired_generation, Some(1));
    let rec = peer
        .wait("the config from b's PUT", |r| r.results == 1)
        .await;
    assert_eq!(rec.configs[0].generation, 1);
    assert_eq!(rec.configs[0].config, cfg);
    a.wait_domain("web1", "configured on a", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;

    // A second PUT through b: generation 2, pushed by a.
    let cfg2 = sample_config("web1.example.com", "192.0.2.11/24");
    let v = b.client.put_config("web1", &cfg2, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(2));
    let rec = peer.wait("the second config", |r| r.results == 2).await;
    assert_eq!(rec.configs[1].generation, 2);
    assert_eq!(rec.configs[1].config, cfg2);
    // And through a itself: generation 3 (one cluster-wide counter), pushed once.
    let cfg3 = sample_config("web1.example.com", "192.0.2.12/24");
    let v = a.client.put_config("web1", &cfg3, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(3));
    let rec = peer.wait("the third config", |r| r.results == 3).await;
    assert_eq!(rec.configs[2].generation, 3);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(peer.record().configs.len(), 3, "nothing pushed twice");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_refuses_writes_naming_it_and_serves_running_domains() {
    require_etcd!();
    let mut server = etcd::Etcd::start().await;
    let da = Dirs::new();
    let a = TestBroker::start(cluster_config(&da, &server.client_url, "/o/", "dom0-a")).await;
    run_web1(&a, U).await;
    let mut peer = TestPeer::start(&da.sockets(), "web1", vm_peer());
    peer.wait("the config", |r| r.results == 1).await;

    server.kill();
    let cfg2 = sample_config("web1.example.com", "192.0.2.11/24");
    let e = a.client.put_config("web1", &cfg2, None).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    let text = format!("{e:?}");
    assert!(
        text.contains("etcd") && text.contains(&server.client_url),
        "the 503 names the outage and the endpoint: {text}"
    );
    // The running domain is served from the cache: it reads, and its agent re-attaches.
    let v = a.client.get_domain("web1").await.unwrap();
    assert_eq!(v.desired_generation, Some(1));
    peer.remove();
    let peer = TestPeer::start(&da.sockets(), "web1", vm_peer());
    peer.wait("re-attached during the outage", |r| !r.hellos.is_empty())
        .await;
    a.wait_domain("web1", "configured again", |v| {
        v.connected && v.state == DomainState::Configured
    })
    .await;

    // etcd back: writes work again, and reach the agent.
    server.spawn();
    etcd::wait_ready(
        &[server.client_url.clone()],
        std::time::Duration::from_secs(30),
    )
    .await;
    let mut last = None;
    for _ in 0..50 {
        match a.client.put_config("web1", &cfg2, None).await {
            Ok(v) => {
                last = Some(v);
                break;
            }
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    let v = last.expect("a PUT succeeds once etcd is back");
    assert_eq!(v.desired_generation, Some(2));
    peer.wait("generation 2 after the outage", |r| {
        r.configs.iter().any(|c| c.generation == 2)
    })
    .await;
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_during_an_outage_serves_its_cache_and_joins_when_etcd_is_back() {
    require_etcd!();
    let mut server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let da = Dirs::new();
    let config = cluster_config(&da, &url, "/r/", "dom0-a");
    let a = TestBroker::start(config.clone()).await;
    run_web1(&a, U).await;
    let peer = TestPeer::start(&da.sockets(), "web1", vm_peer());
    peer.wait("the config", |r| r.results == 1).await;
    a.wait_domain("web1", "configured", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;

    // The dom0 reboots during an etcd outage: the broker stops, etcd goes, the broker
    // starts again on the same state folder.
    a.stop().await.unwrap();
    server.kill();
    let hellos = peer.record().hellos.len();
    let a = TestBroker::start(config.clone()).await;
    // It serves its cache: the agent re-attaches and, having applied generation 1 under
    // the cluster's lineage, is configured with nothing pushed.
    let v = a
        .wait_domain("web1", "re-attached and configured from the cache", |v| {
            v.connected && v.state == DomainState::Configured
        })
        .await;
    assert_eq!(v.desired_generation, Some(1));
    assert_eq!(v.applied_generation, Some(1));
    assert_eq!(v.uuid.as_deref(), Some(U));
    let rec = peer.record();
    assert!(rec.hellos.len() > hellos, "a new session: {rec:?}");
    assert_eq!(rec.configs.len(), 1, "nothing pushed again: {rec:?}");
    // Its health says so, and why.
    let c = a
        .client
        .health()
        .await
        .unwrap()
        .cluster
        .expect("cluster mode");
    assert_eq!((c.host.as_str(), c.joined), ("dom0-a", false), "{c:?}");
    assert_eq!(c.endpoints, vec![url.clone()]);
    assert!(
        c.not_joined.as_deref().is_some_and(|w| w.contains("etcd")),
        "{c:?}"
    );
    // Writes answer 503 naming etcd, its endpoint and why.
    let cfg2 = sample_config("web1.example.com", "192.0.2.11/24");
    let e = a.client.put_config("web1", &cfg2, None).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    let text = format!("{e:?}");
    assert!(
        text.contains("etcd") && text.contains(&url) && text.contains("not joined"),
        "the 503 names the outage, the endpoint and that the broker has not joined: {text}"
    );

    // etcd back on its data: the broker joins, and the PUT succeeds within a bounded
    // time (one join attempt in flight, at most 10 s of backoff, the next attempt).
    server.spawn();
    etcd::wait_ready(std::slice::from_ref(&url), Duration::from_secs(30)).await;
    let back = Instant::now();
    let v = loop {
        match a.client.put_config("web1", &cfg2, None).await {
            Ok(v) => break v,
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e:?}");
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "still refused 30 s after etcd came back: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(v.desired_generation, Some(2));
    let c = a
        .client
        .health()
        .await
        .unwrap()
        .cluster
        .expect("cluster mode");
    assert!(c.joined && c.not_joined.is_none(), "{c:?}");
    let rec = peer.wait("generation 2", |r| r.results == 2).await;
    assert_eq!(rec.configs[1].generation, 2);
    assert_eq!(rec.configs[1].config, cfg2);
    // This host owns the domain in etcd under its new lease (still after the TTL of the
    // lease of its run before the reboot), and what the agent applied reached etcd.
    let obs = observer(&url, "/r/").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    owner_is(&obs, U, Some("dom0-a")).await;
    applied_in_etcd(&obs, U, 2).await;
    assert_eq!(peer.record().configs.len(), 2, "generation 2 pushed once");
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_joined_refuses_to_start_while_etcd_is_down() {
    // Nothing listens on the endpoint: no etcd binary is needed.
    let url = format!("http://127.0.0.1:{}", etcd::free_ports(1)[0]);
    let d = Dirs::new();
    let config = cluster_config(&d, &url, "/n/", "dom0-a");
    let started = Instant::now();
    let e = xenchan_broker::run(config.clone(), std::future::ready(()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BrokerError::Cluster(JoinError::NeverJoined(_))),
        "{e:?}"
    );
    assert_eq!(e.exit(), Exit::Unavailable);
    assert_eq!(e.exit().code(), 69);
    let text = chain(&e);
    assert!(
        text.contains("etcd") && text.contains(&url) && text.contains("never joined"),
        "names etcd, the endpoint and why: {text}"
    );
    // Within the store's request timeout (3 s) and a margin, not stuck retrying.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!config.control_socket.exists(), "no API was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_filled_in_another_cluster_refuses_to_start_naming_both_lineages() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    // b is first on /x1/ (the cluster's lineage is b's), then a joins: a's cache records
    // b's lineage.
    let b = TestBroker::start(cluster_config(&db, &url, "/x1/", "dom0-b")).await;
    let a = TestBroker::start(cluster_config(&da, &url, "/x1/", "dom0-a")).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // a pointed at /x2/, where it is first: that cluster's lineage is a's own, not the one
    // its cache was filled under.
    let other = cluster_config(&da, &url, "/x2/", "dom0-a");
    let e = xenchan_broker::run(other.clone(), std::future::ready(()))
        .await
        .unwrap_err();
    let BrokerError::Cluster(JoinError::Mismatch {
        cached, cluster, ..
    }) = &e
    else {
        panic!("{e:?}");
    };
    assert_ne!(cached, cluster);
    assert_eq!(e.exit(), Exit::DataErr);
    let text = chain(&e);
    for part in [
        cached.as_str(),
        cluster.as_str(),
        &url,
        "/x2/",
        "another cluster",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(!other.control_socket.exists());
    // Back on its own cluster it starts.
    let a = TestBroker::start(cluster_config(&da, &url, "/x1/", "dom0-a")).await;
    a.client.health().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_released_before_the_broker_joined_is_given_up_when_it_joins() {
    require_etcd!();
    let mut server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let da = Dirs::new();
    let mut config = cluster_config(&da, &url, "/g/", "dom0-a");
    // A host lease far longer than the test's waits: the ownership key of the run before
    // the reboot outlives them unless the broker gives it up.
    config.store.timeouts.host_ttl = 15_000;
    let a = TestBroker::start(config.clone()).await;
    run_web1(&a, U).await;
    let obs = observer(&url, "/g/").await;
    owner_is(&obs, U, Some("dom0-a")).await;
    drop(obs);

    // Rebooted during the outage, and the VM stops before etcd is back: the release is
    // local (a VM stop never fails on an outage).
    a.stop().await.unwrap();
    server.kill();
    let a = TestBroker::start(config.clone()).await;
    a.client.release("web1").await.unwrap();

    server.spawn();
    etcd::wait_ready(std::slice::from_ref(&url), Duration::from_secs(30)).await;
    let back = Instant::now();
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    loop {
        match a.client.put_config("web1", &cfg, None).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e:?}");
                assert!(back.elapsed() < Duration::from_secs(30), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Joined: the ownership this host kept in etcd is given up at once, well before the
    // old host lease (15 s, renewed when etcd restarted) could expire.
    let obs = observer(&url, "/g/").await;
    let u = xenchan_cluster::Uuid::parse(U).unwrap();
    support::wait_until("nobody owns web1", Duration::from_secs(5), || async {
        let o = obs.ownership(&u).await.unwrap();
        o.owner.is_none().then_some(())
    })
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(14),
        "{:?}",
        back.elapsed()
    );
    a.stop().await.unwrap();
}
