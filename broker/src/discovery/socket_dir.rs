//! `discovery = "socket-dir"`: finds `<vm>.sock` files in the socket folder.
//!
//! The inotify watch is set up before the first scan, so a socket created during the
//! scan is seen by one or the other (and seeing it twice is harmless). A queue overflow,
//! and a timer as a safety net, trigger a full rescan that reconciles what exists with
//! what runs. If the folder itself goes away, every session stops and the folder is
//! watched for again. A prepare (`Shared::rediscover`) has its domain's socket looked at
//! again.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DiscoveryError;
use super::asked::Wanted;
use crate::domains::{Endpoint, Shared, Source};
use crate::paths::domain_of_socket_file;

fn watch(dir: &Path) -> std::io::Result<inotify::EventStream<[u8; 4096]>> {
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    inotify.into_event_stream([0u8; 4096])
}

/// The domains whose sockets exist in `dir` now.
fn scan(dir: &Path) -> HashSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .filter_map(|e| {
            let n = e.file_name();
            n.to_str()
                .and_then(domain_of_socket_file)
                .map(str::to_string)
        })
        .collect()
}

fn endpoint(shared: &Shared, name: &str) -> Endpoint {
    Endpoint {
        source: Source::Dir,
        path: shared.config.socket_path(name),
        domid: None,
    }
}

fn reconcile(shared: &Arc<Shared>, present: &HashSet<String>) {
    let running: HashSet<String> = shared.attached_names(Source::Dir).into_iter().collect();
    for gone in running.difference(present) {
        shared.vanished(gone, Source::Dir);
    }
    let mut new: Vec<&String> = present.difference(&running).collect();
    new.sort();
    for name in new {
        shared.attach(name, endpoint(shared, name), false, None);
    }
}

/// What a prepare asks: each named domain's socket, attached if it is there (what
/// [`reconcile`] would do for it, without reading the whole folder).
fn look_again(shared: &Arc<Shared>, names: &[String]) {
    for name in names {
        let ep = endpoint(shared, name);
        if is_socket(&ep.path) {
            shared.attach(name, ep, false, None);
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Starts socket-folder discovery: creates the folder if needed, watches it, scans it,
/// and then follows its changes until `stop`.
pub fn start(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, DiscoveryError> {
    let dir = shared.config.socket_dir.clone();
    let err = |source| DiscoveryError {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let stream = watch(&dir).map_err(err)?;
    reconcile(&shared, &scan(&dir));
    Ok(tokio::spawn(follow(shared, dir, stream, stop)))
}

async fn follow(
    shared: Arc<Shared>,
    dir: std::path::PathBuf,
    mut stream: inotify::EventStream<[u8; 4096]>,
    stop: CancellationToken,
) {
    // A safety net against lost events; cheap (one readdir).
    let rescan_every = (shared.config.timeouts.reconnect_max() * 3).max(Duration::from_secs(1));
    let mut rescan = tokio::time::interval(rescan_every);
    rescan.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = rescan.tick() => reconcile(&shared, &scan(&dir)),
            w = shared.rediscover.wanted() => match w {
                Wanted::All => reconcile(&shared, &scan(&dir)),
                Wanted::Names(names) => look_again(&shared, &names),
            },
            ev = stream.next() => {
                let Some(Ok(ev)) = ev else {
                    tracing::error!("inotify stream on {} failed; rescanning", dir.display());
                    match rewatch(&shared, &dir, &stop).await {
                        Some(s) => stream = s,
                        None => return,
                    }
                    continue;
                };
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::warn!("inotify queue overflow; rescanning {}", dir.display());
                    reconcile(&shared, &scan(&dir));
                } else if ev.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
                    tracing::warn!("socket folder {} went away; stopping its sessions", dir.display());
                    reconcile(&shared, &HashSet::new());
                    match rewatch(&shared, &dir, &stop).await {
                        Some(s) => stream = s,
                        None => return,
                    }
                } else if let Some(file) = ev.name.as_deref() {
                    on_entry(&shared, &dir, file, ev.mask);
                }
            }
        }
    }
}

fn on_entry(shared: &Arc<Shared>, dir: &Path, file: &OsStr, mask: EventMask) {
    let Some(text) = file.to_str() else {
        tracing::debug!("ignoring non-UTF-8 file name {file:?} in the socket folder");
        return;
    };
    let Some(name) = domain_of_socket_file(text) else {
        if !text.starts_with('.') {
            tracing::info!("ignoring {text:?} in the socket folder: not <domain>.sock");
        }
        return;
    };
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        if is_socket(&dir.join(file)) {
            shared.attach(name, endpoint(shared, name), true, None);
        } else {
            tracing::info!("ignoring {text:?} in the socket folder: not a socket");
        }
    } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
        shared.vanished(name, Source::Dir);
    }
}

/// Waits for the folder to exist again and watches it; None on stop.
async fn rewatch(
    shared: &Arc<Shared>,
    dir: &Path,
    stop: &CancellationToken,
) -> Option<inotify::EventStream<[u8; 4096]>> {
    let pause = shared.config.timeouts.reconnect_max();
    loop {
        if let Ok(s) = watch(dir) {
            reconcile(shared, &scan(dir));
            return Some(s);
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
