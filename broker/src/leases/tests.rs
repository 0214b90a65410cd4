use std::collections::HashMap;
use std::convert::Infallible;

use super::*;

fn cfg(json: &str) -> GuestConfig {
    GuestConfig::from_json(json.as_bytes()).unwrap()
}

fn eth(addrs: &[&str]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#""network":{{"version":2,"ethernets":{{"eth0":{{"match":{{"macaddress":"00:16:3e:00:00:01"}},"addresses":[{}]}}}}}}"#,
        list.join(",")
    )
}

/// (kind, value, path) of each lease.
fn triples(leases: &[Lease]) -> Vec<(&str, &str, &str)> {
    leases
        .iter()
        .map(|l| (l.kind, l.value.as_str(), l.path.as_str()))
        .collect()
}

#[test]
fn leases_of_a_configuration() {
    type Case = (
        &'static str,
        String,
        bool,
        Vec<(&'static str, &'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        ("empty document", "{}".into(), true, vec![]),
        (
            "hostname lowercased when hostnames are leases",
            r#"{"hostname":"Web-1"}"#.into(),
            true,
            vec![("hostname", "web-1", "hostname")],
        ),
        (
            "hostname not leased when off",
            r#"{"hostname":"web-1"}"#.into(),
            false,
            vec![],
        ),
        (
            "addresses lose their prefix, in document order",
            format!("{{{}}}", eth(&["192.0.2.10/24", "2001:db8::5/64"])),
            false,
            vec![
                (
                    "address",
                    "192.0.2.10",
                    "network.ethernets.eth0.addresses[0]",
                ),
                (
                    "address",
                    "2001:db8::5",
                    "network.ethernets.eth0.addresses[1]",
                ),
            ],
        ),
        (
            "hostname first, then addresses",
            format!(r#"{{"hostname":"h",{}}}"#, eth(&["198.51.100.7/32"])),
            true,
            vec![
                ("hostname", "h", "hostname"),
                (
                    "address",
                    "198.51.100.7",
                    "network.ethernets.eth0.addresses[0]",
                ),
            ],
        ),
    ];
    for (what, json, hostname_leases, want) in cases {
        let got = leases_of(&cfg(&json), hostname_leases);
        assert_eq!(triples(&got), want, "{what}");
    }
}

fn lease(kind: &'static str, value: &str) -> Lease {
    Lease {
        kind,
        value: value.into(),
        path: format!("{kind}.{value}"),
    }
}

/// (what, asking domain, wanted, expected conflict as (lease value, holder))
type ConflictCase = (
    &'static str,
    &'static str,
    Vec<Lease>,
    Option<(&'static str, &'static str)>,
);

#[test]
fn conflicts_with_other_holders_only() {
    let held: HashMap<(&str, &str), &str> = [
        (("address", "192.0.2.1"), "one"),
        (("hostname", "web"), "two"),
    ]
    .into_iter()
    .collect();
    let cases: Vec<ConflictCase> = vec![
        ("nothing wanted", "x", vec![], None),
        ("free lease", "x", vec![lease("address", "192.0.2.9")], None),
        (
            "own lease again",
            "one",
            vec![lease("address", "192.0.2.1")],
            None,
        ),
        (
            "held by another",
            "x",
            vec![lease("address", "192.0.2.9"), lease("hostname", "web")],
            Some(("web", "two")),
        ),
        (
            "the first conflict in document order",
            "two",
            vec![
                lease("hostname", "web"),
                lease("address", "192.0.2.1"),
                lease("hostname", "other"),
            ],
            Some(("192.0.2.1", "one")),
        ),
        (
            "same value, other kind is no conflict",
            "x",
            vec![lease("hostname", "192.0.2.1")],
            None,
        ),
    ];
    for (what, name, wanted, want) in cases {
        let got = first_conflict(name, &wanted, |l| {
            Ok::<_, Infallible>(
                held.get(&(l.kind, l.value.as_str()))
                    .map(|h| (*h).to_string()),
            )
        })
        .unwrap();
        let got = got
            .as_ref()
            .map(|c| (c.lease.value.as_str(), c.holder.as_str()));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn lookup_failures_stop_the_check() {
    let mut asked = 0;
    let r = first_conflict(
        "x",
        &[lease("address", "192.0.2.1"), lease("address", "192.0.2.2")],
        |_| {
            asked += 1;
            Err("store unavailable")
        },
    );
    assert_eq!(r, Err("store unavailable"));
    assert_eq!(asked, 1, "no lookup after a failure");
}

#[test]
fn conflicts_read_as_sentences() {
    let c = LeaseConflict {
        lease: lease("address", "192.0.2.1"),
        holder: "one".into(),
    };
    assert_eq!(c.to_string(), "address 192.0.2.1 is leased to domain one");
}
