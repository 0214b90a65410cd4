//! Unix-socket listeners and per-connection threads.
//!
//! Each listener has an accept thread; each connection a reader thread (reads
//! bounded requests, dispatches them under the state lock) and a writer thread
//! (drains the connection's bounded outgoing queue, so a slow client never
//! blocks anybody else). Stopping a listener wakes the accept thread through a
//! pipe, shuts every connection's socket down and joins all threads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno as NixErrno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::state::State;
use crate::error::Error;
use crate::transport::SUN_PATH_MAX;
use crate::wire::{HEADER_LEN, Header};

/// How long the writer waits for a client to take a reply before giving up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere must not take the whole store down with it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running listener. Dropping it (or calling [`ListenerHandle::stop`])
/// closes every connection it accepted, joins its threads and removes the
/// socket file.
#[derive(Debug)]
pub struct ListenerHandle {
    path: PathBuf,
    domid: u32,
    stop: Arc<AtomicBool>,
    wake: Option<File>,
    thread: Option<JoinHandle<()>>,
}

impl ListenerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The domain this listener serves connections as.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// Stops the listener and waits for its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut wake) = self.wake.take() {
            let _ = wake.write_all(b"x");
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct ConnThreads {
    stream: UnixStream,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl ConnThreads {
    fn finished(&self) -> bool {
        self.reader.is_finished() && self.writer.is_finished()
    }

    fn join(self) {
        let _ = self.reader.join();
        let _ = self.writer.join();
    }
}

pub(crate) fn listen(
    state: Arc<Mutex<State>>,
    path: &Path,
    domid: u32,
) -> Result<ListenerHandle, Error> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(Error::SocketPathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    remove_stale_socket(path);
    let listen_err = |source: io::Error| Error::Open {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let (wake_r, wake_w) = nix::unistd::pipe().map_err(|e| listen_err(e.into()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name(format!("xs-accept-{domid}"))
        .spawn(move || accept_loop(&state, &listener, domid, &stop2, &File::from(wake_r)))
        .map_err(listen_err)?;
    Ok(ListenerHandle {
        path: path.to_owned(),
        domid,
        stop,
        wake: Some(File::from(wake_w)),
        thread: Some(thread),
    })
}

/// A socket file nobody listens on (left by a crashed run) is replaced;
/// a live one makes bind fail with "address in use".
fn remove_stale_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket
        && UnixStream::connect(path).is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    {
        let _ = std::fs::remove_file(path);
    }
}

fn accept_loop(
    state: &Arc<Mutex<State>>,
    listener: &UnixListener,
    domid: u32,
    stop: &AtomicBool,
    wake: &File,
) {
    let mut conns: Vec<ConnThreads> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(NixErrno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "xenstore listener poll failed; stopping it");
                break;
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (done, running): (Vec<_>, Vec<_>) =
                        conns.drain(..).partition(ConnThreads::finished);
                    conns = running;
                    done.into_iter().for_each(ConnThreads::join);
                    let max = lock(state).limits.connections_per_listener;
                    if conns.len() >= max {
                        tracing::warn!(
                            domid,
                            max,
                            "xenstore listener at its connection limit; refusing a client"
                        );
                        continue;
                    }
                    match spawn_conn(state, stream, domid) {
                        Ok(c) => conns.push(c),
                        Err(e) => tracing::warn!(error = %e, "cannot start a xenstore connection"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "xenstore accept failed");
                    // Out of fds, say: do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
    for c in &conns {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    conns.into_iter().for_each(ConnThreads::join);
}

fn spawn_conn(
    state: &Arc<Mutex<State>>,
    stream: UnixStream,
    domid: u32,
) -> io::Result<ConnThreads> {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux,
    // but say so explicitly: both threads rely on blocking I/O.
    stream.set_nonblocking(false)?;
    let reader_stream = stream.try_clone()?;
    let writer_stream = stream.try_clone()?;
    let (tx, rx) = sync_channel(lock(state).limits.queued_messages_per_connection);
    let id = lock(state).register(domid, tx, stream.try_clone()?);
    let state_r = Arc::clone(state);
    let reader = std::thread::Builder::new()
        .name(format!("xs-conn-{id}-r"))
        .spawn(move || read_loop(&state_r, id, reader_stream));
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            lock(state).unregister(id);
            return Err(e);
        }
    };
    let writer = std::thread::Builder::new()
        .name(format!("xs-conn-{id}-w"))
        .spawn(move || write_loop(&rx, writer_stream));
    let writer = match writer {
        Ok(w) => w,
        Err(e) => {
            lock(state).unregister(id);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = reader.join();
            return Err(e);
        }
    };
    Ok(ConnThreads {
        stream,
        reader,
        writer,
    })
}

fn read_loop(state: &Mutex<State>, id: u64, mut stream: UnixStream) {
    let mut head = [0u8; HEADER_LEN];
    loop {
        if stream.read_exact(&mut head).is_err() {
            break;
        }
        let header = Header::parse(&head);
        let len = match header.payload_len() {
            Ok(len) => len,
            Err(e) => {
                // xenstored kills such connections too: the stream cannot be resynchronised.
                tracing::warn!(conn = id, error = %e, "closing xenstore connection");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                break;
            }
        };
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        let mut st = lock(state);
        st.handle(id, header, &payload);
        if !st.is_registered(id) {
            break;
        }
    }
    lock(state).unregister(id);
}

fn write_loop(rx: &Receiver<Vec<u8>>, mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    for frame in rx {
        if stream.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
