//! Waiting for the channel's link to appear and noticing when it goes away.
//!
//! inotify watches the channel folders (`/dev/xen-channel`, `/dev/virtio-ports`), or the
//! folder above one that does not exist yet (`xen-console-setup` makes
//! `/dev/xen-channel` on the first channel's hotplug). Events are only wake-ups: after each
//! one the agent looks at the folders again, so a lost or coalesced event (queue overflow)
//! cannot leave it waiting, and a periodic re-scan covers what inotify cannot see.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tracing::{debug, warn};

/// Watches the folders the channel link can appear in.
pub(crate) struct Watcher {
    stream: EventStream<Vec<u8>>,
    dirs: Vec<PathBuf>,
    name: OsString,
    rescan: Duration,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("dirs", &self.dirs)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

const PARENT_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR);

impl Watcher {
    /// Watches `dirs` for an entry called `name`.
    pub(crate) fn new(dirs: Vec<PathBuf>, name: &str, rescan: Duration) -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let stream = inotify.into_event_stream(vec![0u8; 4096])?;
        let mut w = Watcher {
            stream,
            dirs,
            name: OsString::from(name),
            rescan,
        };
        w.arm();
        Ok(w)
    }

    /// (Re)adds the watches: on each folder that exists, else on its parent. Adding a
    /// watch that exists is harmless, so this runs after every wake-up.
    fn arm(&mut self) {
        let mut watches = self.stream.watches();
        for dir in &self.dirs {
            let (target, mask) = if dir.is_dir() {
                (dir.as_path(), DIR_MASK)
            } else {
                match dir.parent() {
                    Some(p) if p.is_dir() => (p, PARENT_MASK),
                    _ => continue, // covered by the periodic re-scan
                }
            };
            if let Err(e) = watches.add(target, mask) {
                debug!(folder = %target.display(), error = %e, "cannot watch folder yet");
            }
        }
    }

    /// The first folder's link, if one exists now (a dangling link counts: opening it
    /// is retried until its device appears).
    pub(crate) fn find(&self) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(&self.name))
            .find(|p| p.symlink_metadata().is_ok())
    }

    /// Waits until something may have changed in the folders (an inotify event, or the
    /// periodic re-scan), then re-arms the watches.
    pub(crate) async fn changed(&mut self) {
        tokio::select! {
            ev = self.stream.next() => match ev {
                Some(Ok(ev)) => {
                    debug!(name = ?ev.name, mask = ?ev.mask, "folder event");
                    if ev.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                        warn!("inotify queue overflowed; re-scanning the channel folders");
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "inotify read failed; falling back to re-scans");
                    tokio::time::sleep(self.rescan).await;
                }
                None => tokio::time::sleep(self.rescan).await,
            },
            () = tokio::time::sleep(self.rescan) => {}
        }
        self.arm();
    }

    /// Waits until the channel link exists and returns its path.
    pub(crate) async fn wait_for_link(&mut self) -> PathBuf {
        loop {
            self.arm();
            if let Some(p) = self.find() {
                return p;
            }
            self.changed().await;
        }
    }
}

/// The folders as one line, for logs.
pub(crate) fn describe_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The folders to watch, without duplicates.
pub(crate) fn watch_dirs(channel_dir: &Path, virtio_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![channel_dir.to_path_buf()];
    if virtio_dir != channel_dir {
        dirs.push(virtio_dir.to_path_buf());
    }
    dirs
}
