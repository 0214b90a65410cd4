//! The agent's footprint: start to ready (spawn until its sd_notify `READY=1`, sent once
//! it watches for its device), idle RSS once waiting, and the stripped binary's size;
//! qemu-guest-agent's idle RSS beside it when installed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bins::Bins;
use crate::child::Child;
use crate::notify::NotifySocket;
use crate::procfs;
use crate::report::ms;

/// How long after READY the idle RSS is read (lazy start-up work settles).
pub const IDLE_AFTER: Duration = Duration::from_millis(300);

/// Idle memory of one program over several starts, KiB per start.
#[derive(Debug, Default)]
pub struct Idle {
    /// VmRSS.
    pub rss: Vec<f64>,
    /// Its anonymous part (heap, stacks, relocated data).
    pub anon: Vec<f64>,
    /// Its file-backed part (pages of the binary and the shared libraries).
    pub file: Vec<f64>,
    /// PSS (shared pages divided among the processes mapping them).
    pub pss: Vec<f64>,
}

impl Idle {
    fn sample(&mut self, pid: u32) -> anyhow::Result<()> {
        let m = procfs::memory(pid)?;
        self.rss.push(m.rss_kib as f64);
        self.anon.push(m.anon_kib as f64);
        self.file.push(m.file_kib as f64);
        self.pss.push(procfs::pss_kib(pid)? as f64);
        Ok(())
    }
}

/// What was measured.
#[derive(Debug)]
pub struct Samples {
    /// Spawn to READY=1, ms.
    pub start_to_ready: Vec<f64>,
    /// Memory while waiting for the device.
    pub idle: Idle,
    /// The release binary's size as built, bytes.
    pub binary_bytes: u64,
    /// After `strip`, bytes.
    pub stripped_bytes: Option<u64>,
    /// qemu-ga's memory while idle on a tty; `Err` says why not measured.
    pub qga: Result<Idle, String>,
}

/// Starts the real agent `runs` times in a guest root under `base` whose channel never
/// appears.
pub fn run(bins: &Bins, base: &Path, runs: usize) -> anyhow::Result<Samples> {
    run_agent(&bins.agent, base, runs, true)
}

/// The packaged agent daemon beside the release binaries in `bins`: what `cargo xtask deb`
/// puts in the package (`<target>/<arch>-unknown-linux-musl/agent/xenchan-agent`, built
/// by `make agent-static` too), when it was built.
pub fn packaged_agent(bins: &Bins) -> Option<std::path::PathBuf> {
    let target = bins.dir.parent()?;
    let p = target
        .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
        .join("agent")
        .join("xenchan-agent");
    p.is_file().then_some(p)
}

/// [`run`] for the agent binary `agent`; qemu-ga beside it when `qga`.
pub fn run_agent(agent_bin: &Path, base: &Path, runs: usize, qga: bool) -> anyhow::Result<Samples> {
    let tmp = tempfile::Builder::new().prefix("xcf").tempdir_in(base)?;
    let dir = tmp.path();
    let root = xenchan_sim::guest::GuestRoot::create(
        dir.join("g"),
        &xenchan_sim::guest::GuestIdentity {
            uuid: xenchan_sim::guest::random_uuid(),
            mac: "00:16:3e:f0:00:01".into(),
            cloud_uid: nix::unistd::getuid().as_raw(),
            cloud_gid: nix::unistd::getgid().as_raw(),
        },
    )?;
    let notify = NotifySocket::bind(&dir.join("notify"))?;
    let mut out = Samples {
        start_to_ready: Vec::new(),
        idle: Idle::default(),
        binary_bytes: 0,
        stripped_bytes: None,
        qga: Err("not measured".into()),
    };
    for i in 0..runs {
        let mut cmd = Command::new(agent_bin);
        cmd.arg("--channel-dir")
            .arg(root.channel_dir())
            .arg("--virtio-dir")
            .arg(root.join("dev/virtio-ports"))
            .arg("--root")
            .arg(root.path())
            .arg("--state-dir")
            .arg(root.state_dir())
            .arg("--no-live-hostname")
            .arg("--registry-dir")
            .arg(dir.join("registry.d"))
            .env("NOTIFY_SOCKET", notify.path())
            .env("RUST_LOG", crate::agent_log())
            .stdin(std::process::Stdio::null());
        notify.drain();
        let t = Instant::now();
        let mut agent = Child::spawn("the agent", &mut cmd, &dir.join(format!("agent{i}.log")))?;
        let ready = match notify.wait_ready(Duration::from_secs(10)) {
            Ok(at) => at,
            Err(e) => {
                agent.check_running()?;
                return Err(e).context("the agent did not signal READY=1");
            }
        };
        out.start_to_ready.push(ms(ready.duration_since(t)));
        std::thread::sleep(IDLE_AFTER);
        agent.check_running()?;
        out.idle.sample(agent.pid())?;
        agent.terminate(Duration::from_secs(3));
    }
    out.binary_bytes = std::fs::metadata(agent_bin)?.len();
    let copy = dir.join("xenchan-agent.stripped");
    std::fs::copy(agent_bin, &copy)?;
    out.stripped_bytes = Command::new("strip")
        .arg(&copy)
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .and_then(|_| std::fs::metadata(&copy).ok())
        .map(|m| m.len());
    if qga {
        out.qga = qga_idle(dir, runs.min(3));
    }
    Ok(out)
}

/// qemu-ga on a pty slave (no namespaces needed: idle, it changes nothing), its memory
/// after it opened its channel.
fn qga_idle(dir: &Path, runs: usize) -> Result<Idle, String> {
    let Some(bin) = crate::qga::binary() else {
        return Err(
            "qemu-guest-agent is not installed (Debian: apt-get install qemu-guest-agent)".into(),
        );
    };
    let mut v = Idle::default();
    for i in 0..runs {
        let r = (|| -> anyhow::Result<()> {
            let (master, slave) = crate::wire::open_pty()?;
            let state = dir.join(format!("qga-state{i}"));
            std::fs::create_dir_all(&state)?;
            let mut cmd = Command::new(&bin);
            cmd.args(["-m", "isa-serial", "-p"])
                .arg(&slave)
                .arg("-t")
                .arg(&state)
                .arg("-f")
                .arg(dir.join(format!("qga{i}.pid")))
                .stdin(std::process::Stdio::null());
            let mut child = Child::spawn("qemu-ga", &mut cmd, &dir.join(format!("qga{i}.log")))?;
            // It opens its channel right after start; give it the same settling time.
            std::thread::sleep(IDLE_AFTER * 2);
            child.check_running()?;
            v.sample(child.pid())?;
            child.terminate(Duration::from_secs(3));
            drop(master);
            Ok(())
        })();
        if let Err(e) = r {
            return Err(format!("qemu-ga did not run: {e:#}"));
        }
    }
    Ok(v)
}
