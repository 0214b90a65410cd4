//! Cluster scale (issue 19): two real brokers (their own processes) in cluster mode
//! (`[store] backend = "etcd"`) on one local etcd whose data folder is on the disk under
//! `--tmp`, against N domains served by the swarm, half in each broker's socket folder.
//! Phases:
//!
//! 1. every domain is prepared with its UUID through the broker whose folder holds its
//!    socket (the libvirt hook's `prepare`: records the UUID, claims ownership in etcd),
//!    16 at a time;
//! 2. the swarm (`--uuids`: each domain's hellos report its UUID, which cluster mode
//!    requires) creates the sockets; timed until both brokers have every session idle;
//! 3. one configuration per domain PUT with `?uuid=`, alternately through broker a and
//!    broker b (so half reach the broker running the domain through etcd's watch), 16 at
//!    a time: timed from the first PUT until the two brokers together have recorded N
//!    results (`xenchan_results_total`); then until etcd holds every domain's `applied`
//!    record (published by the owner in the background).
//!
//! etcd's writes are counted, not timed: its revision (one per write transaction) and its
//! own counters (`etcd_mvcc_put_total`: keys written; `etcd_disk_wal_fsync_duration_seconds_count`:
//! WAL fsyncs) before and after each phase, divided by N.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use xenchan_api::client::Client;
use xenchan_api::types::PrepareRequest;
use xenchan_cluster::local::Etcd;
use xenchan_sim::broker::Broker;

use crate::bins::Bins;
use crate::child::Child;
use crate::procfs;
use crate::scale::{self, PREFIX, PUT_CONCURRENCY, metric};
use crate::swarm::{domain_name, uuid_for};

/// The etcd key prefix the two brokers share.
pub const ETCD_PREFIX: &str = "/xcb/";

/// The two brokers' `[store] host`.
pub const HOSTS: [&str; 2] = ["bench-a", "bench-b"];

/// One run at one N.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// Domains (both brokers together).
    pub n: usize,
    /// First prepare until the last was answered, seconds.
    pub prepare_s: f64,
    /// Swarm start until every session is idle on both brokers, seconds.
    pub discover_s: f64,
    /// First PUT until the last PUT was answered, seconds.
    pub put_s: f64,
    /// First PUT until both brokers together recorded N results, seconds.
    pub configure_s: f64,
    /// First PUT until etcd holds N `applied` records, seconds.
    pub applied_s: f64,
    /// CPU seconds of both brokers while configuring (first PUT to every result recorded).
    pub cpu_brokers_configure_s: f64,
    /// CPU seconds of etcd over the same span.
    pub cpu_etcd_configure_s: f64,
    /// etcd counters over phase 1 (prepare).
    pub prepare_writes: Writes,
    /// etcd counters over phase 3 (first PUT until every `applied` record is in etcd).
    pub configure_writes: Writes,
    /// etcd's VmRSS at the end, KiB.
    pub etcd_rss_kib: u64,
}

/// What etcd wrote over a span (differences of its counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Store revisions: one per write transaction (a PUT or a transaction that changed
    /// something, whatever its number of keys).
    pub revisions: u64,
    /// Keys written (`etcd_mvcc_put_total`); `None` when /metrics was unreadable.
    pub puts: Option<u64>,
    /// WAL fsyncs (`etcd_disk_wal_fsync_duration_seconds_count`): etcd batches
    /// concurrent writes into one.
    pub fsyncs: Option<u64>,
    /// KV requests answered (ranges, transactions, puts, deletes: each a round trip of
    /// a broker to etcd; the watch's events are not requests).
    pub requests: Option<u64>,
}

/// etcd's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The store revision.
    pub revision: u64,
    /// `etcd_mvcc_put_total`.
    pub puts: Option<u64>,
    /// `etcd_disk_wal_fsync_duration_seconds_count`.
    pub fsyncs: Option<u64>,
    /// `grpc_server_handled_total` of the KV service, every method and code.
    pub requests: Option<u64>,
}

impl Counters {
    /// From etcd's /metrics text and a revision.
    pub fn from_metrics(revision: u64, text: Option<&str>) -> Counters {
        Counters {
            revision,
            puts: text.and_then(|t| metric(t, "etcd_mvcc_put_total")),
            fsyncs: text.and_then(|t| metric(t, "etcd_disk_wal_fsync_duration_seconds_count")),
            requests: text.and_then(kv_requests),
        }
    }

    /// What was written from `self` to `later`.
    pub fn until(&self, later: &Counters) -> Writes {
        let diff = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?);
        Writes {
            revisions: later.revision.saturating_sub(self.revision),
            puts: diff(self.puts, later.puts),
            fsyncs: diff(self.fsyncs, later.fsyncs),
            requests: diff(self.requests, later.requests),
        }
    }
}

/// The KV requests etcd answered: `grpc_server_handled_total` summed over the
/// `etcdserverpb.KV` service's methods and codes (`None` when there is no such line).
pub fn kv_requests(text: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0.0;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("grpc_server_handled_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if labels.contains("grpc_service=\"etcdserverpb.KV\"")
            && let Ok(v) = value.trim().parse::<f64>()
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum as u64)
}

impl Writes {
    /// Per domain: (revisions, puts, fsyncs) / n.
    pub fn per_domain(&self, n: usize) -> (f64, Option<f64>, Option<f64>) {
        let per = |v: u64| v as f64 / n.max(1) as f64;
        (
            per(self.revisions),
            self.puts.map(per),
            self.fsyncs.map(per),
        )
    }
}

/// The broker of domain `i` (1-based): the first half of the domains have their sockets
/// in broker a's folder (index 0), the rest in broker b's.
pub fn runs_on(i: usize, n: usize) -> usize {
    usize::from(i > n.div_ceil(2))
}

/// The broker domain `i`'s PUT goes through: alternately a and b, so that half of the
/// PUTs of each broker's domains arrive through the other broker.
pub fn put_through(i: usize) -> usize {
    i % 2
}

/// The smallest key above every key starting with `prefix` (etcd's range end for a
/// prefix), or `None` when there is none (a prefix of 0xff bytes only).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Measures N domains with etcd and the brokers' stores under `base` (a disk) and the
/// sockets under `run` (tmpfs, as on a real host: see [`scale::run`]).
pub fn run(rt: &Handle, bins: &Bins, base: &Path, run: &Path, n: usize) -> anyhow::Result<Point> {
    if xenchan_cluster::local::etcd_binary().is_none() {
        bail!(
            "no etcd binary (set XENCHAN_ETCD, or install Debian's etcd-server: scripts/setup.sh)"
        );
    }
    // Each broker holds a connection per domain of its half.
    scale::broker_fds(n.div_ceil(2))?;
    let tmp = tempfile::Builder::new()
        .prefix("xcc")
        .tempdir_in(base)
        .with_context(|| format!("temporary folder in {}", base.display()))?;
    let run_tmp = tempfile::Builder::new()
        .prefix("xcc")
        .tempdir_in(run)
        .with_context(|| format!("temporary folder in {}", run.display()))?;
    let r = rt.block_on(run_async(bins, tmp.path(), run_tmp.path(), n));
    crate::keep_if(tmp, r.is_err());
    crate::keep_if(run_tmp, r.is_err());
    r
}

async fn run_async(bins: &Bins, dir: &Path, run: &Path, n: usize) -> anyhow::Result<Point> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    // Started here, so its data folder is on the disk under `dir` (not tmpfs).
    let etcd = Etcd::start_in(dir).await;
    let r = with_etcd(bins, dir, run, &logs, &etcd, n).await;
    if r.is_err() {
        let _ = std::fs::write(logs.join("etcd.log"), etcd.log());
    }
    r
}

async fn with_etcd(
    bins: &Bins,
    dir: &Path,
    run: &Path,
    logs: &Path,
    etcd: &Etcd,
    n: usize,
) -> anyhow::Result<Point> {
    let mut brokers = Vec::new();
    for (k, host) in HOSTS.iter().enumerate() {
        let side = dir.join(["a", "b"][k]);
        let sockets = run.join(["a", "b"][k]);
        std::fs::create_dir_all(&sockets)?;
        let mut config = xenchan_sim::broker::config_for(&side, &sockets);
        config.limits.max_domains = config.limits.max_domains.max(n + 16);
        config.store.backend = xenchan_api::config::Backend::Etcd;
        config.store.endpoints = vec![etcd.client_url.clone()];
        config.store.prefix = ETCD_PREFIX.to_string();
        config.store.host = Some((*host).to_string());
        let broker = Broker::start(&bins.broker, &side, logs, config)
            .await
            .with_context(|| format!("starting broker {host}"))?;
        brokers.push(broker);
    }
    let r = measure(bins, run, logs, etcd, &brokers, n).await;
    for b in &mut brokers {
        b.stop().await;
    }
    r.with_context(|| {
        format!(
            "broker logs: {}, {}",
            brokers[0].log().display(),
            brokers[1].log().display()
        )
    })
}

/// etcd's revision and counters now.
async fn counters(kv: &mut etcd_client::Client, url: &str) -> anyhow::Result<Counters> {
    let rev = kv
        .get(format!("{ETCD_PREFIX}bench-revision"), None)
        .await
        .context("reading etcd's revision")?
        .header()
        .map(etcd_client::ResponseHeader::revision)
        .context("etcd's answer has no header")?;
    let text = etcd_metrics(url).await;
    Ok(Counters::from_metrics(
        u64::try_from(rev).unwrap_or(0),
        text.as_deref(),
    ))
}

/// etcd's /metrics (on its client URL), or `None` when it cannot be read within 5 s.
async fn etcd_metrics(url: &str) -> Option<String> {
    let addr = url.strip_prefix("http://")?.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .ok()?;
        // Bounded: etcd's metrics are a few hundred KiB.
        let mut body = Vec::new();
        s.take(16 << 20).read_to_end(&mut body).ok()?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let status = head.lines().next()?;
        (status.starts_with("HTTP/1.") && status.contains(" 200 ")).then(|| rest.to_string())
    })
    .await
    .ok()
    .flatten()
}

/// Domains with an `applied` record in etcd (keys only, in pages: a single answer for
/// 100,000 domains would pass gRPC's 4 MiB message limit).
async fn applied_count(kv: &mut etcd_client::Client) -> anyhow::Result<usize> {
    let prefix = format!("{ETCD_PREFIX}domains/").into_bytes();
    let end = prefix_end(&prefix).context("prefix end")?;
    let mut start = prefix;
    let mut count = 0;
    loop {
        let opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_limit(10_000);
        let resp = kv
            .get(start.clone(), Some(opts))
            .await
            .context("listing etcd's applied records")?;
        count += resp
            .kvs()
            .iter()
            .filter(|kv| kv.key().ends_with(b"/applied"))
            .count();
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => return Ok(count),
        }
    }
}

/// Sum of `name` over the brokers' metrics (`None` if one did not answer).
async fn metric_sum(clients: &[Client], name: &str) -> Option<u64> {
    let mut sum = 0;
    for c in clients {
        sum += metric(&c.metrics().await.ok()?, name)?;
    }
    Some(sum)
}

/// Polls every `every` until the brokers' `name` sums to `want`; the instant it was seen.
async fn wait_sum(
    clients: &[Client],
    name: &str,
    want: u64,
    timeout: Duration,
    every: Duration,
    swarms: &mut [Child],
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(v) = metric_sum(clients, name).await {
            let now = Instant::now();
            last = Some(v);
            if v >= want {
                return Ok(now);
            }
        }
        swarms.iter_mut().try_for_each(Child::check_running)?;
        if start.elapsed() > timeout {
            bail!(
                "{name} over both brokers reached {last:?}, not {want}, within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `job(i)` for i in 1..=n, `PUT_CONCURRENCY` at a time; the first error stops it.
async fn in_parallel<F, Fut>(n: usize, job: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(1));
    let mut tasks = Vec::new();
    for _ in 0..PUT_CONCURRENCY.min(n) {
        let (job, next) = (Arc::clone(&job), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > n {
                    return anyhow::Ok(());
                }
                job(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter()
        .map(|&p| procfs::cpu_seconds(p).with_context(|| format!("CPU time of pid {p}")))
        .sum()
}

async fn measure(
    bins: &Bins,
    run: &Path,
    logs: &Path,
    etcd: &Etcd,
    brokers: &[Broker],
    n: usize,
) -> anyhow::Result<Point> {
    let mut p = Point {
        n,
        ..Point::default()
    };
    let clients: Vec<Client> = brokers
        .iter()
        .map(|b| b.client().with_timeout(Duration::from_secs(120)))
        .collect();
    let broker_pids: Vec<u32> = brokers
        .iter()
        .map(|b| b.pid().context("broker pid"))
        .collect::<anyhow::Result<_>>()?;
    let etcd_pid = etcd.pid().context("etcd pid")?;
    let mut kv = etcd_client::Client::connect([etcd.client_url.as_str()], None)
        .await
        .context("connecting to etcd")?;
    let budget = Duration::from_secs(60 + n as u64 / 20);
    let half = n.div_ceil(2);

    // Phase 1: prepare each domain on the broker whose folder holds its socket.
    let c0 = counters(&mut kv, &etcd.client_url).await?;
    eprintln!("   preparing {n} domains with their UUIDs ({half} on a, the rest on b)");
    let t_prep = Instant::now();
    {
        let clients = clients.clone();
        in_parallel(n, move |i| {
            let client = clients[runs_on(i, n)].clone();
            async move {
                let req = PrepareRequest {
                    uuid: Some(uuid_for(i)),
                    ..PrepareRequest::default()
                };
                let name = domain_name(PREFIX, i);
                client
                    .prepare(&name, &req)
                    .await
                    .with_context(|| format!("prepare {name}"))?;
                Ok(())
            }
        })
        .await?;
    }
    p.prepare_s = t_prep.elapsed().as_secs_f64();
    let c1 = counters(&mut kv, &etcd.client_url).await?;
    p.prepare_writes = c0.until(&c1);

    // Phase 2: the sockets appear, each half in its broker's folder.
    let t_swarm = Instant::now();
    let mut swarms = Vec::new();
    for (k, (first, count)) in [(1, half), (half + 1, n - half)].into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let sockets = run.join(["a", "b"][k]);
        swarms.extend(scale::start_swarms(bins, &sockets, logs, first, count, true).await?);
    }
    eprintln!("   {n} sockets listening; waiting for every session to be idle");
    let t_idle = wait_sum(
        &clients,
        "xenchan_sessions{state=\"idle\"}",
        n as u64,
        budget,
        Duration::from_millis(50),
        &mut swarms,
    )
    .await?;
    p.discover_s = t_idle.duration_since(t_swarm).as_secs_f64();

    // Phase 3: a configuration per domain, alternately through a and b.
    let key = xenchan_sim::configs::FALLBACK_KEY.trim().to_string();
    let docs: Arc<Vec<Vec<u8>>> = Arc::new(
        (1..=n)
            .map(|i| {
                crate::configs::scale_config(i, &domain_name(PREFIX, i), &key).canonical_json()
            })
            .collect(),
    );
    let c2 = counters(&mut kv, &etcd.client_url).await?;
    let cpu_b = cpu_of(&broker_pids)?;
    let cpu_e = procfs::cpu_seconds(etcd_pid)?;
    eprintln!(
        "   every session idle after {:.2} s; configuring {n} domains through etcd",
        p.discover_s
    );
    let t_put = Instant::now();
    {
        let clients = clients.clone();
        in_parallel(n, move |i| {
            let client = clients[put_through(i)].clone();
            let docs = Arc::clone(&docs);
            async move {
                let name = domain_name(PREFIX, i);
                client
                    .put_config_json(&name, &docs[i - 1], Some(&uuid_for(i)))
                    .await
                    .with_context(|| format!("PUT {name} through {}", HOSTS[put_through(i)]))?;
                Ok(())
            }
        })
        .await?;
    }
    p.put_s = t_put.elapsed().as_secs_f64();
    let t_done = wait_sum(
        &clients,
        "xenchan_results_total",
        n as u64,
        budget,
        Duration::from_millis(20),
        &mut swarms,
    )
    .await?;
    p.configure_s = t_done.duration_since(t_put).as_secs_f64();
    p.cpu_brokers_configure_s = cpu_of(&broker_pids)? - cpu_b;
    p.cpu_etcd_configure_s = procfs::cpu_seconds(etcd_pid)? - cpu_e;
    eprintln!("   {n} results recorded after {:.2} s", p.configure_s);
    // The owners publish what was applied in the background: wait for all of it, so that
    // the write counts are complete.
    let mut seen = 0;
    loop {
        seen = applied_count(&mut kv).await.unwrap_or(seen);
        if seen >= n {
            p.applied_s = t_put.elapsed().as_secs_f64();
            break;
        }
        swarms.iter_mut().try_for_each(Child::check_running)?;
        if t_put.elapsed() > budget {
            bail!(
                "etcd holds {seen} applied records, not {n}, {} s after the first PUT",
                budget.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c3 = counters(&mut kv, &etcd.client_url).await?;
    p.configure_writes = c2.until(&c3);
    p.etcd_rss_kib = procfs::memory(etcd_pid)?.rss_kib;
    eprintln!(
        "   etcd holds every applied record after {:.2} s; {} revisions",
        p.applied_s, p.configure_writes.revisions
    );
    drop(swarms);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_and_alternation() {
        // n = 5: 1..=3 on a, 4..=5 on b.
        let on: Vec<usize> = (1..=5).map(|i| runs_on(i, 5)).collect();
        assert_eq!(on, [0, 0, 0, 1, 1]);
        let through: Vec<usize> = (1..=4).map(put_through).collect();
        assert_eq!(through, [1, 0, 1, 0]);
        // Half of each broker's domains get their PUT through the other broker.
        let n = 8;
        for side in [0, 1] {
            let mine: Vec<usize> = (1..=n).filter(|&i| runs_on(i, n) == side).collect();
            let remote = mine.iter().filter(|&&i| put_through(i) != side).count();
            assert_eq!((mine.len(), remote), (4, 2), "broker {side}");
        }
    }

    #[test]
    fn kv_requests_sum_the_kv_service_only() {
        let text = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
                    grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 5\n\
                    grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n\
                    grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 40\n";
        assert_eq!(kv_requests(text), Some(13));
        assert_eq!(kv_requests("etcd_mvcc_put_total 3\n"), None);
        let a = Counters::from_metrics(1, Some(text));
        let b = Counters::from_metrics(2, Some(&text.replace("} 7", "} 27")));
        assert_eq!(a.until(&b).requests, Some(20));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(
            prefix_end(b"/xcb/domains/"),
            Some(b"/xcb/domains0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn writes_are_differences_and_per_domain() {
        let text = "# TYPE etcd_mvcc_put_total counter\netcd_mvcc_put_total 100\n\
                    etcd_disk_wal_fsync_duration_seconds_count 40\n\
                    etcd_disk_wal_fsync_duration_seconds_sum 0.5\n";
        let a = Counters::from_metrics(10, Some(text));
        assert_eq!(a.puts, Some(100));
        assert_eq!(a.fsyncs, Some(40));
        let later = "etcd_mvcc_put_total 400\netcd_disk_wal_fsync_duration_seconds_count 90\n";
        let b = Counters::from_metrics(210, Some(later));
        let w = a.until(&b);
        assert_eq!(
            w,
            Writes {
                revisions: 200,
                puts: Some(300),
                fsyncs: Some(50),
                requests: None,
            }
        );
        assert_eq!(w.per_domain(100), (2.0, Some(3.0), Some(0.5)));
        assert_eq!(w.requests, None, "no gRPC counters in this text");
        // Unreadable metrics: no count rather than a wrong one.
        let c = Counters::from_metrics(300, None);
        assert_eq!(b.until(&c).puts, None);
    }
}
