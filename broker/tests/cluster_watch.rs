//! Cluster mode: a PUT through any broker reaches the broker running the domain, which
//! pushes it to the agent; an etcd outage refuses writes with 503 naming it while the
//! running domain stays served, and writes work again once etcd is back.

mod support;

#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;

use support::{Dirs, PeerOptions, TestBroker, TestPeer, sample_config};
use xenchan_broker::api::types::{DomainState, PrepareRequest};
use xenchan_broker::config::{Backend, Config};

const U: &str = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";

/// The domain's agent reports its VM's UUID: in cluster mode every domain has one
/// recorded, and identity fails closed (an agent reporting none gets nothing).
fn vm_peer() -> PeerOptions {
    PeerOptions {
        uuid: Some(U.to_string()),
        ..PeerOptions::default()
    }
}

fn cluster_config(dirs: &Dirs, url: &str, prefix: &str, host: &str) -> Config {
    let mut c = dirs.config();
    c.store.backend = Backend::Etcd;
    c.store.endpoints = vec![url.to_string()];
    c.store.prefix = prefix.to_string();
    c.store.host = Some(host.to_string());
    c.store.timeouts.connect = 500;
    c.store.timeouts.request = 3000;
    c.store.timeouts.host_ttl = 2000;
    c
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
    let req = PrepareRequest {
        uuid: Some(U.into()),
        ..PrepareRequest::default()
    };
    a.client.prepare("web1", &req).await.unwrap();
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    a.client.put_config("web1", &cfg, Some(U)).await.unwrap();
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
