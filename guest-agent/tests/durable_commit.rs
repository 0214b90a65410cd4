//! One push, one durable commit: the bench's document (hostname, an address written as a
//! systemd-networkd file, three ssh keys) pushed, re-pushed and changed under a temporary
//! guest root. A re-push rewrites no file (same inode, same mtime, state file included);
//! a changed push replaces every file whole and leaves no temporary file behind.
//!
//! Measuring: each push is bracketed by a failed `stat` of `/nonexistent/xenchan-mark-*`
//! so that `strace -f -e trace=fsync,fdatasync,rename,renameat,renameat2,openat,newfstatat`
//! of this test can be cut into pushes; with `XENCHAN_MEASURE_JBD2=/proc/fs/jbd2/<dev>/info`
//! (and `TMPDIR` on that file system) the journal commits of each push are printed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use xenchan_protocol::ItemStatus;
use xenchan_protocol::message::ApplyResult;

const MAC: &str = "00:16:3e:12:34:56";

const KEYS: [[&str; 3]; 2] = [
    [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJH5HonkE48nrdI6Of2SgaIaUX3ZJMyhVJ9doHZ0z5Kw bench-1",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuGvKyBQL0U8ZIEE0dhaJFmKkQlglSDHu9aUxXKUVn4 bench-2",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMv58Npo5yGw3tLj0kW4e8DwT2VSesTD5n+ChDp5Lvgk bench-3",
    ],
    [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINt+9aHhL/s9a92KenOIf2Q04pWTWEu/U2lxNMaP6uC2 bench-4",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUlSes5Q1qFWi+M/GMH5lsix+kTcIo0sNjLucIECADV bench-5",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOqUwDzEL05XwA1joLMC7vMaUifU6HYTxXqpXkHIJIFv bench-6",
    ],
];

/// The bench's end-to-end document, variant `v` (0 or 1): the two differ in every item.
fn doc(v: usize) -> String {
    let (host, addr) = [
        ("bench-a.example.net", "198.51.100.10/24"),
        ("bench-b.example.net", "203.0.113.10/24"),
    ][v];
    let keys: Vec<String> = KEYS[v].iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"{{"hostname":"{host}","network":{{"version":2,"ethernets":{{"eth0":{{"match":{{"macaddress":"{MAC}"}},"addresses":["{addr}"]}}}}}},"users":[{{"name":"cloud","ssh_authorized_keys":[{}]}}]}}"#,
        keys.join(",")
    )
}

/// Every file the document touches.
fn files(guest: &Guest) -> Vec<PathBuf> {
    [
        "etc/hostname",
        "etc/hosts",
        "etc/systemd/network/10-xenchan-eth0.network",
        "home/cloud/.ssh/authorized_keys",
        "var/lib/xenchan-agent/applied.json",
    ]
    .iter()
    .map(|f| guest.path(f))
    .collect()
}

/// What identifies a file's version: inode (a rename makes a new one) and mtime.
fn version(path: &Path) -> (u64, (i64, i64)) {
    (std::fs::symlink_metadata(path).unwrap().ino(), mtime(path))
}

/// A marker for strace (see the module comment); the path never exists.
fn mark(label: &str) {
    let _ = std::fs::symlink_metadata(format!("/nonexistent/xenchan-mark-{label}"));
}

/// The journal's transaction count, when asked to measure.
fn journal_commits() -> Option<u64> {
    let info = std::env::var_os("XENCHAN_MEASURE_JBD2")?;
    let text = std::fs::read_to_string(info).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

async fn push(broker: &mut Broker, label: &str, generation: u64, v: usize) -> ApplyResult {
    let before = journal_commits();
    mark(&format!("{label}-begin"));
    let r = broker.push(generation, &config(&doc(v))).await;
    mark(&format!("{label}-end"));
    if let (Some(a), Some(b)) = (before, journal_commits()) {
        eprintln!("journal commits during push {label}: {}", b - a);
    }
    r
}

fn statuses(r: &ApplyResult) -> Vec<ItemStatus> {
    r.items.iter().map(|i| i.status).collect()
}

/// Names in the folders of `files` that are not the files themselves (temporaries).
fn strays(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        let dir = f.parent().unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("xenchan-")
                && !files.contains(&p)
            {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_repush_rewrites_nothing_and_a_change_replaces_every_file() {
    let guest = Guest::new();
    let nic = guest.path("sys/class/net/enX0");
    std::fs::create_dir_all(nic.join("device")).unwrap();
    std::fs::write(nic.join("address"), format!("{MAC}\n")).unwrap();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    opts.network.renderer = xenchan_netconf::RendererChoice::Networkd;
    let agent = start(opts);
    broker.handshake().await;

    let first = push(&mut broker, "first", 1, 0).await;
    assert_eq!(statuses(&first), [ItemStatus::Applied; 3], "{first:?}");
    let files = files(&guest);
    let before: Vec<_> = files.iter().map(|f| version(f)).collect();

    // The same document again: nothing is written, the state file included.
    let again = push(&mut broker, "repeat", 1, 0).await;
    assert_eq!(statuses(&again), [ItemStatus::Unchanged; 3], "{again:?}");
    let after: Vec<_> = files.iter().map(|f| version(f)).collect();
    assert_eq!(before, after, "a re-push rewrote a file");

    // Every item changes: every file is replaced (a new inode), none is left half done.
    let changed = push(&mut broker, "change", 2, 1).await;
    assert_eq!(statuses(&changed), [ItemStatus::Applied; 3], "{changed:?}");
    for (f, (ino, _)) in files.iter().zip(&before) {
        assert_ne!(version(f).0, *ino, "{} was not replaced", f.display());
    }
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "bench-b\n"
    );
    let keys = std::fs::read_to_string(guest.path("home/cloud/.ssh/authorized_keys")).unwrap();
    assert!(KEYS[1].iter().all(|k| keys.contains(k)), "{keys}");
    assert!(!keys.contains(KEYS[0][0]), "{keys}");
    let net = std::fs::read_to_string(&files[2]).unwrap();
    assert!(net.contains("Address=203.0.113.10/24"), "{net}");
    let state = std::fs::read_to_string(&files[4]).unwrap();
    assert!(state.contains("\"generation\": 2"), "{state}");
    assert_eq!(
        strays(&files),
        Vec::<PathBuf>::new(),
        "temporary files left"
    );
    agent.stop().await.unwrap();
}
