//! cloud-init v2 network documents as users write them: the keys we take are accepted as
//! written, and every key we do not take is named, with its path, in one answer.

mod common;

use common::{Guest, MAC0, doc};
use xenchan_netconf::{ItemStatus, LiveMode, NetOptions, RendererChoice, apply};
use xenchan_protocol::GuestConfig;

#[test]
fn every_unsupported_network_key_is_named_in_one_answer() {
    let json = format!(
        r#"{{"network":{{"version":2,"renderer":"networkd",
        "bridges":{{"br0":{{"interfaces":["eth0"]}}}},
        "ethernets":{{"eth0":{{
            "match":{{"macaddress":"{MAC0}","name":"eth*"}},
            "set-name":"eth0",
            "addresses":["192.0.2.10/24"],
            "gateway4":"192.0.2.1",
            "routes":[{{"to":"198.51.100.0/24","via":"192.0.2.254","on-link":true}}]}}}}}}}}"#
    );
    let e = GuestConfig::from_json(json.as_bytes()).unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "network.bridges",
        "network.ethernets.eth0.match.name",
        "network.ethernets.eth0.set-name",
        "network.ethernets.eth0.routes[0].on-link",
    ] {
        assert!(paths.contains(&want), "{want} not named in: {e}");
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("renderer") || p.ends_with("gateway4")),
        "supported keys refused: {e}"
    );
}

#[test]
fn a_cloud_init_document_applies_as_written() {
    let g = Guest::new();
    let cfg = doc(&format!(
        r#"{{"network":{{"version":2,"renderer":"NetworkManager","ethernets":{{"eth0":{{
        "match":{{"macaddress":"{MAC0}"}},"addresses":["192.0.2.10/24","2001:db8::10/64"],
        "gateway4":"192.0.2.1","gateway6":"2001:db8::1",
        "nameservers":{{"addresses":["192.0.2.53"]}}}}}}}}}}"#
    ));
    let opts = NetOptions {
        renderer: RendererChoice::NetworkManager,
        live: LiveMode::Never,
        sysfs: g.sysfs(),
        ..NetOptions::with_root(g.root())
    };
    let (r, _) = apply(&opts, &cfg, None);
    common::assert_all(&r, ItemStatus::Applied);
    let k = g.read("etc/NetworkManager/system-connections/xenchan-eth0.nmconnection");
    assert!(k.contains("route1=0.0.0.0/0,192.0.2.1\n"), "{k}");
    assert!(k.contains("route1=::/0,2001:db8::1\n"), "{k}");
}
