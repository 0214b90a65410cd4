//! Child processes (broker, agents, the hotplug helper): started detached from the
//! terminal and tied to the simulator's life, output appended to a log file, stopped
//! with SIGTERM then SIGKILL after a grace period.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::sys;

/// A running child.
#[derive(Debug)]
pub struct Proc {
    what: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

/// Opens `log` for appending (creating it).
pub fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(what: impl Into<String>, mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        let out = open_log(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        sys::detach_and_tie_to_parent(&mut cmd);
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok(Proc {
            what: what.into(),
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What this process is, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends a signal (ignored if the process is gone).
    pub fn signal(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = signal::kill(Pid::from_raw(pid), sig);
        }
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Ok(st);
        }
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        if let Ok(st) = tokio::time::timeout(grace, self.child.wait()).await {
            st
        } else {
            tracing::warn!(what = %self.what, pid = self.pid, "did not stop on SIGTERM; killing it");
            self.kill().await
        }
    }

    /// SIGKILL and wait.
    pub async fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Ok(st);
        }
        let _ = self.child.start_kill();
        self.child.wait().await
    }
}
