//! Blocking xenstore client over a unix socket or `/dev/xen/xenbus`.
//!
//! One request is in flight at a time; each has a deadline. Watch events that
//! arrive while waiting for a reply are queued and handed out by
//! [`Client::wait_event`]. Replies are matched by `req_id`, so a late reply
//! to a request that timed out is recognised and dropped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Errno, Error, Result};
use crate::path::{self, PathError};
use crate::perms::Perms;
use crate::transport::Transport;
use crate::wire::{self, MESSAGE_MAX, Message, Op, PAYLOAD_MAX};

/// Environment variable naming the xenstore socket or device; libxenstore
/// uses it for both, and so do we.
pub const ENV_PATH: &str = "XENSTORED_PATH";
/// Environment variable naming xenstored's run directory (socket is `<dir>/socket`).
pub const ENV_RUNDIR: &str = "XENSTORED_RUNDIR";
/// xenstored's run directory when [`ENV_RUNDIR`] is unset.
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";
/// The xenbus character device in a Linux domain.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// The xenbus device on old kernels.
pub const LEGACY_XENBUS_DEVICE: &str = "/proc/xen/xenbus";
/// Default deadline for one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of times [`Client::transaction`] retries on `EAGAIN`.
pub const DEFAULT_TRANSACTION_RETRIES: u32 = 16;
/// Queued watch events kept before the oldest are dropped.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// Upper bound on a directory listing assembled from `DIRECTORY_PART` replies.
const DIRECTORY_PART_MAX: usize = 1 << 20;

/// A fired watch: the path that changed and the token given to [`Client::watch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The changed path (relative if the watch was registered relative).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// Where libxenstore would look for xenstore, in order, given an environment
/// lookup: `XENSTORED_PATH` alone if set, else `$XENSTORED_RUNDIR/socket`
/// (default `/var/run/xenstored/socket`), `/dev/xen/xenbus`, `/proc/xen/xenbus`.
pub fn default_paths_from(env: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    if let Some(path) = env(ENV_PATH).filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let rundir = env(ENV_RUNDIR)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from);
    vec![
        rundir.join("socket"),
        PathBuf::from(XENBUS_DEVICE),
        PathBuf::from(LEGACY_XENBUS_DEVICE),
    ]
}

/// [`default_paths_from`] with the process environment.
pub fn default_paths() -> Vec<PathBuf> {
    default_paths_from(|k| std::env::var_os(k))
}

/// A connection to xenstore.
#[derive(Debug)]
pub struct Client {
    transport: Transport,
    timeout: Duration,
    max_retries: u32,
    next_req_id: u32,
    /// Requests sent on this connection ([`Client::requests`]).
    requests: u64,
    rbuf: Vec<u8>,
    events: VecDeque<WatchEvent>,
    dropped_events: u64,
    broken: bool,
}

impl Client {
    fn with_transport(transport: Transport) -> Client {
        Client {
            transport,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_TRANSACTION_RETRIES,
            next_req_id: 1,
            requests: 0,
            rbuf: Vec::with_capacity(2 * MESSAGE_MAX),
            events: VecDeque::new(),
            dropped_events: 0,
            broken: false,
        }
    }

    /// Connects to xenstored's unix socket (dom0), or a test server's.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_unix_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Like [`Client::connect_unix`], with `timeout` as the deadline for the
    /// connect and then for each request.
    pub fn connect_unix_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        let transport = Transport::connect_unix(path.as_ref(), deadline)?;
        Ok(Client::with_transport(transport).with_timeout(timeout))
    }

    /// Opens the xenbus character device (`/dev/xen/xenbus` in a guest).
    pub fn open_device(path: impl AsRef<Path>) -> Result<Client> {
        Ok(Client::with_transport(Transport::open_device(
            path.as_ref(),
        )?))
    }

    /// Opens `path` as libxenstore does: a socket is connected to, anything
    /// else is opened as the xenbus device.
    pub fn open(path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        if meta.file_type().is_socket() {
            Client::connect_unix(path)
        } else {
            Client::open_device(path)
        }
    }

    /// Opens the first working location of [`default_paths`] (honours
    /// `XENSTORED_PATH` like libxenstore).
    pub fn open_default() -> Result<Client> {
        Client::open_first(&default_paths())
    }

    /// Opens the first of `candidates` that exists and opens.
    pub fn open_first(candidates: &[PathBuf]) -> Result<Client> {
        let mut last_err = None;
        for path in candidates {
            if std::fs::symlink_metadata(path).is_err() {
                continue;
            }
            match Client::open(path) {
                Ok(client) => return Ok(client),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::NotFound {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }))
    }

    /// The deadline for each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the deadline for each request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Builder form of [`Client::set_timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sets how often [`Client::transaction`] retries a conflicting transaction.
    pub fn set_transaction_retries(&mut self, retries: u32) {
        self.max_retries = retries;
    }

    /// Watch events dropped because more than [`MAX_QUEUED_EVENTS`] were queued.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Requests sent on this connection so far (every operation is one request, a
    /// transaction's start and end included): what a caller's work costs xenstore.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Watch events received and not yet taken.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    // ----- plain operations (outside any transaction) -----

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        self.read_in(0, path)
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String> {
        self.read_string_in(0, path)
    }

    /// True if the node exists (false on `ENOENT`; other errors are errors).
    pub fn exists(&mut self, path: &str) -> Result<bool> {
        self.exists_in(0, path)
    }

    /// Writes a node, creating it and missing parents.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.write_in(0, path, value.as_ref())
    }

    /// Creates a node (and parents) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.mkdir_in(0, path)
    }

    /// Removes a node and everything below it. Not an error if it is already
    /// gone (as long as its parent exists).
    pub fn rm(&mut self, path: &str) -> Result<()> {
        self.rm_in(0, path)
    }

    /// Lists a node's children (names only).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        self.directory_in(0, path)
    }

    /// Reads a node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms> {
        self.get_perms_in(0, path)
    }

    /// Replaces a node's permissions (owner or dom0 only).
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
        self.set_perms_in(0, path, perms)
    }

    /// `/local/domain/<domid>` as the server reports it.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String> {
        let arg = domid.to_string();
        let reply = self.call(
            Op::GetDomainPath,
            0,
            wire::join_fields(&[arg.as_bytes()]),
            &arg,
        )?;
        Ok(text(&reply))
    }

    /// Whether the server knows domain `domid` is running.
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool> {
        let arg = domid.to_string();
        let reply = self.call(
            Op::IsDomainIntroduced,
            0,
            wire::join_fields(&[arg.as_bytes()]),
            &arg,
        )?;
        Ok(text(&reply) != "F")
    }

    // ----- watches -----

    /// Registers a watch on `path` (a node path, relative or absolute, or a
    /// special `@introduceDomain` / `@releaseDomain`). It fires once right away
    /// and then for every change at or below `path`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        let payload = watch_payload(Op::Watch, path, token)?;
        self.call(Op::Watch, 0, payload, path)?;
        Ok(())
    }

    /// Removes a watch, and drops its queued events.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        let payload = watch_payload(Op::Unwatch, path, token)?;
        self.call(Op::Unwatch, 0, payload, path)?;
        self.events
            .retain(|e| !(e.token == token && path::is_child(&e.path, path)));
        Ok(())
    }

    /// Removes all of this connection's watches and transactions.
    pub fn reset_watches(&mut self) -> Result<()> {
        self.call(Op::ResetWatches, 0, vec![0], "")?;
        self.events.clear();
        Ok(())
    }

    /// The next watch event, waiting at most `timeout` (zero: only what has
    /// already arrived). `Ok(None)` when nothing came in time.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        if self.broken {
            return Err(Error::Broken);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(msg) = self.read_message(deadline, Op::WatchEvent)? else {
                return Ok(None);
            };
            if msg.op() == Some(Op::WatchEvent) {
                return Ok(Some(self.parse_event(&msg)?));
            }
            // A reply with no request in flight: the late answer to a request
            // that timed out.
            tracing::debug!(req_id = msg.header.req_id, "dropping late xenstore reply");
        }
    }

    // ----- transactions -----

    /// Starts a transaction. Prefer [`Client::transaction`], which retries.
    pub fn begin(&mut self) -> Result<Transaction<'_>> {
        let reply = self.call(Op::TransactionStart, 0, vec![0], "")?;
        let id_text = text(&reply);
        let id: u32 = id_text.trim().parse().map_err(|_| Error::Protocol {
            detail: format!("TRANSACTION_START returned {id_text:?}, not a transaction id"),
        })?;
        if id == 0 {
            return Err(Error::Protocol {
                detail: "TRANSACTION_START returned transaction id 0".into(),
            });
        }
        Ok(Transaction {
            client: self,
            id,
            finished: false,
        })
    }

    /// Runs `body` in a transaction and commits it, starting over when the
    /// commit (or any step) fails with `EAGAIN`, up to the retry limit.
    /// An error from `body` aborts the transaction and is returned.
    pub fn transaction<T, F>(&mut self, mut body: F) -> Result<T>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<T>,
    {
        let mut attempt = 0u32;
        loop {
            let mut tx = self.begin()?;
            let outcome = body(&mut tx).and_then(|value| tx.commit().map(|()| value));
            match outcome {
                Err(e) if e.is_again() && attempt < self.max_retries => {
                    attempt += 1;
                    // Back off a little so two retrying writers do not collide forever.
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20))));
                }
                other => return other,
            }
        }
    }

    // ----- operations with a transaction id -----

    fn read_in(&mut self, tx: u32, path: &str) -> Result<Vec<u8>> {
        let payload = path_payload(path)?;
        self.call(Op::Read, tx, payload, path)
    }

    fn read_string_in(&mut self, tx: u32, path: &str) -> Result<String> {
        let bytes = self.read_in(tx, path)?;
        String::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
            path: path.to_owned(),
        })
    }

    fn exists_in(&mut self, tx: u32, path: &str) -> Result<bool> {
        match self.read_in(tx, path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn write_in(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<()> {
        let mut payload = path_payload(path)?;
        payload.extend_from_slice(value);
        self.call(Op::Write, tx, payload, path)?;
        Ok(())
    }

    fn mkdir_in(&mut self, tx: u32, path: &str) -> Result<()> {
        let payload = path_payload(path)?;
        self.call(Op::Mkdir, tx, payload, path)?;
        Ok(())
    }

    fn rm_in(&mut self, tx: u32, path: &str) -> Result<()> {
        let payload = path_payload(path)?;
        self.call(Op::Rm, tx, payload, path)?;
        Ok(())
    }

    fn directory_in(&mut self, tx: u32, path: &str) -> Result<Vec<String>> {
        let payload = path_payload(path)?;
        match self.call(Op::Directory, tx, payload, path) {
            Ok(reply) => Ok(names(&reply)),
            Err(e) if e.errno() == Some(&Errno::E2BIG) => self.directory_part(tx, path),
            Err(e) => Err(e),
        }
    }

    /// Assembles a listing too long for one reply (`DIRECTORY_PART`).
    fn directory_part(&mut self, tx: u32, path: &str) -> Result<Vec<String>> {
        let mut generation: Option<Vec<u8>> = None;
        let mut listing: Vec<u8> = Vec::new();
        loop {
            let offset = listing.len().to_string();
            let payload = wire::join_fields(&[path.as_bytes(), offset.as_bytes()]);
            let reply = self.call(Op::DirectoryPart, tx, payload, path)?;
            let Some(nul) = reply.iter().position(|&b| b == 0) else {
                return Err(Error::Protocol {
                    detail: "DIRECTORY_PART reply without a generation field".into(),
                });
            };
            let (gen_field, chunk) = (&reply[..nul], &reply[nul + 1..]);
            match &generation {
                Some(g) if g.as_slice() != gen_field => {
                    // The node changed between two parts: start over.
                    generation = None;
                    listing.clear();
                    continue;
                }
                Some(_) => {}
                None => generation = Some(gen_field.to_vec()),
            }
            if chunk.is_empty() && listing.is_empty() {
                return Ok(Vec::new());
            }
            listing.extend_from_slice(chunk);
            if listing.len() > DIRECTORY_PART_MAX {
                return Err(Error::Protocol {
                    detail: format!(
                        "directory listing of {path} exceeds {DIRECTORY_PART_MAX} bytes"
                    ),
                });
            }
            // The listing ends with an empty name (two nuls in a row).
            if listing.len() <= 1 || listing.ends_with(&[0, 0]) {
                return Ok(names(&listing));
            }
            if chunk.is_empty() {
                return Err(Error::Protocol {
                    detail: "DIRECTORY_PART reply made no progress".into(),
                });
            }
        }
    }

    fn get_perms_in(&mut self, tx: u32, path: &str) -> Result<Perms> {
        let payload = path_payload(path)?;
        let reply = self.call(Op::GetPerms, tx, payload, path)?;
        let fields: Vec<String> = wire::split_fields(&reply).into_iter().map(text).collect();
        Perms::parse_fields(&fields).map_err(|e| Error::Protocol {
            detail: format!("GET_PERMS {path} returned unparsable permissions: {e}"),
        })
    }

    fn set_perms_in(&mut self, tx: u32, path: &str, perms: &Perms) -> Result<()> {
        let mut payload = path_payload(path)?;
        payload.extend_from_slice(&perms.to_wire());
        self.call(Op::SetPerms, tx, payload, path)?;
        Ok(())
    }

    fn end(&mut self, tx: u32, commit: bool) -> Result<()> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.call(Op::TransactionEnd, tx, arg.to_vec(), &tx.to_string())?;
        Ok(())
    }

    // ----- the request/reply engine -----

    /// Sends one request and waits for its reply, queueing watch events.
    fn call(&mut self, op: Op, tx_id: u32, payload: Vec<u8>, target: &str) -> Result<Vec<u8>> {
        if self.broken {
            return Err(Error::Broken);
        }
        if payload.len() > PAYLOAD_MAX {
            return Err(Error::InvalidRequest {
                op,
                detail: format!(
                    "payload of {} bytes exceeds the 4096-byte limit",
                    payload.len()
                ),
            });
        }
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        self.requests += 1;
        let msg = Message::new(op, req_id, tx_id, payload).map_err(Error::Decode)?;
        let deadline = Instant::now() + self.timeout;
        self.send(&msg.encode(), deadline, op, target)?;
        loop {
            let Some(reply) = self.read_message(deadline, op)? else {
                return Err(Error::Timeout {
                    op,
                    target: target.to_owned(),
                    timeout: self.timeout,
                });
            };
            if reply.op() == Some(Op::WatchEvent) {
                let event = self.parse_event(&reply)?;
                self.queue_event(event);
                continue;
            }
            if reply.header.req_id != req_id {
                tracing::debug!(req_id = reply.header.req_id, "dropping late xenstore reply");
                continue;
            }
            return match reply.op() {
                Some(Op::Error) => Err(Error::Server {
                    op,
                    target: target.to_owned(),
                    errno: Errno::from_name(&text(
                        wire::split_fields(&reply.payload)
                            .first()
                            .copied()
                            .unwrap_or_default(),
                    )),
                }),
                Some(got) if got == op => Ok(reply.payload),
                _ => {
                    self.broken = true;
                    Err(Error::Protocol {
                        detail: format!("reply to {op} has message type {}", reply.header.msg_type),
                    })
                }
            };
        }
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant, op: Op, target: &str) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            match self.transport.write(&bytes[sent..]) {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::Closed { op });
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = self
                        .transport
                        .wait(true, deadline)
                        .map_err(|source| self.io_failed(op, source))?;
                    if !ready {
                        // Half a message on the wire desynchronises the stream.
                        if sent > 0 {
                            self.broken = true;
                        }
                        return Err(Error::Timeout {
                            op,
                            target: target.to_owned(),
                            timeout: self.timeout,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.broken = true;
                    return Err(Error::Closed { op });
                }
                Err(source) => return Err(self.io_failed(op, source)),
            }
        }
        Ok(())
    }

    /// The next whole message, or `None` at the deadline. Partial input stays
    /// buffered, so a timeout does not desynchronise the stream.
    fn read_message(&mut self, deadline: Instant, op: Op) -> Result<Option<Message>> {
        let mut chunk = [0u8; MESSAGE_MAX];
        loop {
            match wire::decode(&self.rbuf) {
                Ok(Some((msg, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(Error::Decode(e));
                }
            }
            // The buffer holds less than one message here, so it stays
            // below two messages' worth.
            match self.transport.read(&mut chunk) {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::Closed { op });
                }
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = self
                        .transport
                        .wait(false, deadline)
                        .map_err(|source| self.io_failed(op, source))?;
                    if !ready {
                        return Ok(None);
                    }
                }
                Err(source) => return Err(self.io_failed(op, source)),
            }
        }
    }

    fn io_failed(&mut self, op: Op, source: io::Error) -> Error {
        self.broken = true;
        Error::Io { op, source }
    }

    fn parse_event(&mut self, msg: &Message) -> Result<WatchEvent> {
        let fields = msg.fields();
        if fields.len() < 2 {
            self.broken = true;
            return Err(Error::Protocol {
                detail: format!(
                    "watch event with {} fields, expected path and token",
                    fields.len()
                ),
            });
        }
        Ok(WatchEvent {
            path: text(fields[0]),
            token: text(fields[1]),
        })
    }

    fn queue_event(&mut self, event: WatchEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }
}

/// An open transaction. Reads see a snapshot; writes become visible on
/// [`Transaction::commit`]. Dropping it without committing aborts it.
#[derive(Debug)]
pub struct Transaction<'c> {
    client: &'c mut Client,
    id: u32,
    finished: bool,
}

impl Transaction<'_> {
    /// The server's transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads a node.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        self.client.read_in(self.id, path)
    }

    /// Reads a node as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String> {
        self.client.read_string_in(self.id, path)
    }

    /// True if the node exists.
    pub fn exists(&mut self, path: &str) -> Result<bool> {
        self.client.exists_in(self.id, path)
    }

    /// Writes a node.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        self.client.write_in(self.id, path, value.as_ref())
    }

    /// Creates a node if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.client.mkdir_in(self.id, path)
    }

    /// Removes a node and its children.
    pub fn rm(&mut self, path: &str) -> Result<()> {
        self.client.rm_in(self.id, path)
    }

    /// Lists a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        self.client.directory_in(self.id, path)
    }

    /// Reads a node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms> {
        self.client.get_perms_in(self.id, path)
    }

    /// Replaces a node's permissions.
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<()> {
        self.client.set_perms_in(self.id, path, perms)
    }

    /// Commits. `EAGAIN` means another change got in first: start over.
    pub fn commit(mut self) -> Result<()> {
        self.finished = true;
        self.client.end(self.id, true)
    }

    /// Discards the transaction's changes.
    pub fn abort(mut self) -> Result<()> {
        self.finished = true;
        self.client.end(self.id, false)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: a failure here leaves a transaction the server
            // drops with the connection.
            let _ = self.client.end(self.id, false);
        }
    }
}

fn path_payload(path: &str) -> Result<Vec<u8>> {
    path::validate(path).map_err(|reason| invalid_path(path, reason))?;
    Ok(wire::join_fields(&[path.as_bytes()]))
}

fn watch_payload(op: Op, path: &str, token: &str) -> Result<Vec<u8>> {
    path::validate_watch(path).map_err(|reason| invalid_path(path, reason))?;
    if token.as_bytes().contains(&0) {
        return Err(Error::InvalidRequest {
            op,
            detail: "watch token contains a nul byte".into(),
        });
    }
    Ok(wire::join_fields(&[path.as_bytes(), token.as_bytes()]))
}

fn invalid_path(path: &str, reason: PathError) -> Error {
    Error::InvalidPath {
        path: path.to_owned(),
        reason,
    }
}

/// Text of a reply field, without a trailing nul.
fn text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

fn names(listing: &[u8]) -> Vec<String> {
    wire::split_fields(listing)
        .into_iter()
        .filter(|name| !name.is_empty())
        .map(text)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_follow_libxenstore() {
        let none = |_: &str| None;
        assert_eq!(
            default_paths_from(none),
            vec![
                PathBuf::from("/var/run/xenstored/socket"),
                PathBuf::from("/dev/xen/xenbus"),
                PathBuf::from("/proc/xen/xenbus"),
            ]
        );
        let path = |k: &str| (k == ENV_PATH).then(|| OsString::from("/tmp/xs.sock"));
        assert_eq!(
            default_paths_from(path),
            vec![PathBuf::from("/tmp/xs.sock")]
        );
        let rundir = |k: &str| (k == ENV_RUNDIR).then(|| OsString::from("/run/xs"));
        assert_eq!(
            default_paths_from(rundir)[0],
            PathBuf::from("/run/xs/socket")
        );
    }

    #[test]
    fn names_skip_the_terminating_empty_name() {
        assert_eq!(names(b"a\0b\0\0"), vec!["a", "b"]);
        assert!(names(b"").is_empty());
    }
}
