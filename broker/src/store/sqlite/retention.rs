//! How long the event log keeps what: each domain its last `per_domain` events (the
//! broker's own events count as one domain), and all domains together `total`, taken
//! from the domains with the most events first. So a noisy domain (a guest that fails
//! in a loop, a script that PUTs every second) only ever drops its own history, and a
//! quiet domain's events stay until every domain is down to as few as it has.
//!
//! Pruning is batched: a domain is trimmed back to `per_domain` once it is an eighth
//! over, and the whole log once it is `total / 16` (at least 256) over, so the common
//! insert is one row and no query.

use rusqlite::params;

use super::{Db, exec, sql_int};
use crate::store::StoreError;

/// The event log's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    /// Events kept in all (`limits.events`).
    pub total: usize,
    /// Events kept per domain (`limits.events_per_domain`, at most `total`).
    pub per_domain: usize,
}

impl EventRetention {
    /// `total` events, and the configuration's default share per domain.
    pub fn total(total: usize) -> EventRetention {
        EventRetention {
            total,
            per_domain: xenchan_api::config::Limits::default()
                .events_per_domain
                .min(total),
        }
    }

    fn domain_slack(self) -> usize {
        (self.per_domain / 8).max(1)
    }

    fn total_slack(self) -> usize {
        (self.total / 16).max(256)
    }
}

/// The largest level `l` such that trimming every domain to its last `l` events keeps at
/// most `cap` in all (at least 1: past `cap` domains, each keeps its newest event).
/// `counts` are events per domain.
pub fn water_level(counts: &[usize], cap: usize) -> usize {
    let kept = |l: usize| counts.iter().map(|&c| c.min(l)).sum::<usize>();
    let top = counts.iter().copied().max().unwrap_or(0);
    if kept(top) <= cap {
        return top;
    }
    // kept() grows with l: the largest l with kept(l) <= cap, by bisection.
    let (mut lo, mut hi) = (0, top);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if kept(mid) <= cap {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo.max(1)
}

impl Db {
    /// Reads the number of events per domain from the table (at open, and after a
    /// prune of the whole log, which corrects any drift).
    pub(super) fn count_events(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(Option<String>, i64)> = self
            .conn
            .prepare("SELECT domain, count(*) FROM events GROUP BY domain")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        self.event_counts = rows
            .into_iter()
            .map(|(d, n)| (d, usize::try_from(n).unwrap_or(0)))
            .collect();
        self.events_total = self.event_counts.values().sum();
        self.events_next_global =
            self.events_total.max(self.retention.total) + self.retention.total_slack();
        Ok(())
    }

    /// Accounts for the events inserted since the last call, and prunes a domain or the
    /// whole log past its bound. A failed prune is retried with the next event.
    pub(super) fn after_event(&mut self) {
        let touched = std::mem::take(&mut *self.events_touched.borrow_mut());
        let r = self.retention;
        for d in touched {
            let n = self.event_counts.entry(d.clone()).or_insert(0);
            *n += 1;
            self.events_total += 1;
            if *n > r.per_domain + r.domain_slack() {
                let _ = self.trim_domain(d.as_deref(), r.per_domain);
            }
        }
        if self.events_total > self.events_next_global {
            let _ = self.trim_all();
        }
    }

    /// Keeps the last `keep` events of `domain` (`None`: the broker's own).
    fn trim_domain(&mut self, domain: Option<&str>, keep: usize) -> Result<(), StoreError> {
        let deleted = exec(
            &self.conn,
            "DELETE FROM events WHERE domain IS ?1 AND id <= (
                 SELECT id FROM events WHERE domain IS ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![domain, sql_int(keep)],
        )?;
        let left: i64 = super::row(
            &self.conn,
            "SELECT count(*) FROM events WHERE domain IS ?1",
            [domain],
            |r| r.get(0),
        )?;
        self.event_counts.insert(
            domain.map(str::to_string),
            usize::try_from(left).unwrap_or(0),
        );
        self.events_total = self.events_total.saturating_sub(deleted);
        Ok(())
    }

    /// Brings the whole log under `total`, from the domains with the most events first.
    fn trim_all(&mut self) -> Result<(), StoreError> {
        self.count_events()?;
        let cap = self.retention.total;
        if self.events_total > cap {
            let counts: Vec<usize> = self.event_counts.values().copied().collect();
            let level = water_level(&counts, cap);
            let over: Vec<Option<String>> = self
                .event_counts
                .iter()
                .filter(|(_, n)| **n > level)
                .map(|(d, _)| d.clone())
                .collect();
            for d in over {
                self.trim_domain(d.as_deref(), level)?;
            }
            self.count_events()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_water_level_takes_from_the_largest_first() {
        for (counts, cap, want) in [
            (vec![], 10, 0),
            (vec![3, 4], 10, 4),
            (vec![3, 4], 7, 4),
            (vec![100, 2], 10, 8),
            (vec![100, 50, 2], 20, 9),
            (vec![5, 5, 5], 9, 3),
            (vec![1, 1, 1, 1], 2, 1),
            (vec![10, 10], 0, 1),
        ] {
            assert_eq!(water_level(&counts, cap), want, "{counts:?} under {cap}");
        }
    }
}
