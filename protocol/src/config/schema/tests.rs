use serde_json::json;

use super::*;

/// A kind that exists only in these tests, in two versions: v2 adds `color`.
const MOTD: Kind = Kind {
    name: "motd",
    versions: &[
        Node::Object(&[field("text", Node::Leaf)]),
        Node::Object(&[field("text", Node::Leaf), field("color", Node::Leaf)]),
    ],
};

static WITH_MOTD: &[Kind] = &[HOSTNAME, NETWORK, USERS, MOTD];

const PEER: &str = "agent xenchan-agent 0.1.0";

fn paths(f: &Filtered) -> Vec<&str> {
    f.dropped.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn v1_capabilities_are_the_v1_item_set_and_ours_cover_the_table() {
    assert_eq!(
        serde_json::to_string(&Capabilities::v1()).unwrap(),
        r#"{"hostname":1,"network":1,"users":1}"#
    );
    let ours = Capabilities::ours();
    for kind in TABLE {
        assert_eq!(ours.version(kind.name), Some(kind.latest()));
    }
    assert_eq!(Capabilities::v1().with("users", 0).version("users"), None);
}

#[test]
fn a_document_the_peer_fully_knows_is_kept_as_is() {
    let doc = json!({"hostname": "a", "network": {"version": 2, "ethernets": {"e0": {
        "match": {"macaddress": "x"}, "routes": [{"to": "default", "via": "y", "metric": 1}],
        "nameservers": {"addresses": [], "search": []}, "mtu": 1500, "dhcp4": true}}},
        "users": [{"name": "u", "ssh_authorized_keys": [], "create": true}]});
    let f = filter(&doc, &Capabilities::v1(), TABLE, PEER);
    assert_eq!(f.document, doc);
    assert!(f.dropped.is_empty(), "{:?}", f.dropped);
}

#[test]
fn unknown_kinds_and_fields_are_dropped_with_their_paths() {
    let doc = json!({"hostname": "a", "ntp": {"servers": []},
        "network": {"version": 2, "bonds": {}, "ethernets": {"e0": {"match": {"macaddress": "x", "name": "eth*"}, "routes": [{"to": "default", "via": "y", "table": 5}]}}},
        "users": [{"name": "u"}, {"name": "v", "sudo": "ALL"}]});
    let f = filter(&doc, &Capabilities::v1(), TABLE, PEER);
    assert_eq!(
        paths(&f),
        [
            "network.bonds",
            "network.ethernets.e0.match.name",
            "network.ethernets.e0.routes[0].table",
            "ntp",
            "users[1].sudo"
        ]
    );
    assert_eq!(
        f.document,
        json!({"hostname": "a",
            "network": {"version": 2, "ethernets": {"e0": {"match": {"macaddress": "x"}, "routes": [{"to": "default", "via": "y"}]}}},
            "users": [{"name": "u"}, {"name": "v"}]})
    );
    assert_eq!(
        f.dropped[3].message,
        "agent xenchan-agent 0.1.0 does not know item `ntp`"
    );
    // `sudo` came with users v2: the reason names the version that has it.
    assert_eq!(
        f.dropped[4].message,
        "agent xenchan-agent 0.1.0 has users v1; field users[1].sudo needs users v2"
    );
}

#[test]
fn a_kind_the_peer_lacks_reaches_it_as_unsupported_and_a_new_peer_gets_it() {
    let doc = json!({"hostname": "a", "motd": {"text": "hi", "color": "red"}});
    let old = filter(&doc, &Capabilities::v1(), WITH_MOTD, PEER);
    assert_eq!(old.document, json!({"hostname": "a"}));
    assert_eq!(paths(&old), ["motd"]);
    assert!(
        old.dropped[0].message.contains("has no `motd` item"),
        "{:?}",
        old.dropped
    );

    let v1 = filter(&doc, &Capabilities::v1().with("motd", 1), WITH_MOTD, PEER);
    assert_eq!(
        v1.document,
        json!({"hostname": "a", "motd": {"text": "hi"}})
    );
    assert_eq!(paths(&v1), ["motd.color"]);
    assert_eq!(
        v1.dropped[0].message,
        "agent xenchan-agent 0.1.0 has motd v1; field motd.color needs motd v2"
    );

    let v2 = filter(&doc, &Capabilities::v1().with("motd", 2), WITH_MOTD, PEER);
    assert_eq!(v2.document, doc);
    assert!(v2.dropped.is_empty());

    // A peer newer than this build gets what this build knows of the kind.
    let v9 = filter(&doc, &Capabilities::v1().with("motd", 9), WITH_MOTD, PEER);
    assert_eq!(v9.document, doc);
}

#[test]
fn values_of_the_wrong_shape_are_left_for_the_strict_parse() {
    let doc = json!({"users": {"name": "u"}, "network": [1], "hostname": {"x": 1}});
    let f = filter(&doc, &Capabilities::v1(), TABLE, PEER);
    assert_eq!(f.document, doc);
    assert!(f.dropped.is_empty());
    let not_an_object = json!([1, 2]);
    assert_eq!(
        filter(&not_an_object, &Capabilities::v1(), TABLE, PEER).document,
        not_an_object
    );
}

#[test]
fn the_report_is_bounded_whatever_the_document_holds() {
    let mut doc = serde_json::Map::new();
    for i in 0..1000 {
        doc.insert(format!("k{i:04}"), json!(1));
    }
    let long = "x".repeat(10_000);
    doc.insert(long.clone(), json!(1));
    let f = filter(&Value::Object(doc), &Capabilities::v1(), TABLE, PEER);
    assert_eq!(f.dropped.len(), MAX_REPORTED + 1);
    assert_eq!(
        f.dropped[MAX_REPORTED].message,
        "937 more unsupported fields not listed"
    );
    assert!(f.dropped.iter().all(|e| e.path.len() <= MAX_PATH + 3));
    assert_eq!(f.document, json!({}));
}

#[test]
fn every_field_of_the_document_types_is_in_the_table() {
    // A document using every field, serialised from the types: the table must know all
    // of it, or the agent would drop fields it can apply.
    let doc = json!({
        "hostname": "web1",
        "network": {"version": 2, "ethernets": {"eth0": {
            "match": {"macaddress": "00:16:3e:12:34:56"}, "dhcp4": true, "dhcp6": true,
            "addresses": ["192.0.2.10/24"], "routes": [{"to": "default", "via": "192.0.2.1", "metric": 5}],
            "nameservers": {"addresses": ["192.0.2.53"], "search": ["example.com"]}, "mtu": 1500}}},
        "users": [{"name": "cloud", "ssh_authorized_keys": [], "create": true}]
    });
    let cfg = crate::GuestConfig::from_value(doc).unwrap();
    let typed = serde_json::to_value(&cfg).unwrap();
    let f = filter(&typed, &Capabilities::ours(), TABLE, PEER);
    assert!(f.dropped.is_empty(), "{:?}", f.dropped);
    assert_eq!(f.document, typed);
}

#[test]
fn covers_means_every_kind_at_its_latest_version() {
    assert!(Capabilities::ours().covers(TABLE));
    assert!(Capabilities::ours().with("extra", 3).covers(TABLE));
    assert!(!Capabilities::v1().covers(TABLE));
    assert!(!Capabilities::ours().covers(WITH_MOTD));
    assert!(
        !Capabilities::of_table(WITH_MOTD)
            .with("motd", 1)
            .covers(WITH_MOTD)
    );
    assert!(Capabilities::of_table(WITH_MOTD).covers(WITH_MOTD));
    // Version 0 is not knowing the kind.
    assert!(!Capabilities::ours().with("users", 0).covers(TABLE));
}

#[test]
fn a_peer_that_covers_the_table_gets_the_document_whole() {
    // What the broker's sessions rely on to skip filtering for such a peer.
    let doc: crate::GuestConfig = serde_json::from_value(json!({
        "hostname": "web1",
        "network": {"version": 2, "ethernets": {"eth0": {
            "match": {"macaddress": "00:16:3e:00:00:01"},
            "addresses": ["192.0.2.10/24"], "gateway4": "192.0.2.1"}}},
        "users": [{"name": "ops", "ssh_authorized_keys": [
            include_str!("../../../testdata/ed25519.pub").trim_ascii_end()]}],
        "time": {"timezone": "Europe/Paris"}
    }))
    .unwrap();
    let f = doc.for_peer(&Capabilities::ours(), PEER).unwrap();
    assert!(f.unsupported.is_empty());
    assert_eq!(f.config, doc);
    assert_eq!(f.digest, doc.digest());
}
