//! Reconciliation in the guest, through the real `xenchan-agent` binary over a pty, in
//! network namespaces (root only; skipped with the reason otherwise):
//!
//! - a pushed interface whose MAC the guest lacks is applied when a link with that MAC
//!   appears (rtnetlink notifications), answered with a `result` of the same
//!   generation; a flood of links costs a bounded number of applies;
//! - live-only addresses (no network manager) are put back when the agent starts after
//!   a "reboot" (a fresh namespace), with no broker, also for an interface that appears
//!   only after the agent started;
//!
//! and, in-process: a burst of hostname pushes gives a bounded number of facts frames,
//! the last one carrying the last hostname.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::time::Instant;
use xenchan_protocol::message::{ApplyResult, GuestFacts};
use xenchan_protocol::{Body, GuestConfig, ItemStatus};

const MAC_A: &str = "00:16:3e:5a:00:01";
const MAC_B: &str = "00:16:3e:5a:00:02";

/// Why the namespace tests cannot run here, if they cannot.
fn netns_unusable() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, rtnetlink)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs `ip` (iproute2)".into()),
    }
}

macro_rules! skip_unless_netns {
    () => {
        if let Some(why) = netns_unusable() {
            println!("SKIP: {why}");
            return;
        }
    };
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("xc-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A veth pair `name`/`peer` with `mac` on `name`.
    fn add_link(&self, name: &str, mac: &str, peer: &str) {
        self.ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", peer,
        ]);
    }

    fn addresses(&self, dev: &str) -> String {
        self.ip(&["-o", "addr", "show", "dev", dev])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The agent binary, stopped with SIGTERM on drop; its log goes to a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(guest: &Guest, device: &Path, netns: &Netns) -> Agent {
        let log = guest.path("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_xenchan-agent"))
            .arg("--device")
            .arg(device)
            .arg("--root")
            .arg(&guest.root)
            .arg("--state-dir")
            .arg(guest.path("var/lib/xenchan-agent"))
            .arg("--registry-dir")
            .arg(guest.path("etc/xenchan/registry.d"))
            .arg("--no-live-hostname")
            .args(["--network-renderer", "none", "--network-live", "always"])
            .arg("--netns")
            .arg(netns.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().cast_signed());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the agent did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn net_doc(ifaces: &[(&str, &str, &str)]) -> GuestConfig {
    let eths: Vec<String> = ifaces
        .iter()
        .map(|(id, mac, addr)| {
            format!(r#""{id}":{{"match":{{"macaddress":"{mac}"}},"addresses":["{addr}"]}}"#)
        })
        .collect();
    config(&format!(
        r#"{{"network":{{"version":2,"ethernets":{{{}}}}}}}"#,
        eths.join(",")
    ))
}

fn status_of(r: &ApplyResult, item: &str) -> (ItemStatus, String) {
    let i = r
        .items
        .iter()
        .find(|i| i.item == item)
        .unwrap_or_else(|| panic!("no item {item} in {r:?}"));
    (i.status, i.reason.clone().unwrap_or_default())
}

async fn next_result(
    broker: &mut Broker,
    generation: u64,
    within: Duration,
) -> Option<ApplyResult> {
    let deadline = Instant::now() + within;
    while let Some(m) = broker.next_until(deadline).await {
        if let Body::Result(r) = m.body
            && r.generation == generation
        {
            return Some(r);
        }
    }
    None
}

/// Waits until `cond` holds on what `probe` returns, polling (the namespace's addresses
/// are only visible to us that way).
async fn until(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> String,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let now = probe();
        if cond(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last seen:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_interface_that_appears_after_the_push_is_applied_and_reported() {
    skip_unless_netns!();
    let guest = Guest::new();
    let ns = Netns::new("appear");
    let pty = pty();
    let mut agent = Agent::start(&guest, &pty.path, &ns);
    let mut broker = Broker::new(pty);
    broker.handshake().await;

    // e0's NIC is not there yet, e1's never comes.
    let doc = net_doc(&[
        ("e0", MAC_A, "192.0.2.50/24"),
        ("e1", MAC_B, "198.51.100.7/24"),
    ]);
    let r = broker.push(1, &doc).await;
    let (s, why) = status_of(&r, "network:e0");
    assert_eq!(s, ItemStatus::Failed, "{why}");
    assert!(why.contains(MAC_A), "{why}");

    // The NIC is hotplugged. The retries' backoff starts at 5 s (first attempt 2.5-5 s
    // after the push): an answer well within that comes from the link notification.
    let plugged = Instant::now();
    ns.add_link("xcw0", MAC_A, "xcp0");
    let r = loop {
        let r = next_result(&mut broker, 1, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no result after the link appeared:\n{}", agent.log()));
        if status_of(&r, "network:e0").0 == ItemStatus::Applied {
            break r;
        }
    };
    let took = plugged.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "applied {took:?} after the link appeared"
    );
    assert_eq!(status_of(&r, "network:e1").0, ItemStatus::Failed);
    assert!(
        agent
            .log()
            .contains("an interface the configuration names appeared"),
        "{}",
        agent.log()
    );
    let addrs = ns.addresses("xcw0");
    assert!(addrs.contains("192.0.2.50/24"), "{addrs}");
    let up = ns.ip(&["-o", "link", "show", "dev", "xcw0"]);
    assert!(up.contains("UP"), "{up}");

    // A flood of unrelated links: nothing waits for them, nothing is applied.
    let mut batch = String::new();
    for i in 0..40 {
        let _ = writeln!(batch, "link add xcf{i} type veth peer name xcg{i}");
    }
    let mut child = Command::new("ip")
        .args(["-n", &ns.0, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), batch.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(
        next_result(&mut broker, 1, Duration::from_millis(1500))
            .await
            .is_none(),
        "unrelated links made the agent apply again"
    );

    // The waited-for MAC flaps 20 times: applies are coalesced and rate-limited (at
    // most one per 2 s), not one per appearance.
    let started = Instant::now();
    for _ in 0..20 {
        ns.add_link("xcw1", MAC_B, "xcp1");
        ns.ip(&["link", "del", "xcw1"]);
    }
    ns.add_link("xcw1", MAC_B, "xcp1");
    let mut results = Vec::new();
    let window = Duration::from_secs(4);
    while let Some(r) = next_result(&mut broker, 1, window.saturating_sub(started.elapsed())).await
    {
        results.push(r);
        if started.elapsed() >= window {
            break;
        }
    }
    // 4 s at most one per 2 s from the link watch, plus at most one retry.
    assert!(
        (1..=4).contains(&results.len()),
        "{} results for 21 appearances: {results:?}",
        results.len()
    );
    let last = results.last().unwrap();
    assert_eq!(
        status_of(last, "network:e1").0,
        ItemStatus::Applied,
        "{last:?}"
    );
    let addrs = ns.addresses("xcw1");
    assert!(addrs.contains("198.51.100.7/24"), "{addrs}");
    agent.stop();
}

#[tokio::test]
async fn live_only_addresses_come_back_at_start_without_a_broker() {
    skip_unless_netns!();
    let guest = Guest::new();
    // First boot: a push configures two interfaces live (no manager).
    {
        let ns = Netns::new("boot1");
        ns.add_link("eth0", MAC_A, "p0");
        ns.add_link("eth1", MAC_B, "p1");
        let pty = pty();
        let mut agent = Agent::start(&guest, &pty.path, &ns);
        let mut broker = Broker::new(pty);
        broker.handshake().await;
        let doc = net_doc(&[
            ("e0", MAC_A, "192.0.2.60/24"),
            ("e1", MAC_B, "198.51.100.60/24"),
        ]);
        let r = broker.push(1, &doc).await;
        assert_eq!(status_of(&r, "network:e0").0, ItemStatus::Applied, "{r:?}");
        assert_eq!(status_of(&r, "network:e1").0, ItemStatus::Applied, "{r:?}");
        agent.stop();
    }
    let state = std::fs::read_to_string(guest.path("var/lib/xenchan-agent/applied.json")).unwrap();
    assert!(state.contains("192.0.2.60/24"), "{state}");

    // "Reboot": a fresh namespace, where the addresses are gone. eth0 is there at
    // start; eth1 is hotplugged later. Nobody answers on the channel.
    let ns = Netns::new("boot2");
    ns.add_link("eth0", MAC_A, "p0");
    assert!(!ns.addresses("eth0").contains("192.0.2.60"));
    let pty = pty();
    let mut agent = Agent::start(&guest, &pty.path, &ns);
    let addrs = until(
        "the address is back on eth0",
        Duration::from_secs(10),
        || ns.addresses("eth0"),
        |a| a.contains("192.0.2.60/24"),
    )
    .await;
    assert!(addrs.contains("192.0.2.60/24"));
    let log = agent.log();
    assert!(log.contains("restored at start"), "{log}");
    assert!(log.contains("restoring it when it appears"), "{log}");

    ns.add_link("eth1", MAC_B, "p1");
    until(
        "the address is back on eth1 once it appeared",
        Duration::from_secs(5),
        || ns.addresses("eth1"),
        |a| a.contains("198.51.100.60/24"),
    )
    .await;
    // Idempotent: a second start changes nothing and fails nothing.
    agent.stop();
    let mut agent = Agent::start(&guest, &pty.path, &ns);
    until(
        "the second start restored",
        Duration::from_secs(10),
        || agent.log(),
        |l| l.contains("restored at start"),
    )
    .await;
    let log = agent.log();
    assert!(log.contains("changed=false"), "{log}");
    assert!(!log.contains("cannot restore"), "{log}");
    assert_eq!(ns.addresses("eth0").matches("192.0.2.60/24").count(), 1);
    agent.stop();
    // The pty was never answered: no broker was needed.
    drop(pty);
}

/// A burst of pushes changing the hostname gives few facts frames (at most one per
/// `facts_min_interval`), and the last one carries the last hostname.
#[tokio::test]
async fn a_burst_of_changes_gives_a_bounded_number_of_facts_frames() {
    let guest = Guest::new();
    let pty = pty();
    guest.link_channel(1, &pty.path, CHANNEL);
    let mut broker = Broker::new(pty);
    let mut opts = guest.opts();
    opts.timing.facts_min_interval = Duration::from_secs(1);
    let agent = start(opts);
    broker.handshake().await;
    broker.seen.clear();
    for g in 1..=10u64 {
        let doc = config(&format!(r#"{{"hostname":"burst{g}"}}"#));
        let r = broker.push(g, &doc).await;
        assert_eq!(status_of(&r, "hostname").0, ItemStatus::Applied);
    }
    // Everything the agent sends for the next 2.6 s lands in `seen`.
    let deadline = Instant::now() + Duration::from_millis(2600);
    while broker.next_until(deadline).await.is_some() {}
    let pushed: Vec<GuestFacts> = broker
        .seen
        .iter()
        .filter_map(|m| match &m.body {
            Body::Facts(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = pushed.iter().map(|f| f.hostname.as_str()).collect();
    // Ten changes, at most one report per second over ~3 s: never one per change.
    assert!((1..=3).contains(&pushed.len()), "facts frames: {names:?}");
    assert_eq!(names.last(), Some(&"burst10"), "{names:?}");
    agent.stop().await.unwrap();
}
