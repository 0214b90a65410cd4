//! `xenchan-agent seal` on a temporary template root, through the real binary: what it
//! clears, what it keeps, one report line per thing, and a second run that finds
//! everything already done.

use std::path::Path;
use std::process::Command;

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn seal(root: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xenchan-agent"))
        .args(["seal", "--root"])
        .arg(root)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn seal_clears_identity_keys_state_leases_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    // dbus's copy: systemd would initialise the emptied /etc/machine-id from it.
    put(
        root,
        "var/lib/dbus/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    put(root, "etc/ssh/ssh_host_ed25519_key", "private");
    put(root, "etc/ssh/ssh_host_ed25519_key.pub", "public");
    put(root, "etc/ssh/sshd_config", "keep me");
    put(root, "var/lib/xenchan-agent/applied.json", "{}");
    put(root, "var/lib/dhcp/dhclient.eth0.leases", "lease");
    put(
        root,
        "var/lib/NetworkManager/internal-abc-eth0.lease",
        "lease",
    );
    put(root, "var/lib/NetworkManager/NetworkManager.state", "keep");
    put(root, "var/lib/systemd/random-seed", "seed");
    let (code, out) = seal(root);
    assert_eq!(code, 0, "{out}");
    for line in [
        "machine id: emptied /etc/machine-id",
        "D-Bus machine id: removed /var/lib/dbus/machine-id",
        "ssh host keys: removed /etc/ssh/ssh_host_ed25519_key",
        "ssh host keys: removed /etc/ssh/ssh_host_ed25519_key.pub",
        "agent applied state: removed",
        "dhclient leases: removed /var/lib/dhcp/dhclient.eth0.leases",
        "NetworkManager leases: removed /var/lib/NetworkManager/internal-abc-eth0.lease",
        "systemd-networkd leases: none in /run/systemd/netif/leases (already absent)",
        "random seed: removed /var/lib/systemd/random-seed",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
    assert!(!root.join("var/lib/dbus/machine-id").exists());
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(root.join("etc/ssh/sshd_config").exists());
    assert!(
        root.join("var/lib/NetworkManager/NetworkManager.state")
            .exists()
    );
    assert!(!root.join("var/lib/xenchan-agent/applied.json").exists());

    // Where dbus's copy is a symlink to /etc/machine-id (newer installs), it is left.
    std::os::unix::fs::symlink("/etc/machine-id", root.join("var/lib/dbus/machine-id")).unwrap();
    let (code, out) = seal(root);
    assert_eq!(code, 0);
    assert!(
        out.contains("machine id: /etc/machine-id already empty"),
        "{out}"
    );
    assert!(
        out.contains("D-Bus machine id: none in /var/lib/dbus (already absent)"),
        "{out}"
    );
    assert!(root.join("var/lib/dbus/machine-id").is_symlink());
    assert!(
        out.contains("ssh host keys: none in /etc/ssh (already absent)"),
        "{out}"
    );
}
