//! Broker scale: the real broker (release binary, a child process so its RSS and CPU are
//! its own) against N domains, each a unix socket served by the guest swarm in another
//! process. Phases:
//!
//! 1. the broker alone (no socket): baseline RSS and CPU;
//! 2. the swarm creates the N sockets: the broker finds them (inotify), connects, says
//!    hello and records each agent's answer; timed from the swarm's start until every
//!    domain is `idle` (handshook, nothing to push). RSS then gives memory per idle
//!    session: (RSS with N idle sessions - baseline) / N;
//! 3. a configuration per domain through the API (PUT, 16 at a time): timed from the
//!    first PUT until the broker has recorded N results (`xenchan_results_total`);
//! 4. a second configuration per domain (other addresses) through the bulk PUT
//!    (`PUT /v1/domains`, [`BULK_CHUNK`] per request, [`BULK_CONCURRENCY`] requests at a
//!    time): timed from the first request until N more results are recorded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use xenchan_api::client::Client;
use xenchan_sim::broker::Broker;

use crate::bins::Bins;
use crate::child::Child;
use crate::procfs;
use crate::swarm::domain_name;

/// Concurrent PUT requests (the API serves 64 connections at once by default).
pub const PUT_CONCURRENCY: usize = 16;

/// Configurations per bulk PUT request (half the broker's default `limits.max_bulk`:
/// every item of a request must start within its deadline, or it is answered "not
/// attempted").
pub const BULK_CHUNK: usize = 500;

/// Concurrent bulk PUT requests (each runs 64 PUTs at a time in the broker).
pub const BULK_CONCURRENCY: usize = 2;

/// Domains per swarm process: each holds a listener and a connection per domain, and
/// RLIMIT_NOFILE cannot always be raised past 20,000 (no CAP_SYS_RESOURCE in containers).
pub const SHARD: usize = 4000;

/// Socket name prefix.
pub const PREFIX: &str = "d";

/// One run at one N.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// Domains.
    pub n: usize,
    /// Swarm start until every domain is handshook and idle, seconds.
    pub discover_s: f64,
    /// First PUT until N results recorded, seconds.
    pub configure_s: f64,
    /// First PUT until the last PUT was answered, seconds.
    pub put_s: f64,
    /// Broker VmRSS with no session, KiB.
    pub rss_base_kib: u64,
    /// Its anonymous part (RssAnon: heap, stacks, written data), KiB; the rest is the
    /// binary's and the libraries' clean pages, which the kernel can drop and reread.
    pub rss_base_anon_kib: u64,
    /// Broker VmRSS with N idle sessions, KiB.
    pub rss_idle_kib: u64,
    /// Broker VmRSS after configuring, KiB.
    pub rss_after_kib: u64,
    /// Broker VmHWM at the end, KiB.
    pub hwm_kib: u64,
    /// Broker CPU seconds spent discovering and handshaking.
    pub cpu_discover_s: f64,
    /// Broker CPU seconds spent configuring (PUTs, pushes, results).
    pub cpu_configure_s: f64,
    /// Of which the store thread's (SQLite and its fsyncs), if the broker names it
    /// [`STORE_THREAD`].
    pub cpu_store_configure_s: Option<f64>,
    /// Phase 4: first bulk request until N more results recorded, seconds.
    pub bulk_configure_s: f64,
    /// Phase 4: first bulk request until the last was answered, seconds.
    pub bulk_put_s: f64,
    /// Phase 4: broker CPU seconds.
    pub cpu_bulk_s: f64,
}

/// The name of the broker's store thread.
pub const STORE_THREAD: &str = "xenchan-store";

impl Point {
    /// KiB of broker memory per idle session.
    pub fn per_session_kib(&self) -> f64 {
        (self.rss_idle_kib as f64 - self.rss_base_kib as f64) / self.n as f64
    }
    /// Pushes (recorded results) per second.
    pub fn pushes_per_s(&self) -> f64 {
        self.n as f64 / self.configure_s
    }
}

/// The value of the Prometheus sample `name` (exact name with labels) in `text`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Polls `client`'s metrics every `every` until `name` reaches `want`; the instant it was
/// seen. `alive` fails the wait when a helper process died.
pub async fn wait_metric(
    client: &Client,
    name: &str,
    want: u64,
    timeout: Duration,
    every: Duration,
    alive: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(text) = client.metrics().await {
            let now = Instant::now();
            last = metric(&text, name);
            if last.is_some_and(|v| v >= want) {
                return Ok(now);
            }
        }
        alive()?;
        if start.elapsed() > timeout {
            bail!(
                "{name} reached {last:?}, not {want}, within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Measures one N in a fresh folder under `base` (the broker's store and logs) with the
/// sockets in a fresh folder under `run` (keep both short: socket paths). With
/// `idle_only`, only phases 1 and 2 (no configuration: the 100,000 idle sessions of
/// issue 16); the configure and bulk figures are then NaN.
///
/// The sockets go on tmpfs (`--tmpfs`, as QEMU's do under /run on a real host), not on
/// the store's disk: on ext4, creating 10,000 socket inodes within minutes of deleting
/// the last run's 10,000 costs the swarm's bind() a scan of recently deleted inodes
/// (ext4's `recently_deleted`), which made whichever run came second in a comparison
/// take 4x as long to have its sockets "appear" (measured 2026-12-02: 1.02 s first,
/// 4.43 s second; on tmpfs 0.81 and 0.93 s).
pub fn run(
    rt: &Handle,
    bins: &Bins,
    base: &Path,
    run: &Path,
    n: usize,
    idle_only: bool,
) -> anyhow::Result<Point> {
    // The broker (our child, same limits) holds a connection per domain.
    broker_fds(n)?;
    let tmp = tempfile::Builder::new()
        .prefix("xcs")
        .tempdir_in(base)
        .with_context(|| format!("temporary folder in {}", base.display()))?;
    let run_tmp = tempfile::Builder::new()
        .prefix("xcs")
        .tempdir_in(run)
        .with_context(|| format!("temporary folder in {}", run.display()))?;
    let dir = tmp.path().to_path_buf();
    let sockets = run_tmp.path().join("s");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&sockets)?;
    std::fs::create_dir_all(&logs)?;
    let r = rt.block_on(run_async(bins, &dir, &sockets, &logs, n, idle_only));
    crate::keep_if(tmp, r.is_err());
    crate::keep_if(run_tmp, r.is_err());
    r
}

async fn run_async(
    bins: &Bins,
    dir: &Path,
    sockets: &Path,
    logs: &Path,
    n: usize,
    idle_only: bool,
) -> anyhow::Result<Point> {
    let mut config = xenchan_sim::broker::config_for(dir, sockets);
    config.limits.max_domains = config.limits.max_domains.max(n + 16);
    let mut broker = Broker::start(&bins.broker, dir, logs, config)
        .await
        .context("starting the broker")?;
    let pid = broker.pid().context("broker pid")?;
    let client = broker.client().with_timeout(Duration::from_secs(120));
    let r = measure(bins, &client, pid, sockets, logs, n, idle_only).await;
    broker.stop().await;
    r.with_context(|| format!("broker log: {}", broker.log().display()))
}

async fn measure(
    bins: &Bins,
    client: &Client,
    pid: u32,
    sockets: &Path,
    logs: &Path,
    n: usize,
    idle_only: bool,
) -> anyhow::Result<Point> {
    let mut p = Point {
        n,
        ..Point::default()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = procfs::memory(pid)?;
    p.rss_base_kib = base.rss_kib;
    p.rss_base_anon_kib = base.anon_kib;
    let cpu0 = procfs::cpu_seconds(pid)?;

    // Phase 2: the sockets appear.
    let t_swarm = Instant::now();
    let mut swarms = start_swarms(bins, sockets, logs, 1, n, false).await?;
    eprintln!("   {n} sockets listening (broker pid {pid}); waiting for every session to be idle");
    let budget = Duration::from_secs(60 + n as u64 / 20);
    let mut alive = || swarms.iter_mut().try_for_each(Child::check_running);
    let t_idle = wait_metric(
        client,
        "xenchan_sessions{state=\"idle\"}",
        n as u64,
        budget,
        Duration::from_millis(50),
        &mut alive,
    )
    .await?;
    p.discover_s = t_idle.duration_since(t_swarm).as_secs_f64();
    let cpu1 = procfs::cpu_seconds(pid)?;
    p.cpu_discover_s = cpu1 - cpu0;
    // Idle: let the last handshakes' allocations settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.rss_idle_kib = procfs::memory(pid)?.rss_kib;
    if idle_only {
        p.configure_s = f64::NAN;
        p.put_s = f64::NAN;
        p.bulk_configure_s = f64::NAN;
        p.bulk_put_s = f64::NAN;
        p.cpu_configure_s = f64::NAN;
        p.cpu_bulk_s = f64::NAN;
        p.rss_after_kib = p.rss_idle_kib;
        p.hwm_kib = procfs::memory(pid)?.hwm_kib;
        drop(swarms);
        return Ok(p);
    }
    let cpu2 = procfs::cpu_seconds(pid)?;
    let store2 = procfs::thread_cpu_seconds(pid, STORE_THREAD);

    // Phase 3: a configuration per domain.
    let key = xenchan_sim::configs::FALLBACK_KEY.trim().to_string();
    let docs: Arc<Vec<Vec<u8>>> = Arc::new(
        (1..=n)
            .map(|i| {
                crate::configs::scale_config(i, &domain_name(PREFIX, i), &key).canonical_json()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    eprintln!(
        "   every session idle after {:.2} s; configuring {n} domains",
        p.discover_s
    );
    let t_put = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUT_CONCURRENCY.min(n) {
        let (client, docs, next) = (client.clone(), Arc::clone(&docs), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= docs.len() {
                    return anyhow::Ok(());
                }
                let name = domain_name(PREFIX, i + 1);
                client
                    .put_config_json(&name, &docs[i], None)
                    .await
                    .with_context(|| format!("PUT {name}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    p.put_s = t_put.elapsed().as_secs_f64();
    let t_done = wait_metric(
        client,
        "xenchan_results_total",
        n as u64,
        budget,
        Duration::from_millis(20),
        &mut alive,
    )
    .await?;
    p.configure_s = t_done.duration_since(t_put).as_secs_f64();
    eprintln!("   {n} results recorded after {:.2} s", p.configure_s);
    p.cpu_configure_s = procfs::cpu_seconds(pid)? - cpu2;
    p.cpu_store_configure_s = procfs::thread_cpu_seconds(pid, STORE_THREAD)
        .zip(store2)
        .map(|(b, a)| b - a);
    let m = procfs::memory(pid)?;
    p.rss_after_kib = m.rss_kib;
    p.hwm_kib = m.hwm_kib;

    // Phase 4: a second configuration per domain, through the bulk PUT.
    let items: Vec<xenchan_api::types::BulkItem> = (1..=n)
        .map(|i| {
            let name = domain_name(PREFIX, i);
            let cfg = crate::configs::scale_config(i + n, &name, &key);
            xenchan_api::types::BulkItem::new(name, None, &cfg)
        })
        .collect();
    let chunks: Arc<Vec<Vec<u8>>> = Arc::new(
        items
            .chunks(BULK_CHUNK)
            .map(|c| serde_json::to_vec(c).expect("bulk items serialise"))
            .collect(),
    );
    drop(items);
    // A broker from before the bulk PUT (a baseline build) answers 405: no figure.
    let probe = client.put_configs(&[]).await;
    if probe.as_ref().is_err_and(|e| e.status() == Some(405)) {
        eprintln!("   this broker has no bulk PUT (405): phase 4 skipped");
        p.bulk_configure_s = f64::NAN;
        p.bulk_put_s = f64::NAN;
        p.cpu_bulk_s = f64::NAN;
        drop(swarms);
        return Ok(p);
    }
    probe.context("probing the bulk PUT")?;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu4 = procfs::cpu_seconds(pid)?;
    eprintln!("   configuring {n} domains again through the bulk PUT");
    let t_bulk = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..BULK_CONCURRENCY.min(chunks.len()) {
        let (client, chunks, next) = (client.clone(), Arc::clone(&chunks), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let chunk = next.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks.len() {
                    return anyhow::Ok(());
                }
                let answer = client
                    .put_configs_json(chunks[chunk].clone())
                    .await
                    .with_context(|| format!("bulk PUT {chunk}"))?;
                if answer.failed > 0 {
                    let bad = answer.results.iter().find(|one| !one.ok());
                    bail!(
                        "bulk PUT {chunk}: {} items refused, e.g. {bad:?}",
                        answer.failed
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    p.bulk_put_s = t_bulk.elapsed().as_secs_f64();
    let t_done = wait_metric(
        client,
        "xenchan_results_total",
        2 * n as u64,
        budget,
        Duration::from_millis(20),
        &mut alive,
    )
    .await?;
    p.bulk_configure_s = t_done.duration_since(t_bulk).as_secs_f64();
    p.cpu_bulk_s = procfs::cpu_seconds(pid)? - cpu4;
    eprintln!(
        "   {n} more results recorded after {:.2} s (bulk)",
        p.bulk_configure_s
    );
    drop(swarms);
    Ok(p)
}

/// Descriptors a broker needs for `n` sessions: one connection each, plus its store,
/// inotify, the API's connections and the runtime's own.
pub fn broker_fds_for(n: usize) -> u64 {
    n as u64 + 512
}

/// Raises this process's RLIMIT_NOFILE (inherited by the brokers it starts) for `n`
/// sessions, or says which limit stops it.
pub fn broker_fds(n: usize) -> anyhow::Result<()> {
    let want = broker_fds_for(n);
    let got = procfs::raise_nofile(want);
    if let Some(why) = fd_limit_problem(n, want, got, procfs::nofile_hard(), procfs::nr_open()) {
        bail!(why);
    }
    Ok(())
}

/// Why `want` descriptors (for `n` sessions) are out of reach when the soft limit could
/// only be raised to `got`, naming the limit in the way: the hard RLIMIT_NOFILE (only
/// CAP_SYS_RESOURCE raises it: containers often lack it) or `fs.nr_open` (the kernel's
/// ceiling for any process). `None` when `got` suffices.
pub fn fd_limit_problem(
    n: usize,
    want: u64,
    got: u64,
    hard: Option<u64>,
    nr_open: Option<u64>,
) -> Option<String> {
    if got >= want {
        return None;
    }
    let cause = match (hard, nr_open) {
        (_, Some(nr)) if nr < want => format!(
            "fs.nr_open is {nr} (the kernel's ceiling for one process; raise it with sysctl fs.nr_open={want})"
        ),
        (Some(h), _) if h < want => format!(
            "the hard RLIMIT_NOFILE is {h} and cannot be raised here (it takes CAP_SYS_RESOURCE; \
             e.g. `ulimit -Hn {want}` as root outside a container, or LimitNOFILE= for a service)"
        ),
        _ => format!("RLIMIT_NOFILE could only be raised to {got}"),
    };
    Some(format!(
        "{n} sessions need about {want} descriptors in the broker: {cause}"
    ))
}

/// Starts the swarm for domains `first..first + count` in `sockets` ([`SHARD`] domains
/// per process) and waits until every socket listens. With `uuids`, each domain's hellos
/// report [`crate::swarm::uuid_for`] its index.
pub async fn start_swarms(
    bins: &Bins,
    sockets: &Path,
    logs: &Path,
    first: usize,
    count: usize,
    uuids: bool,
) -> anyhow::Result<Vec<Child>> {
    let mut swarms = Vec::new();
    let end = first + count;
    let mut at = first;
    while at < end {
        let count = SHARD.min(end - at);
        let log = logs.join(format!("swarm{at}.log"));
        let mut cmd = Command::new(&bins.swarm);
        cmd.arg("--dir")
            .arg(sockets)
            .arg("--first")
            .arg(at.to_string())
            .arg("--count")
            .arg(count.to_string())
            .args(["--prefix", PREFIX])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        if uuids {
            cmd.arg("--uuids");
        }
        let child = cmd.spawn().context("starting the swarm")?;
        swarms.push(Child::adopt("a guest swarm", child, &log));
        at += count;
    }
    for swarm in &mut swarms {
        let stdout = swarm.inner().stdout.take().context("swarm stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            BufReader::new(stdout).read_line(&mut l).map(|_| l)
        })
        .await??;
        if !line.starts_with("ready") {
            swarm.check_running()?;
            bail!("the swarm said {line:?}");
        }
    }
    Ok(swarms)
}

/// Growth of memory per idle session from the smallest to the largest N measured:
/// `(n, KiB per session)` pairs in any order; `None` with fewer than two distinct N or a
/// non-positive figure at the smallest (nothing to divide by).
pub fn per_session_growth(points: &[(usize, f64)]) -> Option<(usize, usize, f64)> {
    let lo = points.iter().min_by_key(|p| p.0)?;
    let hi = points.iter().max_by_key(|p| p.0)?;
    (hi.0 > lo.0 && lo.1 > 0.0 && hi.1.is_finite()).then(|| (lo.0, hi.0, hi.1 / lo.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name() {
        let t = "# HELP x\nxenchan_sessions{state=\"idle\"} 12\nxenchan_results_total 7\nxenchan_results_total_x 9\n";
        assert_eq!(metric(t, "xenchan_results_total"), Some(7));
        assert_eq!(metric(t, "xenchan_sessions{state=\"idle\"}"), Some(12));
        assert_eq!(metric(t, "xenchan_pushes_total"), None);
    }

    #[test]
    fn per_session_growth_is_largest_over_smallest() {
        let g = per_session_growth(&[(10_000, 12.0), (1000, 10.0), (100_000, 15.0)]);
        assert_eq!(g, Some((1000, 100_000, 1.5)));
        assert_eq!(per_session_growth(&[(1000, 10.0)]), None);
        assert_eq!(per_session_growth(&[]), None);
        // Nothing measurable at the smallest N: no ratio rather than infinity.
        assert_eq!(per_session_growth(&[(1000, 0.0), (100_000, 5.0)]), None);
        assert_eq!(
            per_session_growth(&[(1000, 4.0), (100_000, f64::NAN)]),
            None
        );
    }

    #[test]
    fn the_limit_in_the_way_is_named() {
        let want = broker_fds_for(100_000);
        assert_eq!(want, 100_512);
        assert_eq!(
            fd_limit_problem(100_000, want, want, Some(want), Some(1 << 20)),
            None
        );
        let hard = fd_limit_problem(100_000, want, 20_000, Some(20_000), Some(1 << 20)).unwrap();
        assert!(
            hard.contains("hard RLIMIT_NOFILE is 20000") && hard.contains("CAP_SYS_RESOURCE"),
            "{hard}"
        );
        assert!(hard.contains("100000 sessions need about 100512"), "{hard}");
        let nr = fd_limit_problem(100_000, want, 65_536, Some(1 << 20), Some(65_536)).unwrap();
        assert!(nr.contains("fs.nr_open is 65536"), "{nr}");
        let other = fd_limit_problem(100_000, want, 50_000, None, None).unwrap();
        assert!(other.contains("could only be raised to 50000"), "{other}");
    }
}
