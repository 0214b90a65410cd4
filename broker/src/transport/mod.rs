//! Transport: how a session's connection comes to be, and the unix-socket helpers.
//!
//! - connect mode ([`run_connect`]): the broker connects to a socket QEMU listens on
//!   (the socket folder's `<name>.sock`, a xenstore backend's `path`, or the path a
//!   prepare named), and reconnects with backoff for as long as the session is attached,
//!   as it must across `xl reboot`;
//! - listen mode ([`run_listen`]): the broker owns the socket and serves one backend
//!   connection at a time, refusing extra ones;
//! - [`socket`]: binding a listening socket safely (never replacing a file that is not a
//!   socket; optionally appearing only with its final mode);
//! - [`acl`]: letting the read-only group reach the control socket by an ACL entry.
//!
//! Each connection is handed to [`session::serve`], which runs the protocol on it and
//! says how it ended; this module only decides whether and when to connect again.

pub mod acl;
mod socket;
mod streak;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xenchan_basics::Backoff;

pub use socket::{bind_socket, bind_socket_with_mode};

use crate::api::types::DomainState;
use crate::domains::Desired;
use crate::metrics::ErrorKind;
use crate::paths::check_socket_path;
use crate::session::{self, DomainHandle, End};

/// Connect mode: connects to `path` (`<socket_dir>/<name>.sock`, a xenstore backend's
/// `path`, or the one a prepare named) and keeps a session up until `stop`.
pub async fn run_connect(
    domain: DomainHandle,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    connect_loop(&domain, path, desired, stop, previous).await;
    domain.ended();
}

async fn connect_loop(
    domain: &DomainHandle,
    path: PathBuf,
    mut desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        // Exactly one connection per socket: the old session lets go first.
        let _ = p.await;
    }
    if let Err(e) = check_socket_path(&path) {
        domain.set_state(DomainState::Error);
        domain.record_error(ErrorKind::SocketPath, e).await;
        stop.cancelled().await;
        return;
    }
    let t = domain.timeouts();
    let mut backoff = Backoff::new(t.reconnect_min(), t.reconnect_max());
    let mut streak = streak::Streak::default();
    loop {
        domain.set_state(DomainState::Connecting);
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(t.connect(), UnixStream::connect(&path)) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                streak.connected();
                domain.metrics().connection();
                tracing::debug!(domain = domain.name(), "connected");
                let end = session::serve(domain, stream, &mut desired, &stop, None).await;
                domain.set_connected(false);
                match end {
                    End::Stopped => return,
                    End::Over { handshook, why } => {
                        tracing::info!(domain = domain.name(), "session ended: {why}");
                        if handshook {
                            backoff.reset();
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // A socket named by a prepare, before QEMU creates it.
                    domain.set_state(DomainState::Pending);
                }
                tracing::debug!(
                    domain = domain.name(),
                    "connect to {} failed: {e}",
                    path.display()
                );
                let named = streak.failed(Instant::now(), Some(e.kind()), &path, &e.to_string());
                connect_failed(domain, named).await;
            }
            Err(_) => {
                tracing::debug!(
                    domain = domain.name(),
                    "connect to {} timed out",
                    path.display()
                );
                let why = format!("no answer within timeouts.connect ({:?})", t.connect());
                connect_failed(domain, streak.failed(Instant::now(), None, &path, &why)).await;
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Counts a failed connect, and names the streak of failures in `last_error` when
/// [`streak::Streak`] says so (which counts it too).
async fn connect_failed(domain: &DomainHandle, named: Option<String>) {
    match named {
        Some(text) => domain.record_error(ErrorKind::Connect, text).await,
        None => domain.metrics().error(ErrorKind::Connect),
    }
}

/// Listen mode: owns `path` (`<socket_dir>/<name>.sock` unless a prepare named another),
/// serves one backend connection at a time (extra ones are closed at once) until `stop`,
/// then removes the socket.
pub async fn run_listen(
    domain: DomainHandle,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    listen_loop(&domain, &path, desired, stop, previous).await;
    domain.ended();
}

async fn listen_loop(
    domain: &DomainHandle,
    path: &Path,
    mut desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        let _ = p.await;
    }
    let listener = match bind_socket(path) {
        Ok(l) => l,
        Err(e) => {
            domain.set_state(DomainState::Error);
            domain.record_error(ErrorKind::SocketPath, e).await;
            stop.cancelled().await;
            return;
        }
    };
    loop {
        domain.set_state(DomainState::Connecting);
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                domain.metrics().connection();
                let end =
                    session::serve(domain, stream, &mut desired, &stop, Some(&listener)).await;
                domain.set_connected(false);
                match end {
                    End::Stopped => break,
                    End::Over { why, .. } => {
                        tracing::info!(domain = domain.name(), "session ended: {why}");
                    }
                }
            }
            Err(e) => {
                domain.metrics().error(ErrorKind::Connect);
                tracing::warn!(domain = domain.name(), "accept failed: {e}");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(domain.timeouts().reconnect_min()) => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Accepts and drops every extra connection to a listening socket; pending forever
/// in connect mode.
pub(crate) async fn refuse_extra(extra: Option<&UnixListener>) {
    match extra {
        Some(l) => {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
        None => std::future::pending().await,
    }
}
