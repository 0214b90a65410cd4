//! Synchronous hooks in the manner of libvirt's: every executable in the hooks folder is
//! called as `hook <domain> <event> <phase> <extra|->` with the domain's JSON on stdin,
//! under a deadline (`timeouts.hook`, for all the hooks of one call together: the hook
//! running past it is killed with its process group, and the kill logged), and its stderr
//! is kept up to a bound. Hooks are never run while a lock the API needs is held; a hook that
//! calls back into the broker's API therefore works, though it should not need to.
//!
//! `prepare begin` hooks run before a configuration is accepted and a failure aborts it;
//! every other event is a notification, run on a background runner from one bounded queue
//! per domain, taken round-robin across domains ([`FairQueue`]): one domain's flood
//! of notifications never drops nor delays another domain's beyond one run per domain
//! ahead of it. A domain past its own bound (`limits.hook_queue_per_domain`) drops its
//! own oldest run; all queues together past `limits.hook_queue` drop the oldest run of the
//! domain with the most queued. Every drop is logged with the domain and counted.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use listing::Listing;

mod listing;

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
    listing: Arc<Listing>,
    timeout: Duration,
    stderr_limit: usize,
    metrics: Arc<Metrics>,
    queue: Arc<Mutex<FairQueue>>,
    wake: Arc<Notify>,
}

/// What a push onto a [`FairQueue`] dropped to make room, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The domain whose run was dropped.
    pub domain: String,
    /// Runs that domain has had dropped in all.
    pub count: u64,
}

/// Notification runs queued per domain, taken round-robin across domains. Plain data:
/// the runner and `notify` share it under a short lock.
#[derive(Debug)]
pub struct FairQueue {
    per_domain: usize,
    total: usize,
    queued: usize,
    queues: HashMap<String, VecDeque<HookCall>>,
    /// Domains with something queued, in turn order (each at most once).
    turn: VecDeque<String>,
    /// Runs dropped so far, per domain (for the log).
    drops: HashMap<String, u64>,
}

impl FairQueue {
    /// Bounds: `per_domain` runs per domain, `total` in all (each at least 1).
    pub fn new(per_domain: usize, total: usize) -> FairQueue {
        FairQueue {
            per_domain: per_domain.max(1),
            total: total.max(1),
            queued: 0,
            queues: HashMap::new(),
            turn: VecDeque::new(),
            drops: HashMap::new(),
        }
    }

    /// Runs queued in all.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues `call`. A domain at its own bound loses its own oldest run; a full queue
    /// loses the oldest run of the domain with the most queued (ties: the caller's own,
    /// so a flooding domain pays for itself first). Says what was dropped.
    pub fn push(&mut self, call: HookCall) -> Option<Dropped> {
        let own = self.queues.get(&call.domain).map_or(0, VecDeque::len);
        let victim = if own >= self.per_domain {
            Some(call.domain.clone())
        } else if self.queued >= self.total {
            self.queues
                .iter()
                .max_by_key(|(d, q)| (q.len(), **d == call.domain))
                .map(|(d, _)| d.clone())
        } else {
            None
        };
        let dropped = victim.and_then(|d| self.drop_oldest(&d));
        let q = self.queues.entry(call.domain.clone()).or_default();
        if q.is_empty() {
            self.turn.push_back(call.domain.clone());
        }
        q.push_back(call);
        self.queued += 1;
        dropped
    }

    fn drop_oldest(&mut self, domain: &str) -> Option<Dropped> {
        let q = self.queues.get_mut(domain)?;
        q.pop_front()?;
        self.queued -= 1;
        if q.is_empty() {
            self.queues.remove(domain);
            self.turn.retain(|d| d != domain);
        }
        Some(self.count_drop(domain))
    }

    /// Counts a run of `domain` dropped (here or before queueing).
    pub fn count_drop(&mut self, domain: &str) -> Dropped {
        let n = self.drops.entry(domain.to_string()).or_insert(0);
        *n += 1;
        Dropped {
            domain: domain.to_string(),
            count: *n,
        }
    }

    /// The next run: the oldest of the domain whose turn it is; that domain goes to the
    /// back of the turn if it has more.
    pub fn pop(&mut self) -> Option<HookCall> {
        let domain = self.turn.pop_front()?;
        let q = self.queues.get_mut(&domain)?;
        let call = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&domain);
        } else {
            self.turn.push_back(domain);
        }
        if call.is_some() {
            self.queued -= 1;
        }
        call
    }
}

impl Hooks {
    /// Hooks from `dir`, each run bounded by `timeout`, keeping `stderr_limit` bytes of
    /// stderr; starts the background runner (on the current runtime) with queues of
    /// `per_domain` calls per domain and `queue` in all.
    pub fn start(
        dir: PathBuf,
        timeout: Duration,
        stderr_limit: usize,
        queue: usize,
        per_domain: usize,
        metrics: Arc<Metrics>,
    ) -> Hooks {
        let hooks = Hooks {
            listing: Arc::new(Listing::new(dir)),
            timeout,
            stderr_limit,
            metrics,
            queue: Arc::new(Mutex::new(FairQueue::new(per_domain, queue))),
            wake: Arc::new(Notify::new()),
        };
        let runner = hooks.clone();
        // Aborted with the runtime, which is fine: background hooks are notifications.
        tokio::spawn(async move {
            loop {
                let next = runner.lock_queue().pop();
                let Some(call) = next else {
                    // `notify_one` stores a permit: a push between the pop and here is
                    // not missed.
                    runner.wake.notified().await;
                    continue;
                };
                if let Err(f) = runner.run(&call).await {
                    tracing::warn!(domain = %call.domain, event = call.event, phase = call.phase, "{f}");
                }
            }
        });
        hooks
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, FairQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts and logs a notification of `domain` dropped before it was queued (`why`).
    pub fn dropped(&self, domain: &str, why: &str) {
        let d = self.lock_queue().count_drop(domain);
        self.log_drop(&d, why);
    }

    /// Runs of `domain` dropped so far (`DomainView::hooks_dropped`).
    pub fn dropped_of(&self, domain: &str) -> u64 {
        self.lock_queue().drops.get(domain).copied().unwrap_or(0)
    }

    /// Every domain's drop count, for a listing (one lock for all of them).
    pub fn drop_counts(&self) -> HashMap<String, u64> {
        self.lock_queue().drops.clone()
    }

    fn log_drop(&self, d: &Dropped, why: &str) {
        self.metrics.hook_dropped();
        // The first drop of a domain and then one in a hundred: a flood must not become
        // a log flood.
        if d.count == 1 || d.count.is_multiple_of(100) {
            tracing::warn!(
                domain = %d.domain,
                dropped = d.count,
                "a notification hook run of this domain was dropped: {why}"
            );
        }
    }

    /// The executables of the hooks folder, by name. A missing folder has none.
    pub fn list(&self) -> Vec<PathBuf> {
        self.listing.list()
    }

    /// Whether any hook is installed now (what a `begin` call would run). Read from the
    /// folder each time: a hook installed or removed counts from the next call.
    pub fn any(&self) -> bool {
        !self.list().is_empty()
    }

    /// Queues a notification hook run; never waits. A full queue drops a run of the
    /// domain with the most queued (counted, logged) — see [`FairQueue::push`].
    pub fn notify(&self, call: HookCall) {
        if self.list().is_empty() {
            return;
        }
        let dropped = self.lock_queue().push(call);
        self.wake.notify_one();
        if let Some(d) = dropped {
            self.log_drop(&d, "the hook queue is full (limits.hook_queue_per_domain for one domain, limits.hook_queue in all)");
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

    fn note(domain: &str, n: u32) -> HookCall {
        HookCall {
            domain: domain.into(),
            event: "add",
            phase: "end",
            extra: n.to_string(),
            stdin: Vec::new(),
        }
    }

    fn order(q: &mut FairQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|c| format!("{}{}", c.domain, c.extra))
            .collect()
    }

    #[test]
    fn the_queue_takes_domains_in_turn() {
        let mut q = FairQueue::new(10, 100);
        for n in 0..4 {
            assert_eq!(q.push(note("a", n)), None);
        }
        assert_eq!(q.push(note("b", 0)), None);
        assert_eq!(q.push(note("c", 0)), None);
        assert_eq!(q.push(note("b", 1)), None);
        assert_eq!(q.len(), 7);
        assert_eq!(order(&mut q), ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_flooding_domain_drops_only_its_own() {
        // (per domain, total, pushes, expected order, expected drops by domain)
        type Case = (
            usize,
            usize,
            &'static [(&'static str, u32)],
            &'static [&'static str],
            &'static [(&'static str, u64)],
        );
        let cases: &[Case] = &[
            // Past its own bound, a domain loses its own oldest.
            (
                2,
                100,
                &[("f", 0), ("f", 1), ("g", 0), ("f", 2), ("f", 3)],
                &["f2", "g0", "f3"],
                &[("f", 2)],
            ),
            // The whole queue full: the domain with the most queued pays, not the
            // newcomer.
            (
                10,
                4,
                &[("f", 0), ("f", 1), ("f", 2), ("g", 0), ("h", 0)],
                &["f1", "g0", "h0", "f2"],
                &[("f", 1)],
            ),
            // Ties go against the caller itself.
            (
                10,
                2,
                &[("f", 0), ("g", 0), ("g", 1)],
                &["f0", "g1"],
                &[("g", 1)],
            ),
        ];
        for (i, (per, total, pushes, want, drops)) in cases.iter().enumerate() {
            let mut q = FairQueue::new(*per, *total);
            let mut got_drops: HashMap<String, u64> = HashMap::new();
            for (d, n) in *pushes {
                if let Some(x) = q.push(note(d, *n)) {
                    got_drops.insert(x.domain, x.count);
                }
            }
            assert_eq!(order(&mut q), *want, "case {i}");
            let want_drops: HashMap<String, u64> =
                drops.iter().map(|(d, n)| ((*d).to_string(), *n)).collect();
            assert_eq!(got_drops, want_drops, "case {i}");
        }
    }

    #[tokio::test]
    async fn one_domains_flood_does_not_drop_anothers_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        write_hook(
            dir.path(),
            "10-log",
            &format!("echo \"$1 $4\" >> {}", log.display()),
        );
        let metrics = Arc::new(Metrics::default());
        let h = Hooks::start(
            dir.path().to_path_buf(),
            Duration::from_secs(5),
            64,
            16,
            4,
            Arc::clone(&metrics),
        );
        for n in 0..200 {
            h.notify(note("flood", n));
            if n % 50 == 0 {
                h.notify(note("good", n));
            }
        }
        let t = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let good: Vec<&str> = text.lines().filter(|l| l.starts_with("good")).collect();
            if good.len() == 4 {
                assert_eq!(good, ["good 0", "good 50", "good 100", "good 150"]);
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "good runs: {good:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = m_render(&metrics);
        assert!(
            text.contains("xenchan_hook_runs_total{result=\"dropped\"} 196"),
            "200 flood runs, 4 kept: {text}"
        );
        // The drops are the flooding domain's own, per domain as the API shows them.
        assert_eq!(h.dropped_of("flood"), 196);
        assert_eq!(h.dropped_of("good"), 0);
        assert_eq!(h.drop_counts().get("flood"), Some(&196));
    }

    fn m_render(m: &Metrics) -> String {
        m.render(&[], 0)
    }

    #[tokio::test]
    async fn a_missing_folder_has_no_hooks() {
        let h = hooks(Path::new("/nonexistent/xenchan-hooks"), 100);
        h.run(&call()).await.unwrap();
    }
}
