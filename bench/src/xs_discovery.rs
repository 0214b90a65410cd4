//! xenstore discovery at N domains: what one `@introduceDomain`/`@releaseDomain` costs the
//! broker in xenstore requests, against N (issue 16: it must not grow with N). Counted,
//! not timed: the broker's own `xenchan_xenstore_requests_total{cause="event"}` and
//! `xenchan_xenstore_events_total`, against the simulator's xenstore (the xenstore crate's
//! server).
//!
//! Phases, with the real broker (release binary, its own process) in
//! `discovery = "xenstore"` mode:
//!
//! 1. N domains created one after the other as a toolstack does (introduce, then the
//!    channel's backend nodes), until the broker knows all N: requests per event;
//! 2. `rounds` times, one more domain created, waited for (the API shows its domid),
//!    destroyed, waited for (gone): requests per domain created and per domain destroyed
//!    with N running;
//! 3. one full rescan at N (the broker's periodic safety net, which runs every 3 s here):
//!    what every event cost before issue 16;
//! 4. the N domains destroyed one after the other: requests per event.
//!
//! No QEMU listens behind the channel sockets: sessions retry their connection with
//! backoff, which costs no xenstore request.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use xenchan_api::client::Client;
use xenchan_api::config::Discovery;
use xenchan_sim::broker::Broker;
use xenchan_sim::xenstore::Xenstore;

use crate::bins::Bins;

/// The channel the broker looks for.
const CHANNEL: &str = xenchan_protocol::DEFAULT_CHANNEL;

/// One run at one N.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// Domains running.
    pub n: usize,
    /// Requests per watch event while N domains were created one after the other.
    pub fill_per_event: f64,
    /// Watch events while creating them.
    pub fill_events: u64,
    /// Requests per watch event while the N domains were destroyed.
    pub drain_per_event: f64,
    /// Watch events while destroying them.
    pub drain_events: u64,
    /// Requests for one domain created beside N (per round).
    pub create: Vec<f64>,
    /// Requests for one domain destroyed beside N (per round).
    pub destroy: Vec<f64>,
    /// Requests of one full rescan at N.
    pub rescan: Option<f64>,
}

/// The numbers the broker's metrics give.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    event_requests: u64,
    events: u64,
    rescan_requests: u64,
    rescans: u64,
    domains: u64,
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn counts(client: &Client) -> anyhow::Result<Counts> {
    let text = client.metrics().await.context("the broker's metrics")?;
    let get = |name: &str| {
        metric(&text, name).with_context(|| format!("the broker's metrics have no {name}"))
    };
    Ok(Counts {
        event_requests: get("xenchan_xenstore_requests_total{cause=\"event\"}")?,
        events: get("xenchan_xenstore_events_total")?,
        rescan_requests: get("xenchan_xenstore_requests_total{cause=\"rescan\"}")?,
        rescans: get("xenchan_xenstore_rescans_total")?,
        domains: get("xenchan_domains")?,
    })
}

/// Polls until `cond` holds on the counts (within `budget`).
async fn wait_counts(
    client: &Client,
    what: &str,
    budget: Duration,
    cond: impl Fn(&Counts) -> bool,
) -> anyhow::Result<Counts> {
    let start = Instant::now();
    loop {
        let c = counts(client).await?;
        if cond(&c) {
            return Ok(c);
        }
        if start.elapsed() > budget {
            bail!("{what}: not within {} s (last {c:?})", budget.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn uuid(domid: u32) -> String {
    format!("00000000-0000-4000-8000-{domid:012x}")
}

/// A domain as a toolstack makes it: introduced, then its channel's backend.
fn create(xs: &Xenstore, sockets: &Path, domid: u32) -> anyhow::Result<()> {
    let server = xs.server();
    server
        .introduce_domain(domid, &format!("vm{domid}"), &uuid(domid))
        .with_context(|| format!("introducing domain {domid}"))?;
    server
        .add_channel(domid, 1, CHANNEL, sockets.join(format!("vm{domid}.sock")))
        .with_context(|| format!("adding the channel of domain {domid}"))?;
    Ok(())
}

fn destroy(xs: &Xenstore, domid: u32) -> anyhow::Result<()> {
    xs.server()
        .release_domain(domid)
        .with_context(|| format!("releasing domain {domid}"))
}

fn per_event(before: Counts, after: Counts) -> f64 {
    (after.event_requests - before.event_requests) as f64
        / (after.events - before.events).max(1) as f64
}

/// Measures one N in a fresh folder under `base`.
pub fn run(
    rt: &Handle,
    bins: &Bins,
    base: &Path,
    n: usize,
    rounds: usize,
) -> anyhow::Result<Point> {
    let tmp = tempfile::Builder::new()
        .prefix("xcx")
        .tempdir_in(base)
        .with_context(|| format!("temporary folder in {}", base.display()))?;
    let dir = tmp.path().to_path_buf();
    let r = rt.block_on(run_async(bins, &dir, n, rounds));
    crate::keep_if(tmp, r.is_err());
    r
}

async fn run_async(bins: &Bins, dir: &Path, n: usize, rounds: usize) -> anyhow::Result<Point> {
    let sockets = dir.join("s");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&sockets)?;
    std::fs::create_dir_all(&logs)?;
    let xs = Xenstore::start(dir).context("starting the simulator's xenstore")?;
    let mut config = xenchan_sim::broker::config_for(dir, &sockets);
    config.discovery = Discovery::Xenstore;
    config.xenstore_path = Some(xs.dom0_socket().to_path_buf());
    config.limits.max_domains = config.limits.max_domains.max(n + rounds + 16);
    // The full rescan (3 x reconnect_max) comes every 3 s, so phase 3 sees one soon;
    // sessions retry their (absent) QEMU at most every second.
    config.timeouts.reconnect_min = 500;
    config.timeouts.reconnect_max = 1000;
    let mut broker = Broker::start(&bins.broker, dir, &logs, config)
        .await
        .context("starting the broker")?;
    let client = broker.client().with_timeout(Duration::from_secs(60));
    let r = measure(&client, &xs, &sockets, n, rounds).await;
    broker.stop().await;
    r.with_context(|| format!("broker log: {}", broker.log().display()))
}

async fn measure(
    client: &Client,
    xs: &Xenstore,
    sockets: &Path,
    n: usize,
    rounds: usize,
) -> anyhow::Result<Point> {
    let budget = Duration::from_secs(60 + n as u64 / 10);
    let mut p = Point {
        n,
        ..Point::default()
    };
    let n32 = u32::try_from(n).context("N")?;
    // Phase 1: N domains, one after the other.
    let before = wait_counts(client, "the broker's first xenstore scan", budget, |c| {
        c.rescans >= 1
    })
    .await?;
    for d in 1..=n32 {
        create(xs, sockets, d)?;
    }
    let filled = wait_counts(client, "every domain discovered", budget, |c| {
        c.domains >= n as u64
    })
    .await?;
    p.fill_per_event = per_event(before, filled);
    p.fill_events = filled.events - before.events;
    eprintln!(
        "   {n} domains created: {} watch events, {:.1} xenstore requests per event",
        p.fill_events, p.fill_per_event
    );

    // Phase 2: one more domain at a time.
    for r in 0..rounds {
        let d = 30_000 + u32::try_from(r).context("rounds")?;
        let name = format!("vm{d}");
        let c0 = counts(client).await?;
        create(xs, sockets, d)?;
        let start = Instant::now();
        loop {
            if client
                .get_domain(&name)
                .await
                .is_ok_and(|v| v.domid == Some(d))
            {
                break;
            }
            if start.elapsed() > budget {
                bail!(
                    "domain {name} was not discovered within {} s",
                    budget.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let c1 = counts(client).await?;
        destroy(xs, d)?;
        let start = Instant::now();
        loop {
            if client.get_domain(&name).await.is_err() {
                break;
            }
            if start.elapsed() > budget {
                bail!(
                    "domain {name} was not forgotten within {} s",
                    budget.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let c2 = counts(client).await?;
        p.create
            .push((c1.event_requests - c0.event_requests) as f64);
        p.destroy
            .push((c2.event_requests - c1.event_requests) as f64);
    }

    // Phase 3: a full rescan at N.
    let c0 = counts(client).await?;
    let c1 = wait_counts(client, "a periodic rescan", budget, |c| {
        c.rescans > c0.rescans
    })
    .await?;
    p.rescan =
        Some((c1.rescan_requests - c0.rescan_requests) as f64 / (c1.rescans - c0.rescans) as f64);

    // Phase 4: the N domains go.
    let before = counts(client).await?;
    for d in 1..=n32 {
        destroy(xs, d)?;
    }
    let drained = wait_counts(client, "every domain gone", budget, |c| c.domains == 0).await?;
    p.drain_per_event = per_event(before, drained);
    p.drain_events = drained.events - before.events;
    eprintln!(
        "   {n} domains destroyed: {} watch events, {:.1} xenstore requests per event",
        drained.events - before.events,
        p.drain_per_event
    );
    Ok(p)
}
