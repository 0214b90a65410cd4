//! Each renderer's output for a set of documents, compared byte for byte with
//! `tests/snapshots/` (regenerate with `UPDATE_SNAPSHOTS=1`), and the file lifecycle:
//! re-apply is `unchanged`, dropping an interface removes our file only, others' files
//! survive.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{Guest, MAC0, MAC1, assert_all, assert_snapshot, doc, statuses};
use xenchan_netconf::{ItemStatus, LiveMode, NetOptions, NetState, RendererChoice, apply};

const RENDERERS: &[(RendererChoice, &str)] = &[
    (RendererChoice::Networkd, "networkd"),
    (RendererChoice::NetworkManager, "networkmanager"),
    (RendererChoice::Netplan, "netplan"),
    (RendererChoice::Ifupdown, "ifupdown"),
];

fn cases() -> Vec<(&'static str, String)> {
    vec![
        (
            "single_v4",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{"eth0":{{
                "match":{{"macaddress":"{MAC0}"}},
                "addresses":["192.0.2.10/24"],
                "routes":[{{"to":"default","via":"192.0.2.1"}}],
                "nameservers":{{"addresses":["192.0.2.53"],"search":["example.com"]}}}}}}}}}}"#
            ),
        ),
        (
            "dual_stack",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{"eth0":{{
                "match":{{"macaddress":"{MAC0}"}},
                "addresses":["192.0.2.10/24","2001:db8::10/64"],
                "routes":[{{"to":"default","via":"192.0.2.1","metric":100}},
                          {{"to":"default","via":"2001:db8::1","metric":100}}],
                "nameservers":{{"addresses":["192.0.2.53","2001:db8::53"],
                                "search":["example.com","example.net"]}}}}}}}}}}"#
            ),
        ),
        (
            "two_nics",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{
                "eth0":{{"match":{{"macaddress":"{MAC0}"}},
                        "addresses":["192.0.2.10/24"],
                        "routes":[{{"to":"default","via":"192.0.2.1"}}],
                        "nameservers":{{"addresses":["192.0.2.53"]}}}},
                "eth1":{{"match":{{"macaddress":"{MAC1}"}},
                        "addresses":["198.51.100.10/24"]}}}}}}}}"#
            ),
        ),
        (
            "static_routes",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{"eth0":{{
                "match":{{"macaddress":"{MAC0}"}},
                "addresses":["192.0.2.10/24","2001:db8::10/64"],
                "routes":[{{"to":"default","via":"192.0.2.1","metric":100}},
                          {{"to":"198.51.100.0/24","via":"192.0.2.254","metric":200}},
                          {{"to":"203.0.113.0/24","via":"192.0.2.253"}},
                          {{"to":"2001:db8:1::/48","via":"2001:db8::1","metric":300}}]}}}}}}}}"#
            ),
        ),
        (
            // cloud-init v2: renderer hint, gateway4/gateway6; a route through a second
            // subnet (ifupdown must add it once that subnet's address exists).
            "gateways",
            format!(
                r#"{{"network":{{"version":2,"renderer":"networkd","ethernets":{{"eth0":{{
                "match":{{"macaddress":"{MAC0}"}},
                "addresses":["192.0.2.10/24","198.51.100.10/24","2001:db8::10/64"],
                "gateway4":"192.0.2.1","gateway6":"2001:db8::1",
                "routes":[{{"to":"203.0.113.0/24","via":"198.51.100.1"}}]}}}}}}}}"#
            ),
        ),
        (
            "dhcp",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{
                "eth0":{{"match":{{"macaddress":"{MAC0}"}},"dhcp4":true,"dhcp6":true}},
                "eth1":{{"match":{{"macaddress":"{MAC1}"}},"dhcp4":true,
                        "addresses":["198.51.100.10/24"]}}}}}}}}"#
            ),
        ),
        (
            "mtu",
            format!(
                r#"{{"network":{{"version":2,"ethernets":{{
                "eth0":{{"match":{{"macaddress":"{MAC0}"}},"addresses":["192.0.2.10/24"],"mtu":9000}},
                "eth1":{{"match":{{"macaddress":"{MAC1}"}},"dhcp6":true,"mtu":1280}}}}}}}}"#
            ),
        ),
    ]
}

fn opts(g: &Guest, renderer: RendererChoice) -> NetOptions {
    NetOptions {
        renderer,
        live: LiveMode::Never,
        sysfs: g.sysfs(),
        ..NetOptions::with_root(g.root())
    }
}

/// ifupdown only reads interfaces.d when the main file sources it (Debian's default).
fn prepare(g: &Guest, renderer: RendererChoice) {
    if renderer == RendererChoice::Ifupdown {
        g.write(
            "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
        );
    }
}

#[test]
fn snapshots_of_every_renderer() {
    for (renderer, rname) in RENDERERS {
        for (case, json) in cases() {
            let g = Guest::new();
            prepare(&g, *renderer);
            let cfg = doc(&json);
            let (results, _) = apply(&opts(&g, *renderer), &cfg, None);
            assert_all(&results, ItemStatus::Applied);
            assert_eq!(
                results.iter().map(|r| r.item.clone()).collect::<Vec<_>>(),
                cfg.items(),
                "{rname}/{case}: one result per item, in order"
            );
            assert_snapshot(&format!("{rname}/{case}"), &g.root());
        }
    }
}

fn stamp(g: &Guest) -> Vec<(String, u64, i64, i64)> {
    common::tree(&g.root())
        .into_iter()
        .map(|(p, _, _)| {
            let m = fs::metadata(g.path(&p)).unwrap();
            (p, m.ino(), m.mtime(), m.mtime_nsec())
        })
        .collect()
}

#[test]
fn reapply_is_unchanged_and_touches_nothing() {
    for (renderer, rname) in RENDERERS {
        for (case, json) in cases() {
            let g = Guest::new();
            prepare(&g, *renderer);
            let cfg = doc(&json);
            let (_, state) = apply(&opts(&g, *renderer), &cfg, None);
            let before = stamp(&g);
            // Through serde, as the agent persists it.
            let state: NetState =
                serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
            let (again, state2) = apply(&opts(&g, *renderer), &cfg, Some(&state));
            assert!(
                again.iter().all(|r| r.status == ItemStatus::Unchanged),
                "{rname}/{case}: {again:?}"
            );
            assert_eq!(stamp(&g), before, "{rname}/{case}: files were rewritten");
            assert_eq!(state2, state, "{rname}/{case}");
        }
    }
}

#[test]
fn dropping_an_interface_removes_our_file_only() {
    let two = &cases()[2].1;
    let one = format!(
        r#"{{"network":{{"version":2,"ethernets":{{
        "eth0":{{"match":{{"macaddress":"{MAC0}"}},"addresses":["192.0.2.10/24"],
                "routes":[{{"to":"default","via":"192.0.2.1"}}],
                "nameservers":{{"addresses":["192.0.2.53"]}}}}}}}}}}"#
    );
    // (renderer, our file for eth1, others' files in the same folders)
    let layouts: &[(RendererChoice, &str, &[&str])] = &[
        (
            RendererChoice::Networkd,
            "etc/systemd/network/10-xenchan-eth1.network",
            &[
                "etc/systemd/network/50-cloud-init.network",
                "etc/systemd/network/99-default.network",
            ],
        ),
        (
            RendererChoice::NetworkManager,
            "etc/NetworkManager/system-connections/xenchan-eth1.nmconnection",
            &["etc/NetworkManager/system-connections/Wired connection 1.nmconnection"],
        ),
        (
            RendererChoice::Ifupdown,
            "etc/network/interfaces.d/xenchan-eth1",
            &[
                "etc/network/interfaces.d/50-cloud-init",
                "etc/network/interfaces",
            ],
        ),
    ];
    for (renderer, ours, theirs) in layouts {
        let g = Guest::new();
        prepare(&g, *renderer);
        for t in *theirs {
            if !g.exists(t) {
                g.write(t, "# someone else's\n[Match]\nName=eth1\n");
            }
        }
        let theirs_before: Vec<String> = theirs.iter().map(|t| g.read(t)).collect();
        let (r1, s1) = apply(&opts(&g, *renderer), &doc(two), None);
        assert_all(&r1, ItemStatus::Applied);
        assert!(g.exists(ours), "{renderer:?}");
        let (r2, s2) = apply(&opts(&g, *renderer), &doc(&one), Some(&s1));
        assert_eq!(
            statuses(&r2),
            vec![
                ("network:eth0".to_string(), ItemStatus::Unchanged),
                ("dns".to_string(), ItemStatus::Unchanged)
            ],
            "{renderer:?}"
        );
        assert!(!g.exists(ours), "{renderer:?}: {ours} should be gone");
        assert!(
            s2.files
                .iter()
                .all(|f| !f.path.ends_with(ours.rsplit('/').next().unwrap()))
        );
        let theirs_after: Vec<String> = theirs.iter().map(|t| g.read(t)).collect();
        assert_eq!(theirs_after, theirs_before, "{renderer:?}");
        // And the last interface: every file of ours goes, resolv.conf comes back.
        let (r3, s3) = apply(&opts(&g, *renderer), &doc("{}"), Some(&s2));
        assert!(r3.is_empty());
        assert!(s3.files.is_empty(), "{s3:?}");
        let left: Vec<String> = common::tree(&g.root())
            .into_iter()
            .filter(|(_, _, c)| String::from_utf8_lossy(c).contains(xenchan_netconf::MARKER))
            .map(|(p, _, _)| p)
            .collect();
        assert!(left.is_empty(), "{renderer:?}: left {left:?}");
        assert_eq!(
            theirs.iter().map(|t| g.read(t)).collect::<Vec<_>>(),
            theirs_before
        );
    }
}

#[test]
fn netplan_keeps_one_file_and_drops_it_with_the_last_interface() {
    let g = Guest::new();
    g.write("etc/netplan/50-cloud-init.yaml", "network: {version: 2}\n");
    let (_, s1) = apply(
        &opts(&g, RendererChoice::Netplan),
        &doc(&cases()[2].1),
        None,
    );
    assert!(
        g.read("etc/netplan/90-xenchan.yaml")
            .contains("xenchan-eth1:")
    );
    let one = format!(
        r#"{{"network":{{"version":2,"ethernets":{{"eth1":{{"match":{{"macaddress":"{MAC1}"}},"addresses":["198.51.100.10/24"]}}}}}}}}"#
    );
    let (r2, s2) = apply(&opts(&g, RendererChoice::Netplan), &doc(&one), Some(&s1));
    assert_eq!(
        statuses(&r2),
        vec![("network:eth1".to_string(), ItemStatus::Unchanged)]
    );
    let y = g.read("etc/netplan/90-xenchan.yaml");
    assert!(
        !y.contains("xenchan-eth0:") && y.contains("xenchan-eth1:"),
        "{y}"
    );
    let (_, s3) = apply(&opts(&g, RendererChoice::Netplan), &doc("{}"), Some(&s2));
    assert!(!g.exists("etc/netplan/90-xenchan.yaml"));
    assert!(s3.files.is_empty());
    assert_eq!(
        g.read("etc/netplan/50-cloud-init.yaml"),
        "network: {version: 2}\n"
    );
}

#[test]
fn an_interface_the_guest_lacks_is_a_failed_item_naming_the_mac() {
    let absent = "00:16:3e:00:00:99";
    let json = format!(
        r#"{{"network":{{"version":2,"ethernets":{{
        "eth0":{{"match":{{"macaddress":"{MAC0}"}},"addresses":["192.0.2.10/24"]}},
        "ghost":{{"match":{{"macaddress":"{absent}"}},"addresses":["198.51.100.10/24"]}}}}}}}}"#
    );
    for (renderer, rname) in RENDERERS {
        let g = Guest::new();
        prepare(&g, *renderer);
        let (r, state) = apply(&opts(&g, *renderer), &doc(&json), None);
        assert_eq!(r[0].status, ItemStatus::Applied, "{rname}: {r:?}");
        assert_eq!(r[1].item, "network:ghost");
        assert_eq!(r[1].status, ItemStatus::Failed);
        let why = r[1].reason.as_deref().unwrap();
        assert!(why.contains(absent), "{rname}: {why}");
        assert!(why.contains("enX0 00:16:3e:00:00:01"), "{rname}: {why}");
        assert!(!state.interfaces.contains_key("ghost"));
        let written: String = common::tree(&g.root())
            .into_iter()
            .map(|(_, _, c)| String::from_utf8_lossy(&c).into_owned())
            .collect();
        assert!(
            !written.contains("198.51.100.10"),
            "{rname}: nothing for the ghost"
        );
    }
}

#[test]
fn a_failed_interface_keeps_its_previous_configuration() {
    // eth1 configured, then its NIC disappears and the document changes it: its old file
    // (or netplan part) stays, the item fails.
    let first = &cases()[2].1;
    let second = format!(
        r#"{{"network":{{"version":2,"ethernets":{{
        "eth0":{{"match":{{"macaddress":"{MAC0}"}},"addresses":["192.0.2.10/24"],
                "routes":[{{"to":"default","via":"192.0.2.1"}}],
                "nameservers":{{"addresses":["192.0.2.53"]}}}},
        "eth1":{{"match":{{"macaddress":"{MAC1}"}},"addresses":["198.51.100.99/24"]}}}}}}}}"#
    );
    for (renderer, rname) in RENDERERS {
        let g = Guest::new();
        prepare(&g, *renderer);
        let (_, s1) = apply(&opts(&g, *renderer), &doc(first), None);
        fs::remove_dir_all(g.sysfs().join("class/net/enX1")).unwrap();
        let (r2, s2) = apply(&opts(&g, *renderer), &doc(&second), Some(&s1));
        assert_eq!(r2[1].status, ItemStatus::Failed, "{rname}");
        let all: String = common::tree(&g.root())
            .into_iter()
            .map(|(_, _, c)| String::from_utf8_lossy(&c).into_owned())
            .collect();
        assert!(all.contains("198.51.100.10/24"), "{rname}: old config kept");
        assert!(!all.contains("198.51.100.99"), "{rname}");
        assert_eq!(
            s2.interfaces.get("eth1"),
            s1.interfaces.get("eth1"),
            "{rname}"
        );
        assert_eq!(s2.files.len(), s1.files.len(), "{rname}: {:?}", s2.files);
    }
}

#[test]
fn foreign_files_at_our_paths_are_refused_not_overwritten() {
    let g = Guest::new();
    let p = "etc/systemd/network/10-xenchan-eth0.network";
    g.write(p, "[Match]\nName=eth0\n");
    let (r, state) = apply(
        &opts(&g, RendererChoice::Networkd),
        &doc(&cases()[0].1),
        None,
    );
    assert_eq!(r[0].status, ItemStatus::Failed);
    assert!(
        r[0].reason.as_deref().unwrap().contains("not ours"),
        "{r:?}"
    );
    assert_eq!(g.read(p), "[Match]\nName=eth0\n");
    assert!(state.files.is_empty());
}

#[test]
fn a_hostile_state_cannot_make_us_remove_other_files() {
    let g = Guest::new();
    g.write(
        "etc/passwd",
        &format!("# {}\nroot:x:0:0::/root:/bin/sh\n", xenchan_netconf::MARKER),
    );
    let state: NetState = serde_json::from_str(
        r#"{"renderer":"networkd","files":[{"path":"etc/passwd"},{"path":"../../etc/xenchan-x"},{"path":"/etc/xenchan-y"}]}"#,
    )
    .unwrap();
    let (_, s) = apply(
        &opts(&g, RendererChoice::Networkd),
        &doc("{}"),
        Some(&state),
    );
    assert!(g.exists("etc/passwd"));
    assert!(s.files.is_empty());
}

#[test]
fn switching_renderer_moves_our_files() {
    let g = Guest::new();
    let cfg = doc(&cases()[0].1);
    let (_, s1) = apply(&opts(&g, RendererChoice::Networkd), &cfg, None);
    assert!(g.exists("etc/systemd/network/10-xenchan-eth0.network"));
    let (r2, s2) = apply(&opts(&g, RendererChoice::NetworkManager), &cfg, Some(&s1));
    assert_eq!(r2[0].status, ItemStatus::Applied);
    assert!(!g.exists("etc/systemd/network/10-xenchan-eth0.network"));
    assert!(g.exists("etc/NetworkManager/system-connections/xenchan-eth0.nmconnection"));
    assert_eq!(s2.files.len(), 1, "{:?}", s2.files);
}

#[test]
fn ifupdown_needs_interfaces_d_sourced() {
    let g = Guest::new();
    g.write(
        "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n",
    );
    let (r, _) = apply(
        &opts(&g, RendererChoice::Ifupdown),
        &doc(&cases()[0].1),
        None,
    );
    assert_eq!(r[0].status, ItemStatus::Failed);
    assert!(
        r[0].reason
            .as_deref()
            .unwrap()
            .contains("source /etc/network/interfaces.d/*")
    );
    assert!(!g.exists("etc/network/interfaces.d/xenchan-eth0"));
}

#[test]
fn detection_picks_the_manager_of_the_root() {
    let g = Guest::new();
    g.write("usr/sbin/NetworkManager", "");
    g.write(
        "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
        "",
    );
    let (results, state) = apply(&opts(&g, RendererChoice::Auto), &doc(&cases()[0].1), None);
    assert_all(&results, ItemStatus::Applied);
    assert_eq!(state.renderer, xenchan_netconf::Renderer::NetworkManager);
    let f = "etc/NetworkManager/system-connections/xenchan-eth0.nmconnection";
    assert_eq!(fs::metadata(g.path(f)).unwrap().mode() & 0o777, 0o600);
    // NetworkManager handles resolv.conf itself.
    assert!(!g.exists("etc/resolv.conf"));
}

#[test]
fn ifupdown_refuses_names_a_shell_would_interpret() {
    let g = Guest::new();
    prepare(&g, RendererChoice::Ifupdown);
    fs::remove_dir_all(g.sysfs().join("class/net/enX0")).unwrap();
    common::fake_nic(&g.sysfs(), "e$(reboot)", MAC0, 7);
    let (r, _) = apply(
        &opts(&g, RendererChoice::Ifupdown),
        &doc(&cases()[0].1),
        None,
    );
    assert_eq!(r[0].status, ItemStatus::Failed);
    assert!(
        r[0].reason
            .as_deref()
            .unwrap()
            .contains("cannot be written"),
        "{r:?}"
    );
    assert!(!g.exists("etc/network/interfaces.d/xenchan-eth0"));
}
