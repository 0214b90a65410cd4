use super::*;

const ED25519: &str = include_str!("../../testdata/ed25519.pub");
const ECDSA: &str = include_str!("../../testdata/ecdsa256.pub");
const RSA3072: &str = include_str!("../../testdata/rsa3072.pub");
const RSA1024: &str = include_str!("../../testdata/rsa1024.pub");
const DSA: &str = include_str!("../../testdata/dsa.pub");

fn key(s: &str) -> String {
    s.trim_end().to_string()
}

fn parse(v: &serde_json::Value) -> Result<GuestConfig, ConfigError> {
    GuestConfig::from_json(v.to_string().as_bytes())
}

fn err_at(v: &serde_json::Value) -> (String, String) {
    let e = parse(v).unwrap_err();
    (e.errors[0].path.clone(), e.errors[0].message.clone())
}

fn full() -> serde_json::Value {
    serde_json::json!({
        "hostname": "web1.example.com",
        "network": {
            "version": 2,
            "ethernets": {
                "eth0": {
                    "match": {"macaddress": "00:16:3e:12:34:56"},
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                    "routes": [
                        {"to": "default", "via": "192.0.2.1", "metric": 100},
                        {"to": "198.51.100.0/24", "via": "192.0.2.254"}
                    ],
                    "nameservers": {"addresses": ["192.0.2.53", "2001:db8::53"], "search": ["example.com"]},
                    "mtu": 1500
                },
                "backend": {
                    "match": {"macaddress": "00:16:3e:12:34:57"},
                    "dhcp4": true
                }
            }
        },
        "users": [
            {"name": "cloud", "ssh_authorized_keys": [key(ED25519), key(ECDSA), key(RSA3072)]},
            {"name": "ops", "ssh_authorized_keys": [], "create": true}
        ]
    })
}

#[test]
fn a_full_document_parses() {
    let cfg = parse(&full()).unwrap();
    assert_eq!(cfg.hostname.as_ref().unwrap().as_str(), "web1.example.com");
    let net = cfg.network.as_ref().unwrap();
    assert_eq!(net.ethernets.len(), 2);
    assert_eq!(cfg.users[0].ssh_authorized_keys.len(), 3);
    assert_eq!(
        cfg.items(),
        [
            "hostname",
            "network:backend",
            "network:eth0",
            "dns",
            "user:cloud",
            "user:ops"
        ]
    );
}

#[test]
fn empty_document_is_valid_and_has_no_items() {
    let cfg = GuestConfig::from_json(b"{}").unwrap();
    assert!(cfg.items().is_empty());
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let mut v = full();
    v["network"]["ethernets"]["eth0"]["gateway5"] = "x".into();
    let (path, msg) = err_at(&v);
    assert_eq!(path, "network.ethernets.eth0.gateway5");
    assert!(msg.contains("unknown field `gateway5`"), "{msg}");

    let (path, _) = err_at(&serde_json::json!({"hostnme": "x"}));
    assert_eq!(path, "hostnme");
    let (path, _) = err_at(&serde_json::json!({"network": {"version": 2, "bonds": {}}}));
    assert_eq!(path, "network.bonds");
    let (path, _) = err_at(&serde_json::json!({"users": [{"name": "a", "sudo": true}]}));
    assert_eq!(path, "users[0].sudo");
}

#[test]
fn bad_values_are_reported_at_their_path() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            serde_json::json!({"hostname": "bad_host"}),
            "hostname",
            "contains '_'",
        ),
        (
            {
                let mut v = full();
                v["network"]["ethernets"]["eth0"]["addresses"][1] = "2001:db8::10".into();
                v
            },
            "network.ethernets.eth0.addresses[1]",
            "no prefix length",
        ),
        (
            {
                let mut v = full();
                v["network"]["ethernets"]["eth0"]["match"]["macaddress"] = "00:16:3e:12:34".into();
                v
            },
            "network.ethernets.eth0.match.macaddress",
            "not a MAC address",
        ),
        (
            {
                let mut v = full();
                v["network"]["ethernets"]["eth0"]["routes"][0]["via"] = "gw".into();
                v
            },
            "network.ethernets.eth0.routes[0].via",
            "invalid IP address",
        ),
        (
            {
                let mut v = full();
                v["users"][0]["ssh_authorized_keys"][1] =
                    format!("command=\"rm -rf /\" {}", key(ED25519)).into();
                v
            },
            "users[0].ssh_authorized_keys[1]",
            "options such as command=",
        ),
        (
            {
                let mut v = full();
                v["users"][1]["name"] = "Root".into();
                v
            },
            "users[1].name",
            "not a valid user name",
        ),
        (
            {
                let mut v = full();
                v["network"]["ethernets"]["eth0"]["mtu"] = (-5).into();
                v
            },
            "network.ethernets.eth0.mtu",
            "invalid value",
        ),
        (
            serde_json::json!({"network": {"version": 2, "ethernets": {"../x": {"match": {"macaddress": "00:16:3e:00:00:01"}}}}}),
            "network.ethernets.../x",
            "not a valid interface id",
        ),
        (
            serde_json::json!({"network": {"version": 2, "ethernets": {"e": {}}}}),
            "network.ethernets.e",
            "missing field `match`",
        ),
    ];
    for (doc, path, needle) in cases {
        let (p, m) = err_at(&doc);
        assert_eq!(p, path, "{m}");
        assert!(m.contains(needle), "{path}: {m}");
    }
}

#[test]
fn syntax_errors_name_the_position() {
    let e = GuestConfig::from_json(b"{\"hostname\": \"x\",}").unwrap_err();
    assert!(e.to_string().contains("line 1 column"), "{e}");
    let e = GuestConfig::from_json(b"[]").unwrap_err();
    assert_eq!(e.first_path(), ".");
    assert!(e.to_string().contains("must be a JSON object"));
    let e = GuestConfig::from_json(b"{} {}").unwrap_err();
    assert!(e.to_string().contains("trailing characters"), "{e}");
}

#[test]
fn cross_field_rules_report_every_violation() {
    let mut v = full();
    let eth0 = &mut v["network"]["ethernets"]["eth0"];
    eth0["mtu"] = 1000.into(); // below the IPv6 minimum
    eth0["routes"][1]["via"] = "2001:db8::1".into(); // v4 network via v6 gateway
    v["network"]["ethernets"]["backend"]["match"]["macaddress"] = "00:16:3E:12:34:56".into();
    v["network"]["ethernets"]["backend"]["addresses"] = serde_json::json!(["192.0.2.10/25"]);
    v["users"][1]["name"] = "cloud".into();
    v["users"][0]["ssh_authorized_keys"][2] = format!(
        "{} other-comment",
        &key(ED25519)[..key(ED25519).rfind(' ').unwrap()]
    )
    .into();
    v["network"]["version"] = 3.into();
    let e = parse(&v).unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "network.version",
            "network.ethernets.eth0.match.macaddress",
            "network.ethernets.eth0.addresses[0]",
            "network.ethernets.eth0.routes[1].via",
            "network.ethernets.eth0.mtu",
            "users[0].ssh_authorized_keys[2]",
            "users[1].name",
        ],
        "{e}"
    );
    assert!(
        e.errors[1]
            .message
            .contains("also matched by interface `backend`")
    );
    assert!(
        e.errors[2]
            .message
            .contains("already given at network.ethernets.backend.addresses[0]")
    );
    assert!(
        e.errors[4]
            .message
            .contains("1280-65535 (the link carries IPv6)")
    );
}

#[test]
fn mtu_bounds() {
    let doc = |mtu: u32, addr: &str| {
        serde_json::json!({"network": {"version": 2, "ethernets": {"e": {
            "match": {"macaddress": "00:16:3e:00:00:01"}, "addresses": [addr], "mtu": mtu}}}})
    };
    assert!(parse(&doc(68, "10.0.0.1/8")).is_ok());
    assert!(parse(&doc(67, "10.0.0.1/8")).is_err());
    assert!(parse(&doc(65535, "10.0.0.1/8")).is_ok());
    assert!(parse(&doc(65536, "10.0.0.1/8")).is_err());
    assert!(parse(&doc(1279, "fd00::1/64")).is_err());
    assert!(parse(&doc(1280, "fd00::1/64")).is_ok());
}

#[test]
fn list_sizes_are_bounded() {
    let keys: Vec<String> = (0..=limits::KEYS).map(|_| key(ED25519)).collect();
    let e = parse(&serde_json::json!({"users": [{"name": "a", "ssh_authorized_keys": keys}]}))
        .unwrap_err();
    assert_eq!(e.errors[0].path, "users[0].ssh_authorized_keys");
    assert!(e.errors[0].message.contains("at most 256"));
}

#[test]
fn key_types() {
    for good in [ED25519, ECDSA, RSA3072] {
        assert!(key(good).parse::<SshKey>().is_ok(), "{good}");
    }
    assert!(
        key(RSA1024)
            .parse::<SshKey>()
            .unwrap_err()
            .contains("1024 bits")
    );
    assert!(key(DSA).parse::<SshKey>().unwrap_err().contains("ssh-dss"));
}

#[test]
fn digest_is_stable_and_canonical() {
    let a = parse(&full()).unwrap();
    // Same meaning, other spelling: upper-case MAC and IPv6, key with extra spaces,
    // interfaces in another order, defaults spelled out.
    let mut v = full();
    let eth0 = v["network"]["ethernets"]["eth0"].clone();
    v["network"]["ethernets"] = serde_json::json!({
        "backend": {"match": {"macaddress": "00:16:3E:12:34:57"}, "dhcp4": true, "dhcp6": false, "addresses": []},
        "eth0": eth0,
    });
    v["network"]["ethernets"]["eth0"]["addresses"][1] = "2001:DB8::10/64".into();
    v["users"][0]["ssh_authorized_keys"][0] = format!("  {}  ", key(ED25519)).into();
    v["users"][1]["create"] = true.into();
    let b = parse(&v).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.canonical_json(), b.canonical_json());

    // Anything that changes the meaning changes the digest.
    let mut c = a.clone();
    c.hostname = Some("web2.example.com".parse().unwrap());
    assert_ne!(a.digest(), c.digest());

    // The canonical form parses back to the same document.
    let again = GuestConfig::from_json(&a.canonical_json()).unwrap();
    assert_eq!(again, a);
    assert!(a.digest().as_str().starts_with("sha256:"));
    assert_eq!(a.digest().as_str().len(), 7 + 64);
}

#[test]
fn digest_text_is_validated() {
    assert!(Digest::try_from("sha256:".to_string() + &"0".repeat(64)).is_ok());
    assert!(Digest::try_from("md5:abc".to_string()).is_err());
    assert!(Digest::try_from("sha256:".to_string() + &"G".repeat(64)).is_err());
}

#[test]
fn the_strict_parse_reports_every_unknown_field_in_one_answer() {
    let mut v = full();
    v["network"]["ethernets"]["eth0"]["gateway5"] = "x".into();
    v["users"][1]["expiredate"] = "2030-01-01".into();
    v["ntp"] = serde_json::json!({"servers": ["pool.ntp.org"]});
    let e = parse(&v).unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "network.ethernets.eth0.gateway5",
            "ntp",
            "users[1].expiredate"
        ]
    );
}

#[test]
fn tolerant_decode_keeps_what_it_knows_and_names_the_rest() {
    let mut v = full();
    v["users"][1]["expiredate"] = "2030-01-01".into();
    v["ntp"] = serde_json::json!({"servers": ["pool.ntp.org"]});
    let t = GuestConfig::decode_tolerant(&v, "this agent").unwrap();
    assert_eq!(t.config, parse(&full()).unwrap());
    let paths: Vec<&str> = t.unsupported.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["ntp", "users[1].expiredate"]);

    // What is left is still parsed strictly: a bad value is an error at its path.
    v["network"]["ethernets"]["eth0"]["match"]["macaddress"] = "01:00:5e:00:00:01".into();
    let e = GuestConfig::decode_tolerant(&v, "this agent").unwrap_err();
    assert_eq!(e.first_path(), "network.ethernets.eth0.match.macaddress");
}

#[test]
fn filtering_for_a_v1_peer_keeps_the_v1_digest() {
    let cfg = parse(&full()).unwrap();
    let p = cfg
        .for_peer(&Capabilities::v1(), "agent xenchan-agent 0.1.0")
        .unwrap();
    assert_eq!(p.config, cfg);
    assert_eq!(p.digest, cfg.digest());
    assert!(p.unsupported_items().is_empty());
    // A peer without the users item gets the rest, a digest of the rest, and the reason.
    let p = cfg
        .for_peer(
            &Capabilities::v1().with("users", 0),
            "agent xenchan-agent 0.0.9",
        )
        .unwrap();
    assert!(p.config.users.is_empty());
    assert_eq!(p.digest, p.config.digest());
    let items = p.unsupported_items();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].item, "users");
    assert_eq!(items[0].status, crate::ItemStatus::Unsupported);
    assert!(
        items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("agent xenchan-agent 0.0.9 has no `users` item")
    );
}

#[test]
fn cloud_init_v2_renderer_and_gateways() {
    let doc = serde_json::json!({
        "network": {
            "version": 2,
            "renderer": "NetworkManager",
            "ethernets": {
                "eth0": {
                    "match": {"macaddress": "00:16:3e:12:34:56"},
                    "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                    "gateway4": "192.0.2.1",
                    "gateway6": "2001:db8::1",
                    "routes": [{"to": "198.51.100.0/24", "via": "192.0.2.254"}]
                }
            }
        }
    });
    let cfg = parse(&doc).unwrap();
    let net = cfg.network.as_ref().unwrap();
    assert_eq!(net.renderer, Some(RendererHint::NetworkManager));
    let eth = &net.ethernets.values().next().unwrap();
    let routes: Vec<String> = eth
        .all_routes()
        .iter()
        .map(|r| format!("{}>{}", String::from(r.to), r.via))
        .collect();
    assert_eq!(
        routes,
        [
            "198.51.100.0/24>192.0.2.254",
            "default>192.0.2.1",
            "default>2001:db8::1"
        ]
    );
    // Lossless: the canonical form keeps the keys as written.
    let canon = String::from_utf8(cfg.canonical_json()).unwrap();
    assert!(
        canon.contains(r#""renderer":"NetworkManager""#)
            && canon.contains(r#""gateway4":"192.0.2.1""#),
        "{canon}"
    );
    assert_eq!(GuestConfig::from_json(canon.as_bytes()).unwrap(), cfg);

    let mut nd = doc.clone();
    nd["network"]["renderer"] = "networkd".into();
    assert_eq!(
        parse(&nd).unwrap().network.unwrap().renderer,
        Some(RendererHint::Networkd)
    );
    let mut bad = doc.clone();
    bad["network"]["renderer"] = "sriov".into();
    assert_eq!(err_at(&bad).0, "network.renderer");
    let mut bad = doc.clone();
    bad["network"]["ethernets"]["eth0"]["gateway4"] = "2001:db8::1".into();
    assert_eq!(err_at(&bad).0, "network.ethernets.eth0.gateway4");
}

#[test]
fn a_gateway_next_to_a_default_route_names_both() {
    let doc = serde_json::json!({
        "network": {"version": 2, "ethernets": {"eth0": {
            "match": {"macaddress": "00:16:3e:12:34:56"},
            "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
            "gateway4": "192.0.2.1",
            "gateway6": "2001:db8::1",
            "routes": [
                {"to": "default", "via": "192.0.2.254"},
                {"to": "::/0", "via": "2001:db8::fe"}
            ]
        }}}
    });
    let e = parse(&doc).unwrap_err();
    let got: Vec<(&str, &str)> = e
        .errors
        .iter()
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{e}");
    assert_eq!(got[0].0, "network.ethernets.eth0.gateway4");
    assert!(got[0].1.contains("network.ethernets.eth0.routes[0]"), "{e}");
    assert_eq!(got[1].0, "network.ethernets.eth0.gateway6");
    assert!(got[1].1.contains("network.ethernets.eth0.routes[1]"), "{e}");
}

#[test]
fn a_v1_peer_gets_gateways_as_default_routes_and_loses_only_the_renderer_hint() {
    let doc = serde_json::json!({
        "network": {"version": 2, "renderer": "networkd", "ethernets": {"eth0": {
            "match": {"macaddress": "00:16:3e:12:34:56"},
            "addresses": ["192.0.2.10/24"],
            "gateway4": "192.0.2.1"
        }}}
    });
    let cfg = parse(&doc).unwrap();
    let p = cfg
        .for_peer(&Capabilities::v1(), "agent xenchan-agent 0.1.0")
        .unwrap();
    let eth = &p
        .config
        .network
        .as_ref()
        .unwrap()
        .ethernets
        .values()
        .next()
        .unwrap();
    assert_eq!(eth.gateway4, None);
    assert_eq!(eth.routes.len(), 1);
    assert_eq!(eth.routes[0].to, RouteTarget::Default);
    assert_eq!(eth.routes[0].via.to_string(), "192.0.2.1");
    let paths: Vec<&str> = p.unsupported.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["network.renderer"]);
    // A current peer gets the document as written.
    let p = cfg
        .for_peer(&Capabilities::ours(), "agent xenchan-agent 0.2.0")
        .unwrap();
    assert_eq!(p.config, cfg);
    assert!(p.unsupported.is_empty());
}
