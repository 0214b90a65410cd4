//! Synchronous hooks in the manner of libvirt's: every executable in the hooks folder is
//! called as `hook <domain> <event> <phase> <extra|->` with the domain's JSON on stdin,
//! under a deadline (`timeouts.hook`, for all the hooks of one call together: the hook
//! running past it is killed with its process group, and the kill logged), and its stderr
//! is kept up to a bound. Hooks are never run while a lock the API needs is held; a hook that
//! calls back into the broker's API therefore works, though it should not need to.
//!
//! `prepare begin` hooks run before a configuration is accepted and a failure aborts it;
//! every other event runs on a background runner whose queue is bounded (a full queue
//! drops the run, logs and counts it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One hook invocation.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// The domain.
    pub domain: String,
    /// `prepare`, `add`, `remove`, `unprepare`.
    pub event: &'static str,
    /// `begin`, `end`, `failed`.
    pub phase: &'static str,
    /// An extra argument (a generation) or `-`.
    pub extra: String,
    /// What the hook reads on stdin (the domain's JSON).
    pub stdin: Vec<u8>,
}

/// Why a hook failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    /// The hook's file name.
    pub hook: String,
    /// Exit status, signal, timeout or spawn error.
    pub reason: String,
    /// What it wrote on stderr (bounded, trimmed; for a killed hook, what it wrote
    /// before).
    pub stderr: String,
    /// It ran past the deadline and was killed.
    pub timed_out: bool,
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hook {} {}", self.hook, self.reason)?;
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

/// Runs the hooks of one folder.
#[derive(Debug, Clone)]
pub struct Hooks {
    dir: PathBuf,
    timeout: Duration,
    stderr_limit: usize,
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<HookCall>,
}

impl Hooks {
    /// Hooks from `dir`, each run bounded by `timeout`, keeping `stderr_limit` bytes of
    /// stderr; starts the background runner (on the current runtime) with a queue of
    /// `queue` calls.
    pub fn start(
        dir: PathBuf,
        timeout: Duration,
        stderr_limit: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Hooks {
        let (tx, mut rx) = mpsc::channel::<HookCall>(queue.max(1));
        let hooks = Hooks {
            dir,
            timeout,
            stderr_limit,
            metrics,
            queue: tx,
        };
        let runner = hooks.clone();
        // The runner holds a clone of the sender through `runner`, so it would never see
        // the channel close; it is aborted with the runtime instead, which is fine:
        // background hooks are notifications.
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                if let Err(f) = runner.run(&call).await {
                    tracing::warn!(domain = %call.domain, event = call.event, phase = call.phase, "{f}");
                }
            }
        });
        hooks
    }

    /// The executables of the hooks folder, by name. A missing folder has none.
    pub fn list(&self) -> Vec<PathBuf> {
        list_hooks(&self.dir)
    }

    /// Queues a notification hook run; never waits. A full queue drops it (counted).
    pub fn notify(&self, call: HookCall) {
        if self.list().is_empty() {
            return;
        }
        if self.queue.try_send(call).is_err() {
            tracing::warn!("hook queue full: a hook run was dropped");
            self.metrics.hook_dropped();
        }
    }

    /// Runs every hook for `call` in name order and stops at the first failure. The
    /// hooks share one deadline (`timeouts.hook`), so the API request waiting for them
    /// (`timeouts.request`, longer) always gets their verdict, however many there are.
    pub async fn run(&self, call: &HookCall) -> Result<(), HookFailure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        for hook in self.list() {
            let r = run_one(&hook, call, deadline, self.timeout, self.stderr_limit).await;
            self.metrics.hook(r.is_ok());
            r?;
        }
        Ok(())
    }
}

/// Executable regular files in `dir`, sorted, skipping hidden files, editor backups and
/// package-manager leftovers.
fn list_hooks(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !(name.starts_with('.')
                || name.ends_with('~')
                || name.contains(".dpkg-")
                || name.ends_with(".rpmnew")
                || name.ends_with(".rpmsave"))
        })
        .filter(|e| {
            std::fs::metadata(e.path())
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// After a hook exits, how long its stderr may stay open (a background child holding
/// it) before the broker stops reading and answers with what it has.
const STDERR_GRACE: Duration = Duration::from_millis(200);

async fn run_one(
    hook: &Path,
    call: &HookCall,
    deadline: tokio::time::Instant,
    timeout: Duration,
    stderr_limit: usize,
) -> Result<(), HookFailure> {
    let name = hook.file_name().map_or_else(
        || hook.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let fail = |reason: String, stderr: String| HookFailure {
        hook: name.clone(),
        reason,
        stderr,
        timed_out: false,
    };
    let extra = if call.extra.is_empty() {
        "-"
    } else {
        call.extra.as_str()
    };
    let mut child = Command::new(hook)
        .args([call.domain.as_str(), call.event, call.phase, extra])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not be started: {e}"), String::new()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let input = call.stdin.clone();
    // A hook that does not read its stdin must not block us: write from a task and
    // ignore EPIPE.
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let mut stderr = child.stderr.take();
    // Kept outside the reading future, so a killed hook's stderr so far is still there.
    let mut kept = Vec::new();
    let status = {
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let room = stderr_limit.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                }
            }
        };
        let mut read_err = std::pin::pin!(read_err);
        let mut read_done = false;
        let waited = tokio::time::timeout_at(deadline, async {
            loop {
                tokio::select! {
                    s = child.wait() => break s,
                    () = &mut read_err, if !read_done => read_done = true,
                }
            }
        })
        .await;
        if waited.is_ok() && !read_done {
            // The hook is done; a child it left behind may hold stderr open: what it
            // wrote so far is its answer.
            let _ = tokio::time::timeout(STDERR_GRACE, &mut read_err).await;
        }
        waited
    };
    writer.abort();
    let text = clean_stderr(&kept, stderr_limit);
    match status {
        Ok(Ok(status)) => {
            if status.success() {
                Ok(())
            } else if let Some(code) = status.code() {
                Err(fail(format!("exited with status {code}"), text))
            } else {
                Err(fail(format!("was killed ({status})"), text))
            }
        }
        Ok(Err(e)) => Err(fail(format!("could not be waited for: {e}"), String::new())),
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group: a shell hook's children must not outlive it.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid.cast_signed()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            tracing::warn!(
                hook = %hook.display(),
                pid = ?pid,
                domain = %call.domain,
                event = call.event,
                phase = call.phase,
                "hook killed: it ran past timeouts.hook ({} ms)",
                timeout.as_millis()
            );
            Err(HookFailure {
                timed_out: true,
                ..fail(
                    format!("timed out after {} ms and was killed", timeout.as_millis()),
                    text,
                )
            })
        }
    }
}

/// Stderr as one trimmed line of text, marked when cut.
fn clean_stderr(raw: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut s: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    if raw.len() >= limit {
        s.push_str(" [...]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_hook(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn call() -> HookCall {
        HookCall {
            domain: "web1".into(),
            event: "prepare",
            phase: "begin",
            extra: "3".into(),
            stdin: b"{\"name\":\"web1\"}".to_vec(),
        }
    }

    fn hooks(dir: &Path, timeout_ms: u64) -> Hooks {
        Hooks::start(
            dir.to_path_buf(),
            Duration::from_millis(timeout_ms),
            64,
            4,
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test]
    async fn hooks_get_arguments_and_stdin_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let log = log.display();
        write_hook(
            dir.path(),
            "20-b",
            &format!("echo b \"$@\" >> {log}; cat >> {log}"),
        );
        write_hook(dir.path(), "10-a", &format!("echo a \"$@\" >> {log}"));
        write_hook(dir.path(), "30-c~", "exit 1");
        std::fs::write(dir.path().join("40-not-exec"), "exit 1").unwrap();
        let h = hooks(dir.path(), 5000);
        h.run(&call()).await.unwrap();
        let got = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(
            got,
            "a web1 prepare begin 3\nb web1 prepare begin 3\n{\"name\":\"web1\"}"
        );
    }

    #[tokio::test]
    async fn failure_returns_bounded_stderr_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        write_hook(
            dir.path(),
            "10-refuse",
            "echo 'address not routed here' >&2; head -c 100000 /dev/zero | tr '\\0' x >&2; exit 3",
        );
        write_hook(dir.path(), "20-never", "touch ran; exit 0");
        let h = hooks(dir.path(), 5000);
        let f = h.run(&call()).await.unwrap_err();
        assert_eq!(f.hook, "10-refuse");
        assert_eq!(f.reason, "exited with status 3");
        assert!(f.stderr.starts_with("address not routed here"), "{f}");
        assert!(f.stderr.len() < 80, "stderr is bounded: {}", f.stderr.len());
        assert!(!dir.path().join("ran").exists());
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        write_hook(dir.path(), "10-hang", "sleep 30 & wait");
        let h = hooks(dir.path(), 200);
        let t = std::time::Instant::now();
        let f = h.run(&call()).await.unwrap_err();
        assert!(f.reason.contains("timed out"), "{f}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_hook_that_ignores_a_large_stdin_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        write_hook(dir.path(), "10-ignore", "exit 0");
        let h = hooks(dir.path(), 5000);
        let mut c = call();
        c.stdin = vec![b'x'; 1 << 20];
        h.run(&c).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_folder_has_no_hooks() {
        let h = hooks(Path::new("/nonexistent/xenchan-hooks"), 100);
        h.run(&call()).await.unwrap();
    }
}
