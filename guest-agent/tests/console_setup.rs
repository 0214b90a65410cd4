//! xen-console-setup against a fake sysfs and /dev and the xenstore crate's test server
//! (served as the guest's domain, like /dev/xen/xenbus): links made, kept, refused and
//! removed; and the whole guest-side chain, helper then agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use xenchan_agent::console_setup::{self, Action, Outcome, SetupOptions};
use xenchan_xenstore::server::{ListenerHandle, Server};

const DOMID: u32 = 7;

struct Fake {
    _dir: tempfile::TempDir,
    base: PathBuf,
    server: Server,
    _listener: ListenerHandle,
    socket: PathBuf,
}

impl Fake {
    /// A guest whose xenstore has `channels` (devid, name), and sysfs `nodename` files
    /// for console-1..3.
    fn new(channels: &[(u32, &str)]) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let server = Server::new();
        server
            .introduce_domain(DOMID, "web1", "4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b")
            .unwrap();
        for (devid, name) in channels {
            server
                .add_channel(DOMID, *devid, name, "/run/xenchan/sockets/web1.sock")
                .unwrap();
        }
        let socket = base.join("xb.sock");
        let listener = server.listen(&socket, DOMID).unwrap();
        for n in 1..=3 {
            let d = base.join(format!("sys/devices/console-{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nodename"), format!("device/console/{n}\n")).unwrap();
        }
        std::fs::create_dir_all(base.join("dev")).unwrap();
        Fake {
            _dir: dir,
            base,
            server,
            _listener: listener,
            socket,
        }
    }

    fn opts(&self, action: Action, console: u32) -> SetupOptions {
        SetupOptions {
            action,
            devpath: format!("/devices/console-{console}"),
            sysfs: self.base.join("sys"),
            dev: self.base.join("dev"),
            channel_dir: self.base.join("dev/xen-channel"),
            xenstore: self.socket.clone(),
            timeout: Duration::from_secs(2),
        }
    }

    fn link(&self, name: &str) -> PathBuf {
        self.base.join("dev/xen-channel").join(name)
    }

    /// Runs the real binary the way udev does (ACTION and DEVPATH in the environment).
    fn helper(&self, action: &str, console: u32, extra: &[&str]) -> std::process::Output {
        self.helper_at(&self.socket, action, console, extra)
    }

    fn helper_at(
        &self,
        xenstore: &Path,
        action: &str,
        console: u32,
        extra: &[&str],
    ) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_xen-console-setup"))
            .env("ACTION", action)
            .env("DEVPATH", format!("/devices/console-{console}"))
            .env_remove("XENSTORED_PATH")
            .arg("--sysfs")
            .arg(self.base.join("sys"))
            .arg("--dev")
            .arg(self.base.join("dev"))
            .arg("--xenstore")
            .arg(xenstore)
            .args(extra)
            .output()
            .unwrap()
    }
}

fn one_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    err
}

#[test]
fn add_makes_a_relative_link_and_remove_removes_it() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    let started = Instant::now();
    let out = console_setup::run(&fake.opts(Action::Add, 1)).unwrap();
    let took = started.elapsed();
    eprintln!("add took {took:?}");
    assert!(took < Duration::from_secs(1), "add took {took:?}");
    assert_eq!(
        out,
        Outcome::Linked {
            name: CHANNEL.into(),
            link: fake.link(CHANNEL),
            target: PathBuf::from("../hvc1"),
        }
    );
    assert_eq!(
        std::fs::read_link(fake.link(CHANNEL)).unwrap(),
        Path::new("../hvc1")
    );
    // udev may replay the event (coldplug trigger): nothing changes.
    assert_eq!(
        console_setup::run(&fake.opts(Action::Add, 1)).unwrap(),
        Outcome::AlreadyLinked {
            link: fake.link(CHANNEL)
        }
    );
    let out = console_setup::run(&fake.opts(Action::Remove, 1)).unwrap();
    assert_eq!(
        out,
        Outcome::Removed {
            links: vec![fake.link(CHANNEL)]
        }
    );
    assert!(std::fs::symlink_metadata(fake.link(CHANNEL)).is_err());
}

#[test]
fn the_binary_does_it_from_udevs_environment() {
    let fake = Fake::new(&[(2, "org.example.backup.1")]);
    let out = fake.helper("add", 2, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_link(fake.link("org.example.backup.1")).unwrap(),
        Path::new("../hvc2")
    );
    let out = fake.helper("remove", 2, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(fake.link("org.example.backup.1")).is_err());
    // Other udev actions are no-ops.
    assert!(fake.helper("change", 2, &[]).status.success());
}

#[test]
fn remove_leaves_other_consoles_links_alone() {
    let fake = Fake::new(&[(1, CHANNEL), (2, "org.example.other.1")]);
    console_setup::run(&fake.opts(Action::Add, 1)).unwrap();
    console_setup::run(&fake.opts(Action::Add, 2)).unwrap();
    // Gone from xenstore already: remove must not depend on it.
    fake.server.remove_channel(DOMID, 1).unwrap();
    let out = console_setup::run(&fake.opts(Action::Remove, 1)).unwrap();
    assert_eq!(
        out,
        Outcome::Removed {
            links: vec![fake.link(CHANNEL)]
        }
    );
    assert_eq!(
        std::fs::read_link(fake.link("org.example.other.1")).unwrap(),
        Path::new("../hvc2")
    );
    // A console that has no link: nothing to do.
    assert_eq!(
        console_setup::run(&fake.opts(Action::Remove, 3)).unwrap(),
        Outcome::Removed { links: vec![] }
    );
}

#[test]
fn missing_nodename_falls_back_to_device_console_n() {
    let fake = Fake::new(&[(3, CHANNEL)]);
    std::fs::remove_file(fake.base.join("sys/devices/console-3/nodename")).unwrap();
    let out = console_setup::run(&fake.opts(Action::Add, 3)).unwrap();
    assert!(matches!(out, Outcome::Linked { .. }), "{out:?}");
}

#[test]
fn a_console_without_a_name_is_not_a_channel() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    assert_eq!(
        console_setup::run(&fake.opts(Action::Add, 2)).unwrap(),
        Outcome::NotAChannel { console: 2 }
    );
    let out = fake.helper("add", 2, &[]);
    assert!(out.status.success());
    assert!(
        !fake.base.join("dev/xen-channel").exists()
            || std::fs::read_dir(fake.base.join("dev/xen-channel"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn unsafe_names_are_refused() {
    for (i, bad) in ["../evil", "a/b", "..", "a b", "x\ty"].iter().enumerate() {
        let fake = Fake::new(&[(1, bad)]);
        let err = console_setup::run(&fake.opts(Action::Add, 1)).unwrap_err();
        assert_eq!(err.exit_code(), 65, "{bad}: {err}");
        let out = fake.helper("add", 1, &[]);
        assert_eq!(out.status.code(), Some(65), "case {i} {bad}: {out:?}");
        let line = one_line(&out);
        assert!(line.contains("refused"), "{line}");
        assert!(
            line.contains(bad.escape_debug().to_string().as_str()),
            "{line}"
        );
        let dir = fake.base.join("dev/xen-channel");
        let made = std::fs::read_dir(&dir).map_or(0, Iterator::count);
        assert_eq!(made, 0, "{bad}: something was made in {}", dir.display());
        assert!(!fake.base.join("dev/evil").exists());
    }
}

#[test]
fn a_forged_nodename_is_refused() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    std::fs::write(
        fake.base.join("sys/devices/console-1/nodename"),
        "/local/domain/0/secret\n",
    )
    .unwrap();
    let err = console_setup::run(&fake.opts(Action::Add, 1)).unwrap_err();
    assert_eq!(err.exit_code(), 65, "{err}");
}

#[test]
fn a_link_outside_dev_xen_channel_is_absolute() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    let mut opts = fake.opts(Action::Add, 1);
    opts.channel_dir = fake.base.join("run/channels");
    console_setup::run(&opts).unwrap();
    assert_eq!(
        std::fs::read_link(opts.channel_dir.join(CHANNEL)).unwrap(),
        fake.base.join("dev/hvc1")
    );
    opts.action = Action::Remove;
    assert_eq!(
        console_setup::run(&opts).unwrap(),
        Outcome::Removed {
            links: vec![opts.channel_dir.join(CHANNEL)]
        }
    );
}

#[test]
fn a_file_in_the_way_is_left_alone() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    std::fs::create_dir_all(fake.base.join("dev/xen-channel")).unwrap();
    std::fs::write(fake.link(CHANNEL), "not a link").unwrap();
    let out = fake.helper("add", 1, &[]);
    assert_eq!(out.status.code(), Some(74), "{out:?}");
    one_line(&out);
    assert_eq!(
        std::fs::read_to_string(fake.link(CHANNEL)).unwrap(),
        "not a link"
    );
}

#[test]
fn errors_are_one_line_with_a_sysexits_code() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    // No xenstore there.
    let out = fake.helper_at(Path::new("/nonexistent/xenbus"), "add", 1, &[]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(one_line(&out).contains("/nonexistent/xenbus"));
    // Not a console.
    let out = Command::new(env!("CARGO_BIN_EXE_xen-console-setup"))
        .args(["add", "--devpath", "/devices/vbd-51712", "--xenstore"])
        .arg(&fake.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(one_line(&out).contains("vbd-51712"));
    // No DEVPATH at all, and a bad action: usage errors.
    let out = Command::new(env!("CARGO_BIN_EXE_xen-console-setup"))
        .arg("add")
        .env_remove("DEVPATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    one_line(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_xen-console-setup"))
        .args(["frobnicate", "--devpath", "/devices/console-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    one_line(&out);
}

/// The guest side end to end: udev's helper makes the link from xenstore, the agent
/// (already running, waiting) finds it and answers the broker; the helper's remove makes
/// the agent close the device.
#[tokio::test]
async fn helper_then_agent() {
    let fake = Fake::new(&[(1, CHANNEL)]);
    let guest = Guest::new();
    let mut opts = guest.opts();
    opts.channel_dir = fake.base.join("dev/xen-channel");
    opts.virtio_dir = fake.base.join("dev/virtio-ports");
    let agent = start(opts);
    let pty = pty();
    std::os::unix::fs::symlink(&pty.path, fake.base.join("dev/hvc1")).unwrap();
    let mut broker = Broker::new(pty);
    let out = fake.helper("add", 1, &[]);
    assert!(out.status.success(), "{out:?}");
    broker.handshake().await;
    let out = fake.helper("remove", 1, &[]);
    assert!(out.status.success(), "{out:?}");
    eventually("the agent closed the device", || {
        open_count(&broker.pty.path) == 1
    })
    .await;
    agent.stop().await.unwrap();
}
