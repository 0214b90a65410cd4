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

/// Asks the kernel to SIGKILL `cmd`'s process when the thread that starts it ends.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have ended before the prctl: then nobody would kill it.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the bench ended while starting it"));
            }
            Ok(())
        });
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Child {
    /// Starts `cmd` with stdin closed (unless the caller set it) and output appended to `log`.
    ///
    /// The child gets SIGKILL when the thread that started it ends, which for the callers
    /// here (the main thread, tokio's workers) is when the bench ends, killed or not: an
    /// agent that outlived a killed bench reopened its pty's path (`/dev/pts/0`), which
    /// the next run's pty took, and read the bytes meant for that run's agent (pushes
    /// timed out after 20 s). Not for a child started on a thread that ends early (such
    /// as tokio's blocking pool).
    pub fn spawn(what: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
        die_with_parent(cmd);
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};

    /// A child outlives nothing that started it: the thread that spawned it ends, and
    /// the kernel kills it (as it kills every agent of a bench that is killed).
    #[test]
    fn a_child_is_killed_when_the_thread_that_started_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let pid = std::thread::spawn(move || {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            let c = Child::spawn("sleep", &mut cmd, &log).unwrap();
            let pid = c.pid();
            // Without its Drop, which would stop it: only the kernel may.
            std::mem::forget(c);
            pid
        })
        .join()
        .unwrap();
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        let started = Instant::now();
        let status = waitpid(pid, None).unwrap();
        assert_eq!(status, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
