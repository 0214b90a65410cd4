//! `check` and `lookup` semantics.

use xenchan_registry::{
    ConflictKind, Entry, NameError, Origin, PoorReason, Registered, Registry, Verdict, check,
};

fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.insert(Registered {
        entry: Entry::new("org.example.cloud.agent.2", "Cloud team", "v2 of the agent").unwrap(),
        origin: Origin::File("/etc/xenchan/registry.d/cloud".into()),
        line: 3,
    });
    r
}

#[test]
fn xl_syntax_characters_are_invalid() {
    let r = registry();
    for (name, ch) in [
        ("org.example.a,b.1", ','),
        ("org.example.a=b.1", '='),
        ("org.example.\"quoted\".1", '"'),
    ] {
        match check(&r, name).verdict {
            Verdict::Invalid(NameError::XlSyntax { ch: got, .. }) => assert_eq!(got, ch),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        check(&r, "").verdict,
        Verdict::Invalid(NameError::Empty)
    ));
    assert!(matches!(
        check(&r, "../etc/passwd").verdict,
        Verdict::Invalid(NameError::Slash)
    ));
}

#[test]
fn names_without_a_domain_part_are_poor() {
    let r = registry();
    let c = check(&r, "myagent.1");
    assert_eq!(c.verdict, Verdict::Poor(vec![PoorReason::NoDomainPart]));
    assert!(c.to_string().starts_with("poor: `myagent.1`"));
    assert!(c.to_string().contains("no reverse-DNS domain part"));
    assert_eq!(
        check(&r, "org.example.other.agent").verdict,
        Verdict::Poor(vec![PoorReason::NoVersionPart])
    );
}

#[test]
fn good_unregistered_names_are_ok() {
    let c = check(&registry(), "org.example.other.agent.1");
    assert!(c.is_ok(), "{c}");
    assert!(c.to_string().starts_with("ok: "));
}

#[test]
fn clashes_are_reported_with_the_registered_entry() {
    let r = registry();
    let Verdict::Clash(conflicts) = check(&r, "org.qemu.guest_agent.0").verdict else {
        panic!("registered name should clash");
    };
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].kind, ConflictKind::Same);
    assert_eq!(
        conflicts[0].registered.entry.name(),
        "org.qemu.guest_agent.0"
    );

    let Verdict::Clash(conflicts) = check(&r, "org.qemu.guest_agent").verdict else {
        panic!("prefix of a registered name should clash");
    };
    assert_eq!(conflicts[0].kind, ConflictKind::PrefixOf);

    let c = check(&r, "org.qemu.guest_agent.0.1");
    let Verdict::Clash(conflicts) = &c.verdict else {
        panic!("extension of a registered name should clash");
    };
    assert_eq!(conflicts[0].kind, ConflictKind::Extends);
    assert!(
        c.to_string()
            .contains("extends registered `org.qemu.guest_agent.0`")
    );

    // A string prefix that is not a label prefix is no clash.
    assert!(check(&r, "org.qemu.guest.1").is_ok());

    let c = check(&r, "org.example.cloud.agent.2");
    assert!(
        c.to_string().contains("/etc/xenchan/registry.d/cloud:3"),
        "{c}"
    );
}

#[test]
fn case_and_version_variants_are_poor_not_clashes() {
    let r = registry();
    assert_eq!(
        check(&r, "org.qemu.Guest_Agent.0").verdict,
        Verdict::Poor(vec![PoorReason::CaseVariant {
            registered: "org.qemu.guest_agent.0".into()
        }])
    );
    assert_eq!(
        check(&r, "org.example.cloud.agent.3").verdict,
        Verdict::Poor(vec![PoorReason::OtherVersion {
            registered: "org.example.cloud.agent.2".into()
        }])
    );
}

#[test]
fn lookup_is_exact_and_case_sensitive() {
    let r = registry();
    assert!(r.lookup("org.qemu.guest_agent.0").is_some());
    assert!(r.lookup("org.qemu.Guest_agent.0").is_none());
    assert!(r.lookup("ORG.QEMU.GUEST_AGENT.0").is_none());
    assert!(r.lookup("org.qemu.guest_agent").is_none());
    assert!(r.lookup("org.qemu.guest_agent.0 ").is_none());
    assert!(r.lookup(" org.qemu.guest_agent.0").is_none());
}
