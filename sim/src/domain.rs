//! One simulated domain: its guest root (the disk), and per boot what Xen, QEMU, the
//! guest kernel, udev and systemd would do: xenstore nodes, the channel's socket and
//! pty, the hotplug helper, and the agent process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::binaries::Binaries;
use crate::bridge::{Backend, BackendConfig, ChannelState, GuestCloser, SharedState};
use crate::guest::{GuestIdentity, GuestRoot};
use crate::hotplug::{self, Action, HotplugError};
use crate::process::Proc;
use crate::pty::Pty;
use crate::xenstore::{GuestXenstore, Xenstore};

/// What all domains of one simulation share.
#[derive(Debug)]
pub struct SimEnv {
    /// The simulation's folder.
    pub dir: PathBuf,
    /// Where channel sockets are (`<dir>/sockets`, the broker's `socket_dir`).
    pub socket_dir: PathBuf,
    /// Where guest roots are (`<dir>/guests/<name>`).
    pub guests_dir: PathBuf,
    /// Where logs go (`<dir>/logs`).
    pub logs_dir: PathBuf,
    /// The binaries.
    pub bins: Binaries,
    /// The xenstore.
    pub xenstore: Xenstore,
    next_domid: AtomicU32,
    seqnum: AtomicU64,
}

impl SimEnv {
    /// Makes the folders under `dir` and starts xenstore.
    pub fn new(dir: &Path, bins: Binaries) -> Result<SimEnv, DomainError> {
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| DomainError::Io {
                what,
                path: p,
                source,
            }
        };
        let socket_dir = dir.join("sockets");
        let guests_dir = dir.join("guests");
        let logs_dir = dir.join("logs");
        for d in [&socket_dir, &guests_dir, &logs_dir] {
            std::fs::create_dir_all(d).map_err(io("folder", d))?;
        }
        let xenstore = Xenstore::start(dir).map_err(DomainError::Xenstore)?;
        Ok(SimEnv {
            dir: dir.to_path_buf(),
            socket_dir,
            guests_dir,
            logs_dir,
            bins,
            xenstore,
            next_domid: AtomicU32::new(1),
            seqnum: AtomicU64::new(1),
        })
    }

    fn next_domid(&self) -> u32 {
        self.next_domid.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why a domain operation failed.
#[derive(Debug, Error)]
pub enum DomainError {
    /// A file or folder could not be made.
    #[error("cannot make {what} {}", path.display())]
    Io {
        /// What it was for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// xenstore refused.
    #[error("xenstore")]
    Xenstore(#[source] xenchan_xenstore::Error),
    /// The hotplug helper failed.
    #[error("hotplug")]
    Hotplug(#[from] HotplugError),
    /// The agent could not be started.
    #[error("cannot start the agent {}", path.display())]
    Agent {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operation needs a running domain.
    #[error("domain {0} is not running")]
    NotRunning(String),
    /// The operation needs a stopped domain.
    #[error("domain {0} is running")]
    Running(String),
}

/// How a domain is made.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// The domain's name (its socket is `<name>.sock`).
    pub name: String,
    /// The VM's UUID as the toolstack knows it.
    pub uuid: String,
    /// What the guest's `/sys/hypervisor/uuid` says, if not `uuid` (a wrong guest).
    pub guest_uuid: Option<String>,
    /// The guest's eth0 MAC.
    pub mac: String,
    /// The channel's name in xenstore.
    pub channel: String,
    /// Start an agent at each boot.
    pub agent: bool,
    /// Extra agent arguments.
    pub agent_args: Vec<OsString>,
    /// Host-to-guest rate (bytes/s) for a slow guest.
    pub rate: Option<u32>,
    /// Time between the socket appearing (QEMU up) and the guest's hotplug and agent.
    pub boot_delay: Duration,
    /// `RUST_LOG` for the agent.
    pub agent_log: String,
    /// The folder of its channel socket (its host's `socket_dir`); `None`: the
    /// simulation's `<dir>/sockets`.
    pub socket_dir: Option<PathBuf>,
}

impl DomainSpec {
    /// A normal domain numbered `n` (1-based) named `name`.
    pub fn new(name: impl Into<String>, n: u32) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            uuid: crate::guest::random_uuid(),
            guest_uuid: None,
            mac: crate::guest::mac_for(n),
            channel: xenchan_protocol::DEFAULT_CHANNEL.to_string(),
            agent: true,
            agent_args: Vec::new(),
            rate: None,
            boot_delay: Duration::ZERO,
            agent_log: "info".into(),
            socket_dir: None,
        }
    }
}

/// One exit of an agent process.
#[derive(Debug, Clone)]
pub struct AgentExit {
    /// The boot it ran in.
    pub boot: u32,
    /// Its pid.
    pub pid: u32,
    /// How it ended (None if waiting failed).
    pub status: Option<ExitStatus>,
    /// The simulator stopped it on purpose.
    pub requested: bool,
}

/// How to stop an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// SIGTERM (it says bye), SIGKILL after a grace period.
    Term,
    /// SIGKILL (a crash, or a guest that vanished).
    Kill,
}

#[derive(Debug)]
struct AgentHandle {
    pid: u32,
    stop: Option<oneshot::Sender<StopHow>>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Boot {
    domid: u32,
    backend: Backend,
    xenstore: Option<GuestXenstore>,
    agent: Option<AgentHandle>,
    slave: PathBuf,
}

/// A simulated domain.
#[derive(Debug)]
pub struct Domain {
    spec: DomainSpec,
    env: Arc<SimEnv>,
    root: GuestRoot,
    state: SharedState,
    boot: Option<Boot>,
    boots: u32,
    exits: Arc<Mutex<Vec<AgentExit>>>,
    socket_since: Option<Instant>,
    socket_since_wall: Option<std::time::SystemTime>,
    /// Where its socket is (changes when it migrates or restarts on another host).
    socket_dir: PathBuf,
}

impl Domain {
    /// Makes the guest root and boots the domain.
    pub async fn create(env: Arc<SimEnv>, spec: DomainSpec) -> Result<Domain, DomainError> {
        let root_path = env.guests_dir.join(&spec.name);
        let id = GuestIdentity {
            uuid: spec.guest_uuid.clone().unwrap_or_else(|| spec.uuid.clone()),
            mac: spec.mac.clone(),
            cloud_uid: nix::unistd::getuid().as_raw(),
            cloud_gid: nix::unistd::getgid().as_raw(),
        };
        let root = GuestRoot::create(&root_path, &id).map_err(|source| DomainError::Io {
            what: "guest root",
            path: root_path.clone(),
            source,
        })?;
        let socket_dir = spec
            .socket_dir
            .clone()
            .unwrap_or_else(|| env.socket_dir.clone());
        let mut d = Domain {
            socket_dir,
            spec,
            env,
            root,
            state: Arc::new(Mutex::new(ChannelState::default())),
            boot: None,
            boots: 0,
            exits: Arc::new(Mutex::new(Vec::new())),
            socket_since: None,
            socket_since_wall: None,
        };
        d.boot().await?;
        Ok(d)
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How it was made.
    pub fn spec(&self) -> &DomainSpec {
        &self.spec
    }

    /// The guest root.
    pub fn root(&self) -> &GuestRoot {
        &self.root
    }

    /// `<socket_dir>/<name>.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!("{}.sock", self.spec.name))
    }

    /// The folder its channel socket is in (its host's).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Puts the socket of its next boot in `dir` (the domain started on another host,
    /// with the same disk). Refused while it runs: a running domain [`migrates`](Self::migrate).
    pub fn set_socket_dir(&mut self, dir: &Path) -> Result<(), DomainError> {
        if self.boot.is_some() {
            return Err(DomainError::Running(self.spec.name.clone()));
        }
        self.socket_dir = dir.to_path_buf();
        Ok(())
    }

    /// Live migration to the host whose socket folder is `dir`: the same guest (its
    /// agent process, its tty, its memory: no reboot) gets a new domid and its channel's
    /// xenstore nodes there, the socket appears in `dir`, and the source's socket goes
    /// away (its client reads EOF), like the source's QEMU exiting at the switchover.
    pub async fn migrate(&mut self, dir: &Path) -> Result<(), DomainError> {
        let name = self.spec.name.clone();
        let new_socket = dir.join(format!("{name}.sock"));
        let domid = self.env.next_domid();
        let boot = self
            .boot
            .as_mut()
            .ok_or_else(|| DomainError::NotRunning(name.clone()))?;
        let xenstore = self
            .env
            .xenstore
            .create_domain(
                domid,
                &self.spec.name,
                &self.spec.uuid,
                &self.spec.channel,
                &new_socket,
            )
            .map_err(DomainError::Xenstore)?;
        if let Err(source) = boot.backend.relocate(&new_socket).await {
            self.env.xenstore.destroy_domain(domid, xenstore);
            return Err(DomainError::Io {
                what: "channel socket",
                path: new_socket,
                source,
            });
        }
        let old_domid = std::mem::replace(&mut boot.domid, domid);
        if let Some(old) = boot.xenstore.replace(xenstore) {
            self.env.xenstore.destroy_domain(old_domid, old);
        }
        self.socket_dir = dir.to_path_buf();
        self.socket_since = Some(Instant::now());
        self.socket_since_wall = Some(std::time::SystemTime::now());
        Ok(())
    }

    /// Runs `f` on the channel's observable state (tap, connection counters). The state
    /// is locked meanwhile: keep `f` short and do not call back into the domain.
    pub fn with_channel<R>(&self, f: impl FnOnce(&ChannelState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// The shared channel state, for tasks that outlive a borrow of the domain.
    pub fn channel_handle(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// The current domid, if running.
    pub fn domid(&self) -> Option<u32> {
        self.boot.as_ref().map(|b| b.domid)
    }

    /// Boots so far (1 after creation).
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// When the current boot's socket appeared.
    pub fn socket_since(&self) -> Option<Instant> {
        self.socket_since
    }

    /// When the current boot's socket appeared, wall clock (to compare with the API's
    /// timestamps).
    pub fn socket_since_wall(&self) -> Option<std::time::SystemTime> {
        self.socket_since_wall
    }

    /// The current pty slave (`/dev/pts/K`), if running.
    pub fn hvc_slave(&self) -> Option<&Path> {
        self.boot.as_ref().map(|b| b.slave.as_path())
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.boot.as_ref()?.agent.as_ref().map(|a| a.pid)
    }

    /// Every agent exit so far.
    pub fn agent_exits(&self) -> Vec<AgentExit> {
        self.exits.lock().unwrap().clone()
    }

    /// Agent exits the simulator did not ask for (crashes).
    pub fn unexpected_agent_exits(&self) -> Vec<AgentExit> {
        self.agent_exits()
            .into_iter()
            .filter(|e| !e.requested)
            .collect()
    }

    /// Whether the domain is running.
    pub fn is_running(&self) -> bool {
        self.boot.is_some()
    }

    fn log(&self, what: &str) -> PathBuf {
        self.env
            .logs_dir
            .join(format!("{}.{what}.log", self.spec.name))
    }

    /// Starts a domain that is not running (like `xl create`).
    pub async fn boot(&mut self) -> Result<(), DomainError> {
        if self.boot.is_some() {
            return Ok(());
        }
        let domid = self.env.next_domid();
        self.boots += 1;
        let socket = self.socket_path();
        let pty = Pty::open().map_err(|source| DomainError::Io {
            what: "pty",
            path: PathBuf::from("/dev/ptmx"),
            source,
        })?;
        let slave = pty.slave_path().to_path_buf();
        self.root
            .new_boot(&slave)
            .map_err(|source| DomainError::Io {
                what: "guest /dev",
                path: self.root.dev(),
                source,
            })?;
        let xenstore = self
            .env
            .xenstore
            .create_domain(
                domid,
                &self.spec.name,
                &self.spec.uuid,
                &self.spec.channel,
                &socket,
            )
            .map_err(DomainError::Xenstore)?;
        self.state.lock().unwrap().tap.new_boot(self.boots);
        let mut cfg = BackendConfig::new(&socket);
        cfg.rate = self.spec.rate;
        let backend = Backend::spawn(pty, cfg, Arc::clone(&self.state)).map_err(|source| {
            DomainError::Io {
                what: "channel socket",
                path: socket.clone(),
                source,
            }
        })?;
        self.socket_since = Some(Instant::now());
        self.socket_since_wall = Some(std::time::SystemTime::now());
        self.boot = Some(Boot {
            domid,
            backend,
            xenstore: Some(xenstore),
            agent: None,
            slave,
        });
        if !self.spec.boot_delay.is_zero() {
            tokio::time::sleep(self.spec.boot_delay).await;
        }
        self.hotplug(Action::Add).await?;
        if self.spec.agent {
            self.start_agent()?;
        }
        Ok(())
    }

    /// Runs the real hotplug helper for the channel, like udev on a uevent.
    pub async fn hotplug(&self, action: Action) -> Result<(), DomainError> {
        let boot = self
            .boot
            .as_ref()
            .ok_or_else(|| DomainError::NotRunning(self.spec.name.clone()))?;
        let xs = boot
            .xenstore
            .as_ref()
            .ok_or_else(|| DomainError::NotRunning(self.spec.name.clone()))?;
        let seq = self.env.seqnum.fetch_add(1, Ordering::Relaxed);
        hotplug::run(
            &self.env.bins.console_setup,
            action,
            &self.root,
            xs.socket(),
            seq,
            &self.log("hotplug"),
        )
        .await?;
        Ok(())
    }

    /// Starts the agent (like systemd at boot). No-op if one runs.
    pub fn start_agent(&mut self) -> Result<(), DomainError> {
        let name = self.spec.name.clone();
        let log = self.log("agent");
        let boot_no = self.boots;
        let bins: &Binaries = &self.env.bins;
        let agent_bin = bins.agent.clone();
        let boot = self
            .boot
            .as_mut()
            .ok_or_else(|| DomainError::NotRunning(name.clone()))?;
        if boot.agent.is_some() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new(&agent_bin);
        cmd.arg("--channel")
            .arg(&self.spec.channel)
            .arg("--channel-dir")
            .arg(self.root.channel_dir())
            .arg("--virtio-dir")
            .arg(self.root.join("dev/virtio-ports"))
            .arg("--root")
            .arg(self.root.path())
            .arg("--state-dir")
            .arg(self.root.state_dir())
            .arg("--no-live-hostname")
            // The guest root has no network manager to detect: write networkd's files.
            .arg("--network-renderer")
            .arg("networkd")
            .args(&self.spec.agent_args)
            .env(
                "RUST_LOG",
                std::env::var("XENCHAN_SIM_AGENT_LOG")
                    .unwrap_or_else(|_| self.spec.agent_log.clone()),
            );
        let proc = Proc::spawn(format!("agent of {name}"), cmd, &log).map_err(|source| {
            DomainError::Agent {
                path: agent_bin.clone(),
                source,
            }
        })?;
        let pid = proc.pid();
        let (tx, rx) = oneshot::channel();
        let closer = boot.backend.closer();
        let exits = Arc::clone(&self.exits);
        let task = tokio::spawn(supervise(proc, rx, closer, exits, boot_no));
        boot.agent = Some(AgentHandle {
            pid,
            stop: Some(tx),
            task,
        });
        Ok(())
    }

    /// Stops the agent (if any) and waits until it is gone and the tty was reset.
    pub async fn stop_agent(&mut self, how: StopHow) {
        let Some(boot) = self.boot.as_mut() else {
            return;
        };
        if let Some(mut a) = boot.agent.take() {
            if let Some(tx) = a.stop.take() {
                let _ = tx.send(how);
            }
            let _ = a.task.await;
        }
    }

    /// Whether the agent process is running.
    pub fn agent_running(&self) -> bool {
        self.boot
            .as_ref()
            .and_then(|b| b.agent.as_ref())
            .is_some_and(|a| !a.task.is_finished())
    }

    /// Kills the agent and starts a new one (a crash and systemd's restart).
    pub async fn restart_agent(&mut self, how: StopHow) -> Result<(), DomainError> {
        self.stop_agent(how).await;
        self.start_agent()
    }

    /// Plays a slow guest from now on (`None`: normal speed).
    pub fn set_rate(&mut self, rate: Option<u32>) {
        self.spec.rate = rate;
        if let Some(b) = &self.boot {
            b.backend.set_rate(rate);
        }
    }

    /// Sends a signal to the agent (SIGSTOP/SIGCONT play a paused guest).
    pub fn signal_agent(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.agent_pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// `xl destroy`: the guest vanishes at once (agent killed, no bye), the broker reads
    /// EOF, the socket goes away, xenstore forgets the domain.
    pub async fn destroy(&mut self) {
        self.stop_agent(StopHow::Kill).await;
        self.teardown().await;
    }

    /// `xl shutdown`: the guest stops its services (the agent gets SIGTERM and may say
    /// bye), then the domain goes away like on destroy.
    pub async fn shutdown(&mut self) {
        self.stop_agent(StopHow::Term).await;
        self.teardown().await;
    }

    async fn teardown(&mut self) {
        if let Some(mut b) = self.boot.take() {
            b.backend.stop().await;
            if let Some(xs) = b.xenstore.take() {
                self.env.xenstore.destroy_domain(b.domid, xs);
            }
        }
        self.socket_since = None;
        self.socket_since_wall = None;
    }

    /// `xl reboot`: shutdown, `gap` with no socket, then a new boot (new domid, new
    /// pty, fresh /dev) whose guest comes up `boot_delay` after its socket.
    pub async fn reboot(&mut self, gap: Duration) -> Result<(), DomainError> {
        self.shutdown().await;
        tokio::time::sleep(gap).await;
        self.boot().await
    }
}

async fn supervise(
    mut proc: Proc,
    stop: oneshot::Receiver<StopHow>,
    closer: GuestCloser,
    exits: Arc<Mutex<Vec<AgentExit>>>,
    boot: u32,
) {
    let (status, requested) = tokio::select! {
        st = proc.wait() => (st.ok(), false),
        how = stop => {
            let st = match how {
                Ok(StopHow::Term) => proc.terminate(Duration::from_secs(10)).await,
                Ok(StopHow::Kill) | Err(_) => proc.kill().await,
            };
            (st.ok(), true)
        }
    };
    if !requested {
        tracing::warn!(pid = proc.pid(), ?status, log = %proc.log().display(), "{} exited", proc.what());
    }
    // The agent's fds are closed: that was the device's last close.
    closer.guest_closed();
    exits.lock().unwrap().push(AgentExit {
        boot,
        pid: proc.pid(),
        status,
        requested,
    });
}
