//! The data shipped with the crate.

use xenchan_registry::{
    BUILTIN_TEXT, Origin, Registry, XENCHAN_CHANNEL, parse, poor_reasons, validate_name,
};

#[test]
fn builtin_text_parses_and_has_every_expected_name() {
    let entries = parse(BUILTIN_TEXT).expect("built-in data parses");
    let names: Vec<&str> = entries.iter().map(xenchan_registry::Entry::name).collect();
    for expected in [
        "org.xenproject.guest.clipboard.0.1",
        "org.qemu.guest_agent.0",
        "com.redhat.spice.0",
        "org.spice-space.webdav.0",
        "org.spice-space.stream.0",
        "org.libguestfs.channel.0",
        "com.redhat.rhevm.vdsm",
        "ovirt-guest-agent.0",
        "org.opensuse.twopence.0",
        XENCHAN_CHANNEL,
    ] {
        assert!(names.contains(&expected), "{expected} missing");
    }
    assert_eq!(Registry::builtin().len(), entries.len());
}

#[test]
fn xenchan_entry_is_as_decided() {
    assert_eq!(XENCHAN_CHANNEL, "org.xenchan.agent.1");
    let registry = Registry::builtin();
    let e = registry.lookup(XENCHAN_CHANNEL).unwrap();
    assert_eq!(e.contact(), "xenchan developers");
    assert_eq!(
        e.description(),
        "xenchan configuration push (dom0 broker <-> guest agent)"
    );
    assert!(poor_reasons(XENCHAN_CHANNEL).is_empty());
}

#[test]
fn names_from_the_wild_cite_their_source() {
    for e in Registry::builtin().entries() {
        if e.name() == XENCHAN_CHANNEL || e.name() == "org.xenproject.guest.clipboard.0.1" {
            continue;
        }
        assert!(
            e.description().contains("Source: "),
            "{} has no Source: in its D:",
            e.name()
        );
    }
}

#[test]
fn builtin_names_are_valid_and_do_not_clash_with_each_other() {
    let registry = Registry::builtin();
    for r in registry.records() {
        assert_eq!(r.origin, Origin::Builtin);
        let name = r.entry.name();
        validate_name(name).unwrap();
        assert_eq!(registry.extensions_of(name).count(), 0, "{name}");
        assert_eq!(registry.prefixes_of(name).count(), 0, "{name}");
        for other in registry.entries() {
            if other.name() != name {
                assert!(!other.name().eq_ignore_ascii_case(name), "{name}");
            }
        }
    }
}
