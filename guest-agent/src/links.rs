//! The guest's links as rtnetlink notifications tell them ([`xenchan_netconf::LinkWatch`]
//! on tokio), for the session (apply again what waits for a MAC, report facts when the
//! network changed) and for what was restored at boot (live-only addresses of an
//! interface that appears after the agent started).
//!
//! One task reads the socket for the agent's whole life, so nothing is missed while no
//! channel device is open. It folds every event into one pending [`LinkChanges`] and
//! wakes the session once ([`Notify`] holds one permit): a flood of events is one
//! wake-up and one summary, and each read is bounded by a budget of datagrams.

// `AsyncFd::register` is `unsafe` (tokio deprecated `AsyncFd::new`): the watch is moved
// into the `AsyncFd` and never taken out, so its descriptor stays open as long as the
// registration. That is the one unsafe call here.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use xenchan_netconf::{LinkChanges, LinkWatch, NetState, Restored};

/// Datagrams read per wake-up before yielding to the other tasks.
const BUDGET: usize = 256;

/// Live-only network state restored at boot, and the MACs it still waits for.
#[derive(Debug)]
pub(crate) struct BootRestore {
    pub state: NetState,
    pub waiting: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<LinkChanges>,
    notify: Notify,
    /// Set at start when live-only addresses were restored and some interface was
    /// missing; cleared by the first apply of a push (which then owns the interfaces).
    boot: Mutex<Option<BootRestore>>,
}

/// The session's end of the watch.
#[derive(Debug, Clone)]
pub(crate) struct LinkFeed {
    shared: Arc<Shared>,
    /// Held only to stop the reading task when the last feed goes.
    _task: Arc<AbortOnDrop>,
    begin: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LinkFeed {
    /// Subscribes (in `netns` if given) and starts reading. `restore_timeout` bounds a
    /// restore of boot state when its interface appears.
    pub(crate) fn start(
        netns: Option<PathBuf>,
        restore_timeout: Duration,
    ) -> std::io::Result<LinkFeed> {
        let watch = LinkWatch::open(netns.as_deref())?;
        // SAFETY: the watch owns its socket, is moved into the AsyncFd and never taken
        // out, so the descriptor stays open and the same until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(watch) }.map_err(|e| e.into_parts().1)?;
        let shared = Arc::new(Shared::default());
        let (begin, begun) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(read_loop(
            fd,
            Arc::clone(&shared),
            netns,
            restore_timeout,
            begun,
        ));
        Ok(LinkFeed {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
            begin: Arc::new(Mutex::new(Some(begin))),
        })
    }

    /// Starts handling events (they queue in the socket until then), with the
    /// interfaces the boot restore did not find: one of them appearing is restored.
    /// Called once the boot restore is done, so the two never run at once.
    pub(crate) fn begin(&self, boot: Option<BootRestore>) {
        *lock(&self.shared.boot) = boot.filter(|b| !b.waiting.is_empty());
        if let Some(tx) = lock(&self.begin).take() {
            let _ = tx.send(());
        }
    }

    /// Waits for changes and takes them (everything since the last call, folded).
    pub(crate) async fn next(&self) -> LinkChanges {
        loop {
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a notification in between is not lost.
            notified.as_mut().enable();
            let c = std::mem::take(&mut *lock(&self.shared.pending));
            if !c.is_empty() {
                return c;
            }
            notified.await;
        }
    }

    /// A push was applied: from now on its items (and their retries) own the network.
    pub(crate) fn clear_boot(&self) {
        if lock(&self.shared.boot).take().is_some() {
            debug!("a push was applied; no longer restoring boot state");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn read_loop(
    mut fd: AsyncFd<LinkWatch>,
    shared: Arc<Shared>,
    netns: Option<PathBuf>,
    restore_timeout: Duration,
    begun: tokio::sync::oneshot::Receiver<()>,
) {
    // A dropped sender (the agent is stopping) ends the task with the feed anyway.
    let _ = begun.await;
    let mut overflows = 0u64;
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "the link watch failed; interfaces that appear later are only seen by the retries");
                return;
            }
        };
        // `drain` reads until the socket would block (or the budget runs out), so it
        // never returns WouldBlock itself.
        let drained = match guard.get_inner_mut().drain(BUDGET) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "the link watch failed; interfaces that appear later are only seen by the retries");
                return;
            }
        };
        if !drained.more {
            guard.clear_ready();
        }
        drop(guard);
        let changes = drained.changes;
        if changes.overflowed {
            overflows += 1;
            // Once is news; a sustained flood is not worth a line per overflow.
            if overflows == 1 || overflows.is_multiple_of(100) {
                warn!(
                    overflows,
                    "link notifications were dropped by the kernel; the link table was read again"
                );
            }
        }
        if !changes.appeared.is_empty() {
            debug!(macs = ?changes.appeared, "links appeared");
            restore_boot(&shared, &changes.appeared, netns.clone(), restore_timeout).await;
        }
        if !changes.is_empty() {
            lock(&shared.pending).merge(changes);
            shared.notify.notify_one();
        }
        if drained.more {
            // A flood: let everything else run between budgets.
            tokio::task::yield_now().await;
        }
    }
}

/// Restores the boot state of interfaces that were missing at start and just appeared.
async fn restore_boot(
    shared: &Shared,
    appeared: &BTreeSet<String>,
    netns: Option<PathBuf>,
    timeout: Duration,
) {
    let (state, macs) = {
        let boot = lock(&shared.boot);
        let Some(b) = boot.as_ref() else {
            return;
        };
        let macs: BTreeSet<String> = b.waiting.intersection(appeared).cloned().collect();
        if macs.is_empty() {
            return;
        }
        (b.state.clone(), macs)
    };
    info!(macs = ?macs, "an interface missing at start appeared; restoring its live addresses");
    let only = macs.clone();
    let done = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || {
            xenchan_netconf::restore_live(netns.as_deref(), &state, Some(&only))
        }),
    )
    .await;
    let outcomes = match done {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => {
            warn!(error = %e, "cannot restore live addresses");
            return;
        }
        Ok(Err(e)) => {
            warn!(error = %e, "restoring live addresses failed internally");
            return;
        }
        Err(_) => {
            warn!(?timeout, "restoring live addresses took too long");
            return;
        }
    };
    let mut boot = lock(&shared.boot);
    if let Some(b) = boot.as_mut() {
        for o in &outcomes {
            if let Restored::Done { id, .. } | Restored::Failed { id, .. } = o
                && let Some(i) = b.state.interfaces.get(id)
            {
                b.waiting.remove(&i.mac);
            }
        }
        if b.waiting.is_empty() {
            *boot = None;
        }
    }
}
