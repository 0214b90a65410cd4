//! The agent binary without inotify: this test uses up the calling user's inotify
//! instances (`fs.inotify.max_user_instances`), starts the agent, and checks that it
//! warns (naming the sysctl), polls its channel folders, finds a link made after it
//! started, and serves a whole session; then it gives the instances back.
//!
//! Alone in its test binary on purpose: while it holds every instance, any other test
//! of this user that needs inotify would fail. It holds them for a few seconds only.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::time::Instant;

/// Above this the limit is not exhausted (it would take too many descriptors).
const MOST_INSTANCES: usize = 4096;

fn read_limit(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Every inotify instance this user may still get, held until dropped.
struct Hoard(Vec<inotify::Inotify>);

/// Takes inotify instances until the kernel says EMFILE. `Err` with a reason when the
/// limit cannot be reached here.
fn exhaust() -> Result<Hoard, String> {
    let Some(limit) = read_limit("/proc/sys/fs/inotify/max_user_instances") else {
        return Err("cannot read /proc/sys/fs/inotify/max_user_instances".into());
    };
    if limit > MOST_INSTANCES {
        return Err(format!(
            "fs.inotify.max_user_instances is {limit}, more than {MOST_INSTANCES}"
        ));
    }
    let fds = open_files_limit().unwrap_or(1024);
    let mut held = Vec::new();
    loop {
        match inotify::Inotify::init() {
            Ok(i) => held.push(i),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => return Err(format!("inotify_init1 failed otherwise: {e}")),
        }
        if held.len() > limit {
            return Err(format!(
                "got {} instances, more than the limit {limit} (another user namespace?)",
                held.len()
            ));
        }
    }
    // EMFILE is also the per-process descriptor limit: that would not starve the agent.
    if held.len() + 64 >= fds {
        return Err(format!(
            "hit this process's open-files limit ({fds}) before the inotify limit ({limit})"
        ));
    }
    Ok(Hoard(held))
}

/// The agent process, killed if the test fails.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inotify_the_agent_polls_and_still_finds_its_channel() {
    let guest = Guest::new();
    let log = guest.dir.path().join("agent.log");
    let pty = pty();
    let device = pty.path.clone();
    let mut broker = Broker::new(pty);

    let hoard = match exhaust() {
        Ok(h) => h,
        Err(why) => {
            println!("SKIPPED: cannot use up this user's inotify instances: {why}");
            return;
        }
    };
    let taken = hoard.0.len();
    assert!(
        inotify::Inotify::init().is_err(),
        "an instance is still available after taking {taken}"
    );
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_xenchan-agent"))
            .arg("--channel-dir")
            .arg(guest.path("dev/xen-channel"))
            .arg("--virtio-dir")
            .arg(guest.path("dev/virtio-ports"))
            .arg("--root")
            .arg(&guest.root)
            .arg("--state-dir")
            .arg(guest.path("var/lib/xenchan-agent"))
            .arg("--registry-dir")
            .arg(guest.path("etc/xenchan/registry.d"))
            .arg("--no-live-hostname")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the agent"),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // It says why it polls, naming the limit to raise, and keeps running.
    let deadline = Instant::now() + WAIT;
    while !read_log().contains("xenchan-agent starting") {
        if let Some(st) = agent.0.try_wait().unwrap() {
            panic!("the agent exited ({st}):\n{}", read_log());
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not start:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = read_log();
    assert!(
        text.contains("fs.inotify.max_user_instances") && text.contains("WARN"),
        "no warning naming the sysctl:\n{text}"
    );
    assert!(
        text.contains("discovery=polling") || text.contains("discovery=\"polling\""),
        "{text}"
    );

    // The link comes after the start (the folder did not even exist): found by polling.
    assert!(!guest.path("dev/xen-channel").exists());
    guest.link_channel(1, &device, CHANNEL);
    let (_, hello) = broker.handshake().await;
    assert!(hello.applied.is_none());
    let result = broker
        .push(1, &config(r#"{"hostname":"polled.example.com"}"#))
        .await;
    assert!(result.all_ok(), "{result:?}");
    assert_eq!(
        std::fs::read_to_string(guest.path("etc/hostname")).unwrap(),
        "polled\n"
    );
    broker.ping(3).await;
    drop(hoard);
    println!("held {taken} inotify instances while the agent ran");

    // SIGTERM: a bye, then exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    broker
        .wait_for("the agent's bye", |m| {
            matches!(m.body, xenchan_protocol::Body::Bye { .. })
        })
        .await;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = agent.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "exit {:?} signal {:?}:\n{}",
        status.code(),
        status.signal(),
        read_log()
    );
}
