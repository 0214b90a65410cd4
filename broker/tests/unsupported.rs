//! `unsupported` items (the guest has no way to apply them: no network manager, say)
//! are reported as such, not as failures: the domain is `configured`, its items say
//! `unsupported` with the agent's reason, and the `add end` hook runs (not `add failed`).
//! A failed item makes the domain `degraded`. Both hold after a broker restart,
//! when the state comes from the stored result.

mod support;

use support::{DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_broker::api::types::{DomainState, DomainView};
use xenchan_protocol::ItemStatus;

fn statuses(v: &DomainView) -> Vec<(&str, ItemStatus, Option<&str>)> {
    v.items
        .iter()
        .map(|i| (i.item.as_str(), i.status, i.reason.as_deref()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_items_leave_the_domain_configured() {
    let dirs = Dirs::new();
    let log = dirs.root.path().join("hook.log");
    dirs.hook(
        "10-log",
        &format!("echo \"$1 $2 $3 $4\" >> {}", log.display()),
    );
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    broker.client.put_config("web1", &cfg, None).await.unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "web1",
        PeerOptions {
            unsupported_items: vec!["network:eth0".into(), "dns".into()],
            ..PeerOptions::default()
        },
    );
    let v = broker
        .wait_domain("web1", "the result recorded", |v| {
            v.applied_generation == Some(1) && v.last_result_at.is_some()
        })
        .await;
    assert_eq!(v.state, DomainState::Configured, "{v:?}");
    let reason = Some("no network manager found");
    assert_eq!(
        statuses(&v),
        vec![
            ("hostname", ItemStatus::Applied, None),
            ("network:eth0", ItemStatus::Unsupported, reason),
            ("dns", ItemStatus::Unsupported, reason),
            ("user:cloud", ItemStatus::Applied, None),
        ]
    );
    assert_eq!(v.last_error, None);
    // The same in the list, and in the metrics.
    let list = broker.client.list().await.unwrap();
    assert_eq!(list[0].state, DomainState::Configured);
    let m = broker.client.metrics().await.unwrap();
    assert!(
        m.lines()
            .any(|l| l == "xenchan_item_results_total{status=\"unsupported\"} 2"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == "xenchan_sessions{state=\"configured\"} 1"),
        "{m}"
    );
    // The hook hears `add end`, not `add failed`.
    let lines = wait_until("the add hook", DEADLINE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with("web1 add end") || l.starts_with("web1 add failed"))
                .then_some(text)
        }
    })
    .await;
    assert!(lines.lines().any(|l| l == "web1 add end 1"), "{lines}");
    assert!(!lines.contains("add failed"), "{lines}");
    // Nothing is pushed again for it.
    peer.wait("two pings", |r| r.pings >= 2).await;
    assert_eq!(peer.record().configs.len(), 1);

    // A restarted broker reads the state from the stored result: still configured.
    broker.stop().await.unwrap();
    let broker = TestBroker::start(dirs.config()).await;
    let v = broker
        .wait_domain("web1", "reattached", |v| {
            v.connected && v.state != DomainState::Handshaking
        })
        .await;
    assert_eq!(v.state, DomainState::Configured, "{v:?}");
    assert_eq!(peer.record().configs.len(), 1, "no push after the restart");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_makes_the_domain_degraded() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("web2.example.com", "192.0.2.20/24");
    broker.client.put_config("web2", &cfg, None).await.unwrap();
    let _peer = TestPeer::start(
        &dirs.sockets(),
        "web2",
        PeerOptions {
            unsupported_items: vec!["network:eth0".into()],
            fail_items: vec!["user:cloud".into()],
            ..PeerOptions::default()
        },
    );
    let v = broker
        .wait_domain("web2", "the result recorded", |v| {
            v.applied_generation == Some(1) && v.last_result_at.is_some()
        })
        .await;
    assert_eq!(v.state, DomainState::Degraded, "{v:?}");
    let s = statuses(&v);
    assert_eq!(s[1].1, ItemStatus::Unsupported);
    assert_eq!(
        s[3],
        (
            "user:cloud",
            ItemStatus::Failed,
            Some("refused by the test peer")
        )
    );

    broker.stop().await.unwrap();
    let broker = TestBroker::start(dirs.config()).await;
    let v = broker
        .wait_domain("web2", "reattached", |v| {
            v.connected && v.state != DomainState::Handshaking
        })
        .await;
    assert_eq!(v.state, DomainState::Degraded, "{v:?}");
    broker.stop().await.unwrap();
}
