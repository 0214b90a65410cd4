//! A session's narrow view of the domain registry: exactly the calls a session (and its
//! transport) makes, for one domain, instead of the whole shared state. The store
//! writes a session makes (applied state, results, facts) go through here too, so a
//! change of the store's interface touches this file and not the session.

use std::sync::Arc;

use xenchan_protocol::Lineage;
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};

use tokio_util::sync::CancellationToken;

use crate::api::types::{DomainState, ItemView};
use crate::budget::Budget;
use crate::clock::now_rfc3339;
use crate::config::{Config, Limits, Timeouts};
use crate::domains::{Desired, Shared};
use crate::metrics::{ErrorKind, Metrics, SessionWrite};

/// One domain's entry in the registry, as its session sees it.
#[derive(Debug, Clone)]
pub struct DomainHandle {
    shared: Arc<Shared>,
    name: String,
}

impl DomainHandle {
    /// The handle of `name`'s session.
    pub fn new(shared: Arc<Shared>, name: String) -> DomainHandle {
        DomainHandle { shared, name }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The deadlines.
    pub fn timeouts(&self) -> &Timeouts {
        &self.config().timeouts
    }

    /// The size limits.
    pub fn limits(&self) -> &Limits {
        &self.config().limits
    }

    /// The channel name the broker says hello on.
    pub fn channel(&self) -> &str {
        &self.config().channel
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the broker is shutting down (rather than the domain being removed).
    pub fn shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// What is desired now (the session also watches it).
    pub fn desired(&self) -> Desired {
        self.shared.desired(&self.name)
    }

    /// The state shown for the domain.
    pub fn state(&self) -> Option<DomainState> {
        self.shared.view(&self.name).map(|v| v.state)
    }

    /// Sets the state shown for the domain.
    pub fn set_state(&self, state: DomainState) {
        self.shared.set_state(&self.name, state);
    }

    /// Sets whether the agent has answered in the running session.
    pub fn set_connected(&self, connected: bool) {
        self.shared.update(&self.name, |s| s.connected(connected));
    }

    /// The store's lineage, which every push carries.
    pub fn lineage(&self) -> Lineage {
        self.shared.store.lineage().clone()
    }

    /// The facts stored for the domain.
    pub fn stored_facts(&self) -> Option<GuestFacts> {
        self.shared.view(&self.name).and_then(|v| v.facts)
    }

    /// Records why the domain is degraded as its last error (durably and in memory),
    /// unless it says so already. Not counted as an error: the agent retries.
    pub async fn record_reason(&self, why: String) {
        let same = self
            .shared
            .view(&self.name)
            .is_some_and(|v| v.last_error.as_deref() == Some(why.as_str()));
        if same {
            return;
        }
        tracing::warn!(domain = self.name, "{why}");
        self.shared.set_error_mem(&self.name, Some(why.clone()));
        if let Err(e) = self.shared.store.set_error(&self.name, Some(&why)).await {
            self.shared.metrics.error(ErrorKind::Store);
            tracing::error!(domain = self.name, "cannot record an error: {e}");
        }
    }

    /// The items of the domain's last result.
    pub fn last_items(&self) -> Vec<ItemView> {
        let mut v = Vec::new();
        self.shared.update(&self.name, |s| v = s.items().to_vec());
        v
    }

    /// Records an error durably and in memory. A store write like any other: charged to
    /// the writes budget, so a guest repeating different errors pays for each.
    pub async fn record_error(&self, kind: ErrorKind, error: String) {
        self.shared.spend_budget(&self.name, Budget::Writes).await;
        self.shared.metrics.session_write(SessionWrite::Error);
        self.shared.record_error(&self.name, kind, error).await;
    }

    /// Clears the last error durably and in memory.
    pub async fn clear_error(&self) {
        self.shared.clear_error(&self.name).await;
    }

    /// Records what the agent's hello reports (applied state, UUID) durably, then in
    /// memory, and marks the domain connected. A store failure is counted and logged:
    /// the agent says it again in its next hello.
    pub async fn record_hello(&self, applied: Option<&Applied>, uuid: Option<String>) {
        self.shared.spend_budget(&self.name, Budget::Writes).await;
        self.shared.metrics.session_write(SessionWrite::Applied);
        if let Err(e) = self
            .shared
            .store
            .record_applied(&self.name, applied, uuid.as_deref())
            .await
        {
            self.shared.metrics.error(ErrorKind::Store);
            tracing::error!(domain = self.name, "cannot record the applied state: {e}");
        }
        let applied = applied.map(|a| (a.generation, a.digest.to_string()));
        self.shared.update(&self.name, |s| {
            s.applied(applied, uuid);
            s.connected(true);
        });
    }

    /// Records a result durably before anything else (a result received is never
    /// lost), then in memory in one update: its items, its generation as the applied
    /// one, and `state` (what the result leads to) when given.
    pub async fn record_result(&self, r: &ApplyResult, state: Option<DomainState>) {
        self.shared.spend_budget(&self.name, Budget::Writes).await;
        self.shared.metrics.session_write(SessionWrite::Result);
        let at = match self.shared.store.record_result(&self.name, r).await {
            Ok(at) => at,
            Err(e) => {
                self.shared.metrics.error(ErrorKind::Store);
                tracing::error!(domain = self.name, "cannot record a result: {e}");
                now_rfc3339()
            }
        };
        let items: Vec<ItemView> = r
            .items
            .iter()
            .map(|i| ItemView {
                item: i.item.clone(),
                status: i.status,
                reason: i.reason.clone(),
                generation: r.generation,
            })
            .collect();
        let applied = (r.generation, r.digest.to_string());
        self.shared.update(&self.name, |s| {
            s.result(items, at);
            s.applied(Some(applied), None);
            if let Some(state) = state {
                s.state(state);
            }
        });
    }

    /// Records the guest's facts durably and in memory.
    pub async fn record_facts(&self, f: GuestFacts) {
        self.shared.spend_budget(&self.name, Budget::Writes).await;
        self.shared.metrics.session_write(SessionWrite::Facts);
        if self
            .shared
            .store
            .record_facts(&self.name, &f)
            .await
            .is_err()
        {
            self.shared.metrics.error(ErrorKind::Store);
        }
        self.shared.update(&self.name, |s| s.facts(f));
    }

    /// Waits for a token of the domain's `budget` and takes it (`crate::budget`): while
    /// the domain is over budget the session does nothing else, so its socket is not
    /// read (backpressure). Ends early when `stop` is cancelled.
    pub async fn spend(&self, budget: Budget, stop: &CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => {}
            () = self.shared.spend_budget(&self.name, budget) => {}
        }
    }

    /// Queues a notification hook (`add` / `end` or `failed` and the generation...).
    pub fn notify_hook(&self, event: &'static str, phase: &'static str, extra: String) {
        self.shared.notify_hook(&self.name, event, phase, extra);
    }

    /// The session task is over (see [`Shared::session_ended`]).
    pub fn ended(&self) {
        self.shared.session_ended(&self.name);
    }
}
