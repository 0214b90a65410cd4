//! Compatibility with protocol revision 1: the frames under `tests/fixtures/v1/` were
//! written by the first release of protocol version 1. The current code must decode every
//! one of them as that release meant it, and what it sends a revision-1 peer must be
//! something that peer understood.

use std::path::PathBuf;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use xenchan_protocol::config::schema::{self, Capabilities};
use xenchan_protocol::message::{Applied, Body, ConfigPush, ErrorCode, ItemStatus, Role};
use xenchan_protocol::{Envelope, FrameCodec, GuestConfig, Lineage, admit};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode(bytes: &[u8]) -> Envelope {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(bytes);
    let msg = codec.decode(&mut buf).unwrap().expect("a v1 frame decodes");
    assert_eq!(codec.stats().skipped(), 0);
    msg
}

const FRAMES: &[&str] = &[
    "broker/hello.frame",
    "broker/config.frame",
    "broker/ping.frame",
    "broker/bye.frame",
    "agent/beacon.frame",
    "agent/hello.frame",
    "agent/result.frame",
    "agent/facts.frame",
    "agent/error.frame",
    "agent/pong.frame",
];

#[test]
fn every_v1_frame_decodes_and_reencodes_byte_for_byte() {
    // Byte-for-byte: the fields added since are all left out when absent, so a current
    // peer that has nothing new to say writes exactly what a revision-1 peer wrote.
    for name in FRAMES {
        let bytes = fixture(name);
        let msg = decode(&bytes);
        let want_from = if name.starts_with("broker/") {
            Role::Broker
        } else {
            Role::Agent
        };
        assert_eq!(msg.from, want_from, "{name}");
        assert_eq!(
            FrameCodec::default().encode_line(&msg).unwrap(),
            bytes,
            "{name} re-encodes differently"
        );
    }
}

#[test]
fn a_v1_agent_hello_means_the_v1_item_set_and_no_lineage() {
    let Body::Hello(h) = decode(&fixture("agent/hello.frame")).body else {
        panic!("not a hello")
    };
    assert_eq!(h.capabilities, None);
    assert_eq!(h.capabilities(), Capabilities::v1());
    let applied = h.applied.clone().expect("the fixture has applied");
    assert_eq!((applied.generation, applied.lineage), (2, None));
    assert_eq!(h.instance(), Some("5e1fa9c033d27b14"));
}

#[test]
fn a_v1_push_decodes_whole_and_its_digest_still_checks() {
    let Body::Config(p) = decode(&fixture("broker/config.frame")).body else {
        panic!("not a config")
    };
    assert_eq!(p.decode.error, None);
    assert!(
        p.decode.unsupported.is_empty(),
        "{:?}",
        p.decode.unsupported
    );
    assert_eq!((p.generation, &p.lineage, p.force), (3, &None, false));
    // The canonical form, and so the digest, of a v1 document has not changed.
    assert_eq!(
        p.config.canonical_json(),
        fixture("broker/config.document.json")
    );
    assert_eq!(p.config.digest(), p.digest);
    // No lineage: a v1 broker's push is never refused as stale, whatever is applied.
    let applied = Applied {
        generation: 9,
        digest: p.digest.clone(),
        lineage: Some(Lineage::from_bits(1)),
    };
    assert_eq!(
        admit(Some(&applied), &p),
        xenchan_protocol::Admission::Apply
    );
}

#[test]
fn v1_results_and_errors_keep_their_meaning() {
    let Body::Result(r) = decode(&fixture("agent/result.frame")).body else {
        panic!("not a result")
    };
    let statuses: Vec<ItemStatus> = r.items.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        [
            ItemStatus::Applied,
            ItemStatus::Unchanged,
            ItemStatus::Unsupported,
            ItemStatus::Failed
        ]
    );
    let Body::Error(e) = decode(&fixture("agent/error.frame")).body else {
        panic!("not an error")
    };
    assert_eq!(e.code, ErrorCode::BadConfig);
}

#[test]
fn what_a_current_broker_pushes_a_v1_agent_is_a_v1_document_with_the_v1_digest() {
    let Body::Config(v1) = decode(&fixture("broker/config.frame")).body else {
        panic!("not a config")
    };
    // The broker filters for the capabilities of the v1 hello (none: the v1 set).
    let for_v1 = v1
        .config
        .for_peer(&Capabilities::v1(), "agent xenchan-agent 0.1.0")
        .unwrap();
    assert!(for_v1.unsupported.is_empty());
    assert_eq!(for_v1.digest, v1.digest);
    let push = ConfigPush::new(3, for_v1.config).with_lineage(Lineage::from_bits(7));
    let line = FrameCodec::default()
        .encode_line(&Envelope::new(Role::Broker, None, Body::Config(push)))
        .unwrap();
    // A v1 agent parsed the document strictly against the v1 trees: nothing may be
    // unknown to them. The envelope's new fields (lineage) are ignored by a v1 decoder,
    // which ignores unknown message fields.
    let sent: serde_json::Value = serde_json::from_slice(&line).unwrap();
    let f = schema::filter(&sent["config"], &Capabilities::v1(), schema::TABLE, "v1");
    assert!(f.dropped.is_empty(), "{:?}", f.dropped);
    assert_eq!(
        serde_json::to_vec(&GuestConfig::from_value(sent["config"].clone()).unwrap()).unwrap(),
        fixture("broker/config.document.json")
    );
}

/// A sealed config frame with the envelope of `frame`, lineage `abc` and document `doc`
/// (written by hand: the frame marker must come first).
fn config_frame(frame: &serde_json::Value, doc: &serde_json::Value) -> Vec<u8> {
    let json = format!(
        r#"{{"xenchan":1,"from":"broker","session":{},"type":"config","generation":3,"digest":{},"lineage":"abc","config":{doc}}}"#,
        frame["session"], frame["digest"]
    );
    xenchan_protocol::codec::seal(json.as_bytes())
}

#[test]
fn a_push_with_unknown_fields_decodes_with_them_named() {
    // A newer broker that did not filter (or a hand-made frame): the frame is still a
    // frame; the agent learns what it cannot use.
    let frame: serde_json::Value = serde_json::from_slice(&fixture("broker/config.frame")).unwrap();
    let mut doc = frame["config"].clone();
    doc["ntp"] = serde_json::json!({"servers": ["pool.ntp.org"]});
    doc["users"][0]["expiredate"] = "2030-01-01".into();
    let Body::Config(p) = decode(&config_frame(&frame, &doc)).body else {
        panic!("not a config")
    };
    let paths: Vec<&str> = p
        .decode
        .unsupported
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(paths, ["ntp", "users[0].expiredate"]);
    assert_eq!(p.config.users.len(), 1);
    assert_eq!(p.lineage.as_ref().map(Lineage::as_str), Some("abc"));

    // A bad value: still a frame, with the error at its path.
    doc["hostname"] = "bad_host".into();
    let Body::Config(p) = decode(&config_frame(&frame, &doc)).body else {
        panic!("not a config")
    };
    let e = p.decode.error.expect("a bad value is an error");
    assert_eq!(e.first_path(), "hostname");
    assert_eq!(p.config, GuestConfig::default());
}

#[test]
fn an_unknown_error_code_is_still_an_error() {
    let line = xenchan_protocol::codec::seal(
        br#"{"xenchan":1,"from":"agent","session":"9f2c11074242aa010010203040506070","type":"error","code":"from-the-future","message":"m"}"#,
    );
    let Body::Error(e) = decode(&line).body else {
        panic!("not an error")
    };
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::Other, "m"));
}
