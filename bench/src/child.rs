//! Child processes the measurements run (broker, agents, the swarm, qemu-ga): output to
//! a log file, stopped with SIGTERM (SIGKILL after a grace period) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child.
#[derive(Debug)]
pub struct Child {
    process: std::process::Child,
    what: String,
    log: PathBuf,
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Child {
    /// Starts `cmd` with stdin closed (unless the caller set it) and output appended to `log`.
    pub fn spawn(what: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log {}", log.display()))?;
        let err = out.try_clone().context("log file")?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} ({})", cmd.get_program().display()))?;
        Ok(Child {
            process: child,
            what: what.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// Wraps a child the caller spawned (with its own stdio set-up).
    pub fn adopt(what: &str, child: std::process::Child, log: &Path) -> Child {
        Child {
            process: child,
            what: what.to_string(),
            log: log.to_path_buf(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The underlying child (for its pipes).
    pub fn inner(&mut self) -> &mut std::process::Child {
        &mut self.process
    }

    /// An error naming the log's tail if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(st)) = self.process.try_wait() {
            anyhow::bail!(
                "{} exited with {st}; its log {} ends with:\n{}",
                self.what,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.process.try_wait() {
            return Some(st);
        }
        let pid = Pid::from_raw(i32::try_from(self.process.id()).ok()?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.process.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.process.kill();
        self.process.wait().ok()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}
