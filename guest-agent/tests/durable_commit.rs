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

/// A guest root with the NIC the document's network item matches (by MAC).
fn guest_with_nic() -> Guest {
    let guest = Guest::new();
    let nic = guest.path("sys/class/net/enX0");
    std::fs::create_dir_all(nic.join("device")).unwrap();
    std::fs::write(nic.join("address"), format!("{MAC}\n")).unwrap();
    guest
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
    let dirs: std::collections::BTreeSet<&Path> =
        files.iter().map(|f| f.parent().unwrap()).collect();
    for dir in dirs {
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
    let guest = guest_with_nic();
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

/// A push that finds every file already as it should be writes nothing, yet the
/// temporary files a killed agent left beside those files go: a new agent removes them
/// the first time it reads a file in their folder, not only when it next writes there
/// (a leftover beside a file that never changes again would stay for good).
#[tokio::test]
async fn leftovers_beside_unchanged_files_are_removed_by_the_next_agent() {
    let guest = guest_with_nic();
    let p = pty();
    let mut agent = spawn_agent(&guest, &p);
    let mut broker = Broker::new(p);
    broker.handshake().await;
    assert!(broker.push(1, &config(&doc(0))).await.all_ok());
    agent.kill();

    // What a kill -9 between staging and renaming leaves: a temporary file of a process
    // that is gone, beside each file of the push.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let files = files(&guest);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        let tmp = f.with_file_name(format!(".{name}.xenchan-tmp-{dead}-0"));
        std::fs::write(&tmp, "half a file").unwrap();
    }
    let before: Vec<_> = files[..4].iter().map(|f| version(f)).collect();
    assert_eq!(strays(&files).len(), files.len());

    // The same document under a new generation: every item unchanged.
    let p = pty();
    let _agent = spawn_agent(&guest, &p);
    let mut broker = Broker::new(p);
    broker.handshake().await;
    let r = broker.push(2, &config(&doc(0))).await;
    assert_eq!(statuses(&r), [ItemStatus::Unchanged; 3], "{r:?}");
    let after: Vec<_> = files[..4].iter().map(|f| version(f)).collect();
    assert_eq!(before, after, "an unchanged file was rewritten");
    assert_eq!(strays(&files), Vec::<PathBuf>::new());
}

/// The files a push replaces are held open until its result is out (freeing them can
/// wait on the disk), then let go: an agent that kept them would hold every old version
/// of the guest's files, deleted but still taking space, until its next push.
#[tokio::test]
async fn the_files_a_push_replaced_are_let_go_once_its_result_is_out() {
    let guest = guest_with_nic();
    let p = pty();
    let agent = spawn_agent(&guest, &p);
    let mut broker = Broker::new(p);
    broker.handshake().await;
    assert!(broker.push(1, &config(&doc(0))).await.all_ok());
    assert!(broker.push(2, &config(&doc(1))).await.all_ok());
    let fds = PathBuf::from(format!("/proc/{}/fd", agent.0.id()));
    let held = || -> Vec<PathBuf> {
        std::fs::read_dir(&fds)
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|t| {
                        t.starts_with(&guest.root) && t.to_string_lossy().ends_with(" (deleted)")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("the agent to let go of the files push 2 replaced", || {
        held().is_empty()
    })
    .await;
}

/// The real agent binary, killed (SIGKILL) when dropped, so that a failing test leaves
/// no agent behind.
struct Agent(std::process::Child);

impl Agent {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real agent binary on `pty`, under `guest`'s root: this build's, or the one
/// `XENCHAN_AGENT_BIN` names (a static or `--profile agent` build, say).
fn spawn_agent(guest: &Guest, pty: &Pty) -> Agent {
    let bin = std::env::var_os("XENCHAN_AGENT_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| env!("CARGO_BIN_EXE_xenchan-agent").into(), PathBuf::from);
    let child = std::process::Command::new(bin)
        .arg("--device")
        .arg(&pty.path)
        .arg("--root")
        .arg(&guest.root)
        .arg("--state-dir")
        .arg(guest.path("var/lib/xenchan-agent"))
        .arg("--registry-dir")
        .arg(guest.path("etc/xenchan/registry.d"))
        .args(["--network-renderer", "networkd", "--no-live-hostname"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn xenchan-agent");
    Agent(child)
}

/// The four files of the document (the state file aside).
fn contents(guest: &Guest) -> Vec<String> {
    files(guest)[..4]
        .iter()
        .map(|f| String::from_utf8(std::fs::read(f).unwrap()).unwrap())
        .collect()
}

fn variant(generation: u64) -> usize {
    usize::from(generation % 2 == 1)
}

/// SIGKILL at spread-out moments of a push, over and over: every file is always one
/// variant's complete content (never a mix, never cut short), the state file always
/// parses, never names a generation whose files are not all in place, and never forgets
/// one whose result reached the broker. The moments are spread over the push's own
/// duration, measured first, so that some kills land between the first rename and the
/// state file's (the run says how many left temporary files behind: killed mid-commit).
#[tokio::test]
async fn kill_9_at_any_moment_of_a_push_leaves_old_or_new_files_and_keeps_what_was_acknowledged() {
    let guest = guest_with_nic();

    // What each variant's files hold, and how long a push takes here.
    let mut expected = vec![Vec::new(); 2];
    let mut took = Vec::new();
    let pty0 = pty();
    let mut agent = spawn_agent(&guest, &pty0);
    let mut broker = Broker::new(pty0);
    broker.handshake().await;
    for generation in 1..=6 {
        let t = std::time::Instant::now();
        let r = broker
            .push(generation, &config(&doc(variant(generation))))
            .await;
        took.push(t.elapsed());
        assert!(r.all_ok(), "{r:?}");
        if generation <= 2 {
            expected[variant(generation)] = contents(&guest);
        }
    }
    agent.kill();
    assert_ne!(expected[0], expected[1]);
    // The median: one push slowed down by a busy machine must not stretch every delay.
    took.sort();
    let took = took[took.len() / 2];

    let mut acked = 6;
    let mut generation = 6;
    let mut mid_commit = 0;
    let rounds = 40;
    for round in 0..rounds {
        // Start, handshake, push the next generation, kill after a delay within it.
        let p = pty();
        let mut agent = spawn_agent(&guest, &p);
        let mut broker = Broker::new(p);
        let (_, hello) = broker.handshake().await;
        let applied = hello
            .applied
            .expect("applied generation in the hello")
            .generation;
        assert!(
            applied >= acked,
            "round {round}: generation {acked} was acknowledged, the agent reports {applied}"
        );
        if applied != generation {
            // The last push was killed before its state file: the broker pushes again.
            assert!(
                broker
                    .push(generation, &config(&doc(variant(generation))))
                    .await
                    .all_ok()
            );
        }
        assert_eq!(
            contents(&guest),
            expected[variant(generation)],
            "round {round}"
        );
        acked = generation;

        generation += 1;
        let nonce = broker.rules.current().cloned().unwrap();
        let push = xenchan_protocol::message::ConfigPush::new(
            generation,
            config(&doc(variant(generation))),
        );
        broker
            .send(&xenchan_protocol::Envelope::new(
                xenchan_protocol::Role::Broker,
                Some(nonce.clone()),
                xenchan_protocol::Body::Config(push),
            ))
            .await;
        let delay = took.mul_f64(f64::from(round) / f64::from(rounds) * 1.5);
        std::thread::sleep(delay);
        agent.kill();
        // A result already written before the kill reached the broker: acknowledged.
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        while let Some(m) = broker.next_until(until).await {
            if m.session.as_ref() == Some(&nonce)
                && matches!(&m.body, xenchan_protocol::Body::Result(r) if r.generation == generation)
            {
                acked = generation;
            }
        }

        // On disk: each file one variant's complete content; the state file whole.
        let now = contents(&guest);
        for (i, f) in now.iter().enumerate() {
            assert!(
                *f == expected[0][i] || *f == expected[1][i],
                "round {round}: {} is neither variant: {f:?}",
                files(&guest)[i].display(),
            );
        }
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files(&guest)[4]).unwrap())
                .expect("the state file parses");
        let saved = state["generation"].as_u64().unwrap();
        assert!(
            saved >= acked,
            "round {round}: acknowledged {acked}, saved {saved}"
        );
        if saved == generation {
            assert_eq!(
                now,
                expected[variant(generation)],
                "round {round}: state before files"
            );
        }
        // Left in place: the next agent removes them (below).
        if !strays(&files(&guest)).is_empty() {
            mid_commit += 1;
        }
    }
    // Temporary files of killed agents do not pile up in /etc or ~/.ssh: the next agent
    // removes them the first time it reads or writes a file in each folder.
    let left_by_kills = strays(&files(&guest));
    let p = pty();
    let _agent = spawn_agent(&guest, &p);
    let mut broker = Broker::new(p);
    broker.handshake().await;
    generation += 1;
    assert!(
        broker
            .push(generation, &config(&doc(variant(generation))))
            .await
            .all_ok()
    );
    assert_eq!(
        strays(&files(&guest)),
        Vec::<PathBuf>::new(),
        "after a push by a new agent (the kills had left {left_by_kills:?})"
    );
    eprintln!(
        "median push {took:?}; {rounds} kills, {mid_commit} left temporary files (killed while staging or committing)"
    );
}
