//! What the guest's kernel and udev do when a channel appears: a uevent with
//! `SUBSYSTEM=xen DEVPATH=/devices/console-N ACTION=add` runs the real
//! `xen-console-setup`, which reads the channel's name from xenstore and makes
//! `/dev/xen-channel/<name>` in the guest root.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::process::Command;

use crate::guest::{CHANNEL_DEVID, GuestRoot};
use crate::process::open_log;

/// How long udev would let the helper run here (it is short-lived by contract).
pub const HELPER_DEADLINE: Duration = Duration::from_secs(20);

/// The helper did not do its job.
#[derive(Debug, Error)]
pub enum HotplugError {
    /// It could not be started.
    #[error("cannot run {helper}")]
    Spawn {
        /// The helper's path.
        helper: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran past the deadline (and was killed).
    #[error("{helper} {action} did not finish within {} s", HELPER_DEADLINE.as_secs())]
    Timeout {
        /// The helper's path.
        helper: String,
        /// add or remove.
        action: &'static str,
    },
    /// It failed; its output is in the log.
    #[error("{helper} {action} exited with {status} (output in {log})")]
    Failed {
        /// The helper's path.
        helper: String,
        /// add or remove.
        action: &'static str,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Where its output went.
        log: String,
    },
}

/// A uevent for the domain's first channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The channel appeared.
    Add,
    /// The channel went away.
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
        }
    }
}

/// Runs `helper` like udev would for `action` on console `CHANNEL_DEVID`, with the
/// kernel's uevent variables in the environment and the guest's paths as flags.
pub async fn run(
    helper: &Path,
    action: Action,
    root: &GuestRoot,
    xenstore_socket: &Path,
    seqnum: u64,
    log: &Path,
) -> Result<(), HotplugError> {
    let name = helper.display().to_string();
    let out = open_log(log).map_err(|source| HotplugError::Spawn {
        helper: name.clone(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| HotplugError::Spawn {
        helper: name.clone(),
        source,
    })?;
    let mut cmd = Command::new(helper);
    // udev passes the uevent's variables and little else.
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ACTION", action.as_str())
        .env("DEVPATH", format!("/devices/console-{CHANNEL_DEVID}"))
        .env("SUBSYSTEM", "xen")
        .env("DRIVER", "xenconsole")
        .env("MODALIAS", "xen:console")
        .env("SEQNUM", seqnum.to_string())
        .env("XENSTORED_PATH", xenstore_socket)
        .arg("--sysfs")
        .arg(root.sysfs())
        .arg("--dev")
        .arg(root.dev())
        .arg("--channel-dir")
        .arg(root.channel_dir())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    if let Some(v) = std::env::var_os("RUST_LOG") {
        cmd.env("RUST_LOG", v);
    }
    let mut child = cmd.spawn().map_err(|source| HotplugError::Spawn {
        helper: name.clone(),
        source,
    })?;
    let status = match tokio::time::timeout(HELPER_DEADLINE, child.wait()).await {
        Ok(Ok(st)) => st,
        Ok(Err(source)) => {
            return Err(HotplugError::Spawn {
                helper: name,
                source,
            });
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(HotplugError::Timeout {
                helper: name,
                action: action.as_str(),
            });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(HotplugError::Failed {
            helper: name,
            action: action.as_str(),
            status,
            log: log.display().to_string(),
        })
    }
}
