//! Per-domain budgets (crate::budget) as the registry applies them: taking a token,
//! waiting for one (backpressure on that domain's socket only), and the throttled mark
//! the API, metrics and log show.

use super::Shared;
use crate::budget::{Budget, Budgets, Mark};

impl Shared {
    /// Takes one token of `name`'s `budget` now: `Ok`, or how long until there is one.
    /// Marks the domain throttled (API, metrics, log) when refused, and clears the mark
    /// when the budget that set it gives again. An unknown domain has no budget to spend.
    pub fn take_budget(&self, name: &str, budget: Budget) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let (r, mark) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return Ok(());
            };
            let b = slot
                .budgets
                .get_or_insert_with(|| Budgets::from_limits(&self.config.limits, now));
            let (r, mark) = b.take(budget, now);
            match mark {
                Mark::Entered(_) => slot.throttled_since = Some(crate::clock::now_rfc3339()),
                Mark::Left => slot.throttled_since = None,
                Mark::Same => {}
            }
            (r, mark)
        };
        match mark {
            Mark::Entered(b) => {
                self.metrics.throttled(b);
                tracing::warn!(
                    domain = name,
                    budget = b.as_str(),
                    "domain throttled: over its {b} budget (limits.{b}_per_sec / limits.{b}_burst); its socket is read as the budget refills"
                );
            }
            Mark::Left => {
                tracing::info!(
                    domain = name,
                    budget = budget.as_str(),
                    "domain no longer throttled"
                );
            }
            Mark::Same => {}
        }
        r
    }

    /// Waits until `name` has a token of `budget` and takes it (backpressure: the caller
    /// does nothing for that domain meanwhile). Ends early at shutdown.
    pub async fn spend_budget(&self, name: &str, budget: Budget) {
        while let Err(wait) = self.take_budget(name, budget) {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait.min(std::time::Duration::from_secs(1))) => {}
            }
        }
    }

    /// Domains throttled now (the `xenchan_throttled_domains` gauge).
    pub fn throttled_count(&self) -> u64 {
        let now = std::time::Instant::now();
        self.slots()
            .values()
            .filter(|s| {
                s.budgets
                    .as_ref()
                    .and_then(|b| b.throttled_at(now))
                    .is_some()
            })
            .count() as u64
    }
}
