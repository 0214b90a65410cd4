//! Config stored, pushed, result recorded and visible; no push when the applied
//! generation matches; refusals with the field or domain named; identity and version
//! checks; metrics.

mod support;

use hyper::Method;
use support::{Dirs, PeerOptions, TestBroker, TestPeer, sample_config};
use xenchan_broker::api::types::DomainState;
use xenchan_broker::client::ClientError;
use xenchan_protocol::ItemStatus;
use xenchan_protocol::message::{Applied, ErrorCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_stored_pushed_and_its_result_recorded() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    let v = broker.client.put_config("web1", &cfg, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(1));
    assert_eq!(v.state, DomainState::Pending, "no socket yet");
    assert_eq!(v.config.as_ref(), Some(&cfg));

    let peer = TestPeer::start(&dirs.sockets(), "web1", PeerOptions::default());
    let rec = peer.wait("one config", |r| r.results == 1).await;
    assert_eq!(rec.configs[0].generation, 1);
    assert_eq!(rec.configs[0].config, cfg);
    assert_eq!(rec.hellos[0].domain.as_deref(), Some("web1"));
    assert_eq!(rec.hellos[0].channel, "org.xenchan.agent.1");

    let v = broker
        .wait_domain("web1", "configured", |v| v.state == DomainState::Configured)
        .await;
    assert!(v.connected);
    assert_eq!(v.applied_generation, Some(1));
    assert_eq!(v.applied_digest, v.desired_digest);
    assert!(v.last_result_at.is_some());
    let items: Vec<_> = v
        .items
        .iter()
        .map(|i| (i.item.as_str(), i.status))
        .collect();
    assert_eq!(
        items,
        vec![
            ("hostname", ItemStatus::Applied),
            ("network:eth0", ItemStatus::Applied),
            ("dns", ItemStatus::Applied),
            ("user:cloud", ItemStatus::Applied),
        ]
    );
    assert_eq!(v.facts.as_ref().map(|f| f.os.as_str()), Some("Test OS 1"));

    // A new generation is pushed to the running session at once.
    let cfg2 = sample_config("web1.example.com", "192.0.2.11/24");
    let v = broker.client.put_config("web1", &cfg2, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(2));
    peer.wait("the second config", |r| r.results == 2).await;
    broker
        .wait_domain("web1", "generation 2 applied", |v| {
            v.applied_generation == Some(2)
        })
        .await;
    // The same document again changes nothing.
    let v = broker.client.put_config("web1", &cfg2, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(2));

    let list = broker.client.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let health = broker.client.health().await.unwrap();
    assert_eq!(
        (health.status.as_str(), health.domains, health.sessions),
        ("ok", 1, 1)
    );
    let m = broker.client.metrics().await.unwrap();
    assert!(m.lines().any(|l| l == "xenchan_pushes_total 2"), "{m}");
    assert!(
        m.lines()
            .any(|l| l == "xenchan_item_results_total{status=\"applied\"} 8"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == "xenchan_sessions{state=\"configured\"} 1"),
        "{m}"
    );
    assert_eq!(peer.record().configs.len(), 2);
    broker.stop().await.unwrap();
    assert!(peer.record().byes >= 1, "the broker says bye on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_pushed_when_the_agent_has_applied_the_generation() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("db1", "192.0.2.20/24");
    broker.client.put_config("db1", &cfg, None).await.unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "db1",
        PeerOptions {
            applied: Some(Applied {
                generation: 1,
                digest: cfg.digest(),
                lineage: None,
            }),
            ..PeerOptions::default()
        },
    );
    broker
        .wait_domain("db1", "configured", |v| v.state == DomainState::Configured)
        .await;
    // Keepalive round trips prove the session kept going without a push.
    peer.wait("two pings", |r| r.pings >= 2).await;
    assert!(peer.record().configs.is_empty());

    // A forced push goes out even so.
    let v = broker.client.push("db1").await.unwrap();
    assert_eq!(v.desired_generation, Some(1));
    peer.wait("the forced push", |r| r.configs.len() == 1).await;
    broker
        .wait_domain("db1", "the forced push's result", |v| {
            v.last_result_at.is_some()
        })
        .await;

    // An applied generation with another digest is not "applied".
    let peer2 = TestPeer::start(
        &dirs.sockets(),
        "db2",
        PeerOptions {
            applied: Some(Applied {
                generation: 1,
                digest: sample_config("other", "192.0.2.99/24").digest(),
                lineage: None,
            }),
            ..PeerOptions::default()
        },
    );
    broker
        .client
        .put_config("db2", &sample_config("db2", "192.0.2.21/24"), None)
        .await
        .unwrap();
    peer2
        .wait("a push despite the same generation", |r| {
            r.configs.len() == 1
        })
        .await;
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_field_or_the_domain() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.limits.max_body = 2048;
    let broker = TestBroker::start(config).await;
    let c = &broker.client;

    let bad = br#"{"network":{"version":2,"ethernets":{"eth0":{"match":{"macaddress":"00:16:3e:00:00:01"},"mtu":20}}}}"#;
    let e = c.put_config_json("web1", bad, None).await.unwrap_err();
    let ClientError::Api { status, error } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 400);
    assert_eq!(error.path.as_deref(), Some("network.ethernets.eth0.mtu"));
    assert!(error.error.contains("MTU 20"), "{}", error.error);
    let e = c
        .put_config_json("web1", br#"{"hostname":"a","colour":"red"}"#, None)
        .await
        .unwrap_err();
    let ClientError::Api { status: 400, error } = e else {
        panic!("{e}")
    };
    assert!(error.error.contains("colour"), "{}", error.error);
    let e = c.put_config_json("web1", b"[]", None).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    let e = c
        .put_config_json("bad name", b"{}", None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    let e = c
        .put_config_json("web1", b"{}", Some("not-a-uuid"))
        .await
        .unwrap_err();
    let ClientError::Api { status: 400, error } = e else {
        panic!("{e}")
    };
    assert_eq!(error.path.as_deref(), Some("uuid"));
    let big = format!("{{\"hostname\":\"a\"{}}}", " ".repeat(4096));
    let e = c
        .put_config_json("web1", big.as_bytes(), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(413));

    // Leases: an address (and a hostname) held by one domain is refused for another.
    c.put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();
    let e = c
        .put_config("web2", &sample_config("web2", "192.0.2.10/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status: 409, error } = e else {
        panic!("{e}")
    };
    assert_eq!(error.domain.as_deref(), Some("web1"));
    assert_eq!(error.error, "address 192.0.2.10 is leased to domain web1");
    assert_eq!(
        error.path.as_deref(),
        Some("network.ethernets.eth0.addresses[0]")
    );
    let e = c
        .put_config("web2", &sample_config("WEB1", "192.0.2.12/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status: 409, error } = e else {
        panic!("{e}")
    };
    assert_eq!(error.error, "hostname web1 is leased to domain web1");
    assert!(
        c.get_domain("web2").await.is_err(),
        "nothing of web2 was stored"
    );
    // The same domain may keep its own leases; DELETE releases them, twice is fine.
    c.put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();
    let d = c.delete("web1").await.unwrap();
    assert!(d.removed);
    assert_eq!(d.released, vec!["address 192.0.2.10", "hostname web1"]);
    let d = c.delete("web1").await.unwrap();
    assert!(!d.removed);
    c.put_config("web2", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();

    // Unknown things.
    assert_eq!(c.get_domain("nope").await.unwrap_err().status(), Some(404));
    assert_eq!(c.push("nope").await.unwrap_err().status(), Some(404));
    let (status, body) = c.request(Method::GET, "/v2/whatever", None).await.unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let (status, _) = c
        .request(Method::PATCH, "/v1/domains/web2", None)
        .await
        .unwrap();
    assert_eq!(status, 405);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_vm_gets_nothing() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let uuid = "11111111-2222-3333-4444-555555555555";
    broker
        .client
        .put_config("web1", &sample_config("web1", "192.0.2.10/24"), Some(uuid))
        .await
        .unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "web1",
        PeerOptions {
            uuid: Some("99999999-2222-3333-4444-555555555555".into()),
            ..PeerOptions::default()
        },
    );
    let rec = peer
        .wait("the identity error", |r| !r.errors.is_empty())
        .await;
    assert_eq!(rec.errors[0].code, ErrorCode::IdentityMismatch);
    let v = broker
        .wait_domain("web1", "identity-mismatch", |v| {
            v.state == DomainState::IdentityMismatch
        })
        .await;
    assert!(
        v.last_error.as_deref().unwrap().contains("99999999"),
        "{v:?}"
    );
    assert_eq!(v.uuid.as_deref(), Some(uuid));
    peer.wait("a keepalive or two", |r| r.pings >= 2).await;
    assert!(peer.record().configs.is_empty(), "not one byte of config");
    // The hello carried the UUID the broker expects.
    assert_eq!(peer.record().hellos[0].uuid.as_deref(), Some(uuid));

    // The right VM (same UUID, any case) is configured.
    let peer2 = TestPeer::start(
        &dirs.sockets(),
        "web2",
        PeerOptions {
            uuid: Some("AAAAAAAA-2222-3333-4444-555555555555".into()),
            ..PeerOptions::default()
        },
    );
    broker
        .client
        .put_config(
            "web2",
            &sample_config("web2", "192.0.2.11/24"),
            Some("aaaaaaaa-2222-3333-4444-555555555555"),
        )
        .await
        .unwrap();
    peer2.wait("web2's config", |r| r.results == 1).await;
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_failed_items_and_beacons() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    c.put_config("v7", &sample_config("v7", "192.0.2.30/24"), None)
        .await
        .unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "v7",
        PeerOptions {
            versions: Some(vec![7]),
            ..PeerOptions::default()
        },
    );
    let rec = peer
        .wait("the version error", |r| !r.errors.is_empty())
        .await;
    assert_eq!(rec.errors[0].code, ErrorCode::NoCommonVersion);
    let v = broker
        .wait_domain("v7", "version-mismatch", |v| {
            v.state == DomainState::VersionMismatch
        })
        .await;
    assert!(v.last_error.unwrap().contains("[7]"));
    assert!(peer.record().configs.is_empty());

    c.put_config("f1", &sample_config("f1", "192.0.2.31/24"), None)
        .await
        .unwrap();
    let _peer = TestPeer::start(
        &dirs.sockets(),
        "f1",
        PeerOptions {
            fail_items: vec!["dns".into()],
            beacon_first: true,
            ..PeerOptions::default()
        },
    );
    let v = broker
        .wait_domain("f1", "degraded", |v| v.state == DomainState::Degraded)
        .await;
    let dns = v.items.iter().find(|i| i.item == "dns").unwrap();
    assert_eq!(dns.status, ItemStatus::Failed);
    assert_eq!(dns.reason.as_deref(), Some("refused by the test peer"));
    broker.stop().await.unwrap();
}
