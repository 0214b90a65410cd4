//! `discovery = "xenstore"`: finds the domains and their channel sockets in xenstore.
//!
//! A console backend (`/local/domain/0/backend/console/<domid>/<devid>`) whose `name` is
//! the broker's channel and whose `connection` is `socket` gives the socket QEMU listens
//! on (`path`); the domain's name is `/local/domain/<domid>/name` and its UUID comes from
//! `/local/domain/<domid>/vm` (`/vm/<uuid>`, whose `uuid` node is read first). Those
//! nodes are dom0's and read-only to the guest, so a guest cannot pose as another.
//!
//! The xenstore client is blocking, so it runs on a dedicated thread: it watches
//! `@introduceDomain`, `@releaseDomain` and the console backends and sends the async side
//! what changed, per domid. An event costs work for the domains it concerns only (issue
//! 16): a backend event names its domid, which is read again; `@introduceDomain` and
//! `@releaseDomain` name none, so the thread lists the backend folder (one request) and
//! reads the domids that came, drops those that went, and reads again the few it saw
//! half-built. A full rescan happens on connecting, when the client had to drop queued
//! events, and on a timer as a safety net (`rescan_every`). Every request has a deadline
//! (`timeouts.xenstore`). When xenstore goes away the thread reconnects with backoff
//! (`reconnect_min`..`reconnect_max`), and the running sessions are left alone: they talk
//! to QEMU, not to xenstore. The rescan after reconnecting reconciles whatever changed
//! meanwhile.
//!
//! The async side maps the domains onto broker names ([`super::bindings`]) **by UUID**
//! (by name when a domain has no `vm` node): a domain that comes back with a new domid
//! (reboot, migration) and the same UUID is the same domain, with the same name and
//! state, so nothing is pushed again when its agent reports the applied generation. A
//! new domid means a new QEMU: the session is restarted on it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc as async_mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xenchan_basics::{Backoff, chain};
use xenchan_xenstore::{Client, Error as XsError, layout};

use super::asked::Wanted;
pub use super::bindings::Found;
use super::bindings::{Bindings, Effect};
use crate::config::XenstoreCandidates;
use crate::domains::{Endpoint, Shared, Source};
use crate::metrics::Metrics;
use crate::paths::{canonical_uuid, check_domain_name};

/// How often the xenstore thread looks at its stop signal while waiting for events.
const POLL: Duration = Duration::from_millis(100);

/// The watch token (one for all three watches; the event's path says what changed).
const TOKEN: &str = "xenchan-broker";

/// What the thread needs to know.
#[derive(Debug, Clone)]
struct Params {
    candidates: Vec<PathBuf>,
    channel: String,
    timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    rescan_every: Duration,
}

/// One domid's news: what xenstore shows there now (`None`: nothing for the broker).
pub type Change = (u32, Option<Found>);

/// What the xenstore thread tells the async side.
#[derive(Debug)]
pub enum Update {
    /// Every domain xenstore shows (after connecting, and on each full rescan).
    Snapshot(Vec<Found>),
    /// What changed, per domid.
    Changed(Vec<Change>),
}

/// Starts xenstore discovery: the xenstore thread and the task that applies its
/// updates, until `stop`. Never fails: an unreachable xenstore is retried.
pub fn start(shared: Arc<Shared>, stop: CancellationToken) -> JoinHandle<()> {
    let t = &shared.config.timeouts;
    let params = Params {
        candidates: shared.config.xenstore_candidates(),
        channel: shared.config.channel.clone(),
        timeout: t.xenstore(),
        reconnect_min: t.reconnect_min(),
        reconnect_max: t.reconnect_max(),
        rescan_every: (t.reconnect_max() * 3).max(Duration::from_secs(1)),
    };
    let (tx, rx) = async_mpsc::unbounded_channel::<Update>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let metrics = Arc::clone(&shared.metrics);
    let spawned = std::thread::Builder::new()
        .name("xenchan-xenstore".into())
        .spawn(move || thread_main(&params, &tx, &stop_rx, &metrics));
    if let Err(e) = spawned {
        tracing::error!("cannot start the xenstore thread: {e}; no domain will be discovered");
    }
    tokio::spawn(follow(shared, rx, stop, stop_tx))
}

/// Applies updates until `stop`; dropping `stop_tx` then stops the thread (within
/// [`POLL`], or one request deadline).
async fn follow(
    shared: Arc<Shared>,
    mut rx: async_mpsc::UnboundedReceiver<Update>,
    stop: CancellationToken,
    stop_tx: mpsc::Sender<()>,
) {
    let mut bindings = Bindings::default();
    loop {
        let effects = tokio::select! {
            () = stop.cancelled() => break,
            u = rx.recv() => match u {
                None => break,
                Some(Update::Changed(changes)) => bindings.update(changes),
                Some(Update::Snapshot(found)) => {
                    let changes = bindings.diff(&found);
                    let mut effects = bindings.update(changes);
                    // The safety net's share: attach every binding again (a domain that
                    // could not be attached before, e.g. at limits.max_domains, may be
                    // now). In memory only: an attach that is already in place is a no-op.
                    effects.extend(attach_all(&bindings));
                    effects
                }
            },
            // A prepare may have made a released domain attachable again.
            w = shared.rediscover.wanted() => match w {
                Wanted::All => attach_all(&bindings),
                Wanted::Names(names) => attach_named(&bindings, &names),
            },
        };
        apply(&shared, &effects);
    }
    drop(stop_tx);
}

fn attach_all(bindings: &Bindings) -> Vec<Effect> {
    bindings
        .bound()
        .into_iter()
        .map(|b| Effect::Attach(b.clone()))
        .collect()
}

/// [`attach_all`] for the named domains only.
fn attach_named(bindings: &Bindings, names: &[String]) -> Vec<Effect> {
    bindings
        .bound()
        .into_iter()
        .filter(|b| names.binary_search(&b.name).is_ok())
        .map(|b| Effect::Attach(b.clone()))
        .collect()
}

/// Carries the effects out: stops the sessions of domains that went away and attaches
/// (or re-attaches, on a new domid or socket) the others.
fn apply(shared: &Arc<Shared>, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::Vanished(name) => {
                tracing::info!(domain = %name, "domain left xenstore");
                shared.vanished(name, Source::Xenstore);
            }
            Effect::Attach(b) => {
                let ep = Endpoint {
                    source: Source::Xenstore,
                    path: b.path.clone(),
                    domid: Some(b.domid),
                };
                shared.attach(&b.name, ep, true, b.uuid.clone());
            }
        }
    }
}

// ----- the blocking side -----

fn stopped(stop: &mpsc::Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// Opens the first candidate that works: a socket is connected to, anything else is
/// opened as the xenbus device (libxenstore's rule), each under `timeout`.
fn connect(candidates: &[PathBuf], timeout: Duration) -> Result<(Client, PathBuf), String> {
    let mut errors = Vec::new();
    for p in candidates {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        let opened = if meta.file_type().is_socket() {
            Client::connect_unix_with_timeout(p, timeout)
        } else {
            Client::open_device(p).map(|c| c.with_timeout(timeout))
        };
        match opened {
            Ok(c) => return Ok((c, p.clone())),
            Err(e) => errors.push(format!("{}: {}", p.display(), chain(&e))),
        }
    }
    Err(errors.join("; "))
}

fn thread_main(
    p: &Params,
    tx: &async_mpsc::UnboundedSender<Update>,
    stop: &mpsc::Receiver<()>,
    metrics: &Metrics,
) {
    let mut backoff = Backoff::new(p.reconnect_min, p.reconnect_max);
    let mut failures = 0u32;
    let mut notes = Notes::default();
    while !stopped(stop) && !tx.is_closed() {
        match connect(&p.candidates, p.timeout) {
            Ok((mut client, path)) => {
                tracing::info!("connected to xenstore at {}", path.display());
                metrics.xenstore_connected(true);
                failures = 0;
                let mut scanned = false;
                let r =
                    follow_xenstore(&mut client, p, tx, stop, &mut notes, &mut scanned, metrics);
                metrics.xenstore_connected(false);
                if scanned {
                    // It worked for a while: come back quickly. A xenstore that fails
                    // before the first scan keeps the backoff growing.
                    backoff.reset();
                }
                match r {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        "xenstore at {} failed: {}; reconnecting (sessions stay up)",
                        path.display(),
                        chain(&e)
                    ),
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        "cannot connect to xenstore ({e}); retrying with backoff up to {} ms",
                        p.reconnect_max.as_millis()
                    );
                } else {
                    tracing::debug!("cannot connect to xenstore: {e}");
                }
            }
        }
        match stop.recv_timeout(backoff.next_delay()) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What one domid under the backend folder is, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A domain with a channel for the broker.
    Found(Found),
    /// Being built or torn down (no name yet): read again on the next
    /// `@introduceDomain`/`@releaseDomain`.
    Unfinished,
    /// Nothing for the broker (no channel of ours, a pty channel, a bad name...).
    Other,
}

/// The thread's picture of xenstore: every domid under the backend folder.
#[derive(Debug, Default)]
struct Picture {
    seen: BTreeMap<u32, Seen>,
}

impl Picture {
    /// Records what `domid` is now; returns the change for the async side, if any.
    fn set(&mut self, domid: u32, now: Option<Seen>) -> Option<Change> {
        let before = match now {
            Some(s) => self.seen.insert(domid, s),
            None => self.seen.remove(&domid),
        };
        let found = |s: Option<&Seen>| match s {
            Some(Seen::Found(f)) => Some(f.clone()),
            _ => None,
        };
        let (b, a) = (found(before.as_ref()), found(self.seen.get(&domid)));
        (b != a).then_some((domid, a))
    }

    fn snapshot(&self) -> Vec<Found> {
        self.seen
            .values()
            .filter_map(|s| match s {
                Seen::Found(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What a batch of watch events asks for (pure: tested on plain paths).
#[derive(Debug, Default, PartialEq, Eq)]
struct Dirty {
    /// Domids whose backend folder changed.
    domids: BTreeSet<u32>,
    /// A domain came or went (`@introduceDomain`, `@releaseDomain`, the backend folder
    /// itself): list the backend folder.
    membership: bool,
}

impl Dirty {
    fn add(&mut self, path: &str) {
        let under = path
            .strip_prefix(layout::BACKEND_CONSOLE_ROOT)
            .and_then(|r| r.strip_prefix('/'));
        match under.map(|r| r.split('/').next().unwrap_or("").parse::<u32>()) {
            Some(Ok(domid)) => {
                self.domids.insert(domid);
            }
            // @introduceDomain, @releaseDomain, the folder itself (and its first event),
            // or anything unexpected: a listing tells.
            _ => self.membership = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.domids.is_empty() && !self.membership
    }
}

/// Watches and follows until stopped (`Ok`) or the connection fails (`Err`).
/// `scanned` is set once a full scan was sent.
fn follow_xenstore(
    client: &mut Client,
    p: &Params,
    tx: &async_mpsc::UnboundedSender<Update>,
    stop: &mpsc::Receiver<()>,
    notes: &mut Notes,
    scanned: &mut bool,
    metrics: &Metrics,
) -> Result<(), XsError> {
    client.watch("@introduceDomain", TOKEN)?;
    client.watch("@releaseDomain", TOKEN)?;
    client.watch(layout::BACKEND_CONSOLE_ROOT, TOKEN)?;
    // Every event queued so far is covered by the scan that follows.
    while client.wait_event(Duration::ZERO)?.is_some() {}
    let mut picture = Picture::default();
    let mut dropped = client.dropped_events();
    let mut rescan = true;
    let mut next_rescan = Instant::now();
    loop {
        if rescan {
            let before = client.requests();
            picture = scan(client, &p.channel, notes)?;
            metrics.xenstore_rescan(client.requests() - before);
            let _ = tx.send(Update::Snapshot(picture.snapshot()));
            *scanned = true;
            rescan = false;
            next_rescan = Instant::now() + p.rescan_every;
        }
        // Wait for an event, then take every one queued with it.
        let mut dirty = Dirty::default();
        let mut events = 0u64;
        loop {
            if stopped(stop) || tx.is_closed() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_rescan {
                rescan = true;
                break;
            }
            if let Some(e) = client.wait_event((next_rescan - now).min(POLL))? {
                events += 1;
                dirty.add(&e.path);
                while let Some(e) = client.wait_event(Duration::ZERO)? {
                    events += 1;
                    dirty.add(&e.path);
                }
                break;
            }
        }
        if client.dropped_events() != dropped {
            // The client's queue overflowed: some change is unknown. Read everything.
            dropped = client.dropped_events();
            tracing::warn!("xenstore watch events were dropped; rescanning every domain");
            rescan = true;
            continue;
        }
        if dirty.is_empty() {
            continue;
        }
        let before = client.requests();
        let (changes, more) = follow_events(client, &p.channel, notes, &mut picture, dirty)?;
        metrics.xenstore_events(events + more, client.requests() - before);
        if !changes.is_empty() {
            let _ = tx.send(Update::Changed(changes));
        }
    }
}

/// Reads what `dirty` names and returns what changed for the broker, and how many more
/// events it took in on the way.
fn follow_events(
    client: &mut Client,
    channel: &str,
    notes: &mut Notes,
    picture: &mut Picture,
    mut dirty: Dirty,
) -> Result<(Vec<Change>, u64), XsError> {
    let mut more = 0;
    let mut gone: Vec<u32> = Vec::new();
    if dirty.membership {
        let listed = list_domids(client)?;
        // Events that came before the listing's answer are about changes it already
        // shows (xenstore answers and notifies in order on one connection): a toolstack
        // step that landed meanwhile costs one read of its domain, not two. A domain's
        // event still means reading that domain (below); a membership one is covered.
        // Only those the client queued while it waited for the answer: one read from
        // the socket now could be newer than the listing.
        for _ in 0..client.queued_events() {
            let Some(e) = client.wait_event(Duration::ZERO)? else {
                break;
            };
            more += 1;
            let mut d = Dirty::default();
            d.add(&e.path);
            dirty.domids.extend(d.domids);
        }
        gone.extend(picture.seen.keys().filter(|d| !listed.contains(d)));
        dirty.domids.extend(
            listed
                .iter()
                .filter(|d| matches!(picture.seen.get(d), None | Some(Seen::Unfinished))),
        );
    }
    let mut changes = Vec::new();
    for domid in gone {
        notes.forget(domid);
        changes.extend(picture.set(domid, None));
    }
    // Events that arrive from here on are handled by the next pass: a change made while
    // a domain is being read must make it read again.
    for domid in dirty.domids {
        let now = read_domain(client, channel, notes, domid)?;
        if now.is_none() {
            notes.forget(domid);
        }
        changes.extend(picture.set(domid, now));
    }
    Ok((changes, more))
}

/// Log lines about one domain are written once, not on every read.
#[derive(Debug, Default)]
struct Notes {
    said: HashSet<(u32, String)>,
}

impl Notes {
    fn note(&mut self, domid: u32, text: String) {
        let key = (domid, text);
        if !self.said.contains(&key) {
            tracing::warn!(domid, "{}", key.1);
            self.said.insert(key);
        }
    }

    /// Forgets a domain that is gone, so a reused domid is told about again.
    fn forget(&mut self, domid: u32) {
        self.said.retain(|(d, _)| *d != domid);
    }
}

/// Reads a node as text; a node that is missing, unreadable to us, not UTF-8 or not a
/// valid path reads as `None` (a domain coming or going, or a toolstack's oddity).
/// Failures of the connection itself are errors.
fn read_node(client: &mut Client, path: &str) -> Result<Option<String>, XsError> {
    match client.read_string(path) {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.is_not_found()
                || e.is_access_denied()
                || matches!(e, XsError::NotUtf8 { .. } | XsError::InvalidPath { .. }) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The numeric entries of a folder, sorted; a missing folder has none.
fn numeric_entries(client: &mut Client, path: &str) -> Result<Option<Vec<u32>>, XsError> {
    match client.directory(path) {
        Ok(d) => {
            let mut v: Vec<u32> = d.iter().filter_map(|e| e.parse().ok()).collect();
            v.sort_unstable();
            Ok(Some(v))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The domids under the backend folder (one request).
fn list_domids(client: &mut Client) -> Result<BTreeSet<u32>, XsError> {
    Ok(numeric_entries(client, layout::BACKEND_CONSOLE_ROOT)?
        .unwrap_or_default()
        .into_iter()
        .collect())
}

/// The domain's UUID: `<vm>/uuid`, else the last component of `vm` (`/vm/<uuid>`).
fn read_uuid(client: &mut Client, home: &str) -> Result<Option<String>, XsError> {
    let Some(vm) = read_node(client, &format!("{home}/{}", layout::key::VM))? else {
        return Ok(None);
    };
    let vm = vm.trim();
    if !vm.starts_with('/') {
        return Ok(None);
    }
    if let Some(u) = read_node(client, &format!("{vm}/{}", layout::key::UUID))?
        && let Some(u) = canonical_uuid(&u)
    {
        return Ok(Some(u));
    }
    Ok(vm.rsplit('/').next().and_then(canonical_uuid))
}

/// What one domid is: its first socket channel named `channel` (its name, UUID and
/// socket), `None` when it has no backend folder any more. Reads only what it needs: a
/// console of another name costs one request.
fn read_domain(
    client: &mut Client,
    channel: &str,
    notes: &mut Notes,
    domid: u32,
) -> Result<Option<Seen>, XsError> {
    let Some(devids) = numeric_entries(client, &layout::backend_domain_path(domid))? else {
        return Ok(None);
    };
    let mut chosen: Option<(u32, Option<String>)> = None;
    for devid in devids {
        let dir = layout::backend_path(domid, devid);
        if read_node(client, &format!("{dir}/{}", layout::key::NAME))?.as_deref() != Some(channel) {
            continue;
        }
        let connection = read_node(client, &format!("{dir}/{}", layout::key::CONNECTION))?;
        if connection.as_deref() != Some(layout::CONNECTION_SOCKET) {
            // connection=pty: xenconsoled's, not a socket the broker can reach.
            continue;
        }
        if let Some((first, _)) = &chosen {
            let text = format!(
                "domain {domid} has more than one {channel} channel; using console {first}"
            );
            notes.note(domid, text);
            break;
        }
        let path = read_node(client, &format!("{dir}/{}", layout::key::PATH))?;
        chosen = Some((devid, path));
    }
    let Some((_, path)) = chosen else {
        return Ok(Some(Seen::Other));
    };
    let Some(path) = path.filter(|p| p.starts_with('/')) else {
        notes.note(
            domid,
            format!("domain {domid}: its {channel} channel has no absolute socket path; ignored"),
        );
        return Ok(Some(Seen::Other));
    };
    let home = layout::domain_path(domid);
    let Some(name) = read_node(client, &format!("{home}/{}", layout::key::NAME))? else {
        // Being built or torn down: the next event brings it.
        return Ok(Some(Seen::Unfinished));
    };
    if let Err(e) = check_domain_name(&name) {
        notes.note(domid, format!("domain {domid} ignored: {e}"));
        return Ok(Some(Seen::Other));
    }
    let uuid = read_uuid(client, &home)?;
    Ok(Some(Seen::Found(Found {
        domid,
        name,
        uuid,
        path: PathBuf::from(path),
    })))
}

/// Every domid under the backend folder, read.
fn scan(client: &mut Client, channel: &str, notes: &mut Notes) -> Result<Picture, XsError> {
    let mut picture = Picture::default();
    let domids = list_domids(client)?;
    notes.said.retain(|(d, _)| domids.contains(d));
    for domid in domids {
        if let Some(seen) = read_domain(client, channel, notes, domid)? {
            picture.seen.insert(domid, seen);
        }
    }
    Ok(picture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_domains_to_read() {
        let mut d = Dirty::default();
        d.add("/local/domain/0/backend/console/7/1/path");
        d.add("/local/domain/0/backend/console/7/1");
        d.add("/local/domain/0/backend/console/12");
        assert_eq!(d.domids.iter().copied().collect::<Vec<_>>(), [7, 12]);
        assert!(!d.membership, "a backend event names its domain");
        for path in [
            "@introduceDomain",
            "@releaseDomain",
            "/local/domain/0/backend/console",
            "/local/domain/0/backend/console/x",
            "/local/domain/0/backend/consoles/3",
        ] {
            let mut d = Dirty::default();
            d.add(path);
            assert!(d.membership && d.domids.is_empty(), "{path}: {d:?}");
        }
    }

    #[test]
    fn the_async_side_hears_of_changes_for_the_broker_only() {
        let mut p = Picture::default();
        let f = Found {
            domid: 3,
            name: "web1".into(),
            uuid: None,
            path: PathBuf::from("/s/web1.sock"),
        };
        assert_eq!(p.set(3, Some(Seen::Unfinished)), None);
        assert_eq!(
            p.set(3, Some(Seen::Found(f.clone()))),
            Some((3, Some(f.clone())))
        );
        assert_eq!(p.set(3, Some(Seen::Found(f.clone()))), None, "no change");
        assert_eq!(p.set(4, Some(Seen::Other)), None);
        assert_eq!(p.set(3, None), Some((3, None)));
        assert_eq!(p.set(4, None), None);
        assert!(p.seen.is_empty());
    }
}
