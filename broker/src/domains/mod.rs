//! The broker's domains: what is desired (from the API), what each session sees, and the
//! lifecycle operations (docs/ARCHITECTURE.md, after the libxl hotplug interface):
//!
//! - **prepare** = `PUT config` (validate, take leases, store, run `prepare` hooks) and
//!   the lifecycle `POST .../prepare` (register, record the UUID and channel path,
//!   confirm the leases, mark the domain running);
//! - **add** = the domain's socket appears (socket folder, xenstore backend, or the path
//!   a prepare named): a session is attached to it, connects and pushes;
//! - **remove** = the socket goes away, or `POST .../release`: the session stops (safe
//!   after a failed add);
//! - **unprepare** = `DELETE`: the desired config is dropped and the leases released.
//!
//! Every step is idempotent. Domains are keyed by name (the API's key); discovery maps
//! what it finds onto names (xenstore discovery by UUID first, see
//! `discovery::xenstore`), so a domain that comes back with a new domid finds its state. The store is the durable copy; this module keeps the read
//! model in memory (views, hook input, metrics) and is updated right after each durable
//! write. A std mutex guards it and is never held across an await.
//!
//! `lifecycle.rs` attaches, detaches and resumes sessions (what discovery and the
//! lifecycle endpoints ask for); `slot.rs` is a session's mutable view of its entry.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xenchan_protocol::config::Digest;
use xenchan_protocol::message::GuestFacts;

use crate::api::types::{DomainState, DomainView, ItemView, Lifecycle};
use crate::budget::{Budget, Budgets};
use crate::config::{Config, Mode};
use crate::discovery::asked::Rediscover;
use crate::hooks::{HookCall, Hooks};
use crate::metrics::{ErrorKind, Metrics};
use crate::ops::DomainLocks;
use crate::session::DomainHandle;
use crate::store::{DesiredConfig, DomainRecord, Store};

mod lifecycle;
mod slot;
mod throttle;

pub use slot::SlotMut;

/// What a domain's session should bring about. Sessions watch it.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// The desired configuration, if any.
    pub config: Option<Arc<DesiredConfig>>,
    /// The VM UUID recorded for the domain (`PUT ?uuid=`, prepare).
    pub uuid: Option<String>,
    /// The VM UUID xenstore gives for the running domain.
    pub discovered_uuid: Option<String>,
    /// Bumped by `POST .../push`: push even if the agent has applied the generation.
    pub force: u64,
    /// The last `POST .../push` asked `force=true`: that push overrides the generation
    /// order (`force` in the config frame).
    pub force_order: bool,
}

impl Desired {
    /// The UUID the agent must report: the recorded one, else the discovered one.
    pub fn expected_uuid(&self) -> Option<&String> {
        self.uuid.as_ref().or(self.discovered_uuid.as_ref())
    }
}

/// Who attached a session to its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `<socket_dir>/<name>.sock`, found by socket-folder discovery.
    Dir,
    /// A socket path outside the socket folder, named by a lifecycle prepare.
    Prepared,
    /// A console backend found in xenstore.
    Xenstore,
    /// Listen mode: the broker's own socket.
    Listen,
}

/// The socket a session is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Who found it.
    pub source: Source,
    /// The unix socket.
    pub path: PathBuf,
    /// The Xen domain id (xenstore discovery).
    pub domid: Option<u32>,
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
    /// The socket the session is attached to; `Some` exactly while `session` is.
    attached: Option<Endpoint>,
    session: Option<SessionTask>,
    /// Where the lifecycle endpoints left the domain (durable).
    lifecycle: Option<Lifecycle>,
    /// The socket path the last prepare named, if not the default one (durable).
    channel_path: Option<PathBuf>,
    /// A domid whose session `release` stopped: xenstore discovery does not attach it
    /// again (the VM is gone, xenstore just has not said so yet).
    released_domid: Option<u32>,
    /// Budgets (created at the first take; kept across reconnects, so reconnecting does
    /// not refill them) and when the domain was last marked throttled, for the API.
    budgets: Option<Budgets>,
    throttled_since: Option<String>,
}

/// Hook notifications collected under the lock and sent after it is dropped (a hook's
/// stdin is the domain's view, which takes the lock).
type HookEvents = Vec<(&'static str, &'static str)>;

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
            attached: None,
            session: None,
            lifecycle: None,
            channel_path: None,
            released_domid: None,
            budgets: None,
            throttled_since: None,
        }
    }

    fn from_record(r: DomainRecord) -> Slot {
        let mut s = Slot::new();
        s.desired.send_replace(Desired {
            config: r.desired.map(Arc::new),
            uuid: r.uuid,
            discovered_uuid: None,
            force: 0,
            force_order: false,
        });
        s.reported_uuid = r.reported_uuid;
        s.applied = r.applied.map(|a| (a.generation, a.digest.to_string()));
        s.items = r.last_result.items;
        s.last_error = r.last_error;
        s.facts = r.facts;
        s.last_result_at = r.last_result.at;
        s.lifecycle = r.lifecycle;
        s.channel_path = r.channel_path;
        s
    }

    fn has_config(&self) -> bool {
        self.desired.borrow().config.is_some()
    }

    fn running(&self) -> bool {
        self.lifecycle == Some(Lifecycle::Running)
    }

    /// Whether the domain stays known without a configuration.
    fn survives_without_config(&self, mode: Mode) -> bool {
        self.running() || (self.attached.is_some() && mode == Mode::Connect)
    }

    fn view(&self, name: &str) -> DomainView {
        let d = self.desired.borrow();
        DomainView {
            name: name.to_string(),
            uuid: d.expected_uuid().cloned(),
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
            lifecycle: self.lifecycle,
            socket: self
                .attached
                .as_ref()
                .map(|a| a.path.clone())
                .or_else(|| self.channel_path.clone()),
            domid: self.attached.as_ref().and_then(|a| a.domid),
            throttled: self
                .budgets
                .as_ref()
                .and_then(|b| b.throttled_at(std::time::Instant::now()))
                .map(|t| crate::api::types::Throttled {
                    budget: t.budget.to_string(),
                    since: self.throttled_since.clone().unwrap_or_default(),
                }),
            // Filled in by Shared, which holds the hook queues.
            hooks_dropped: 0,
        }
    }
}

/// Everything the broker's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Hooks.
    pub hooks: Hooks,
    /// Cancelled at shutdown; every session token is a child of it.
    pub shutdown: CancellationToken,
    /// One lock per domain around the durable write and the in-memory update of the
    /// API's writes, so that memory always ends in the order the store committed
    /// (`ops`). Never held while a hook runs.
    pub locks: DomainLocks,
    /// Asks discovery to look at a domain again (a prepare changed what may be attached).
    pub rediscover: Rediscover,
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
    DomainHandle,
    PathBuf,
    watch::Receiver<Desired>,
    CancellationToken,
    Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()>;

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

impl Shared {
    /// Shared state with the stored domains loaded.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
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
            locks: DomainLocks::default(),
            rediscover: Rediscover::default(),
            slots: Mutex::new(slots),
            stopping: Mutex::new(HashMap::new()),
        }
    }

    fn stopping(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.stopping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let mut v = self.slots().get(name).map(|s| s.view(name))?;
        v.hooks_dropped = self.hooks.dropped_of(name);
        Some(v)
    }

    /// Every domain's view, by name.
    pub fn views(&self) -> Vec<DomainView> {
        let slots = self.slots();
        let drops = self.hooks.drop_counts();
        let mut v: Vec<_> = slots
            .iter()
            .map(|(n, s)| {
                let mut v = s.view(n);
                v.hooks_dropped = drops.get(n).copied().unwrap_or(0);
                v
            })
            .collect();
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

    /// Whether `name`'s desired configuration is already this generation with this digest.
    pub fn has_desired(&self, name: &str, generation: u64, digest: &Digest) -> bool {
        self.slots().get(name).is_some_and(|s| {
            s.desired
                .borrow()
                .config
                .as_ref()
                .is_some_and(|c| c.generation == generation && &c.digest == digest)
        })
    }

    /// Whether the agent of `name` has answered in the running session.
    pub fn connected(&self, name: &str) -> bool {
        self.slots().get(name).is_some_and(|s| s.connected)
    }

    /// Names of domains whose session `source` attached.
    pub fn attached_names(&self, source: Source) -> Vec<String> {
        self.slots()
            .iter()
            .filter(|(_, s)| s.attached.as_ref().is_some_and(|a| a.source == source))
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
        if let Err(e) = self.store.set_error(name, Some(&error)).await {
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
        if self.store.set_error(name, None).await.is_err() {
            self.metrics.error(ErrorKind::Store);
        }
    }

    /// Queues a notification hook with the domain's current view on stdin.
    pub fn notify_hook(&self, name: &str, event: &'static str, phase: &'static str, extra: String) {
        // No hook to run (the usual case): skip serialising the view, which holds the
        // whole configuration (7% of the broker's CPU per pushed domain otherwise).
        if self.hooks.list().is_empty() {
            return;
        }
        // A notification cannot wait (it is queued from wherever the event happened):
        // past its hooks budget a domain's own notification is dropped and counted.
        if self.take_budget(name, Budget::Hooks).is_err() {
            self.hooks
                .dropped(name, "over its hooks budget (limits.hooks_per_sec)");
            return;
        }
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

    fn fire(&self, name: &str, events: HookEvents) {
        for (event, phase) in events {
            self.notify_hook(name, event, phase, "-".into());
        }
    }

    /// The socket a listen-mode session owns.
    fn listen_endpoint(&self, name: &str, slot: &Slot) -> Endpoint {
        Endpoint {
            source: Source::Listen,
            path: slot
                .channel_path
                .clone()
                .unwrap_or_else(|| self.config.socket_path(name)),
            domid: None,
        }
    }

    /// Installs a newly stored desired configuration (after the durable write, under
    /// the domain's lock). Creates the domain if needed; in listen mode starts listening.
    pub fn install_desired(
        self: &Arc<Self>,
        name: &str,
        config: Arc<DesiredConfig>,
        uuid: Option<&String>,
    ) {
        let mut hooks = HookEvents::new();
        {
            let mut slots = self.slots();
            let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
            slot.desired.send_if_modified(|d| {
                let same = d.config.as_ref().is_some_and(|c| {
                    c.generation == config.generation && c.digest == config.digest
                });
                let new_uuid = uuid.is_some() && uuid != d.uuid.as_ref();
                if new_uuid {
                    d.uuid = uuid.cloned();
                }
                if !same {
                    d.config = Some(config);
                }
                new_uuid || !same
            });
            if self.config.mode == Mode::Listen && slot.lifecycle != Some(Lifecycle::Stopped) {
                let ep = self.listen_endpoint(name, slot);
                self.attach_in(slot, name, ep, true, &mut hooks);
            }
        }
        self.fire(name, hooks);
    }

    /// Whether the store must keep the domain's row when its configuration is deleted
    /// (a session is attached, or the domain is prepared).
    pub fn keeps_row_without_config(&self, name: &str) -> bool {
        self.slots()
            .get(name)
            .is_some_and(|s| s.survives_without_config(self.config.mode))
    }

    /// Drops the desired configuration (after the durable delete, under the domain's lock).
    /// The domain is forgotten unless a session is attached or it is prepared.
    pub fn remove_desired(&self, name: &str) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        slot.desired.send_modify(|d| {
            d.config = None;
            d.uuid = None;
        });
        if self.config.mode == Mode::Listen && !slot.running() {
            let mut hooks = HookEvents::new();
            self.detach_in(slot, name, &mut hooks);
        }
        if !slot.survives_without_config(self.config.mode) {
            slots.remove(name);
        }
    }

    /// Asks for a re-push (`order`: overriding the generation order). Returns false if
    /// the domain has no desired configuration.
    pub fn force_push(&self, name: &str, order: bool) -> bool {
        let slots = self.slots();
        let Some(slot) = slots.get(name) else {
            return false;
        };
        if !slot.has_config() {
            return false;
        }
        slot.desired.send_modify(|d| {
            d.force += 1;
            d.force_order = order;
        });
        true
    }
}
