//! `discovery = "xenstore"`: finds the domains and their channel sockets in xenstore.
//!
//! A console backend (`/local/domain/0/backend/console/<domid>/<devid>`) whose `name` is
//! the broker's channel and whose `connection` is `socket` gives the socket QEMU listens
//! on (`path`); the domain's name is `/local/domain/<domid>/name` and its UUID comes from
//! `/local/domain/<domid>/vm` (`/vm/<uuid>`, whose `uuid` node is read first). Those
//! nodes are dom0's and read-only to the guest, so a guest cannot pose as another.
//!
//! The xenstore client is blocking, so it runs on a dedicated thread: it watches
//! `@introduceDomain`, `@releaseDomain` and the console backends, rescans on every event
//! (bursts coalesced) and on a timer as a safety net, and publishes each full snapshot
//! on a `watch` channel. Every request has a deadline (`timeouts.xenstore`). When xenstore
//! goes away the thread reconnects with backoff (`reconnect_min`..`reconnect_max`),
//! and the running sessions are left alone: they talk to QEMU, not to xenstore. The next
//! snapshot reconciles whatever changed meanwhile.
//!
//! The async side maps snapshots onto domains **by UUID** (by name when a domain has no
//! `vm` node): a domain that comes back with a new domid (reboot, migration) and the
//! same UUID is the same domain, with the same name and state, so nothing is pushed again
//! when its agent reports the applied generation. A new domid means a new QEMU: the
//! session is restarted on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xenchan_basics::{Backoff, chain};
use xenchan_xenstore::{Client, Error as XsError, layout};

use crate::config::XenstoreCandidates;
use crate::domains::{Endpoint, Shared, Source};
use crate::metrics::Metrics;
use crate::paths::{canonical_uuid, check_domain_name};

/// How often the xenstore thread looks at its stop signal while waiting for events.
const POLL: Duration = Duration::from_millis(100);

/// The watch token (one for all three watches: any event means "rescan").
const TOKEN: &str = "xenchan-broker";

/// A running domain with a channel for the broker, as xenstore describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its domain id.
    pub domid: u32,
    /// Its name (`/local/domain/<domid>/name`).
    pub name: String,
    /// Its UUID, lowercase, if xenstore gives one.
    pub uuid: Option<String>,
    /// The socket QEMU listens on for the channel (the backend's `path`).
    pub path: PathBuf,
}

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

type Snapshot = Option<Arc<Vec<Found>>>;

/// Starts xenstore discovery: the xenstore thread and the task that applies its
/// snapshots, until `stop`. Never fails: an unreachable xenstore is retried.
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
    let (tx, rx) = watch::channel::<Snapshot>(None);
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

/// Applies snapshots until `stop`; dropping `stop_tx` then stops the thread (within
/// [`POLL`], or one request deadline).
async fn follow(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<Snapshot>,
    stop: CancellationToken,
    stop_tx: mpsc::Sender<()>,
) {
    let mut bound: HashMap<String, Binding> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
            // A prepare may have made a released domain attachable again.
            () = shared.rediscover.notified() => {}
        }
        let snapshot = rx.borrow_and_update().clone();
        if let Some(found) = snapshot {
            let next = plan(&bound, &found);
            apply(&shared, &bound, &next);
            bound = next;
        }
    }
    drop(stop_tx);
}

/// One discovered domain mapped onto a broker domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    name: String,
    domid: u32,
    uuid: Option<String>,
    path: PathBuf,
}

/// The identity of a discovered domain: its UUID, or its name without one.
fn key(f: &Found) -> String {
    match &f.uuid {
        Some(u) => format!("uuid:{u}"),
        None => format!("name:{}", f.name),
    }
}

/// Maps a snapshot onto names. A UUID already bound keeps its name and, while it is
/// still there, its domid (during a local migration the same UUID runs twice, under
/// `<name>` and `<name>--incoming`: one session, to the one already bound). A new UUID
/// takes its lowest domid and that domain's name, unless the name is taken.
fn plan(bound: &HashMap<String, Binding>, found: &[Found]) -> HashMap<String, Binding> {
    let mut groups: BTreeMap<String, Vec<&Found>> = BTreeMap::new();
    for f in found {
        groups.entry(key(f)).or_default().push(f);
    }
    for g in groups.values_mut() {
        g.sort_by_key(|f| f.domid);
    }
    // Bound identities first, so a newcomer never takes a running domain's name.
    let mut keys: Vec<&String> = groups.keys().collect();
    keys.sort_by_key(|k| (!bound.contains_key(*k), groups[*k][0].domid));
    let mut out = HashMap::new();
    let mut names: HashSet<String> = HashSet::new();
    for k in keys {
        let group = &groups[k];
        let prev = bound.get(k);
        let pick = prev
            .and_then(|b| group.iter().find(|f| f.domid == b.domid))
            .unwrap_or(&group[0]);
        let name = prev.map_or_else(|| pick.name.clone(), |b| b.name.clone());
        if !names.insert(name.clone()) {
            tracing::warn!(
                domain = %name,
                domid = pick.domid,
                "two running domains claim the name {name}; ignoring domid {}",
                pick.domid
            );
            continue;
        }
        out.insert(
            k.clone(),
            Binding {
                name,
                domid: pick.domid,
                uuid: pick.uuid.clone(),
                path: pick.path.clone(),
            },
        );
    }
    out
}

/// Stops the sessions of domains that went away and attaches (or re-attaches, on a new
/// domid or socket) the others.
fn apply(shared: &Arc<Shared>, old: &HashMap<String, Binding>, new: &HashMap<String, Binding>) {
    let new_names: HashSet<&str> = new.values().map(|b| b.name.as_str()).collect();
    let mut gone: Vec<&str> = old
        .values()
        .map(|b| b.name.as_str())
        .filter(|n| !new_names.contains(n))
        .collect();
    gone.sort_unstable();
    for name in gone {
        tracing::info!(domain = name, "domain left xenstore");
        shared.vanished(name, Source::Xenstore);
    }
    let mut now: Vec<&Binding> = new.values().collect();
    now.sort_by(|a, b| a.name.cmp(&b.name));
    for b in now {
        let ep = Endpoint {
            source: Source::Xenstore,
            path: b.path.clone(),
            domid: Some(b.domid),
        };
        shared.attach(&b.name, ep, true, b.uuid.clone());
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
    tx: &watch::Sender<Snapshot>,
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
                let r = follow_xenstore(&mut client, p, tx, stop, &mut notes, &mut scanned);
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

/// Watches and rescans until stopped (`Ok`) or the connection fails (`Err`).
/// `scanned` is set once a full scan was published.
fn follow_xenstore(
    client: &mut Client,
    p: &Params,
    tx: &watch::Sender<Snapshot>,
    stop: &mpsc::Receiver<()>,
    notes: &mut Notes,
    scanned: &mut bool,
) -> Result<(), XsError> {
    client.watch("@introduceDomain", TOKEN)?;
    client.watch("@releaseDomain", TOKEN)?;
    client.watch(layout::BACKEND_CONSOLE_ROOT, TOKEN)?;
    loop {
        // Every queued event is covered by the scan that follows.
        while client.wait_event(Duration::ZERO)?.is_some() {}
        let found = scan(client, &p.channel, notes)?;
        tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&found) {
                false
            } else {
                *cur = Some(Arc::new(found));
                true
            }
        });
        *scanned = true;
        let next_rescan = Instant::now() + p.rescan_every;
        loop {
            if stopped(stop) || tx.is_closed() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_rescan {
                break;
            }
            if client.wait_event((next_rescan - now).min(POLL))?.is_some() {
                break;
            }
        }
    }
}

/// Log lines about one domain are written once, not on every rescan.
#[derive(Debug, Default)]
struct Notes {
    said: HashSet<(u32, String)>,
    seen: HashSet<u32>,
}

impl Notes {
    fn note(&mut self, domid: u32, text: String) {
        self.seen.insert(domid);
        let key = (domid, text);
        if !self.said.contains(&key) {
            tracing::warn!(domid, "{}", key.1);
            self.said.insert(key);
        }
    }

    /// Forgets domains that are gone, so a reused domid is told about again.
    fn end_scan(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        self.said.retain(|(d, _)| seen.contains(d));
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

/// Every running domain with a socket channel named `channel`, by domid.
fn scan(client: &mut Client, channel: &str, notes: &mut Notes) -> Result<Vec<Found>, XsError> {
    let mut chosen: BTreeMap<u32, layout::BackendChannel> = BTreeMap::new();
    for b in layout::list_backends(client)? {
        if b.name != channel {
            continue;
        }
        if b.connection.as_deref() != Some(layout::CONNECTION_SOCKET) {
            // connection=pty: xenconsoled's, not a socket the broker can reach.
            continue;
        }
        if let Some(first) = chosen.get(&b.domid) {
            let text = format!(
                "domain {} has more than one {channel} channel; using console {}",
                b.domid, first.devid
            );
            notes.note(b.domid, text);
            continue;
        }
        chosen.insert(b.domid, b);
    }
    let mut out = Vec::with_capacity(chosen.len());
    for (domid, b) in chosen {
        notes.seen.insert(domid);
        let Some(path) = b.path.filter(|p| p.starts_with('/')) else {
            notes.note(
                domid,
                format!(
                    "domain {domid}: its {channel} channel has no absolute socket path; ignored"
                ),
            );
            continue;
        };
        let home = layout::domain_path(domid);
        let Some(name) = read_node(client, &format!("{home}/{}", layout::key::NAME))? else {
            // Being built or torn down: the next event brings it.
            continue;
        };
        if let Err(e) = check_domain_name(&name) {
            notes.note(domid, format!("domain {domid} ignored: {e}"));
            continue;
        }
        let uuid = read_uuid(client, &home)?;
        out.push(Found {
            domid,
            name,
            uuid,
            path: PathBuf::from(path),
        });
    }
    notes.end_scan();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(domid: u32, name: &str, uuid: Option<&str>) -> Found {
        Found {
            domid,
            name: name.into(),
            uuid: uuid.map(str::to_string),
            path: PathBuf::from(format!("/s/{name}.sock")),
        }
    }

    fn names(b: &HashMap<String, Binding>) -> Vec<(String, u32)> {
        let mut v: Vec<_> = b.values().map(|b| (b.name.clone(), b.domid)).collect();
        v.sort();
        v
    }

    const U1: &str = "00000000-0000-0000-0000-000000000001";
    const U2: &str = "00000000-0000-0000-0000-000000000002";

    #[test]
    fn a_new_domid_with_the_same_uuid_is_the_same_domain() {
        let first = plan(&HashMap::new(), &[found(5, "web1", Some(U1))]);
        assert_eq!(names(&first), vec![("web1".into(), 5)]);
        // Reboot seen in one snapshot: new domid, same UUID and name.
        let rebooted = plan(&first, &[found(9, "web1", Some(U1))]);
        assert_eq!(names(&rebooted), vec![("web1".into(), 9)]);
        assert_eq!(
            rebooted.keys().collect::<Vec<_>>(),
            first.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_local_migration_keeps_one_session_under_the_bound_name() {
        let before = plan(&HashMap::new(), &[found(5, "web1", Some(U1))]);
        // The incoming copy runs beside the original: the bound domid stays.
        let during = plan(
            &before,
            &[
                found(5, "web1", Some(U1)),
                found(8, "web1--incoming", Some(U1)),
            ],
        );
        assert_eq!(names(&during), vec![("web1".into(), 5)]);
        // The original is gone; the copy is still called web1--incoming: same name.
        let after = plan(&during, &[found(8, "web1--incoming", Some(U1))]);
        assert_eq!(names(&after), vec![("web1".into(), 8)]);
    }

    #[test]
    fn names_are_never_shared_and_uuidless_domains_go_by_name() {
        let b = plan(
            &HashMap::new(),
            &[
                found(3, "a", None),
                found(4, "a", Some(U2)),
                found(6, "b", None),
            ],
        );
        // The lowest domid wins a contested name; the other is ignored.
        assert_eq!(names(&b), vec![("a".into(), 3), ("b".into(), 6)]);
        // A bound domain keeps its name against a newcomer with a lower domid.
        let b2 = plan(&b, &[found(1, "b", Some(U1)), found(6, "b", None)]);
        assert_eq!(names(&b2), vec![("b".into(), 6)]);
    }
}
