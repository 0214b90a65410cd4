//! The xenchan guest agent and the `xen-console-setup` udev helper.
//!
//! - [`run`] is the agent: it waits for the channel's device link, opens the device
//!   (an hvc tty made raw, or a virtio-serial port), speaks the xenchan protocol with the
//!   broker in dom0 and applies the configuration it pushes under the guest root.
//! - [`console_setup`] is what the udev rule runs when a Xen console device comes or goes:
//!   it makes or removes `/dev/xen-channel/<name>`.
//! - [`consoles`] lists Xen console devices and hvc ttys through libudev, for diagnosis.
//!
//! The binaries (`xenchan-agent`, `xen-console-setup`) are thin wrappers over these.
//! docs/AGENT.md describes the design and its decisions.

pub mod apply;
mod boot;
pub mod cli;
mod coalesce;
pub mod console_setup;
#[cfg(feature = "consoles")]
pub mod consoles;
mod device;
mod discovery;
mod error;
pub mod facts;
mod fsat;
pub mod host_keys;
pub mod identity;
mod links;
pub mod logging;
mod options;
pub mod seal;
mod session;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use tracing::{info, warn};

pub use error::{AgentError, exit};
pub use options::{
    AgentOptions, DEFAULT_CHANNEL_DIR, DEFAULT_STATE_DIR, DEFAULT_VIRTIO_DIR, NetworkOptions,
    Timing,
};

use device::Channel;
use discovery::Watcher;
use links::LinkFeed;
use session::{AgentCore, End};
use state::StateStore;

/// Runs the agent until `shutdown` completes (then a `bye` is sent if a session is open,
/// and `Ok(())` is returned). It only returns an error for set-up problems (bad options,
/// unusable state folder); a missing, vanishing or failing device is waited for and
/// retried forever, and without inotify the channel folders are polled.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    check_options(&opts)?;
    let store = StateStore::open(&opts.state_dir).map_err(|source| AgentError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let applied = store.load();
    if let Some(dir) = &opts.registry_dir {
        for w in xenchan_registry::startup_check(&opts.channel, dir) {
            warn!(channel = %opts.channel, "{w}");
        }
    }
    let dirs = discovery::watch_dirs(&opts.channel_dir, &opts.virtio_dir);
    let mut watcher = match opts.device {
        Some(_) => None,
        None => Some(Watcher::new(
            dirs.clone(),
            &opts.channel,
            opts.timing.rescan,
            opts.timing.poll,
        )),
    };
    let timing = opts.timing;
    let device = opts.device.clone();
    // Random per process start: the broker tells a repeated answer of this process from
    // one of a restarted agent (which lost any push in flight) by it.
    let instance = xenchan_protocol::message::Hello::new_instance(rand::random());
    info!(
        channel = %opts.channel,
        instance = %instance,
        folders = %discovery::describe_dirs(&dirs),
        discovery = match &watcher {
            Some(w) if w.polling() => "polling",
            Some(_) => "inotify",
            None => "--device",
        },
        device = ?device,
        root = %opts.root.display(),
        applied_generation = applied.as_ref().map(|a| a.generation),
        "xenchan-agent starting"
    );
    // The first boot of a clone of a sealed template has no ssh host keys, and sshd
    // refuses to start without them (Debian's ssh.service: `sshd -t` fails, and the
    // restarts hit the start limit). The ed25519 key (milliseconds) is made here, before
    // READY, so that sshd (ordered after network.target, after this unit) finds it even
    // when no broker is connected yet; the slow types (RSA: over 20 s under an
    // emulator) follow on a thread of their own, which the process does not wait for.
    // The facts report the keys once a session starts.
    let root = opts.root.clone();
    match tokio::task::spawn_blocking(move || host_keys::ensure_first(&root)).await {
        Ok(true) => {
            let root = opts.root.clone();
            let _ = std::thread::Builder::new()
                .name("ssh-keygen".into())
                .spawn(move || host_keys::ensure_rest(&root));
        }
        Ok(false) => {}
        Err(e) => warn!(error = %e, "making the ssh host keys failed"),
    }
    if opts.sd_notify {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
    // Subscribed before the boot restore looks at the links, so an interface that
    // appears meanwhile is seen; its events are handled once the restore is done.
    let links = (opts.is_live_root() || opts.network.netns.is_some())
        .then(|| {
            LinkFeed::start(opts.network.netns.clone(), timing.apply_timeout)
                .map_err(|e| warn!(error = %e, "cannot subscribe to rtnetlink link notifications; interfaces that appear later are only seen by the retries"))
                .ok()
        })
        .flatten();
    let mut shutdown = std::pin::pin!(shutdown);
    let boot = match boot::live_only_state(&opts, applied.as_ref()) {
        Some(state) => tokio::select! {
            b = boot::restore(&opts, state) => Some(b),
            () = shutdown.as_mut() => return Ok(()),
        },
        None => None,
    };
    if let Some(l) = &links {
        l.begin(boot);
    }
    let mut core = AgentCore {
        opts: Arc::new(opts),
        store,
        applied,
        appliers: Arc::new(apply::default_appliers()),
        instance,
        retry: None,
        links,
    };
    let mut retry = timing.reopen_min;
    let mut failures = 0u32;
    loop {
        let path = match (&device, watcher.as_mut()) {
            (Some(d), _) => d.clone(),
            (None, Some(w)) => tokio::select! {
                p = w.wait_for_link() => p,
                () = shutdown.as_mut() => return Ok(()),
            },
            (None, None) => unreachable!("a watcher exists whenever no device is given"),
        };
        let mut chan = match Channel::open(&path) {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                // The first failure and then every tenth are worth a line; the rest are
                // the expected ENODEV-right-after-hotplug retries.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(device = %path.display(), error = %e, transient = device::is_transient(&e), attempts = failures, "cannot open the channel device; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = shutdown.as_mut() => return Ok(()),
                }
                retry = (retry * 2).min(timing.reopen_max);
                continue;
            }
        };
        failures = 0;
        info!(device = %chan.path().display(), tty = chan.is_tty(), "channel device open");
        let tty = chan.is_tty();
        let gone = link_gone(
            path.clone(),
            chan.id(),
            watcher.as_mut().filter(|_| device.is_none()),
        );
        let (end, stats) = session::serve(&mut chan, tty, &mut core, gone, &mut shutdown).await;
        tracing::debug!(?stats, "device session ended");
        match end {
            End::Shutdown => {
                info!("shutting down");
                return Ok(());
            }
            End::Gone => {
                info!(device = %chan.path().display(), "the channel link went away; waiting for it again");
                retry = timing.reopen_min;
            }
            End::Hangup(e) => {
                warn!(device = %chan.path().display(), error = %e, "channel device failed; reopening");
                drop(chan);
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = shutdown.as_mut() => return Ok(()),
                }
                retry = (retry * 2).min(timing.reopen_max);
            }
        }
    }
}

/// Resolves when `path` no longer leads to the device `id` (removed, or pointed at
/// another device); never without a watcher (an explicit `--device`).
async fn link_gone(path: std::path::PathBuf, id: device::DeviceId, watcher: Option<&mut Watcher>) {
    let Some(w) = watcher else {
        return std::future::pending().await;
    };
    loop {
        w.changed().await;
        if device::DeviceId::of_path(&path).ok() != Some(id) {
            return;
        }
    }
}

fn check_options(opts: &AgentOptions) -> Result<(), AgentError> {
    xenchan_registry::validate_device_name(&opts.channel)
        .map_err(|e| AgentError::Config(format!("channel name `{}`: {e}", opts.channel)))?;
    if !opts.root.is_dir() {
        return Err(AgentError::Config(format!(
            "guest root {} is not a folder",
            opts.root.display()
        )));
    }
    if opts.timing.keepalive.is_zero()
        || opts.timing.beacon_min.is_zero()
        || opts.timing.poll.is_zero()
    {
        return Err(AgentError::Config(
            "keepalive, beacon and poll intervals must be above zero".into(),
        ));
    }
    Ok(())
}
