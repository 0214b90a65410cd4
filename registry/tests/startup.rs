//! `startup_check`: what the broker and the agent log when they start.

use std::fs;

use xenchan_registry::{XENCHAN_CHANNEL, startup_check};

#[test]
fn xenchans_own_name_is_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(startup_check(XENCHAN_CHANNEL, tmp.path()).is_empty());
}

#[test]
fn unregistered_and_poor_names_are_warned() {
    let tmp = tempfile::tempdir().unwrap();
    let w = startup_check("cloudagent", tmp.path());
    assert!(w[0].contains("is not registered"), "{w:?}");
    assert!(
        w[0].contains("xenchan registry add --name cloudagent"),
        "{w:?}"
    );
    assert!(
        w.iter().any(|l| l.contains("no reverse-DNS domain part")),
        "{w:?}"
    );
}

#[test]
fn another_programs_name_is_warned() {
    let tmp = tempfile::tempdir().unwrap();
    let w = startup_check("org.qemu.guest_agent.0", tmp.path());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("registered to another program"), "{w:?}");
}

#[test]
fn locally_registered_names_are_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("ours"),
        "N: org.example.cloud.agent.1\nC: us\nD: our xenchan deployment\n",
    )
    .unwrap();
    assert!(startup_check("org.example.cloud.agent.1", tmp.path()).is_empty());
}

#[test]
fn invalid_names_and_broken_registries_warn_but_do_not_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let w = startup_check("a,b", tmp.path());
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("is invalid"), "{w:?}");

    fs::write(tmp.path().join("broken"), "garbage\n").unwrap();
    let w = startup_check(XENCHAN_CHANNEL, tmp.path());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("line 1: expected a field line"), "{w:?}");
    assert!(w[0].contains("built-in entries only"), "{w:?}");
}

#[test]
fn prefix_clashes_are_warned() {
    let tmp = tempfile::tempdir().unwrap();
    let w = startup_check("org.qemu.guest_agent", tmp.path());
    assert!(
        w.iter()
            .any(|l| l.contains("is a prefix of registered `org.qemu.guest_agent.0`")),
        "{w:?}"
    );
}
