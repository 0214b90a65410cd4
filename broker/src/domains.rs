//! The broker's domains: what is desired (from the API), what each session sees, and the
//! lifecycle operations (DESIGN.md section 5, after the libxl hotplug interface):
//!
//! - **prepare** = `PUT config`: validate, take leases, store, run `prepare` hooks;
//! - **add** = the domain's socket appears: a session connects and pushes;
//! - **remove** = the socket goes away: the session stops (safe after a failed add);
//! - **unprepare** = `DELETE`: the desired config is dropped and the leases released.
//!
//! Every step is idempotent. The store is the durable copy; this module keeps the read
//! model in memory (views, hook input, metrics) and is updated right after each durable
//! write. A std mutex guards it and is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xenchan_protocol::message::GuestFacts;

use crate::api::types::{DomainState, DomainView, ItemView};
use crate::config::{Config, Mode};
use crate::hooks::{HookCall, Hooks};
use crate::metrics::{ErrorKind, Metrics};
use crate::store::{DesiredConfig, DomainRecord, Store};

/// What a domain's session should bring about. Sessions watch it.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// The desired configuration, if any.
    pub config: Option<Arc<DesiredConfig>>,
    /// The VM UUID the agent must report, when known.
    pub uuid: Option<String>,
    /// Bumped by `POST .../push`: push even if the agent has applied the generation.
    pub force: u64,
}

/// A running session task.
#[derive(Debug)]
struct SessionTask {
    stop: CancellationToken,
    join: JoinHandle<()>,
}

/// One domain's entry.
#[derive(Debug)]
struct Slot {
    desired: watch::Sender<Desired>,
    reported_uuid: Option<String>,
    applied: Option<(u64, String)>,
    items: Vec<ItemView>,
    last_error: Option<String>,
    facts: Option<GuestFacts>,
    last_result_at: Option<String>,
    state: DomainState,
    connected: bool,
    /// The socket exists (connect mode) or the broker listens on it (listen mode).
    socket: bool,
    session: Option<SessionTask>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            desired: watch::channel(Desired::default()).0,
            reported_uuid: None,
            applied: None,
            items: Vec::new(),
            last_error: None,
            facts: None,
            last_result_at: None,
            state: DomainState::Pending,
            connected: false,
            socket: false,
            session: None,
        }
    }

    fn from_record(r: DomainRecord) -> Slot {
        let mut s = Slot::new();
        s.desired.send_replace(Desired {
            config: r.desired.map(Arc::new),
            uuid: r.uuid,
            force: 0,
        });
        s.reported_uuid = r.reported_uuid;
        s.applied = r.applied;
        s.items = r.items;
        s.last_error = r.last_error;
        s.facts = r.facts;
        s.last_result_at = r.last_result_at;
        s
    }

    fn has_config(&self) -> bool {
        self.desired.borrow().config.is_some()
    }

    fn view(&self, name: &str) -> DomainView {
        let d = self.desired.borrow();
        DomainView {
            name: name.to_string(),
            uuid: d.uuid.clone(),
            reported_uuid: self.reported_uuid.clone(),
            state: self.state,
            desired_generation: d.config.as_ref().map(|c| c.generation),
            desired_digest: d.config.as_ref().map(|c| c.digest.to_string()),
            applied_generation: self.applied.as_ref().map(|a| a.0),
            applied_digest: self.applied.as_ref().map(|a| a.1.clone()),
            items: self.items.clone(),
            last_error: self.last_error.clone(),
            facts: self.facts.clone(),
            connected: self.connected,
            last_result_at: self.last_result_at.clone(),
            config: d.config.as_ref().map(|c| c.config.clone()),
        }
    }
}

/// Everything the broker's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The durable store.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Hooks.
    pub hooks: Hooks,
    /// Cancelled at shutdown; every session token is a child of it.
    pub shutdown: CancellationToken,
    /// Serialises the durable write and the in-memory update of config changes, so
    /// that memory always ends in the order the store committed. Never held while a
    /// hook runs.
    pub config_lock: tokio::sync::Mutex<()>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Tasks of sessions that were stopped and may still hold their connection (a stop
    /// is seen between two steps, and a step may be a store write). The next session of
    /// the same name waits for its predecessor, so there is never more than one
    /// connection per socket. Kept apart from `slots` because a domain's slot may be
    /// forgotten while its last session winds down. Lock order: `slots`, then this.
    stopping: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// The signature of the session task entry point (connect or listen mode).
type SessionFn = fn(
    Arc<Shared>,
    String,
    watch::Receiver<Desired>,
    CancellationToken,
    Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()>;

impl Shared {
    /// Shared state with the stored domains loaded.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        records: Vec<DomainRecord>,
    ) -> Shared {
        let slots = records
            .into_iter()
            .map(|r| (r.name.clone(), Slot::from_record(r)))
            .collect();
        Shared {
            config,
            store,
            metrics,
            hooks,
            shutdown: CancellationToken::new(),
            config_lock: tokio::sync::Mutex::new(()),
            slots: Mutex::new(slots),
            stopping: Mutex::new(HashMap::new()),
        }
    }

    fn stopping(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.stopping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops a slot's session; its task is kept until the next session of the name.
    fn stop_session(&self, name: &str, slot: &mut Slot) {
        if let Some(t) = slot.session.take() {
            t.stop.cancel();
            let mut stopping = self.stopping();
            stopping.retain(|_, j| !j.is_finished());
            stopping.insert(name.to_string(), t.join);
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this lock is a bug; the data is still consistent enough
        // to serve views, so poisoning is ignored.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A domain's view, if the broker knows the domain.
    pub fn view(&self, name: &str) -> Option<DomainView> {
        self.slots().get(name).map(|s| s.view(name))
    }

    /// Every domain's view, by name.
    pub fn views(&self) -> Vec<DomainView> {
        let slots = self.slots();
        let mut v: Vec<_> = slots.iter().map(|(n, s)| s.view(n)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// (domains, sessions) for health.
    pub fn counts(&self) -> (u64, u64) {
        let slots = self.slots();
        let sessions = slots.values().filter(|s| s.session.is_some()).count();
        (slots.len() as u64, sessions as u64)
    }

    /// Domains by state, for metrics.
    pub fn states(&self) -> Vec<(DomainState, u64)> {
        let slots = self.slots();
        DomainState::ALL
            .iter()
            .map(|st| {
                (
                    *st,
                    slots.values().filter(|s| s.state == *st).count() as u64,
                )
            })
            .collect()
    }

    /// The desired state of `name` (a default one if unknown).
    pub fn desired(&self, name: &str) -> Desired {
        self.slots()
            .get(name)
            .map(|s| s.desired.borrow().clone())
            .unwrap_or_default()
    }

    /// Names of domains with a desired configuration.
    pub fn configured_names(&self) -> Vec<String> {
        self.slots()
            .iter()
            .filter(|(_, s)| s.has_config())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Names of domains whose socket is present (connect mode).
    pub fn socket_names(&self) -> Vec<String> {
        self.slots()
            .iter()
            .filter(|(_, s)| s.socket)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Updates a known domain's in-memory entry.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut SlotMut<'_>)) {
        if let Some(s) = self.slots().get_mut(name) {
            f(&mut SlotMut(s));
        }
    }

    /// Sets the session state of a domain.
    pub fn set_state(&self, name: &str, state: DomainState) {
        self.update(name, |s| s.0.state = state);
    }

    /// The in-memory last error (the store is updated separately, by the caller).
    pub fn set_error_mem(&self, name: &str, error: Option<String>) {
        self.update(name, |s| s.0.last_error = error);
    }

    /// Records an error durably and in memory.
    pub async fn record_error(&self, name: &str, kind: ErrorKind, error: String) {
        self.metrics.error(kind);
        tracing::warn!(domain = name, "{error}");
        self.set_error_mem(name, Some(error.clone()));
        let n = name.to_string();
        if let Err(e) = self
            .store
            .call(move |db| db.set_error(&n, Some(&error)))
            .await
        {
            self.metrics.error(ErrorKind::Store);
            tracing::error!(domain = name, "cannot record an error: {e}");
        }
    }

    /// Clears the last error durably and in memory.
    pub async fn clear_error(&self, name: &str) {
        let had = self
            .slots()
            .get(name)
            .is_some_and(|s| s.last_error.is_some());
        if !had {
            return;
        }
        self.set_error_mem(name, None);
        let n = name.to_string();
        if self
            .store
            .call(move |db| db.set_error(&n, None))
            .await
            .is_err()
        {
            self.metrics.error(ErrorKind::Store);
        }
    }

    /// Queues a notification hook with the domain's current view on stdin.
    pub fn notify_hook(&self, name: &str, event: &'static str, phase: &'static str, extra: String) {
        let stdin = self.view(name).map_or_else(
            || format!("{{\"name\":\"{name}\"}}").into_bytes(),
            |v| serde_json::to_vec(&v).expect("views serialise"),
        );
        self.hooks.notify(HookCall {
            domain: name.to_string(),
            event,
            phase,
            extra,
            stdin,
        });
    }

    /// Installs a newly stored desired configuration (after the durable write, under
    /// `config_lock`). Creates the domain if needed; in listen mode starts listening.
    pub fn install_desired(
        self: &Arc<Self>,
        name: &str,
        config: DesiredConfig,
        uuid: Option<&String>,
    ) {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
        slot.desired.send_if_modified(|d| {
            let same = d
                .config
                .as_ref()
                .is_some_and(|c| c.generation == config.generation && c.digest == config.digest);
            let new_uuid = uuid.is_some() && uuid != d.uuid.as_ref();
            if new_uuid {
                d.uuid = uuid.cloned();
            }
            if !same {
                d.config = Some(Arc::new(config));
            }
            new_uuid || !same
        });
        if self.config.mode == Mode::Listen && slot.session.is_none() {
            slot.socket = true;
            self.start_session(name, slot, listen_entry);
        }
    }

    /// Drops the desired configuration (after the durable delete, under `config_lock`).
    /// Returns whether a session is running for the domain (its row must then stay).
    pub fn remove_desired(&self, name: &str) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        slot.desired.send_modify(|d| {
            d.config = None;
            d.uuid = None;
        });
        if self.config.mode == Mode::Listen {
            slot.socket = false;
            self.stop_session(name, slot);
        }
        if slot.session.is_none() {
            slots.remove(name);
        }
    }

    /// Whether a session is running (or stopping) for `name`.
    pub fn has_session(&self, name: &str) -> bool {
        self.slots()
            .get(name)
            .is_some_and(|s| s.session.is_some() || s.socket)
    }

    /// Asks for a re-push. Returns false if the domain has no desired configuration.
    pub fn force_push(&self, name: &str) -> bool {
        let slots = self.slots();
        let Some(slot) = slots.get(name) else {
            return false;
        };
        if !slot.has_config() {
            return false;
        }
        slot.desired.send_modify(|d| d.force += 1);
        true
    }

    /// Connect mode: `<name>.sock` appeared. Starts the session unless one runs.
    /// Returns false if the domain limit refuses it.
    pub fn socket_appeared(self: &Arc<Self>, name: &str) -> bool {
        let mut slots = self.slots();
        if !slots.contains_key(name) && slots.len() >= self.config.limits.max_domains {
            drop(slots);
            self.metrics.error(ErrorKind::Other);
            tracing::warn!(
                domain = name,
                "socket ignored: the broker already manages limits.max_domains = {} domains",
                self.config.limits.max_domains
            );
            return false;
        }
        let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
        if slot.socket && slot.session.is_some() {
            return true;
        }
        slot.socket = true;
        tracing::info!(domain = name, "socket found; starting its session");
        self.start_session(name, slot, connect_entry);
        drop(slots);
        self.notify_hook(name, "add", "begin", "-".into());
        true
    }

    /// Connect mode: `<name>.sock` went away. Stops the session (remove).
    pub fn socket_vanished(self: &Arc<Self>, name: &str) {
        let forget = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            if !slot.socket {
                return;
            }
            slot.socket = false;
            self.stop_session(name, slot);
            slot.state = DomainState::Pending;
            slot.connected = false;
            !slot.has_config()
        };
        tracing::info!(domain = name, "socket gone; session stopped");
        self.notify_hook(name, "remove", "end", "-".into());
        if forget {
            // Nothing is desired and nothing is connected: the domain is forgotten.
            self.slots().remove(name);
            let store = self.store.clone();
            let n = name.to_string();
            tokio::spawn(async move {
                let _ = store.call(move |db| db.forget_unconfigured(&n)).await;
            });
        }
    }

    fn start_session(self: &Arc<Self>, name: &str, slot: &mut Slot, entry: SessionFn) {
        let previous = self.stopping().remove(name);
        let stop = self.shutdown.child_token();
        let fut = entry(
            Arc::clone(self),
            name.to_string(),
            slot.desired.subscribe(),
            stop.clone(),
            previous,
        );
        slot.state = DomainState::Connecting;
        slot.session = Some(SessionTask {
            stop,
            join: tokio::spawn(fut),
        });
    }

    /// Stops every session and waits for them (bounded by `timeouts.shutdown`).
    pub async fn stop_all(&self) {
        self.shutdown.cancel();
        let joins: Vec<JoinHandle<()>> = {
            let mut slots = self.slots();
            let mut joins: Vec<_> = slots
                .values_mut()
                .filter_map(|s| s.session.take().map(|t| t.join))
                .collect();
            joins.extend(self.stopping().drain().map(|(_, j)| j));
            joins
        };
        let all = futures::future::join_all(joins);
        if tokio::time::timeout(self.config.timeouts.shutdown(), all)
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not stop in time");
        }
    }
}

fn connect_entry(
    shared: Arc<Shared>,
    name: String,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(crate::session::run_connect(
        shared, name, desired, stop, previous,
    ))
}

fn listen_entry(
    shared: Arc<Shared>,
    name: String,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(crate::session::run_listen(
        shared, name, desired, stop, previous,
    ))
}

/// Mutable access to one domain's in-memory entry, for sessions.
#[derive(Debug)]
pub struct SlotMut<'a>(&'a mut Slot);

impl SlotMut<'_> {
    /// Sets the state.
    pub fn state(&mut self, s: DomainState) {
        self.0.state = s;
    }
    /// Sets whether a session is up.
    pub fn connected(&mut self, c: bool) {
        self.0.connected = c;
    }
    /// Sets what the agent reports as applied, and its UUID.
    pub fn applied(&mut self, applied: Option<(u64, String)>, uuid: Option<String>) {
        self.0.applied = applied;
        if uuid.is_some() {
            self.0.reported_uuid = uuid;
        }
    }
    /// Sets the items of a result and when it arrived.
    pub fn result(&mut self, items: Vec<ItemView>, at: String) {
        self.0.items = items;
        self.0.last_result_at = Some(at);
    }
    /// Sets the facts.
    pub fn facts(&mut self, f: GuestFacts) {
        self.0.facts = Some(f);
    }
    /// The items of the last result.
    pub fn items(&self) -> &[ItemView] {
        &self.0.items
    }
}
