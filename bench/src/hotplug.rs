//! Hotplug to configured: the real broker already connected to the domain's channel
//! socket and holding its configuration, the real agent already started and waiting for
//! its device; then the simulator's hotplug runs the real `xen-console-setup`, which
//! makes `/dev/xen-channel/<name>` in the guest root. Measured from the link appearing
//! (seen with inotify) until the broker's API shows the result recorded.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use inotify::{Inotify, WatchMask};
use tokio::runtime::Handle;
use xenchan_api::client::Client;
use xenchan_api::types::DomainState;
use xenchan_protocol::DEFAULT_CHANNEL;
use xenchan_sim::bridge::{Backend, BackendConfig, ChannelState};
use xenchan_sim::broker::Broker;
use xenchan_sim::guest::{GuestIdentity, GuestRoot};
use xenchan_sim::hotplug::Action;
use xenchan_sim::pty::Pty;
use xenchan_sim::xenstore::Xenstore;

use crate::bins::Bins;
use crate::child::Child;
use crate::notify::NotifySocket;
use crate::report::ms;

/// The broker answers a beacon with its hello at most once a second: the hotplug comes
/// this long after the broker's last hello, as it would on a host where the domain's
/// socket has been up for a while.
pub const SETTLE_AFTER_HELLO: Duration = Duration::from_millis(1200);

/// API polling interval while waiting for the result: the figure's resolution. Slept on
/// the thread (`block_in_place`), not on tokio's timer, whose 1 ms ticks made it 1-2 ms.
pub const POLL: Duration = Duration::from_micros(500);

/// What was measured, milliseconds per iteration.
#[derive(Debug, Default)]
pub struct Samples {
    /// Link appearing to result recorded.
    pub link_to_recorded: Vec<f64>,
    /// The helper's own run (spawn to exit).
    pub helper: Vec<f64>,
}

/// Waits, on a thread, for `<dev>/xen-channel/<name>` to appear, and says when.
fn watch_link(
    dev: PathBuf,
    name: String,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Instant>>> {
    let mut ino = Inotify::init().context("inotify")?;
    ino.watches()
        .add(&dev, WatchMask::CREATE | WatchMask::MOVED_TO)
        .context("watch guest /dev")?;
    Ok(std::thread::spawn(move || {
        let chan_dir = dev.join("xen-channel");
        let link = chan_dir.join(&name);
        let mut buf = [0u8; 4096];
        let mut watching_dir = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !watching_dir && chan_dir.is_dir() {
                ino.watches()
                    .add(&chan_dir, WatchMask::CREATE | WatchMask::MOVED_TO)
                    .context("watch the channel folder")?;
                watching_dir = true;
            }
            // After each watch change, look: the link may have come before the watch.
            if link.symlink_metadata().is_ok() {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{} did not appear", link.display());
            }
            let events = ino.read_events_blocking(&mut buf).context("inotify read")?;
            let at = Instant::now();
            for ev in events {
                if ev.name == Some(OsStr::new(name.as_str())) {
                    return Ok(at);
                }
            }
        }
    }))
}

/// Runs `iterations` hotplugs (one fresh domain each) against one broker, in a folder
/// under `base`.
pub fn run(rt: &Handle, bins: &Bins, base: &Path, iterations: usize) -> anyhow::Result<Samples> {
    let tmp = tempfile::Builder::new()
        .prefix("xch")
        .tempdir_in(base)
        .with_context(|| format!("temporary folder in {}", base.display()))?;
    let dir = tmp.path().to_path_buf();
    let sockets = dir.join("s");
    let guests = dir.join("g");
    let logs = dir.join("logs");
    for d in [&sockets, &guests, &logs] {
        std::fs::create_dir_all(d)?;
    }
    let r = rt.block_on(run_async(bins, &dir, &sockets, &guests, &logs, iterations));
    crate::keep_if(tmp, r.is_err());
    r
}

async fn run_async(
    bins: &Bins,
    dir: &Path,
    sockets: &Path,
    guests: &Path,
    logs: &Path,
    iterations: usize,
) -> anyhow::Result<Samples> {
    let xenstore = Xenstore::start(dir).context("xenstore")?;
    let config = xenchan_sim::broker::config_for(dir, sockets);
    let mut broker = Broker::start(&bins.broker, dir, logs, config)
        .await
        .context("starting the broker")?;
    let client = broker.client().with_timeout(Duration::from_secs(10));
    let notify = NotifySocket::bind(&dir.join("notify"))?;
    let key = xenchan_sim::configs::FALLBACK_KEY.trim().to_string();
    let mut out = Samples::default();
    let result = async {
        for i in 0..iterations {
            let (link, helper) = one(
                bins, &xenstore, &client, &notify, sockets, guests, logs, i, &key,
            )
            .await?;
            out.link_to_recorded.push(link);
            out.helper.push(helper);
        }
        anyhow::Ok(())
    }
    .await;
    broker.stop().await;
    result.map(|()| out)
}

#[allow(clippy::too_many_arguments)]
async fn one(
    bins: &Bins,
    xenstore: &Xenstore,
    client: &Client,
    notify: &NotifySocket,
    sockets: &Path,
    guests: &Path,
    logs: &Path,
    i: usize,
    key: &str,
) -> anyhow::Result<(f64, f64)> {
    let n = u32::try_from(i + 1).unwrap_or(1);
    let name = format!("h{n:03}");
    let uuid = xenchan_sim::guest::random_uuid();
    let mac = xenchan_sim::guest::mac_for(n);
    let root = GuestRoot::create(
        guests.join(&name),
        &GuestIdentity {
            uuid: uuid.clone(),
            mac: mac.clone(),
            cloud_uid: nix::unistd::getuid().as_raw(),
            cloud_gid: nix::unistd::getgid().as_raw(),
        },
    )?;
    let socket = sockets.join(format!("{name}.sock"));
    // QEMU starts: the channel's socket and pty; xenstore gets the domain's nodes.
    let pty = Pty::open()?;
    root.new_boot(pty.slave_path())?;
    let xs = xenstore
        .create_domain(n, &name, &uuid, DEFAULT_CHANNEL, &socket)
        .context("xenstore nodes")?;
    let backend = Backend::spawn(
        pty,
        BackendConfig::new(&socket),
        Arc::new(Mutex::new(ChannelState::default())),
    )?;
    let cfg = xenchan_sim::configs::guest_config(n, &name, &mac, &[key.to_string()]);
    let view = client.put_config(&name, &cfg, Some(&uuid)).await?;
    let want = view.desired_generation.context("no desired generation")?;
    // The guest boots: its agent starts and waits for the channel's link.
    let mut cmd = std::process::Command::new(&bins.agent);
    cmd.args(["--channel", DEFAULT_CHANNEL])
        .arg("--channel-dir")
        .arg(root.channel_dir())
        .arg("--virtio-dir")
        .arg(root.join("dev/virtio-ports"))
        .arg("--root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(root.state_dir())
        .arg("--no-live-hostname")
        .args(["--network-renderer", "networkd"])
        .arg("--registry-dir")
        .arg(root.join("etc/xenchan/registry.d"))
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", crate::agent_log())
        .stdin(std::process::Stdio::null());
    notify.drain();
    let mut agent = Child::spawn(
        &format!("the agent of {name}"),
        &mut cmd,
        &logs.join(format!("{name}.agent.log")),
    )?;
    if let Err(e) = notify.wait_ready(Duration::from_secs(10)) {
        agent.check_running()?;
        return Err(e).context("the agent did not signal READY=1");
    }
    // The broker has connected and said hello (echoed by the cooked tty, unanswered).
    let start = Instant::now();
    loop {
        let v = client.get_domain(&name).await?;
        if v.state == DomainState::Handshaking {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the broker never connected to {name} (state {})", v.state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE_AFTER_HELLO).await;
    // The channel's console device appears: udev runs the real helper.
    let watcher = watch_link(root.dev(), DEFAULT_CHANNEL.to_string())?;
    let t_helper = Instant::now();
    xenchan_sim::hotplug::run(
        &bins.console_setup,
        Action::Add,
        &root,
        xs.socket(),
        u64::from(n),
        &logs.join(format!("{name}.hotplug.log")),
    )
    .await?;
    let helper = ms(t_helper.elapsed());
    let t_link = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("link watcher panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let v = client.get_domain(&name).await?;
        let now = Instant::now();
        if v.applied_generation == Some(want) && v.last_result_at.is_some() {
            if v.state != DomainState::Configured {
                bail!("{name} ended {} : {:?}", v.state, v.items);
            }
            break now;
        }
        if now > deadline {
            agent.check_running()?;
            bail!(
                "{name} was not configured within 30 s of its hotplug (state {})",
                v.state
            );
        }
        tokio::task::block_in_place(|| std::thread::sleep(POLL));
    };
    let latency = ms(done.saturating_duration_since(t_link));
    agent.terminate(Duration::from_secs(3));
    backend.stop().await;
    xenstore.destroy_domain(n, xs);
    let _ = client.delete(&name).await;
    Ok((latency, helper))
}
