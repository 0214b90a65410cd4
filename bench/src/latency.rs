//! End-to-end latency over the simulator's pty channel (`xenchan_sim::bridge`: QEMU's
//! socket, the 1 KiB host-to-guest window, a real tty): connect, handshake, push of a
//! hostname, one address applied over netlink in a network namespace, three ssh keys
//! (every file fsynced by the agent), result. Three guests behind three identical
//! bridges, measured in turns within one loop so that the machine's noise hits them
//! alike:
//!
//! - the real agent (`xenchan-bench-agent`: the agent library as the binary runs it,
//!   with the library's netns option), files under a temporary guest root;
//! - qemu-guest-agent (when installed), doing the same job the only way it can
//!   (`guest-ssh-add-authorized-keys`, `guest-exec` of `hostname` and `ip`), in its own
//!   network, UTS and mount namespaces (its user's passwd entry bind-mounted in);
//! - a null guest that answers at once: the floor set by the bridge and the protocol;
//! - and, as a diagnostic, a second real agent on a bare pty whose master the measuring
//!   side writes itself (no bridge, no 1 KiB window pacing): the agent's own time.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use xenchan_protocol::GuestConfig;
use xenchan_sim::bridge::{Backend, BackendConfig, ChannelState};
use xenchan_sim::guest::{GuestIdentity, GuestRoot};
use xenchan_sim::pty::Pty;

use crate::bins::Bins;
use crate::child::Child;
use crate::configs::{self, IFACE, USER};
use crate::netns::{self, NetNs};
use crate::notify::NotifySocket;
use crate::qga;
use crate::report::ms;
use crate::wire;

/// The MAC of the xenchan guest's NIC.
pub const MAC_AGENT: &str = "00:16:3e:b0:00:01";
/// The MAC of the qemu-guest-agent guest's NIC.
pub const MAC_QGA: &str = "00:16:3e:b0:00:02";
/// Iterations before measuring (first apply, caches, qemu-ga's first address).
pub const WARMUP: usize = 2;
/// Deadline of one iteration.
pub const ITERATION_TIMEOUT: Duration = Duration::from_secs(20);
/// uid/gid of the qemu-ga test user.
pub const QGA_UID: u32 = 4242;

/// What one run measured (milliseconds per iteration).
#[derive(Debug)]
pub struct Samples {
    /// xenchan: connect to result.
    pub xenchan: Vec<f64>,
    /// xenchan: connect to the agent's hello.
    pub handshake: Vec<f64>,
    /// qemu-ga: connect to the last command's answer; `Err` says why it was skipped.
    pub qga: Result<Vec<f64>, String>,
    /// qga / xenchan per iteration.
    pub ratio: Vec<f64>,
    /// The null guest: connect to result.
    pub floor: Vec<f64>,
    /// The null guest: connect to its hello.
    pub floor_handshake: Vec<f64>,
    /// xenchan on a bare pty (no bridge): hello to result.
    pub bare: Vec<f64>,
    /// xenchan on a bare pty: hello to the agent's hello.
    pub bare_handshake: Vec<f64>,
    /// Whether the network item went over netlink in a namespace.
    pub live_network: bool,
}

/// A channel backend (socket + pty) running on `rt`.
struct Channel {
    backend: Option<Backend>,
    socket: PathBuf,
    slave: PathBuf,
}

impl Channel {
    fn open(rt: &Handle, socket: PathBuf) -> anyhow::Result<Channel> {
        let _guard = rt.enter();
        let pty = Pty::open().context("opening a pty")?;
        let slave = pty.slave_path().to_path_buf();
        let state = Arc::new(Mutex::new(ChannelState::default()));
        let backend = Backend::spawn(pty, BackendConfig::new(&socket), state)
            .with_context(|| format!("channel socket {}", socket.display()))?;
        Ok(Channel {
            backend: Some(backend),
            socket,
            slave,
        })
    }

    fn stop(&mut self, rt: &Handle) {
        if let Some(b) = self.backend.take() {
            rt.block_on(b.stop());
        }
    }
}

/// How the broker's side reaches an agent's tty.
enum Link {
    /// Through the simulator's channel backend (QEMU's socket and 1 KiB window).
    Bridge(Channel),
    /// Straight on the pty master: the tty with nothing between (a diagnostic, to tell
    /// the agent's own time from the bridge's pacing).
    Pty(std::fs::File),
}

/// The xenchan side: guest root, channel, namespace, agent process.
struct AgentGuest {
    root: GuestRoot,
    link: Link,
    ns: Option<NetNs>,
    agent: Child,
}

impl AgentGuest {
    /// One session: connect (bridge) or start on the tty (pty), hello, push, result.
    fn push(
        &self,
        config: &GuestConfig,
        generation: u64,
    ) -> std::io::Result<(xenchan_protocol::message::ApplyResult, wire::SessionTimes)> {
        match &self.link {
            Link::Bridge(chan) => {
                wire::push_once(&chan.socket, config, generation, ITERATION_TIMEOUT)
            }
            Link::Pty(master) => wire::push_on(
                master.try_clone()?,
                Instant::now(),
                config,
                generation,
                ITERATION_TIMEOUT,
            ),
        }
    }
}

/// Starts an agent in `dir/<sub>` on a bridge channel (`bare` false) or on a pty whose
/// master this process holds (`bare` true).
fn start_agent_guest(
    rt: &Handle,
    bins: &Bins,
    dir: &Path,
    notify: &NotifySocket,
    sub: &str,
    bare: bool,
) -> anyhow::Result<AgentGuest> {
    let root = GuestRoot::create(
        dir.join(sub),
        &GuestIdentity {
            uuid: xenchan_sim::guest::random_uuid(),
            mac: MAC_AGENT.into(),
            cloud_uid: nix::unistd::getuid().as_raw(),
            cloud_gid: nix::unistd::getgid().as_raw(),
        },
    )
    .context("guest root")?;
    let link = if bare {
        let (master, slave) = wire::open_pty()?;
        root.new_boot(&slave).context("guest /dev")?;
        Link::Pty(master)
    } else {
        let chan = Channel::open(rt, dir.join(format!("{sub}.sock")))?;
        root.new_boot(&chan.slave).context("guest /dev")?;
        Link::Bridge(chan)
    };
    let ns = match netns::unavailable() {
        None => Some(NetNs::create(
            &format!("xcb{}{sub}", std::process::id()),
            IFACE,
            MAC_AGENT,
        )?),
        Some(_) => None,
    };
    let mut cmd = Command::new(&bins.bench_agent);
    cmd.arg("--device")
        .arg(root.hvc())
        .arg("--root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(root.state_dir())
        .arg("--no-live-hostname")
        .args(["--network-renderer", "networkd"])
        .args(["--network-live", "always"])
        .arg("--registry-dir")
        .arg(dir.join("registry.d"))
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", crate::agent_log())
        .stdin(std::process::Stdio::null());
    if let Some(ns) = &ns {
        cmd.env("XENCHAN_BENCH_NETNS", ns.path());
    }
    notify.drain();
    let mut agent = Child::spawn(
        &format!("the agent ({sub})"),
        &mut cmd,
        &dir.join(format!("agent-{sub}.log")),
    )?;
    if let Err(e) = notify.wait_ready(Duration::from_secs(10)) {
        agent.check_running()?;
        return Err(e).context("the agent did not signal READY=1");
    }
    Ok(AgentGuest {
        root,
        link,
        ns,
        agent,
    })
}

/// The qemu-ga side.
struct QgaGuest {
    chan: Channel,
    ns: NetNs,
    home: PathBuf,
    qga: Child,
}

fn start_qga_guest(rt: &Handle, dir: &Path) -> Result<QgaGuest, String> {
    let Some(bin) = qga::binary() else {
        return Err("qemu-guest-agent is not installed (apt-get install qemu-guest-agent)".into());
    };
    if let Some(why) = netns::unavailable() {
        return Err(format!(
            "qemu-guest-agent needs namespaces here (it would change this machine's hostname and addresses): {why}"
        ));
    }
    start_qga_inner(rt, dir, &bin)
        .map_err(|e| format!("qemu-guest-agent could not be set up: {e:#}"))
}

fn start_qga_inner(rt: &Handle, dir: &Path, bin: &Path) -> anyhow::Result<QgaGuest> {
    let q = dir.join("q");
    let home = q.join("home").join(USER);
    std::fs::create_dir_all(&home)?;
    let owner = Some(nix::unistd::Uid::from_raw(QGA_UID));
    nix::unistd::chown(&home, owner, Some(nix::unistd::Gid::from_raw(QGA_UID)))?;
    // Its user must be in the passwd file it reads: a copy of this machine's with the
    // test user added, bind-mounted over /etc/passwd in qemu-ga's own mount namespace.
    let mut passwd = String::new();
    let ours = format!("{USER}:");
    for l in std::fs::read_to_string("/etc/passwd")?.lines() {
        if !l.starts_with(&ours) {
            passwd.push_str(l);
            passwd.push('\n');
        }
    }
    let _ = writeln!(
        passwd,
        "{USER}:x:{QGA_UID}:{QGA_UID}:bench:{}:/bin/sh",
        home.display()
    );
    let passwd_path = q.join("passwd");
    std::fs::write(&passwd_path, passwd)?;
    std::fs::create_dir_all(q.join("state"))?;
    let ns = NetNs::create(&format!("xcb{}q", std::process::id()), IFACE, MAC_QGA)?;
    let chan = Channel::open(rt, dir.join("q.sock"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .args([
            "unshare",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--",
        ])
        .args([
            "/bin/sh",
            "-c",
            r#"mount --bind "$0" /etc/passwd && exec "$1" -m isa-serial -p "$2" -t "$3" -f "$4""#,
        ])
        .arg(&passwd_path)
        .arg(bin)
        .arg(&chan.slave)
        .arg(q.join("state"))
        .arg(q.join("qga.pid"))
        .stdin(std::process::Stdio::null());
    let mut child = Child::spawn("qemu-ga", &mut cmd, &dir.join("qga.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        child.check_running()?;
        let ok = qga::Qga::connect(&chan.socket)
            .map_err(anyhow::Error::from)
            .and_then(|mut c| c.sync(Instant::now() + Duration::from_millis(300)));
        if ok.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("qemu-ga did not answer guest-sync-delimited within 10 s");
        }
    }
    Ok(QgaGuest {
        chan,
        ns,
        home,
        qga: child,
    })
}

/// The null guest: a thread answering on the raw pty slave.
struct NullGuest {
    chan: Channel,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_null_guest(rt: &Handle, dir: &Path) -> anyhow::Result<NullGuest> {
    use std::os::unix::fs::OpenOptionsExt;
    let chan = Channel::open(rt, dir.join("n.sock"))?;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&chan.slave)?;
    let mut t = nix::sys::termios::tcgetattr(tty.as_fd())?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let thread = std::thread::spawn(move || wire::null_guest(tty, &s2));
    Ok(NullGuest {
        chan,
        stop,
        thread: Some(thread),
    })
}

/// Runs `iterations` measured rounds (after [`WARMUP`]) in a fresh folder under `base`.
/// With `baseline` binaries, two more agent guests (bridge and bare pty) run them in the
/// same loop, the two sides taking turns at going first: the second `Samples` are the
/// baseline's, sharing the qemu-guest-agent and null-guest samples of the same
/// iterations (its ratio is per iteration against the baseline agent).
pub fn run(
    rt: &Handle,
    bins: &Bins,
    baseline: Option<&Bins>,
    base: &Path,
    iterations: usize,
) -> anyhow::Result<(Samples, Option<Samples>)> {
    let tmp = tempfile::Builder::new()
        .prefix("xcb")
        .tempdir_in(base)
        .with_context(|| format!("temporary folder in {}", base.display()))?;
    let r = run_in(rt, bins, baseline, tmp.path(), iterations);
    crate::keep_if(tmp, r.is_err());
    r
}

/// The baseline's two agent guests and their samples.
struct BaselineSide {
    bridge: AgentGuest,
    bare: AgentGuest,
    xenchan: Vec<f64>,
    handshake: Vec<f64>,
    bare_samples: Vec<f64>,
    bare_handshake: Vec<f64>,
    ratio: Vec<f64>,
}

/// One iteration's pushes to an agent guest on a bridge and one on a bare pty:
/// (bridge total, bridge handshake, bare total, bare handshake) in ms.
fn agent_pair(
    bridge: &mut AgentGuest,
    bare: &mut AgentGuest,
    config: &GuestConfig,
    generation: u64,
    i: usize,
) -> anyhow::Result<[f64; 4]> {
    let t = agent_push(bridge, config, generation, i)?;
    let b = agent_push(bare, config, generation, i)?;
    Ok([ms(t.total), ms(t.handshake), ms(b.total), ms(b.handshake)])
}

fn run_in(
    rt: &Handle,
    bins: &Bins,
    baseline: Option<&Bins>,
    dir: &Path,
    iterations: usize,
) -> anyhow::Result<(Samples, Option<Samples>)> {
    let notify = NotifySocket::bind(&dir.join("notify"))?;
    let mut agent_guest = start_agent_guest(rt, bins, dir, &notify, "a", false)?;
    let mut bare_guest = start_agent_guest(rt, bins, dir, &notify, "p", true)?;
    let mut base_side = match baseline {
        Some(b) => Some(BaselineSide {
            bridge: start_agent_guest(rt, b, dir, &notify, "b", false)
                .context("the baseline's agent")?,
            bare: start_agent_guest(rt, b, dir, &notify, "c", true)
                .context("the baseline's agent")?,
            xenchan: Vec::new(),
            handshake: Vec::new(),
            bare_samples: Vec::new(),
            bare_handshake: Vec::new(),
            ratio: Vec::new(),
        }),
        None => None,
    };
    let mut qga_guest = start_qga_guest(rt, dir);
    let mut null = start_null_guest(rt, dir)?;
    let configs = [
        configs::latency_config(0, MAC_AGENT),
        configs::latency_config(1, MAC_AGENT),
    ];
    let keys = [configs::latency_keys(0), configs::latency_keys(1)];
    let mut out = Samples {
        xenchan: Vec::new(),
        handshake: Vec::new(),
        qga: Err("not measured".into()),
        ratio: Vec::new(),
        floor: Vec::new(),
        floor_handshake: Vec::new(),
        bare: Vec::new(),
        bare_handshake: Vec::new(),
        live_network: agent_guest.ns.is_some(),
    };
    let mut qga_samples = Vec::new();
    let mut qga_error: Option<String> = None;
    for i in 0..WARMUP + iterations {
        let variant = i as u64 % 2;
        let generation = i as u64 + 1;
        let measured = i >= WARMUP;
        // xenchan, through the bridge and on the bare pty; with a baseline, the two sides
        // take turns at going first.
        let config = &configs[variant as usize];
        let base_first = i % 2 == 1;
        let mut base_times = None;
        if base_first && let Some(b) = &mut base_side {
            base_times = Some(agent_pair(
                &mut b.bridge,
                &mut b.bare,
                config,
                generation,
                i,
            )?);
        }
        let [x, hs, bare, bare_hs] =
            agent_pair(&mut agent_guest, &mut bare_guest, config, generation, i)?;
        if !base_first && let Some(b) = &mut base_side {
            base_times = Some(agent_pair(
                &mut b.bridge,
                &mut b.bare,
                config,
                generation,
                i,
            )?);
        }
        if measured {
            out.xenchan.push(x);
            out.handshake.push(hs);
            out.bare.push(bare);
            out.bare_handshake.push(bare_hs);
            if let (Some(b), Some([bx, bhs, bb, bbhs])) = (&mut base_side, base_times) {
                b.xenchan.push(bx);
                b.handshake.push(bhs);
                b.bare_samples.push(bb);
                b.bare_handshake.push(bbhs);
            }
        }
        // qemu-ga
        if let Ok(g) = &mut qga_guest
            && qga_error.is_none()
        {
            let hostname = configs::latency_hostname(variant);
            let add = configs::latency_address(variant);
            let del = configs::latency_address(variant + 1);
            let job = qga::Job {
                user: USER,
                keys: &keys[variant as usize],
                hostname: &hostname,
                iface: IFACE,
                add: &add,
                del: &del,
            };
            let t = Instant::now();
            match qga::push_once(&g.chan.socket, &job, ITERATION_TIMEOUT) {
                Ok((h, ipc)) => {
                    let took = ms(t.elapsed());
                    if measured {
                        if h != 0 || ipc != 0 {
                            qga_error = Some(format!(
                                "qemu-ga: hostname exited {h}, ip exited {ipc} (see {})",
                                dir.join("qga.log").display()
                            ));
                        } else {
                            qga_samples.push(took);
                            out.ratio.push(took / x);
                            if let (Some(b), Some([bx, ..])) = (&mut base_side, base_times) {
                                b.ratio.push(took / bx);
                            }
                        }
                    }
                }
                Err(e) => qga_error = Some(format!("qemu-ga push {i} failed: {e:#}")),
            }
        }
        // null guest
        let (_, times) = wire::push_once(
            &null.chan.socket,
            &configs[variant as usize],
            generation,
            ITERATION_TIMEOUT,
        )
        .map_err(|e| anyhow::anyhow!("null guest push {i}: {e}"))?;
        if measured {
            out.floor.push(ms(times.total));
            out.floor_handshake.push(ms(times.handshake));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let last = (WARMUP + iterations - 1) as u64 % 2;
    verify_agent_guest(&agent_guest, last)?;
    verify_agent_guest(&bare_guest, last)?;
    if let Some(b) = &base_side {
        verify_agent_guest(&b.bridge, last).context("the baseline's agent")?;
        verify_agent_guest(&b.bare, last).context("the baseline's bare-pty agent")?;
    }
    out.qga = match (qga_guest.as_ref(), qga_error) {
        (Err(why), _) => Err(why.clone()),
        (Ok(_), Some(e)) => Err(e),
        (Ok(g), None) => {
            verify_qga_guest(g, last, &keys[last as usize])?;
            Ok(qga_samples)
        }
    };
    // Orderly teardown: processes first, then channels, then namespaces (drops).
    agent_guest.agent.terminate(Duration::from_secs(3));
    if let Link::Bridge(chan) = &mut agent_guest.link {
        chan.stop(rt);
    }
    bare_guest.agent.terminate(Duration::from_secs(3));
    if let Some(b) = &mut base_side {
        b.bridge.agent.terminate(Duration::from_secs(3));
        if let Link::Bridge(chan) = &mut b.bridge.link {
            chan.stop(rt);
        }
        b.bare.agent.terminate(Duration::from_secs(3));
    }
    if let Ok(g) = &mut qga_guest {
        g.qga.terminate(Duration::from_secs(3));
        g.chan.stop(rt);
    }
    null.stop.store(true, Ordering::Relaxed);
    null.chan.stop(rt);
    if let Some(t) = null.thread.take() {
        let _ = t.join();
    }
    let base_out = base_side.map(|b| Samples {
        xenchan: b.xenchan,
        handshake: b.handshake,
        qga: out.qga.clone(),
        ratio: b.ratio,
        floor: out.floor.clone(),
        floor_handshake: out.floor_handshake.clone(),
        bare: b.bare_samples,
        bare_handshake: b.bare_handshake,
        live_network: b.bridge.ns.is_some(),
    });
    Ok((out, base_out))
}

/// One measured push to an agent guest, checked: every item applied.
fn agent_push(
    g: &mut AgentGuest,
    config: &GuestConfig,
    generation: u64,
    i: usize,
) -> anyhow::Result<wire::SessionTimes> {
    let (result, times) = g.push(config, generation).map_err(|e| {
        let alive = g.agent.check_running().err();
        anyhow::anyhow!(
            "xenchan push {i}: {e}{}",
            alive.map(|x| format!(" ({x:#})")).unwrap_or_default()
        )
    })?;
    if !result.all_ok() {
        bail!(
            "xenchan push {i} did not apply every item: {:?}",
            result.items
        );
    }
    Ok(times)
}

/// The guest really holds the last variant: hostname file, keys, address in the namespace.
fn verify_agent_guest(a: &AgentGuest, v: u64) -> anyhow::Result<()> {
    let want_host = configs::latency_hostname(v);
    let short = want_host.split('.').next().unwrap_or_default();
    let got = std::fs::read_to_string(a.root.join("etc/hostname"))?;
    anyhow::ensure!(
        got.trim() == short,
        "guest etc/hostname is {got:?}, not {short}"
    );
    let keys = std::fs::read_to_string(a.root.join("home/cloud/.ssh/authorized_keys"))?;
    for k in configs::latency_keys(v) {
        let blob = k.split_whitespace().nth(1).unwrap_or_default();
        anyhow::ensure!(
            keys.contains(blob),
            "a pushed key is missing from authorized_keys"
        );
    }
    if let Some(ns) = &a.ns {
        let addrs = ns.addresses(IFACE)?;
        anyhow::ensure!(
            addrs.contains(&configs::latency_address(v)),
            "namespace {} has {addrs:?}, not {}",
            ns.name(),
            configs::latency_address(v)
        );
    }
    Ok(())
}

fn verify_qga_guest(g: &QgaGuest, v: u64, keys: &[String]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(g.home.join(".ssh/authorized_keys"))
        .context("qemu-ga's authorized_keys")?;
    for k in keys {
        anyhow::ensure!(text.contains(k.as_str()), "qemu-ga did not write a key");
    }
    let addrs = g.ns.addresses(IFACE)?;
    anyhow::ensure!(
        addrs.contains(&configs::latency_address(v)),
        "qemu-ga namespace has {addrs:?}"
    );
    Ok(())
}

/// The size of the config frame pushed (the whole line as sent), in bytes.
pub fn push_frame_bytes() -> usize {
    let c: GuestConfig = configs::latency_config(0, MAC_AGENT);
    let env = xenchan_protocol::Envelope::new(
        xenchan_protocol::Role::Broker,
        Some(xenchan_protocol::Nonce::from_bytes([0; 16])),
        xenchan_protocol::message::Body::Config(xenchan_protocol::message::ConfigPush::new(1, c)),
    );
    xenchan_protocol::FrameCodec::new(xenchan_protocol::MAX_FRAME_DEFAULT)
        .encode_line(&env)
        .map_or(0, |l| l.len())
}

/// The documents pushed, for the report's notes.
pub fn describe() -> String {
    let c: GuestConfig = configs::latency_config(0, MAC_AGENT);
    let frame = push_frame_bytes();
    let pieces = frame.div_ceil(xenchan_sim::bridge::RING_WINDOW);
    format!(
        "{} bytes of JSON in a {frame}-byte frame ({pieces} piece{} through the 1 KiB window): {} (ssh keys ed25519)",
        c.canonical_json().len(),
        if pieces == 1 { "" } else { "s" },
        c.items().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The floor's guest answers a real push through the simulator's bridge.
    #[test]
    fn null_guest_answers_through_the_bridge() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let mut n = start_null_guest(rt.handle(), dir.path()).unwrap();
        let cfg = configs::latency_config(0, MAC_AGENT);
        for generation in 1..=3 {
            let (r, t) =
                wire::push_once(&n.chan.socket, &cfg, generation, Duration::from_secs(10)).unwrap();
            assert_eq!(r.generation, generation);
            assert_eq!(r.items.len(), 3);
            assert!(t.handshake <= t.total);
        }
        n.stop.store(true, Ordering::Relaxed);
        n.chan.stop(rt.handle());
        n.thread.take().unwrap().join().unwrap();
    }

    /// qemu-guest-agent does the job in its namespaces: keys written, address set.
    #[test]
    fn qemu_guest_agent_does_the_same_job() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let mut g = match start_qga_guest(rt.handle(), dir.path()) {
            Ok(g) => g,
            Err(why) => {
                eprintln!("SKIP: {why}");
                return;
            }
        };
        let keys = configs::latency_keys(0);
        let (host, add, del) = (
            configs::latency_hostname(0),
            configs::latency_address(0),
            configs::latency_address(1),
        );
        let job = qga::Job {
            user: USER,
            keys: &keys,
            hostname: &host,
            iface: IFACE,
            add: &add,
            del: &del,
        };
        let (h, _first_del_fails) =
            qga::push_once(&g.chan.socket, &job, Duration::from_secs(20)).unwrap();
        assert_eq!(h, 0);
        verify_qga_guest(&g, 0, &keys).unwrap();
        g.qga.terminate(Duration::from_secs(3));
        g.chan.stop(rt.handle());
    }
}
