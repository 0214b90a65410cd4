//! Polling the broker's API with deadlines (never fixed sleeps as synchronisation).

use std::time::{Duration, Instant};

use xenchan_api::client::Client;
use xenchan_api::types::{DomainState, DomainView};
use xenchan_protocol::ItemStatus;

/// How often the API is polled.
pub const POLL: Duration = Duration::from_millis(100);

/// A wait that ran out of time, with what was last seen.
#[derive(Debug)]
pub struct Timeout {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub waited: Duration,
    /// The last answer (or error) seen.
    pub last: String,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:.1} s waiting for {}; last seen: {}",
            self.waited.as_secs_f64(),
            self.what,
            self.last
        )
    }
}

impl std::error::Error for Timeout {}

/// Polls `GET /v1/domains` until `f` returns `Some`, or `timeout` passes.
pub async fn until_list<T>(
    client: &Client,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&[DomainView]) -> Option<T>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    let mut last;
    loop {
        match client.list().await {
            Ok(list) => {
                if let Some(v) = f(&list) {
                    return Ok(v);
                }
                last = summary(&list);
            }
            Err(e) => last = format!("API error: {e:#}"),
        }
        if start.elapsed() >= timeout {
            return Err(Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls one domain until `pred` holds.
pub async fn until_domain(
    client: &Client,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&DomainView) -> bool,
) -> Result<DomainView, Timeout> {
    let start = Instant::now();
    let mut last;
    loop {
        match client.get_domain(name).await {
            Ok(v) => {
                if pred(&v) {
                    return Ok(v);
                }
                last = describe(&v);
            }
            Err(e) => last = format!("API error: {e:#}"),
        }
        if start.elapsed() >= timeout {
            return Err(Timeout {
                what: format!("{name}: {what}"),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A domain has what it should: the desired generation applied, connected, and no item
/// failed: the broker's state is `configured` (items the agent reports `unsupported`
/// leave it `configured`). `degraded` (`failed` of older brokers) with no failed item is
/// accepted too, for brokers older than that rule. The applied digest is the desired one,
/// or that of the document as filtered for the agent's capabilities, which only the
/// broker knows: its `configured` says the agent has it.
pub fn converged(v: &DomainView) -> bool {
    let settled = match v.state {
        DomainState::Configured => true,
        DomainState::Degraded => v.items.iter().all(|i| i.status != ItemStatus::Failed),
        _ => false,
    };
    settled
        && v.connected
        && v.desired_generation.is_some()
        && v.applied_generation == v.desired_generation
        && (v.applied_digest == v.desired_digest || v.state == DomainState::Configured)
}

/// Waits until every domain in `names` has [`converged`].
pub async fn all_converged(
    client: &Client,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<DomainView>, Timeout> {
    until_list(
        client,
        timeout,
        &format!("{} domains to be configured", names.len()),
        |list| {
            let ok = names
                .iter()
                .all(|n| list.iter().any(|v| &v.name == n && converged(v)));
            ok.then(|| list.to_vec())
        },
    )
    .await
}

/// One line about a domain.
pub fn describe(v: &DomainView) -> String {
    format!(
        "{} state={} connected={} desired={:?} applied={:?} error={}",
        v.name,
        v.state,
        v.connected,
        v.desired_generation,
        v.applied_generation,
        v.last_error.as_deref().unwrap_or("-")
    )
}

/// States of a list, compactly (`configured: 48, pushing: 2`), plus the first odd one.
pub fn summary(list: &[DomainView]) -> String {
    let mut counts: Vec<(DomainState, usize)> = Vec::new();
    for v in list {
        match counts.iter_mut().find(|(s, _)| *s == v.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((v.state, 1)),
        }
    }
    let mut s = counts
        .iter()
        .map(|(st, n)| format!("{st}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(odd) = list.iter().find(|v| !converged(v)) {
        s.push_str("; e.g. ");
        s.push_str(&describe(odd));
    }
    s
}
