//! Waiting for the channel's link to appear and noticing when it goes away.
//!
//! inotify watches the channel folders (`/dev/xen-channel`, `/dev/virtio-ports`), or the
//! folder above one that does not exist yet (`xen-console-setup` makes
//! `/dev/xen-channel` on the first channel's hotplug). Events are only wake-ups: after each
//! one the agent looks at the folders again, so a lost or coalesced event (queue overflow)
//! cannot leave it waiting, and a periodic re-scan covers what inotify cannot see.
//!
//! Without an inotify instance (`fs.inotify.max_user_instances`, 128 by default, counts
//! per user, so other programs of the same user can use them all up) the agent does not
//! give up: it looks at the folders every `poll` interval instead (1 s), and tries to get
//! an instance again at each re-scan.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use inotify::{EventStream, Inotify, WatchMask};
use tracing::{debug, info, warn};

/// Watches the folders the channel link can appear in.
pub(crate) struct Watcher {
    /// `None`: no inotify instance could be had; the folders are polled.
    stream: Option<EventStream<Vec<u8>>>,
    dirs: Vec<PathBuf>,
    name: OsString,
    rescan: Duration,
    poll: Duration,
    /// When to try for an inotify instance again (while polling).
    retry_at: Instant,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("dirs", &self.dirs)
            .field("name", &self.name)
            .field("polling", &self.stream.is_none())
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
    /// Watches `dirs` for an entry called `name`: with inotify, or, when no inotify
    /// instance can be had, by looking at them every `poll` (with a warning that names
    /// the limit to raise).
    pub(crate) fn new(dirs: Vec<PathBuf>, name: &str, rescan: Duration, poll: Duration) -> Watcher {
        let stream = match inotify_stream() {
            Ok(s) => Some(s),
            Err(e) => {
                warn_polling(&e, poll);
                None
            }
        };
        let mut w = Watcher {
            stream,
            dirs,
            name: OsString::from(name),
            rescan,
            poll,
            retry_at: Instant::now() + rescan,
        };
        w.arm();
        w
    }

    /// Whether the folders are polled (no inotify instance).
    pub(crate) fn polling(&self) -> bool {
        self.stream.is_none()
    }

    /// (Re)adds the watches: on each folder that exists, else on its parent. Adding a
    /// watch that exists is harmless, so this runs after every wake-up. While polling,
    /// tries for an inotify instance again once per re-scan interval.
    fn arm(&mut self) {
        if self.stream.is_none() && Instant::now() >= self.retry_at {
            self.retry_at = Instant::now() + self.rescan;
            if let Ok(s) = inotify_stream() {
                info!(
                    "an inotify instance is available again; watching the channel folders instead of polling them"
                );
                self.stream = Some(s);
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut watches = stream.watches();
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
    /// periodic re-scan; while polling, the poll interval), then re-arms the watches.
    pub(crate) async fn changed(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            tokio::time::sleep(self.poll).await;
            self.arm();
            return;
        };
        tokio::select! {
            ev = stream.next() => match ev {
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

fn inotify_stream() -> io::Result<EventStream<Vec<u8>>> {
    Inotify::init()?.into_event_stream(vec![0u8; 4096])
}

/// Says, once, why the folders are polled and what to do about it.
fn warn_polling(e: &io::Error, poll: Duration) {
    let every_ms = poll.as_millis() as u64;
    if e.raw_os_error() == Some(libc::EMFILE) {
        warn!(
            error = %e,
            "no inotify instance left: this user has reached fs.inotify.max_user_instances \
             (128 by default, shared by every program of the user); looking at the channel \
             folders every {every_ms} ms instead. Raise the limit (sysctl -w \
             fs.inotify.max_user_instances=1024, and in /etc/sysctl.d/) to get events again"
        );
    } else {
        warn!(
            error = %e,
            "cannot get an inotify instance (fs.inotify.max_user_instances, or no inotify \
             in this kernel); looking at the channel folders every {every_ms} ms instead"
        );
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
