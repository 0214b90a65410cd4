//! Fleet safety, end to end over a pty: capabilities in the hello, tolerance of documents
//! from newer brokers (unknown items and fields answered `unsupported`, the rest applied),
//! an answer for every document, no rollback across generations of one lineage, frames of
//! a revision-1 broker, the VM UUID from DMI, and facts that never hold up the session.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::time::Instant;
use xenchan_protocol::config::Capabilities;
use xenchan_protocol::message::{ApplyResult, ConfigPush, ErrorCode, ErrorReport, GuestFacts};
use xenchan_protocol::{Body, Envelope, GuestConfig, ItemStatus, Lineage, Nonce, Role};

async fn session(guest: &Guest) -> (Broker, Running, Nonce) {
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    let (nonce, _) = broker.handshake().await;
    (broker, agent, nonce)
}

/// A sealed config frame written by hand (a newer broker's document, or a bad one).
fn config_frame(nonce: &Nonce, generation: u64, digest: &str, doc: &serde_json::Value) -> Vec<u8> {
    let json = format!(
        r#"{{"xenchan":1,"from":"broker","session":"{}","type":"config","generation":{generation},"digest":"{digest}","config":{doc}}}"#,
        nonce.as_str()
    );
    xenchan_protocol::codec::seal(json.as_bytes())
}

async fn result_of(broker: &mut Broker, generation: u64) -> ApplyResult {
    let m = broker
        .wait_for(
            "a result",
            move |m| matches!(&m.body, Body::Result(r) if r.generation == generation),
        )
        .await;
    let Body::Result(r) = m.body else {
        unreachable!()
    };
    r
}

async fn error_of(broker: &mut Broker, code: ErrorCode) -> ErrorReport {
    let m = broker
        .wait_for(
            "an error",
            move |m| matches!(&m.body, Body::Error(e) if e.code == code),
        )
        .await;
    let Body::Error(e) = m.body else {
        unreachable!()
    };
    e
}

fn status_of(r: &ApplyResult, item: &str) -> (ItemStatus, String) {
    let i = r
        .items
        .iter()
        .find(|i| i.item == item)
        .unwrap_or_else(|| panic!("no item {item} in {r:?}"));
    (i.status, i.reason.clone().unwrap_or_default())
}

#[tokio::test]
async fn the_hello_announces_what_the_agent_can_apply() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    let (_, hello) = broker.handshake().await;
    assert_eq!(hello.capabilities, Some(Capabilities::ours()));
    assert_eq!(hello.capabilities().version("users"), Some(2));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_items_and_fields_are_unsupported_and_the_rest_is_applied() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    let known = GuestConfig::from_json(
        format!(r#"{{"hostname":"web7","users":[{{"name":"cloud","ssh_authorized_keys":["{KEY_A}"]}}]}}"#)
            .as_bytes(),
    )
    .unwrap();
    let doc = serde_json::json!({
        "hostname": "web7",
        "ntp": {"servers": ["pool.ntp.org"]},
        "users": [{"name": "cloud", "ssh_authorized_keys": [KEY_A], "expiredate": "2030-01-01"}]
    });
    let started = Instant::now();
    broker
        .write_raw(&config_frame(&nonce, 1, known.digest().as_str(), &doc))
        .await;
    let r = result_of(&mut broker, 1).await;
    assert!(started.elapsed() < Duration::from_secs(3), "answered late");
    assert_eq!(status_of(&r, "hostname").0, ItemStatus::Applied);
    assert_eq!(status_of(&r, "user:cloud").0, ItemStatus::Applied);
    let (s, why) = status_of(&r, "ntp");
    assert_eq!(s, ItemStatus::Unsupported);
    assert!(why.contains("does not know item `ntp`"), "{why}");
    let (s, why) = status_of(&r, "users[0].expiredate");
    assert_eq!(s, ItemStatus::Unsupported);
    assert!(why.contains("unknown field `expiredate`"), "{why}");
    assert_eq!(r.digest, known.digest());
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "web7\n"
    );
    let keys = std::fs::read_to_string(guest.path("home/cloud/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains(KEY_A.split(' ').nth(1).unwrap()), "{keys}");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_document_that_does_not_parse_gets_an_error_naming_the_field() {
    let guest = Guest::new();
    let (mut broker, agent, nonce) = session(&guest).await;
    let digest = GuestConfig::default().digest();
    let cases = [
        (serde_json::json!({"hostname": "bad_host"}), "hostname"),
        (
            serde_json::json!({"network": {"version": 2, "ethernets": {"e0": {"match": {"macaddress": "01:00:5e:00:00:01"}}}}}),
            "network.ethernets.e0.match.macaddress",
        ),
        (
            serde_json::json!({"users": [{"name": "cloud", "ssh_authorized_keys": ["ssh-ed25519 notakey"]}]}),
            "users[0].ssh_authorized_keys[0]",
        ),
        (serde_json::json!([1, 2]), "."),
    ];
    for (generation, (doc, path)) in (1..).zip(cases) {
        broker
            .write_raw(&config_frame(&nonce, generation, digest.as_str(), &doc))
            .await;
        let e = error_of(&mut broker, ErrorCode::BadConfig).await;
        assert!(
            e.message.starts_with(&format!("{path}: ")),
            "{path}: {}",
            e.message
        );
        broker.seen.clear();
    }
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "localhost\n"
    );
    agent.stop().await.unwrap();
}

fn hostname_config(name: &str) -> GuestConfig {
    GuestConfig::from_json(format!(r#"{{"hostname":"{name}"}}"#).as_bytes()).unwrap()
}

async fn push_raw(broker: &mut Broker, push: ConfigPush) {
    let nonce = broker.rules.current().cloned().unwrap();
    broker
        .send(&Envelope::new(
            Role::Broker,
            Some(nonce),
            Body::Config(push),
        ))
        .await;
}

#[tokio::test]
async fn an_older_generation_of_the_applied_lineage_is_refused_unless_forced() {
    let guest = Guest::new();
    let (mut broker, agent, _) = session(&guest).await;
    let lineage = Lineage::from_bits(0xfeed);
    push_raw(
        &mut broker,
        ConfigPush::new(5, hostname_config("five")).with_lineage(lineage.clone()),
    )
    .await;
    result_of(&mut broker, 5).await;

    // A restored store (same lineage) pushes generation 4: refused, nothing touched.
    push_raw(
        &mut broker,
        ConfigPush::new(4, hostname_config("four")).with_lineage(lineage.clone()),
    )
    .await;
    let e = error_of(&mut broker, ErrorCode::StaleGeneration).await;
    assert!(
        e.message.contains("generation 4") && e.message.contains("generation 5"),
        "{}",
        e.message
    );
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "five\n"
    );

    // Another store's generation 1 is not comparable: applied.
    push_raw(
        &mut broker,
        ConfigPush::new(1, hostname_config("other")).with_lineage(Lineage::from_bits(2)),
    )
    .await;
    assert_eq!(
        status_of(&result_of(&mut broker, 1).await, "hostname").0,
        ItemStatus::Applied
    );
    push_raw(
        &mut broker,
        ConfigPush::new(9, hostname_config("five")).with_lineage(lineage.clone()),
    )
    .await;
    result_of(&mut broker, 9).await;

    // The operator forces generation 4 back.
    push_raw(
        &mut broker,
        ConfigPush::new(4, hostname_config("four"))
            .with_lineage(lineage.clone())
            .forced(),
    )
    .await;
    assert_eq!(
        status_of(&result_of(&mut broker, 4).await, "hostname").0,
        ItemStatus::Applied
    );
    // The next hello reports lineage and generation, from the saved state.
    let nonce = broker.send_hello().await;
    let hello = broker.wait_for_session_hello(&nonce).await;
    let applied = hello.applied.unwrap();
    assert_eq!((applied.generation, applied.lineage), (4, Some(lineage)));
    agent.stop().await.unwrap();
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/fixtures/v1")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The frames a revision-1 broker wrote, byte for byte: no capabilities asked, no
/// lineage. The agent answers, applies and reports as it always did.
#[tokio::test]
async fn a_v1_broker_configures_the_current_agent() {
    let guest = Guest::new();
    // The fixtures' VM.
    std::fs::write(
        guest.path("sys/hypervisor/uuid"),
        "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a\n",
    )
    .unwrap();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    broker.uuid = Some("6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a".into());
    let agent = start(guest.opts());
    broker.wait_for("a beacon", is_beacon).await;
    let nonce =
        Nonce::from_bytes(*b"\x9f\x2c\x11\x07\x42\x42\xaa\x01\x00\x10\x20\x30\x40\x50\x60\x70");
    broker.rules.set_session(nonce.clone());
    broker.write_raw(&fixture("broker/hello.frame")).await;
    let hello = broker.wait_for_session_hello(&nonce).await;
    assert_eq!(hello.applied, None);
    broker.write_raw(&fixture("broker/config.frame")).await;
    let r = result_of(&mut broker, 3).await;
    assert_eq!(
        r.digest.as_str(),
        "sha256:4e8179e8538e94e23f9b35eeaa85756fd28c28c1e28f8afbcb44028cd5b6238e"
    );
    let items: Vec<&str> = r.items.iter().map(|i| i.item.as_str()).collect();
    assert_eq!(items, ["hostname", "network:eth0", "dns", "user:cloud"]);
    assert_eq!(status_of(&r, "hostname").0, ItemStatus::Applied);
    broker.write_raw(&fixture("broker/ping.frame")).await;
    broker
        .wait_for("the pong", |m| matches!(m.body, Body::Pong { id: 7 }))
        .await;
    broker.write_raw(&fixture("broker/bye.frame")).await;
    broker.wait_for("a beacon after bye", is_beacon).await;
    // The applied state has no lineage: a v1 broker sent none.
    let nonce = broker.send_hello().await;
    let applied = broker.wait_for_session_hello(&nonce).await.applied.unwrap();
    assert_eq!((applied.generation, applied.lineage), (3, None));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn the_uuid_is_read_from_dmi_when_xen_publishes_none() {
    let guest = Guest::new();
    std::fs::remove_file(guest.path("sys/hypervisor/uuid")).unwrap();
    std::fs::create_dir_all(guest.path("sys/class/dmi/id")).unwrap();
    std::fs::write(
        guest.path("sys/class/dmi/id/product_uuid"),
        "4D1F0A2B-1C3D-4E5F-8A9B-0C1D2E3F4A5B\n",
    )
    .unwrap();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    let (_, hello) = broker.handshake().await;
    assert_eq!(hello.uuid.as_deref(), Some(UUID));
    agent.stop().await.unwrap();
}

/// `/etc/os-release` as a FIFO nobody writes: the hello is answered at once, pings too,
/// and the facts follow without the OS name.
#[tokio::test]
async fn a_blocking_facts_source_holds_up_nothing() {
    let guest = Guest::new();
    std::fs::remove_file(guest.path("etc/os-release")).unwrap();
    nix::unistd::mkfifo(
        &guest.path("etc/os-release"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.wait_for("a beacon", is_beacon).await;
    let started = Instant::now();
    let nonce = broker.send_hello().await;
    broker.wait_for_session_hello(&nonce).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "hello answered after {:?}",
        started.elapsed()
    );
    broker.ping(1).await;
    let seen = broker.seen.iter().find_map(|m| match &m.body {
        Body::Facts(f) => Some(f.clone()),
        _ => None,
    });
    let f = match seen {
        Some(f) => f,
        None => match broker
            .wait_for("facts", |m| matches!(m.body, Body::Facts(_)))
            .await
            .body
        {
            Body::Facts(f) => f,
            _ => unreachable!(),
        },
    };
    assert_eq!(f.os, "");
    assert_eq!(f.hostname, "localhost");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn facts_show_the_pushed_hostname_after_the_push() {
    let guest = Guest::new();
    let (mut broker, agent, _) = session(&guest).await;
    broker.seen.clear();
    let r = broker.push(1, &hostname_config("pushed1")).await;
    assert_eq!(status_of(&r, "hostname").0, ItemStatus::Applied);
    let m = broker
        .wait_for("facts with the new hostname", |m| {
            matches!(&m.body, Body::Facts(GuestFacts { hostname, .. }) if hostname == "pushed1")
        })
        .await;
    assert!(m.session.is_some());
    // Unchanged facts are not sent again (the poll runs every 500 ms here).
    broker
        .expect_none("repeated facts", Duration::from_millis(1200), |m| {
            matches!(m.body, Body::Facts(_))
        })
        .await;
    agent.stop().await.unwrap();
}

/// A failed item is applied again with backoff, each attempt reported as a `result` of
/// the same generation, until it succeeds; then the retries stop.
#[tokio::test]
async fn a_failed_item_is_retried_until_it_applies() {
    let guest = Guest::new();
    let (mut broker, agent, _) = session(&guest).await;
    let cfg = GuestConfig::from_json(
        format!(
            r#"{{"hostname":"r1","users":[{{"name":"bob","ssh_authorized_keys":["{KEY_B}"]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let r = broker.push(1, &cfg).await;
    let (s, why) = status_of(&r, "user:bob");
    assert_eq!(s, ItemStatus::Failed, "{why}");
    // A retry comes, still failing, for the same generation.
    let again = result_of(&mut broker, 1).await;
    assert_eq!(status_of(&again, "user:bob").0, ItemStatus::Failed);
    assert_eq!(status_of(&again, "hostname").0, ItemStatus::Unchanged);
    // The user appears (someone installed the package that creates it).
    let passwd = format!(
        "{}bob:x:{}:{}:Bob:/home/bob:/bin/bash\n",
        std::fs::read_to_string(guest.path("etc/passwd")).unwrap(),
        guest.uid,
        guest.gid
    );
    std::fs::write(guest.path("etc/passwd"), passwd).unwrap();
    std::fs::create_dir_all(guest.path("home/bob")).unwrap();
    std::os::unix::fs::chown(guest.path("home/bob"), Some(guest.uid), Some(guest.gid)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = result_of(&mut broker, 1).await;
        if status_of(&r, "user:bob").0 == ItemStatus::Applied {
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {r:?}");
    }
    assert!(
        std::fs::read_to_string(guest.path("home/bob/.ssh/authorized_keys"))
            .unwrap()
            .contains(KEY_B.split(' ').nth(1).unwrap())
    );
    // Nothing failed any more: no more retries (the backoff tops out at 800 ms here).
    broker
        .expect_none("another retry", Duration::from_millis(1500), |m| {
            matches!(m.body, Body::Result(_))
        })
        .await;
    agent.stop().await.unwrap();
}
