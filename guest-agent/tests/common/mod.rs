//! Test helpers: a real pty playing the hvc device, a broker played over its master with
//! the real FrameCodec, a temporary guest root, and the agent run in-process.
//!
//! Nothing here sleeps to synchronise: every wait is on a condition, with a deadline.

// tokio's `AsyncFd::register` is unsafe (the caller vouches the fd stays open): the pty
// master `File` is moved in and never taken out.
#![allow(unsafe_code, dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use xenchan_agent::{AgentError, AgentOptions, Timing};
use xenchan_protocol::message::{ApplyResult, ConfigPush, Hello};
use xenchan_protocol::session::SessionRules;
use xenchan_protocol::{Body, Envelope, FrameCodec, GuestConfig, Nonce, Role, Verdict};

/// Default deadline of every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

pub const CHANNEL: &str = "org.xenchan.agent.1";
pub const UUID: &str = "4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
pub const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHgH50NaOA0wm5oxBjGPc+d7BvPLX+pMQPnkwt1Wtlps alice@example";
pub const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJtDf2dA/W3HCgWEH322wzo1blGsk0xR/F8usHfUT98 bob@example";

/// A pty pair: the slave stands in for /dev/hvcN, the test holds the master (what QEMU
/// and the broker are on the host side). The test keeps a slave descriptor open so the
/// master never reads EIO while the agent has the device closed.
pub struct Pty {
    pub master: AsyncFd<File>,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

pub fn pty() -> Pty {
    let p = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&p.slave).expect("ttyname");
    let flags = nix::fcntl::fcntl(p.master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(p.master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    let file = File::from(p.master);
    // SAFETY: the File owns the master fd and stays inside the AsyncFd until dropped.
    let master = unsafe { AsyncFd::register(file) }
        .map_err(|e| e.into_parts().1)
        .unwrap();
    Pty {
        master,
        slave: p.slave,
        path,
    }
}

/// The broker, played by the test over a pty master.
pub struct Broker {
    pub pty: Pty,
    pub codec: FrameCodec,
    rbuf: BytesMut,
    pub rules: SessionRules,
    /// Every message decoded so far, own echoes included.
    pub seen: Vec<Envelope>,
    pub channel: String,
    pub uuid: Option<String>,
}

impl Broker {
    pub fn new(pty: Pty) -> Broker {
        Broker {
            pty,
            codec: FrameCodec::default(),
            rbuf: BytesMut::new(),
            rules: SessionRules::new(Role::Broker),
            seen: Vec::new(),
            channel: CHANNEL.into(),
            uuid: Some(UUID.into()),
        }
    }

    /// Writes raw bytes to the agent (waits while the pty is full).
    pub async fn write_raw(&self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !bytes.is_empty() {
            let mut guard = tokio::time::timeout_at(deadline, self.pty.master.writable())
                .await
                .expect("pty master stayed full: the agent is not reading")
                .unwrap();
            match guard.try_io(|f| f.get_ref().write(bytes)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => panic!("write to pty master: {e}"),
                Err(_) => {}
            }
        }
    }

    pub async fn send(&mut self, msg: &Envelope) {
        let line = self.codec.encode_line(msg).unwrap();
        self.write_raw(&line).await;
    }

    /// The next decoded message (own echoes included), or `None` at `deadline`.
    pub async fn next_until(&mut self, deadline: Instant) -> Option<Envelope> {
        loop {
            if let Some(m) = self.codec.decode(&mut self.rbuf).unwrap() {
                self.seen.push(m.clone());
                return Some(m);
            }
            let mut guard = tokio::time::timeout_at(deadline, self.pty.master.readable())
                .await
                .ok()?
                .unwrap();
            let mut chunk = [0u8; 8192];
            match guard.try_io(|f| f.get_ref().read(&mut chunk)) {
                Ok(Ok(n)) => self.rbuf.extend_from_slice(&chunk[..n]),
                // EIO: no slave open right now; nothing to read yet.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                    guard.clear_ready();
                    tokio::task::yield_now().await;
                }
                Ok(Err(e)) => panic!("read from pty master: {e}"),
                Err(_) => {}
            }
        }
    }

    /// Waits for a message from the agent that `pred` accepts (echoes skipped).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Envelope) -> bool) -> Envelope {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_until(deadline).await {
                Some(m) if m.from == Role::Agent && pred(&m) => return m,
                Some(_) => {}
                None => panic!(
                    "timed out waiting for {what}; saw: {:#?}",
                    self.seen.iter().map(short).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Asserts that no agent message `pred` accepts arrives within `quiet`.
    pub async fn expect_none(
        &mut self,
        what: &str,
        quiet: Duration,
        pred: impl Fn(&Envelope) -> bool,
    ) {
        let deadline = Instant::now() + quiet;
        while let Some(m) = self.next_until(deadline).await {
            assert!(
                !(m.from == Role::Agent && pred(&m)),
                "unexpected {what}: {}",
                short(&m)
            );
        }
    }

    pub fn hello_body(&self) -> Hello {
        Hello {
            versions: Some(vec![1]),
            channel: self.channel.clone(),
            domain: Some("web1".into()),
            uuid: self.uuid.clone(),
            software: "test-broker".into(),
            ..Hello::default()
        }
    }

    /// Opens a new session: a fresh nonce and a hello carrying it.
    pub async fn send_hello(&mut self) -> Nonce {
        let nonce = Nonce::from_bytes(rand::random());
        self.rules.set_session(nonce.clone());
        let hello = Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Hello(self.hello_body()),
        );
        self.send(&hello).await;
        nonce
    }

    /// Waits for a beacon, says hello, and waits for the agent's hello in that session
    /// and its facts.
    pub async fn handshake(&mut self) -> (Nonce, Hello) {
        self.wait_for("a beacon", is_beacon).await;
        let nonce = self.send_hello().await;
        let answer = self.wait_for_session_hello(&nonce).await;
        let n = nonce.clone();
        self.wait_for("facts", move |m| {
            m.session.as_ref() == Some(&n) && matches!(m.body, Body::Facts(_))
        })
        .await;
        (nonce, answer)
    }

    pub async fn wait_for_session_hello(&mut self, nonce: &Nonce) -> Hello {
        let n = nonce.clone();
        let m = self
            .wait_for("the agent's hello in our session", move |m| {
                m.session.as_ref() == Some(&n) && matches!(m.body, Body::Hello(_))
            })
            .await;
        assert_eq!(self.rules.classify(&m), Verdict::Accept);
        let Body::Hello(h) = m.body else {
            unreachable!()
        };
        h
    }

    /// Pushes `config` as `generation` in the current session and returns the result.
    pub async fn push(&mut self, generation: u64, config: &GuestConfig) -> ApplyResult {
        let nonce = self.rules.current().cloned().expect("push needs a session");
        let push = ConfigPush::new(generation, config.clone());
        self.send(&Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Config(push),
        ))
        .await;
        let m = self
            .wait_for("a result", move |m| {
                m.session.as_ref() == Some(&nonce) && matches!(m.body, Body::Result(_))
            })
            .await;
        let Body::Result(r) = m.body else {
            unreachable!()
        };
        assert_eq!(r.generation, generation);
        r
    }

    pub async fn ping(&mut self, id: u64) {
        let nonce = self.rules.current().cloned().expect("ping needs a session");
        self.send(&Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Ping { id },
        ))
        .await;
        self.wait_for("a pong", move |m| {
            m.session.as_ref() == Some(&nonce) && matches!(m.body, Body::Pong { id: i } if i == id)
        })
        .await;
    }
}

pub fn is_beacon(m: &Envelope) -> bool {
    m.session.is_none() && matches!(m.body, Body::Hello(_))
}

fn short(m: &Envelope) -> String {
    format!(
        "{} from {} session {:?}",
        m.kind(),
        m.from,
        m.session.as_ref().map(Nonce::as_str)
    )
}

/// A temporary guest root laid out like the simulator's.
pub struct Guest {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    /// uid/gid of the `cloud` user: 4242 when the tests run as root (so ownership is
    /// really exercised), else the test's own ids.
    pub uid: u32,
    pub gid: u32,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Guest {
    pub fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (uid, gid) = if is_root() {
            (4242, 4242)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        for d in ["etc", "dev", "sys/hypervisor", "home/cloud", "var/lib"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\ncloud:x:{uid}:{gid}:Cloud:/home/cloud:/bin/bash\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            format!("root:x:0:\ncloud:x:{gid}:\n"),
        )
        .unwrap();
        std::fs::write(root.join("etc/hostname"), "localhost\n").unwrap();
        std::fs::write(
            root.join("etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tlocalhost\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("sys/hypervisor/uuid"),
            format!("{}\n", UUID.to_uppercase()),
        )
        .unwrap();
        std::os::unix::fs::chown(root.join("home/cloud"), Some(uid), Some(gid)).unwrap();
        Guest {
            dir,
            root,
            uid,
            gid,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Agent options for this root with millisecond timing.
    pub fn opts(&self) -> AgentOptions {
        AgentOptions {
            live_hostname: false,
            timing: Timing::fast(Duration::from_secs(10)),
            ..AgentOptions::under_root(&self.root)
        }
    }

    /// `<root>/dev/hvc<n> -> <pty>` and `<root>/dev/xen-channel/<name> -> ../hvc<n>`, made
    /// like xen-console-setup makes it (a temporary link renamed over).
    pub fn link_channel(&self, n: u32, pty: &Path, name: &str) {
        let hvc = self.root.join(format!("dev/hvc{n}"));
        let _ = std::fs::remove_file(&hvc);
        std::os::unix::fs::symlink(pty, &hvc).unwrap();
        let dir = self.root.join("dev/xen-channel");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("../hvc{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    pub fn unlink_channel(&self, name: &str) {
        std::fs::remove_file(self.root.join("dev/xen-channel").join(name)).unwrap();
    }
}

/// The agent running in-process.
pub struct Running {
    handle: JoinHandle<Result<(), AgentError>>,
    stop: Option<oneshot::Sender<()>>,
}

pub fn start(opts: AgentOptions) -> Running {
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(xenchan_agent::run(opts, async move {
        let _ = rx.await;
    }));
    Running {
        handle,
        stop: Some(tx),
    }
}

impl Running {
    /// Asks the agent to stop and waits for it.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("agent did not stop")
            .expect("agent task panicked")
    }

    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }
}

/// Polls `cond` until it holds or the deadline passes (for conditions only visible in
/// the filesystem, such as the agent having closed a device).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether an inotify descriptor of this process watches `path` (read from
/// /proc/self/fdinfo: the watch lists the inode), i.e. the agent is waiting on it.
pub fn inotify_watches(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let ino = format!("ino:{:x} ", meta.ino());
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|info| {
            info.lines()
                .any(|l| l.starts_with("inotify") && l.contains(&ino))
        })
}

/// How many descriptors this process has open on `path`'s device.
pub fn open_count(path: &Path) -> usize {
    let Ok(target) = std::fs::metadata(path) else {
        return 0;
    };
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.rdev() == target.rdev() && m.dev() == target.dev() && m.ino() == target.ino())
        .count()
}

pub fn config(json: &str) -> GuestConfig {
    GuestConfig::from_json(json.as_bytes()).unwrap()
}

pub fn mtime(path: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}
