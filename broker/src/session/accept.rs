//! Only what was asked for is accepted (issue 18), as pure functions: which results are
//! stored ([`judge_result`]), which items a stored result holds ([`merge_items`]) and
//! when facts are written ([`FactsGate`]). A guest may send as many valid frames as it
//! likes; what it sends beyond these rules costs a counter, never a store write, a push
//! or a hook.

use std::time::Duration;

use tokio::time::Instant;
use xenchan_protocol::message::{ApplyResult, GuestFacts, ItemResult};

use super::decide::Offer;
use crate::api::types::ItemView;
pub use crate::metrics::DropReason;

/// What to do with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultVerdict {
    /// It answers the push in flight: store it; the push is over.
    Answer,
    /// It reports a change of an item of the configuration the agent has (or of the
    /// desired one): store it (the agent's retries of failed items).
    Change,
    /// Drop it and count it under this reason.
    Drop(DropReason),
}

/// Whether `r` is stored. `in_flight`: the push waiting for its result; `applied`: what
/// the agent has applied (its hello, or the last answered push); `desired`: the offer
/// (the desired config as this agent receives it); `stored`: the items of the stored
/// result.
pub fn judge_result(
    r: &ApplyResult,
    in_flight: Option<Offer<'_>>,
    applied: Option<Offer<'_>>,
    desired: Option<Offer<'_>>,
    stored: &[ItemView],
) -> ResultVerdict {
    // By generation: the agent records the digest it was pushed, and a result of the
    // generation in flight is that push's (an agent answers each push once).
    if in_flight.is_some_and(|f| f.generation == r.generation) {
        return ResultVerdict::Answer;
    }
    let is = |o: Option<Offer<'_>>| {
        o.is_some_and(|o| o.generation == r.generation && o.digest == r.digest.as_str())
    };
    if !is(applied) && !is(desired) {
        return ResultVerdict::Drop(DropReason::ResultNotAsked);
    }
    let changed = r.items.iter().any(|i| {
        !stored
            .iter()
            .any(|s| s.generation == r.generation && s.item == i.item && s.status == i.status)
    });
    if changed {
        ResultVerdict::Change
    } else {
        ResultVerdict::Drop(DropReason::ResultUnchanged)
    }
}

/// The items recorded for a result: the agent's, then what the broker left out of the
/// document for this agent (`unsupported`, with the reason) unless the agent named the
/// same path itself.
pub fn merge_items(agent: &[ItemResult], left_out: &[ItemResult]) -> Vec<ItemResult> {
    let mut out = agent.to_vec();
    for l in left_out {
        if !agent.iter().any(|a| a.item == l.item) {
            out.push(l.clone());
        }
    }
    out
}

/// The one-line reason of a degraded domain: the failed items and why (at most a few).
pub fn degraded_reason(generation: u64, items: &[ItemResult]) -> Option<String> {
    const SHOWN: usize = 4;
    let failed: Vec<&ItemResult> = items.iter().filter(|i| i.status.is_failure()).collect();
    if failed.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = failed
        .iter()
        .take(SHOWN)
        .map(|i| match &i.reason {
            Some(r) => format!("{} ({})", i.item, bounded(r, 200)),
            None => i.item.clone(),
        })
        .collect();
    if failed.len() > SHOWN {
        parts.push(format!("and {} more", failed.len() - SHOWN));
    }
    Some(format!(
        "degraded: generation {generation} has {} failed item(s): {}; the agent retries them",
        failed.len(),
        parts.join(", ")
    ))
}

fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Most interfaces, addresses per interface and host keys kept of one facts report.
const MAX_INTERFACES: usize = 64;
const MAX_ADDRESSES: usize = 32;
const MAX_HOST_KEYS: usize = 16;
/// Longest text field kept (names, os, kernel); a host key line is longer.
const MAX_TEXT: usize = 256;
const MAX_KEY: usize = 16 * 1024;

/// Facts cut to the bounds above: what is stored and shown of one report has a size
/// known in advance, whatever the guest sends inside its frame.
pub fn bound_facts(mut f: GuestFacts) -> GuestFacts {
    let cut = |s: &mut String, max: usize| {
        if let Some((i, _)) = s.char_indices().nth(max) {
            s.truncate(i);
        }
    };
    for s in [&mut f.agent, &mut f.os, &mut f.kernel, &mut f.hostname] {
        cut(s, MAX_TEXT);
    }
    f.interfaces.truncate(MAX_INTERFACES);
    for i in &mut f.interfaces {
        cut(&mut i.name, MAX_TEXT);
        cut(&mut i.mac, MAX_TEXT);
        i.addresses.truncate(MAX_ADDRESSES);
        for a in &mut i.addresses {
            cut(a, MAX_TEXT);
        }
    }
    f.host_keys.truncate(MAX_HOST_KEYS);
    for k in &mut f.host_keys {
        cut(&mut k.key, MAX_KEY);
        cut(&mut k.fingerprint, MAX_TEXT);
    }
    f
}

/// What to do with facts just received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactsStep {
    /// Write these now.
    Write(GuestFacts),
    /// Held until [`FactsGate::due`]; `replaced`: an earlier held report was replaced.
    Held {
        /// A held report was dropped for this one.
        replaced: bool,
    },
    /// Nothing to write.
    Drop(DropReason),
}

/// Facts are written at most once per interval per domain; the latest report inside an
/// interval wins and is written when the interval ends, so none is lost and a guest
/// sending facts in a loop costs one write per interval.
#[derive(Debug, Clone)]
pub struct FactsGate {
    interval: Duration,
    /// The facts last written (or loaded from the store).
    stored: Option<GuestFacts>,
    last_write: Option<Instant>,
    pending: Option<GuestFacts>,
}

impl FactsGate {
    /// A gate that knows the stored facts.
    pub fn new(interval: Duration, stored: Option<GuestFacts>) -> FactsGate {
        FactsGate {
            interval,
            stored,
            last_write: None,
            pending: None,
        }
    }

    /// Facts received at `now`.
    pub fn offer(&mut self, f: GuestFacts, now: Instant) -> FactsStep {
        let f = bound_facts(f);
        if self.stored.as_ref() == Some(&f) {
            // Back to what is stored: a held report would only write it again.
            return match self.pending.take() {
                Some(_) => FactsStep::Drop(DropReason::FactsCoalesced),
                None => FactsStep::Drop(DropReason::FactsUnchanged),
            };
        }
        if self.last_write.is_none_or(|t| now >= t + self.interval) {
            self.pending = None;
            self.wrote(&f, now);
            return FactsStep::Write(f);
        }
        let replaced = self.pending.replace(f).is_some();
        FactsStep::Held { replaced }
    }

    /// When held facts are to be written.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        self.last_write.map(|t| t + self.interval)
    }

    /// The held facts, if their time has come at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<GuestFacts> {
        if self.due().is_some_and(|d| now >= d) {
            let f = self.pending.take()?;
            self.wrote(&f, now);
            return Some(f);
        }
        None
    }

    fn wrote(&mut self, f: &GuestFacts, now: Instant) {
        self.stored = Some(f.clone());
        self.last_write = Some(now);
    }
}

#[cfg(test)]
mod tests;
