//! A slow guest: the push crawls through the console ring (QEMU's host-to-guest window
//! is 1 KiB, drained at the guest's pace), so writing it takes longer than the result
//! deadline, yet the guest applies it at once. The result deadline starts when the
//! backend has taken the whole frame; a separate write deadline gives up on a guest that
//! never reads.

mod support;

use std::time::Duration;

use support::{Dirs, PeerOptions, TestBroker, TestPeer};
use tokio::time::Instant;
use xenchan_broker::api::types::DomainState;
use xenchan_protocol::GuestConfig;

/// A config of about 2.3 KiB on the wire: two interfaces with 60 addresses each.
fn big_config() -> GuestConfig {
    let addrs = |net: &str| {
        (10..70)
            .map(|i| format!("\"{net}.{i}/24\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let doc = format!(
        r#"{{"hostname":"slow1","network":{{"version":2,"ethernets":{{
            "eth0":{{"match":{{"macaddress":"00:16:3e:00:00:01"}},"addresses":[{}]}},
            "eth1":{{"match":{{"macaddress":"00:16:3e:00:00:02"}},"addresses":[{}]}}}}}}}}"#,
        addrs("192.0.2"),
        addrs("198.51.100")
    );
    GuestConfig::from_json(doc.as_bytes()).expect("a valid config")
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_guest_that_applies_at_once_is_configured() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.timeouts.result = 2000;
    config.timeouts.write = 60_000;
    config.timeouts.hello = 5000;
    // No pings while the push crawls: they would only queue behind it.
    config.timeouts.keepalive = 10_000;
    let result_timeout = Duration::from_millis(config.timeouts.result);
    let broker = TestBroker::start(config).await;
    let cfg = big_config();
    // 16 bytes every 40 ms: 400 B/s, the simulator's slow guest.
    let rate = (16, Duration::from_millis(40));
    let peer = TestPeer::start(
        &dirs.sockets(),
        "slow1",
        PeerOptions {
            read_rate: Some(rate),
            ..PeerOptions::default()
        },
    );
    broker
        .wait_domain("slow1", "connected", |v| v.connected)
        .await;
    let put = Instant::now();
    broker.client.put_config("slow1", &cfg, None).await.unwrap();
    let v = broker
        .wait_domain("slow1", "configured", |v| {
            v.state == DomainState::Configured && v.applied_generation == Some(1)
        })
        .await;
    let took = put.elapsed();
    assert_eq!(v.applied_digest, v.desired_digest);
    assert_eq!(v.last_error, None);
    // The setup did what it says: at 400 B/s the frame alone needs longer than the
    // result deadline (a lower bound the reader's pace sets, whatever the load).
    let frame = {
        let rec = peer.record();
        assert_eq!(rec.configs.len(), 1, "pushed once");
        xenchan_protocol::FrameCodec::default()
            .encode_line(&xenchan_protocol::Envelope::new(
                xenchan_protocol::Role::Broker,
                Some(xenchan_protocol::Nonce::from_bytes([0; 16])),
                xenchan_protocol::Body::Config(rec.configs[0].clone()),
            ))
            .unwrap()
            .len()
    };
    let crawl = rate.1 * u32::try_from(frame / rate.0).unwrap();
    assert!(
        crawl > result_timeout * 2,
        "{frame} bytes take {crawl:?} at 400 B/s"
    );
    assert!(took >= crawl, "configured after {took:?}");
    let rec = peer.record();
    assert_eq!(
        rec.connections, 1,
        "one session: no result timeout, no reconnect"
    );
    let m = broker.client.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "xenchan_errors_total{kind=\"result_timeout\"}"),
        0,
        "{m}"
    );
    assert_eq!(metric(&m, "xenchan_pushes_total"), 1, "{m}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_stops_reading_is_given_up_at_the_write_deadline() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    // A result deadline that cannot be what ends the session within the test.
    config.timeouts.result = 600_000;
    config.timeouts.write = 1000;
    let broker = TestBroker::start(config).await;
    let peer = TestPeer::start(
        &dirs.sockets(),
        "deaf1",
        PeerOptions {
            deaf_after_hello: true,
            ..PeerOptions::default()
        },
    );
    broker
        .client
        .put_config("deaf1", &big_config(), None)
        .await
        .unwrap();
    let v = broker
        .wait_domain("deaf1", "the write deadline recorded", |v| {
            v.last_error
                .as_deref()
                .is_some_and(|e| e.contains("did not take the whole config"))
        })
        .await;
    let e = v.last_error.unwrap();
    assert!(
        e.contains("generation 1") && e.contains("timeouts.write"),
        "{e}"
    );
    assert_ne!(v.state, DomainState::Configured);
    // The session let go and the broker connects again (and pushes again).
    peer.wait("a reconnect", |r| r.connections >= 2).await;
    let m = broker.client.metrics().await.unwrap();
    assert!(
        metric(&m, "xenchan_errors_total{kind=\"write\"}") >= 1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "xenchan_errors_total{kind=\"result_timeout\"}"),
        0,
        "{m}"
    );
    broker.stop().await.unwrap();
}
