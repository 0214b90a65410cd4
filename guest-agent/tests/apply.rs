//! Configuration pushed over the channel and applied under a temporary guest root:
//! hostname and keys with the right content, modes and ownership; user lines kept;
//! symlinks refused; missing users failed or created; re-pushes touch nothing.
//!
//! When the tests run as root (as in CI) the `cloud` user has uid 4242, so every file the
//! agent makes must really be chowned; otherwise it has the test's own uid.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use xenchan_agent::apply::{BLOCK_BEGIN, BLOCK_END};
use xenchan_protocol::{ItemStatus, message::ApplyResult};

async fn session(guest: &Guest) -> (Broker, Running) {
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    broker.handshake().await;
    (broker, agent)
}

fn statuses(r: &ApplyResult) -> Vec<(String, ItemStatus)> {
    r.items.iter().map(|i| (i.item.clone(), i.status)).collect()
}

fn reason<'a>(r: &'a ApplyResult, item: &str) -> &'a str {
    r.items
        .iter()
        .find(|i| i.item == item)
        .and_then(|i| i.reason.as_deref())
        .unwrap_or("")
}

fn keys_doc(hostname: &str, user: &str, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"{{"hostname":"{hostname}","users":[{{"name":"{user}","ssh_authorized_keys":[{}]}}]}}"#,
        keys.join(",")
    )
}

/// What identifies a file's version: inode (a rename makes a new one) and mtime.
fn version(path: &Path) -> (u64, (i64, i64)) {
    (std::fs::symlink_metadata(path).unwrap().ino(), mtime(path))
}

#[tokio::test]
async fn hostname_and_keys_are_applied_with_modes_and_ownership() {
    let guest = Guest::new();
    // The user's own file: odd spacing, a CRLF line, no final newline.
    let ssh = guest.path("home/cloud/.ssh");
    std::fs::create_dir(&ssh).unwrap();
    let own =
        b"# my keys\r\nssh-rsa AAAAB3Nza  me@laptop\nfrom=\"10.0.0.0/8\" ssh-ed25519 AAAAx other";
    std::fs::write(ssh.join("authorized_keys"), own).unwrap();
    std::os::unix::fs::chown(&ssh, Some(guest.uid), Some(guest.gid)).unwrap();
    std::os::unix::fs::chown(
        ssh.join("authorized_keys"),
        Some(guest.uid),
        Some(guest.gid),
    )
    .unwrap();
    let (mut broker, agent) = session(&guest).await;

    let result = broker
        .push(
            1,
            &config(&keys_doc("web1.example.com", "cloud", &[KEY_A, KEY_B])),
        )
        .await;
    assert_eq!(
        statuses(&result),
        vec![
            ("hostname".into(), ItemStatus::Applied),
            ("user:cloud".into(), ItemStatus::Applied)
        ]
    );
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "web1\n"
    );
    let hosts = std::fs::read_to_string(guest.path("etc/hosts")).unwrap();
    assert!(
        hosts.contains("127.0.1.1\tweb1.example.com web1\n"),
        "{hosts}"
    );
    assert!(hosts.contains("::1     localhost ip6-localhost ip6-loopback\n"));
    assert_eq!(hosts.matches("127.0.1.1").count(), 1);
    assert_eq!(mode(&guest.path("etc/hostname")), 0o644);

    let keys = std::fs::read(ssh.join("authorized_keys")).unwrap();
    let mut expected = own.to_vec();
    expected
        .extend_from_slice(format!("\n{BLOCK_BEGIN}\n{KEY_A}\n{KEY_B}\n{BLOCK_END}\n").as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&keys),
        String::from_utf8_lossy(&expected)
    );
    assert!(keys.starts_with(own), "the user's own lines changed");
    assert_eq!(mode(&ssh), 0o700);
    assert_eq!(mode(&ssh.join("authorized_keys")), 0o600);
    assert_eq!(owner(&ssh), (guest.uid, guest.gid));
    assert_eq!(owner(&ssh.join("authorized_keys")), (guest.uid, guest.gid));
    // No temporary files left behind.
    let stray: Vec<_> = std::fs::read_dir(&ssh)
        .unwrap()
        .chain(std::fs::read_dir(guest.path("etc")).unwrap())
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("xenchan-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // What was applied is remembered.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(guest.path("var/lib/xenchan-agent/applied.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["generation"], 1);
    assert_eq!(
        mode(&guest.path("var/lib/xenchan-agent/applied.json")),
        0o600
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn keys_go_to_a_new_ssh_folder_owned_by_the_user() {
    let guest = Guest::new();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h1", "cloud", &[KEY_A])))
        .await;
    assert!(result.all_ok(), "{result:?}");
    let ssh = guest.path("home/cloud/.ssh");
    assert_eq!(
        std::fs::read_to_string(ssh.join("authorized_keys")).unwrap(),
        format!("{BLOCK_BEGIN}\n{KEY_A}\n{BLOCK_END}\n")
    );
    assert_eq!((mode(&ssh), owner(&ssh)), (0o700, (guest.uid, guest.gid)));
    let file = ssh.join("authorized_keys");
    assert_eq!((mode(&file), owner(&file)), (0o600, (guest.uid, guest.gid)));
    if is_root() {
        assert_eq!(guest.uid, 4242, "root runs exercise chown to another uid");
    } else {
        eprintln!(
            "note: not root (euid {}): ownership was checked against our own uid only; run as root to exercise chown",
            nix::unistd::geteuid()
        );
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_repush_is_unchanged_and_touches_no_file() {
    let guest = Guest::new();
    let (mut broker, agent) = session(&guest).await;
    let doc = config(&keys_doc("web1.example.com", "cloud", &[KEY_A]));
    assert!(broker.push(1, &doc).await.all_ok());
    let files = [
        guest.path("etc/hostname"),
        guest.path("etc/hosts"),
        guest.path("home/cloud/.ssh"),
        guest.path("home/cloud/.ssh/authorized_keys"),
        guest.path("var/lib/xenchan-agent/applied.json"),
    ];
    let before: Vec<_> = files.iter().map(|f| version(f)).collect();
    let again = broker.push(1, &doc).await;
    assert_eq!(
        statuses(&again),
        vec![
            ("hostname".into(), ItemStatus::Unchanged),
            ("user:cloud".into(), ItemStatus::Unchanged)
        ]
    );
    let after: Vec<_> = files.iter().map(|f| version(f)).collect();
    assert_eq!(before, after, "a re-push touched a file");
    agent.stop().await.unwrap();

    // A restarted agent reports what it applied, so the broker need not push again.
    let pty = pty();
    guest.link_channel(2, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let agent = start(guest.opts());
    let (_, hello) = broker.handshake().await;
    let applied = hello.applied.expect("applied generation in hello");
    assert_eq!((applied.generation, applied.digest), (1, doc.digest()));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_symlinked_ssh_folder_is_refused() {
    let guest = Guest::new();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), guest.path("home/cloud/.ssh")).unwrap();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h", "cloud", &[KEY_A])))
        .await;
    assert_eq!(result.items[1].status, ItemStatus::Failed);
    assert!(
        reason(&result, "user:cloud").contains("symbolic link"),
        "{result:?}"
    );
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "wrote through the link"
    );
    // The other item still went through.
    assert_eq!(result.items[0].status, ItemStatus::Applied);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_symlinked_authorized_keys_is_refused() {
    let guest = Guest::new();
    let secret = guest.path("etc/shadow");
    std::fs::write(&secret, "root:$6$secret:19000:0:99999:7:::\n").unwrap();
    let ssh = guest.path("home/cloud/.ssh");
    std::fs::create_dir(&ssh).unwrap();
    std::os::unix::fs::symlink(&secret, ssh.join("authorized_keys")).unwrap();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h", "cloud", &[KEY_A])))
        .await;
    assert!(
        reason(&result, "user:cloud").contains("symbolic link"),
        "{result:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root:$6$secret:19000:0:99999:7:::\n"
    );
    assert!(
        std::fs::symlink_metadata(ssh.join("authorized_keys"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_hard_linked_authorized_keys_is_refused() {
    let guest = Guest::new();
    let ssh = guest.path("home/cloud/.ssh");
    std::fs::create_dir(&ssh).unwrap();
    let other = ssh.join("other-file");
    std::fs::write(&other, "private\n").unwrap();
    std::fs::hard_link(&other, ssh.join("authorized_keys")).unwrap();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h", "cloud", &[KEY_A])))
        .await;
    assert!(
        reason(&result, "user:cloud").contains("hard links"),
        "{result:?}"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_symlink_in_the_home_path_is_refused() {
    let guest = Guest::new();
    let real = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(real.path().join("cloud")).unwrap();
    std::fs::remove_dir(guest.path("home/cloud")).unwrap();
    std::fs::remove_dir(guest.path("home")).unwrap();
    std::os::unix::fs::symlink(real.path(), guest.path("home")).unwrap();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h", "cloud", &[KEY_A])))
        .await;
    let why = reason(&result, "user:cloud");
    assert!(
        why.contains("/home") && why.contains("symbolic link"),
        "{why}"
    );
    assert!(!real.path().join("cloud/.ssh").exists());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_user_is_a_failed_item() {
    let guest = Guest::new();
    let (mut broker, agent) = session(&guest).await;
    let result = broker
        .push(1, &config(&keys_doc("h", "ghost", &[KEY_A])))
        .await;
    assert_eq!(
        statuses(&result),
        vec![
            ("hostname".into(), ItemStatus::Applied),
            ("user:ghost".into(), ItemStatus::Failed)
        ]
    );
    assert!(reason(&result, "user:ghost").contains("does not exist"));
    assert!(!guest.path("home/ghost").exists());
    let passwd = std::fs::read_to_string(guest.path("etc/passwd")).unwrap();
    assert!(!passwd.contains("ghost"));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn create_true_makes_a_locked_user_with_a_fresh_uid() {
    let guest = Guest::new();
    // uid 1000 is taken by someone else already, gid 1001 by a group.
    let mut passwd = std::fs::read_to_string(guest.path("etc/passwd")).unwrap();
    passwd.push_str("taken:x:1000:1000::/home/taken:/bin/sh\n");
    std::fs::write(guest.path("etc/passwd"), &passwd).unwrap();
    let mut group = std::fs::read_to_string(guest.path("etc/group")).unwrap();
    group.push_str("taken:x:1000:\nstaff2:x:1001:\n");
    std::fs::write(guest.path("etc/group"), &group).unwrap();
    std::fs::write(guest.path("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    let (mut broker, agent) = session(&guest).await;
    let doc = config(&format!(
        r#"{{"users":[{{"name":"newbie","create":true,"ssh_authorized_keys":["{KEY_A}"]}}]}}"#
    ));
    let result = broker.push(1, &doc).await;
    if !is_root() {
        // The new user's home must belong to a uid that is not ours.
        eprintln!(
            "skipping the rest: creating a user needs root (euid {}); checked that it fails clearly",
            nix::unistd::geteuid()
        );
        assert_eq!(result.items[0].status, ItemStatus::Failed);
        assert!(
            reason(&result, "user:newbie").contains("not running as root"),
            "{result:?}"
        );
        agent.stop().await.unwrap();
        return;
    }
    assert_eq!(
        statuses(&result),
        vec![("user:newbie".into(), ItemStatus::Applied)]
    );
    let passwd = std::fs::read_to_string(guest.path("etc/passwd")).unwrap();
    let line = passwd.lines().find(|l| l.starts_with("newbie:")).unwrap();
    let f: Vec<&str> = line.split(':').collect();
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert!(uid > 1001, "uid {uid}: 1000 and 1001 are taken");
    assert_eq!(uid, gid);
    assert_eq!(f[5], "/home/newbie");
    let shadow = std::fs::read_to_string(guest.path("etc/shadow")).unwrap();
    assert!(shadow.starts_with("root:*:19000"));
    assert!(
        shadow.lines().any(|l| l.starts_with("newbie:!:")),
        "{shadow}"
    );
    let group = std::fs::read_to_string(guest.path("etc/group")).unwrap();
    assert!(group.contains(&format!("\nnewbie:x:{gid}:\n")), "{group}");
    let home = guest.path("home/newbie");
    assert_eq!((mode(&home), owner(&home)), (0o700, (uid, gid)));
    let keys = home.join(".ssh/authorized_keys");
    assert!(std::fs::read_to_string(&keys).unwrap().contains(KEY_A));
    assert_eq!(owner(&keys), (uid, gid));
    // Again: the user exists now; nothing is touched.
    let before = version(&guest.path("etc/passwd"));
    let again = broker.push(1, &doc).await;
    assert_eq!(
        statuses(&again),
        vec![("user:newbie".into(), ItemStatus::Unchanged)]
    );
    assert_eq!(version(&guest.path("etc/passwd")), before);
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/passwd"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("newbie:"))
            .count(),
        1
    );
    agent.stop().await.unwrap();
}

/// Makes `<root>/sys/class/net/<name>` with `mac`, as the guest's sysfs shows a NIC.
fn fake_nic(guest: &Guest, name: &str, mac: &str) {
    let d = guest.path(&format!("sys/class/net/{name}"));
    std::fs::create_dir_all(d.join("device")).unwrap();
    std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
}

const NET_DOC: &str = r#"{"hostname":"n1","network":{"version":2,"ethernets":{"eth0":{"match":{"macaddress":"00:16:3e:12:34:56"},"addresses":["192.0.2.10/24"],"routes":[{"to":"default","via":"192.0.2.1"}],"nameservers":{"addresses":["192.0.2.53"]}}}}}"#;

#[tokio::test]
async fn network_is_rendered_for_the_guests_manager_and_re_push_is_unchanged() {
    let guest = Guest::new();
    fake_nic(&guest, "enX0", "00:16:3e:12:34:56");
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    opts.network.renderer = xenchan_netconf::RendererChoice::Networkd;
    let agent = start(opts);
    broker.handshake().await;

    let doc = config(NET_DOC);
    let result = broker.push(4, &doc).await;
    assert_eq!(
        statuses(&result),
        vec![
            ("hostname".into(), ItemStatus::Applied),
            ("network:eth0".into(), ItemStatus::Applied),
            ("dns".into(), ItemStatus::Applied)
        ],
        "{result:?}"
    );
    let file = guest.path("etc/systemd/network/10-xenchan-eth0.network");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("MACAddress=00:16:3e:12:34:56"), "{text}");
    assert!(text.contains("Address=192.0.2.10/24"), "{text}");
    assert!(text.contains("DNS=192.0.2.53"), "{text}");
    let before = version(&file);

    let again = broker.push(4, &doc).await;
    assert!(
        again
            .items
            .iter()
            .all(|i| i.status == ItemStatus::Unchanged),
        "{again:?}"
    );
    assert_eq!(version(&file), before, "a re-push rewrote the file");

    // A document without the interface removes our file.
    let result = broker.push(5, &config(r#"{"hostname":"n1"}"#)).await;
    assert_eq!(
        statuses(&result),
        vec![("hostname".into(), ItemStatus::Unchanged)]
    );
    assert!(!file.exists());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn an_interface_the_guest_lacks_fails_naming_the_mac() {
    let guest = Guest::new();
    fake_nic(&guest, "enX0", "00:16:3e:00:00:99");
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    opts.network.renderer = xenchan_netconf::RendererChoice::Networkd;
    let agent = start(opts);
    broker.handshake().await;
    let result = broker.push(1, &config(NET_DOC)).await;
    let eth0 = result
        .items
        .iter()
        .find(|i| i.item == "network:eth0")
        .unwrap();
    assert_eq!(eth0.status, ItemStatus::Failed);
    assert!(
        reason(&result, "network:eth0").contains("00:16:3e:12:34:56"),
        "{eth0:?}"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn under_an_image_root_live_apply_is_never_attempted() {
    // The guest root has no network manager; live apply was asked for. Under an image
    // root the agent must not touch this machine's interfaces: the item fails instead.
    let guest = Guest::new();
    fake_nic(&guest, "lo", "00:16:3e:12:34:56");
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    opts.network.renderer = xenchan_netconf::RendererChoice::None;
    opts.network.live = xenchan_netconf::LiveMode::Always;
    let agent = start(opts);
    broker.handshake().await;
    let result = broker.push(1, &config(NET_DOC)).await;
    assert_eq!(
        result
            .items
            .iter()
            .find(|i| i.item == "network:eth0")
            .unwrap()
            .status,
        ItemStatus::Failed,
        "{result:?}"
    );
    assert!(reason(&result, "network:eth0").contains("live apply is off"));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn keys_of_a_user_dropped_from_the_document_are_removed() {
    let guest = Guest::new();
    let ssh = guest.path("home/cloud/.ssh");
    std::fs::create_dir(&ssh).unwrap();
    std::fs::write(ssh.join("authorized_keys"), "ssh-ed25519 AAAA mine\n").unwrap();
    std::os::unix::fs::chown(&ssh, Some(guest.uid), Some(guest.gid)).unwrap();
    std::os::unix::fs::chown(
        ssh.join("authorized_keys"),
        Some(guest.uid),
        Some(guest.gid),
    )
    .unwrap();
    let (mut broker, agent) = session(&guest).await;
    assert!(
        broker
            .push(1, &config(&keys_doc("h", "cloud", &[KEY_A])))
            .await
            .all_ok()
    );
    let result = broker.push(2, &config(r#"{"hostname":"h"}"#)).await;
    assert_eq!(
        statuses(&result),
        vec![("hostname".into(), ItemStatus::Unchanged)]
    );
    assert_eq!(
        std::fs::read_to_string(ssh.join("authorized_keys")).unwrap(),
        "ssh-ed25519 AAAA mine\n"
    );
    agent.stop().await.unwrap();
}
