//! Sessions of the registry's domains: attach a session to what discovery or a
//! lifecycle call found, detach it when its socket vanishes or the domain is
//! released, and resume them at start. The rules per discovery source are in
//! `discovery::policy`; this carries their answers out.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    Desired, Endpoint, HookEvents, SessionFn, SessionTask, Shared, Slot, Source, is_socket,
};
use crate::api::types::{DomainState, Lifecycle};
use crate::discovery::policy::{self, Attach, OnPrepare, Sources};
use crate::metrics::ErrorKind;
use crate::session::DomainHandle;

impl Shared {
    /// Attaches `name`'s session to `ep`: starts it, or restarts it if it is attached to
    /// another socket or domid. `fresh`: the socket just appeared (an event, not a
    /// rescan). Returns false if it was not attached (domain limit, a released domain
    /// seen again by a rescan, a prepared path that takes precedence). `uuid` is what
    /// xenstore says the domain's UUID is (xenstore discovery only; set before the
    /// session starts).
    pub fn attach(
        self: &Arc<Self>,
        name: &str,
        ep: Endpoint,
        fresh: bool,
        uuid: Option<String>,
    ) -> bool {
        let mut hooks = HookEvents::new();
        let discovered = uuid.clone();
        let (attached, found) = {
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
            if ep.source == Source::Xenstore {
                slot.desired.send_if_modified(|d| {
                    let changed = d.discovered_uuid != uuid;
                    d.discovered_uuid = uuid;
                    changed
                });
            }
            // A new session, not a rescan finding the same socket again.
            let new = ep.source != Source::Listen && slot.attached.as_ref() != Some(&ep);
            let attached = self.attach_in(slot, name, ep, fresh, &mut hooks);
            (attached, attached && new && !slot.running())
        };
        self.fire(name, hooks);
        if found && let Some(etcd) = self.store.as_cluster() {
            // Cluster mode: found running here without a prepare (docs/CLUSTER.md).
            etcd.found_running(name, discovered.as_deref());
        }
        attached
    }

    pub(super) fn attach_in(
        self: &Arc<Self>,
        slot: &mut Slot,
        name: &str,
        ep: Endpoint,
        fresh: bool,
        hooks: &mut HookEvents,
    ) -> bool {
        let now = policy::Attached {
            current: slot.attached.as_ref(),
            stopped: slot.lifecycle == Some(Lifecycle::Stopped),
            released_domid: slot.released_domid,
        };
        match policy::attach(&now, &ep, fresh) {
            Attach::Already => return true,
            Attach::Refuse => return false,
            Attach::Start => {}
        }
        if ep.source == Source::Xenstore {
            slot.released_domid = None;
        }
        self.detach_in(slot, name, hooks);
        tracing::info!(
            domain = name,
            socket = %ep.path.display(),
            domid = ep.domid,
            source = ?ep.source,
            "starting the domain's session"
        );
        let entry: SessionFn = if ep.source == Source::Listen {
            listen_entry
        } else {
            connect_entry
        };
        let path = ep.path.clone();
        slot.attached = Some(ep);
        self.start_session(name, slot, path, entry);
        hooks.push(("add", "begin"));
        true
    }

    /// Stops a slot's session, if one is attached; its task is kept until the next
    /// session of the name.
    pub(super) fn detach_in(&self, slot: &mut Slot, name: &str, hooks: &mut HookEvents) {
        if slot.attached.take().is_none() {
            return;
        }
        if let Some(t) = slot.session.take() {
            t.stop.cancel();
            let mut stopping = self.stopping();
            stopping.retain(|_, j| !j.is_finished());
            stopping.insert(name.to_string(), t.join);
        }
        slot.state = DomainState::Pending;
        slot.connected = false;
        tracing::info!(domain = name, "session stopped");
        hooks.push(("remove", "end"));
    }

    /// A session task ended. If no other session was attached meanwhile, the domain is
    /// `pending`: whatever the ended session wrote after it was detached is stale.
    pub fn session_ended(&self, name: &str) {
        if let Some(s) = self.slots().get_mut(name)
            && s.attached.is_none()
        {
            s.state = DomainState::Pending;
            s.connected = false;
        }
    }

    /// `source` saw the domain's socket go away (remove): stops the session it
    /// attached, and forgets the domain if nothing about it matters any more.
    pub fn vanished(self: &Arc<Self>, name: &str, source: Source) {
        let mut hooks = HookEvents::new();
        let (forget, stopped) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            let ours = slot.attached.as_ref().is_some_and(|a| a.source == source);
            if ours {
                self.detach_in(slot, name, &mut hooks);
            }
            if source == Source::Xenstore {
                slot.released_domid = None;
                slot.desired
                    .send_if_modified(|d| d.discovered_uuid.take().is_some());
            }
            (
                slot.attached.is_none() && !slot.has_config() && !slot.running(),
                ours && !slot.running(),
            )
        };
        self.fire(name, hooks);
        if stopped && let Some(etcd) = self.store.as_cluster() {
            etcd.stopped_running(name);
        }
        if forget {
            self.forget(name);
        }
    }

    /// Forgets an unconfigured, unprepared domain without a session.
    fn forget(&self, name: &str) {
        {
            let mut slots = self.slots();
            let Some(slot) = slots.get(name) else {
                return;
            };
            if slot.attached.is_some() || slot.has_config() || slot.running() {
                return;
            }
            slots.remove(name);
        }
        let store = Arc::clone(&self.store);
        let n = name.to_string();
        tokio::spawn(async move {
            let _ = store.forget_unconfigured(&n).await;
        });
    }

    /// The lifecycle prepare, in memory (after the durable write, under the domain's lock):
    /// registers the domain, records `uuid` (the one now recorded) and the channel path,
    /// marks it running, and attaches its session where this broker's mode says so.
    pub fn prepared(
        self: &Arc<Self>,
        name: &str,
        uuid: Option<String>,
        channel_path: Option<PathBuf>,
    ) {
        let mut hooks = HookEvents::new();
        {
            let mut slots = self.slots();
            let slot = slots.entry(name.to_string()).or_insert_with(Slot::new);
            slot.desired.send_if_modified(|d| {
                if d.uuid == uuid {
                    return false;
                }
                d.uuid = uuid;
                true
            });
            slot.lifecycle = Some(Lifecycle::Running);
            slot.released_domid = None;
            slot.channel_path.clone_from(&channel_path);
            let current = slot.attached.as_ref().map(|a| a.source);
            let action = policy::on_prepare(self.sources(), channel_path, current);
            self.carry_out(slot, name, action, &mut hooks);
        }
        self.fire(name, hooks);
        // The default socket (or the xenstore backend) may be there already.
        self.rediscover.ask(name);
    }

    /// The lifecycle release, in memory (after the durable write, under the domain's lock):
    /// stops the session, marks the domain stopped, and forgets it if it has no
    /// configuration and no socket is left that discovery would see again. Returns
    /// whether anything was released (a running marker or a session).
    pub fn released(self: &Arc<Self>, name: &str) -> bool {
        let mut hooks = HookEvents::new();
        let (was, forget) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return false;
            };
            let was = slot.running() || slot.attached.is_some();
            if let Some(a) = &slot.attached
                && a.source == Source::Xenstore
            {
                slot.released_domid = a.domid;
            }
            slot.lifecycle = Some(Lifecycle::Stopped);
            self.detach_in(slot, name, &mut hooks);
            let lingering = policy::lingers_after_release(
                self.sources(),
                || is_socket(&self.config.socket_path(name)),
                slot.released_domid,
            );
            (was, !slot.has_config() && !lingering)
        };
        self.fire(name, hooks);
        if forget {
            self.slots().remove(name);
        }
        was
    }

    /// At start: listens for every configured or prepared domain (listen mode), or
    /// attaches prepared domains whose socket is outside the socket folder.
    pub fn resume(self: &Arc<Self>) {
        let names: Vec<String> = self.slots().keys().cloned().collect();
        for name in names {
            let mut hooks = HookEvents::new();
            {
                let mut slots = self.slots();
                let Some(slot) = slots.get_mut(&name) else {
                    continue;
                };
                let stored = policy::Stored {
                    has_config: slot.has_config(),
                    running: slot.running(),
                    stopped: slot.lifecycle == Some(Lifecycle::Stopped),
                    channel_path: slot.channel_path.clone(),
                };
                let action = policy::on_resume(self.sources(), &stored);
                self.carry_out(slot, &name, action, &mut hooks);
            }
            self.fire(&name, hooks);
        }
    }

    /// Where this broker's sessions come from.
    fn sources(&self) -> Sources {
        Sources::of(self.config.mode, self.config.discovery)
    }

    /// Carries out what a prepare or the start asks of a domain's session.
    fn carry_out(
        self: &Arc<Self>,
        slot: &mut Slot,
        name: &str,
        action: OnPrepare,
        hooks: &mut HookEvents,
    ) {
        match action {
            OnPrepare::Listen => {
                let ep = self.listen_endpoint(name, slot);
                self.attach_in(slot, name, ep, true, hooks);
            }
            OnPrepare::Connect(path) => {
                let ep = Endpoint {
                    source: Source::Prepared,
                    path,
                    domid: None,
                };
                self.attach_in(slot, name, ep, true, hooks);
            }
            OnPrepare::Detach => self.detach_in(slot, name, hooks),
            OnPrepare::Nothing => {}
        }
    }

    fn start_session(
        self: &Arc<Self>,
        name: &str,
        slot: &mut Slot,
        path: PathBuf,
        entry: SessionFn,
    ) {
        let previous = self.stopping().remove(name);
        let stop = self.shutdown.child_token();
        let fut = entry(
            DomainHandle::new(Arc::clone(self), name.to_string()),
            path,
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
    domain: DomainHandle,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(crate::transport::run_connect(
        domain, path, desired, stop, previous,
    ))
}

fn listen_entry(
    domain: DomainHandle,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(crate::transport::run_listen(
        domain, path, desired, stop, previous,
    ))
}
