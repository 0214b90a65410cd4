//! Shared server state and the request dispatcher.
//!
//! One mutex guards everything: the tree, connections with their watches and
//! transactions, and the set of introduced domains. Messages to a connection
//! go through its bounded outgoing queue (never a blocking write under the
//! lock); a connection whose queue is full is dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::SyncSender;

use super::Limits;
use super::tree::{Change, Tree, check_abs, watch_match};
use crate::error::Errno;
use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::Perms;
use crate::wire::{self, Header, Message, Op, PAYLOAD_MAX};

/// A registered watch.
#[derive(Debug)]
struct Watch {
    /// Absolute node path or `@special`.
    path: String,
    token: String,
    /// Registered with a relative path: events are reported relative too.
    relative: bool,
}

/// An open transaction: a private copy of the tree taken at start.
#[derive(Debug)]
struct Txn {
    base_generation: u64,
    tree: Tree,
    changes: Vec<Change>,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) domid: u32,
    out: SyncSender<Vec<u8>>,
    stream: UnixStream,
    watches: Vec<Watch>,
    txs: HashMap<u32, Txn>,
}

/// An introduced domain.
#[derive(Debug, Clone)]
pub(crate) struct Domain {
    pub(crate) uuid: Option<String>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tree: Tree,
    /// Bumped by every committed change; transactions compare it.
    generation: u64,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    next_tx: u32,
    pub(crate) domains: BTreeMap<u32, Domain>,
    pub(crate) limits: Limits,
}

/// What a request produced besides its reply.
#[derive(Default)]
struct Effects {
    /// Committed changes to fire watches for.
    changes: Vec<Change>,
    /// Messages to send to the caller after the reply.
    after: Vec<Message>,
}

impl State {
    pub(crate) fn new(limits: Limits) -> State {
        State {
            tree: Tree::new(),
            generation: 0,
            conns: HashMap::new(),
            next_conn: 1,
            next_tx: 1,
            domains: BTreeMap::new(),
            limits,
        }
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn register(
        &mut self,
        domid: u32,
        out: SyncSender<Vec<u8>>,
        stream: UnixStream,
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                out,
                stream,
                watches: Vec::new(),
                txs: HashMap::new(),
            },
        );
        id
    }

    /// Forgets a connection; dropping its queue sender lets the writer finish.
    pub(crate) fn unregister(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    pub(crate) fn is_registered(&self, id: u64) -> bool {
        self.conns.contains_key(&id)
    }

    /// Queues a message for a connection, dropping the connection if its
    /// client does not keep up.
    fn push(&mut self, id: u64, msg: &Message) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.out.try_send(msg.encode()).is_err() {
            tracing::warn!(
                conn = id,
                domid = conn.domid,
                "xenstore client not reading its replies; dropping it"
            );
            let _ = conn.stream.shutdown(Shutdown::Both);
            self.conns.remove(&id);
        }
    }

    /// A committed change happened: bump the generation and fire watches.
    pub(crate) fn commit_changes(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.generation += 1;
        self.fire(changes);
    }

    /// Sends watch events for changes to every matching watch.
    pub(crate) fn fire(&mut self, changes: &[Change]) {
        let mut deliveries = Vec::new();
        for (&id, conn) in &self.conns {
            let base = format!("{}/", path::domain_base(conn.domid));
            for watch in &conn.watches {
                for change in changes {
                    let Some(epath) = watch_match(change, &watch.path, conn.domid) else {
                        continue;
                    };
                    let epath = if watch.relative {
                        epath
                            .strip_prefix(&base)
                            .map_or(epath.clone(), str::to_owned)
                    } else {
                        epath
                    };
                    deliveries.push((id, event(&epath, &watch.token)));
                }
            }
        }
        for (id, msg) in deliveries {
            self.push(id, &msg);
        }
    }

    /// Handles one request from connection `id` and queues the reply.
    pub(crate) fn handle(&mut self, id: u64, header: Header, payload: &[u8]) {
        let Some(domid) = self.conns.get(&id).map(|c| c.domid) else {
            return;
        };
        let mut effects = Effects::default();
        let result = match header.op() {
            Some(op) => self.dispatch(id, domid, op, header.tx_id, payload, &mut effects),
            None => Err(Errno::ENOSYS),
        };
        let reply = match result {
            Ok(body) => Message::with_type(header.msg_type, header.req_id, header.tx_id, body)
                .unwrap_or_else(|_| error_reply(header, &Errno::E2BIG)),
            Err(errno) => {
                tracing::debug!(conn = id, domid, op = header.msg_type, %errno, "xenstore request failed");
                error_reply(header, &errno)
            }
        };
        self.push(id, &reply);
        for msg in &effects.after {
            self.push(id, msg);
        }
        self.commit_changes(&effects.changes);
    }

    fn dispatch(
        &mut self,
        id: u64,
        domid: u32,
        op: Op,
        tx_id: u32,
        payload: &[u8],
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        let quota = self.limits.nodes_per_domain;
        match op {
            Op::Read => {
                let path = resolve(domid, one_arg(payload)?)?;
                self.with_tree(id, tx_id, fx, |t| Ok((t.read(domid, &path)?, None)))
            }
            Op::Write => {
                let nul = payload.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
                let path = resolve(domid, as_str(&payload[..nul])?)?;
                let value = &payload[nul + 1..];
                self.with_tree(id, tx_id, fx, |t| {
                    Ok((ok(), Some(t.write(domid, &path, value, quota)?)))
                })
            }
            Op::Mkdir => {
                let path = resolve(domid, one_arg(payload)?)?;
                self.with_tree(id, tx_id, fx, |t| Ok((ok(), t.mkdir(domid, &path, quota)?)))
            }
            Op::Rm => {
                let path = resolve(domid, one_arg(payload)?)?;
                self.with_tree(id, tx_id, fx, |t| Ok((ok(), t.rm(domid, &path)?)))
            }
            Op::Directory => {
                let path = resolve(domid, one_arg(payload)?)?;
                let listing = self.with_tree(id, tx_id, fx, |t| {
                    Ok((listing(&t.directory(domid, &path)?), None))
                })?;
                if listing.len() > PAYLOAD_MAX {
                    return Err(Errno::E2BIG);
                }
                Ok(listing)
            }
            Op::DirectoryPart => self.directory_part(id, domid, tx_id, payload, fx),
            Op::GetPerms => {
                let path = resolve(domid, one_arg(payload)?)?;
                self.with_tree(id, tx_id, fx, |t| {
                    Ok((t.get_perms(domid, &path)?.to_wire(), None))
                })
            }
            Op::SetPerms => {
                let fields = wire::split_fields(payload);
                let (first, rest) = fields.split_first().ok_or(Errno::EINVAL)?;
                let path = resolve(domid, as_str(first)?)?;
                let texts = rest
                    .iter()
                    .map(|f| as_str(f))
                    .collect::<Result<Vec<&str>, Errno>>()?;
                let perms = Perms::parse_fields(&texts).map_err(|_| Errno::EINVAL)?;
                self.with_tree(id, tx_id, fx, |t| {
                    Ok((ok(), Some(t.set_perms(domid, &path, perms)?)))
                })
            }
            Op::Watch => self.watch(id, domid, payload, fx),
            Op::Unwatch => {
                let (path, token, _) = watch_args(domid, payload)?;
                let conn = self.conns.get_mut(&id).ok_or(Errno::EINVAL)?;
                let before = conn.watches.len();
                conn.watches
                    .retain(|w| !(w.path == path && w.token == token));
                if conn.watches.len() == before {
                    return Err(Errno::ENOENT);
                }
                Ok(ok())
            }
            Op::TransactionStart => {
                if tx_id != 0 {
                    return Err(Errno::EBUSY);
                }
                let max = self.limits.transactions_per_connection;
                let conn = self.conns.get(&id).ok_or(Errno::EINVAL)?;
                if conn.txs.len() >= max {
                    return Err(Errno::ENOSPC);
                }
                let tx = self.alloc_tx();
                let txn = Txn {
                    base_generation: self.generation,
                    tree: self.tree.clone(),
                    changes: Vec::new(),
                };
                self.conns
                    .get_mut(&id)
                    .ok_or(Errno::EINVAL)?
                    .txs
                    .insert(tx, txn);
                Ok(wire::join_fields(&[tx.to_string().as_bytes()]))
            }
            Op::TransactionEnd => {
                let commit = match one_arg(payload)? {
                    "T" => true,
                    "F" => false,
                    _ => return Err(Errno::EINVAL),
                };
                let txn = self
                    .conns
                    .get_mut(&id)
                    .and_then(|c| c.txs.remove(&tx_id))
                    .ok_or(Errno::ENOENT)?;
                if !commit {
                    return Ok(ok());
                }
                // Coarse but correct: any committed change since the start
                // (by anyone) is a conflict, as docs/misc/xenstore.txt says.
                if txn.base_generation != self.generation {
                    return Err(Errno::EAGAIN);
                }
                if !txn.changes.is_empty() {
                    self.tree = txn.tree;
                    fx.changes.extend(txn.changes);
                }
                Ok(ok())
            }
            Op::GetDomainPath => {
                let target = parse_domid(one_arg(payload)?)?;
                Ok(wire::join_fields(&[path::domain_base(target).as_bytes()]))
            }
            Op::IsDomainIntroduced => {
                let target = parse_domid(one_arg(payload)?)?;
                let known = self.domains.contains_key(&target);
                Ok(if known {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            Op::Introduce => {
                if domid != 0 {
                    return Err(Errno::EACCES);
                }
                let fields = wire::split_fields(payload);
                let target = parse_domid(as_str(fields.first().ok_or(Errno::EINVAL)?)?)?;
                if target == 0 {
                    return Err(Errno::EINVAL);
                }
                if self.domains.insert(target, Domain { uuid: None }).is_none() {
                    fx.changes.push(Change::Special(INTRODUCE_DOMAIN));
                }
                Ok(ok())
            }
            Op::Release => {
                if domid != 0 {
                    return Err(Errno::EACCES);
                }
                let target = parse_domid(one_arg(payload)?)?;
                if target == 0 || self.domains.remove(&target).is_none() {
                    return Err(Errno::ENOENT);
                }
                fx.changes.push(Change::Special(RELEASE_DOMAIN));
                Ok(ok())
            }
            Op::ResetWatches => {
                let conn = self.conns.get_mut(&id).ok_or(Errno::EINVAL)?;
                conn.watches.clear();
                conn.txs.clear();
                Ok(ok())
            }
            // Server-to-client types, and operations this server does not model.
            Op::WatchEvent | Op::Error => Err(Errno::EINVAL),
            Op::Control | Op::Resume | Op::SetTarget => Err(Errno::ENOSYS),
        }
    }

    fn watch(
        &mut self,
        id: u64,
        domid: u32,
        payload: &[u8],
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        let (path, token, as_given) = watch_args(domid, payload)?;
        let max = self.limits.watches_per_connection;
        let conn = self.conns.get_mut(&id).ok_or(Errno::EINVAL)?;
        if conn
            .watches
            .iter()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(Errno::EEXIST);
        }
        if conn.watches.len() >= max {
            return Err(Errno::E2BIG);
        }
        conn.watches.push(Watch {
            relative: !as_given.starts_with('/') && !as_given.starts_with('@'),
            path,
            token: token.clone(),
        });
        // Every new watch fires once straight away, with the path as given.
        fx.after.push(event(&as_given, &token));
        Ok(ok())
    }

    fn directory_part(
        &mut self,
        id: u64,
        domid: u32,
        tx_id: u32,
        payload: &[u8],
        fx: &mut Effects,
    ) -> Result<Vec<u8>, Errno> {
        let fields = wire::split_fields(payload);
        let [raw_path, raw_offset] = fields.as_slice() else {
            return Err(Errno::EINVAL);
        };
        let path = resolve(domid, as_str(raw_path)?)?;
        let offset: usize = as_str(raw_offset)?.parse().map_err(|_| Errno::EINVAL)?;
        let generation = self.generation_for(id, tx_id)?;
        let mut all = self.with_tree(id, tx_id, fx, |t| {
            Ok((listing(&t.directory(domid, &path)?), None))
        })?;
        // The complete listing ends with an empty name.
        all.push(0);
        if offset > all.len() {
            return Err(Errno::EINVAL);
        }
        let mut reply = wire::join_fields(&[generation.to_string().as_bytes()]);
        let room = PAYLOAD_MAX - reply.len();
        let end = all.len().min(offset + room);
        reply.extend_from_slice(&all[offset..end]);
        Ok(reply)
    }

    fn generation_for(&self, id: u64, tx_id: u32) -> Result<u64, Errno> {
        if tx_id == 0 {
            return Ok(self.generation);
        }
        self.conns
            .get(&id)
            .and_then(|c| c.txs.get(&tx_id))
            .map(|t| t.base_generation)
            .ok_or(Errno::ENOENT)
    }

    /// Runs `op` on the live tree (tx 0) or the transaction's copy.
    fn with_tree<R>(
        &mut self,
        id: u64,
        tx_id: u32,
        fx: &mut Effects,
        op: impl FnOnce(&mut Tree) -> Result<(R, Option<Change>), Errno>,
    ) -> Result<R, Errno> {
        if tx_id == 0 {
            let (r, change) = op(&mut self.tree)?;
            fx.changes.extend(change);
            return Ok(r);
        }
        let txn = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.txs.get_mut(&tx_id))
            .ok_or(Errno::ENOENT)?;
        let (r, change) = op(&mut txn.tree)?;
        // Fired only if and when the transaction commits.
        txn.changes.extend(change);
        Ok(r)
    }

    fn alloc_tx(&mut self) -> u32 {
        loop {
            let tx = self.next_tx;
            self.next_tx = self.next_tx.wrapping_add(1).max(1);
            let in_use = self.conns.values().any(|c| c.txs.contains_key(&tx));
            if !in_use {
                return tx;
            }
        }
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn event(path: &str, token: &str) -> Message {
    let payload = wire::join_fields(&[path.as_bytes(), token.as_bytes()]);
    Message::new(Op::WatchEvent, 0, 0, payload).unwrap_or_else(|_| Message {
        header: Header {
            msg_type: Op::WatchEvent.code(),
            req_id: 0,
            tx_id: 0,
            len: 0,
        },
        payload: Vec::new(),
    })
}

fn error_reply(header: Header, errno: &Errno) -> Message {
    let payload = wire::join_fields(&[errno.name().as_bytes()]);
    Message {
        header: Header {
            msg_type: Op::Error.code(),
            req_id: header.req_id,
            tx_id: header.tx_id,
            len: payload.len() as u32,
        },
        payload,
    }
}

fn listing(names: &[String]) -> Vec<u8> {
    let fields: Vec<&[u8]> = names.iter().map(String::as_bytes).collect();
    wire::join_fields(&fields)
}

fn as_str(bytes: &[u8]) -> Result<&str, Errno> {
    std::str::from_utf8(bytes).map_err(|_| Errno::EINVAL)
}

/// The single string argument of a request (final nul optional).
fn one_arg(payload: &[u8]) -> Result<&str, Errno> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.contains(&0) {
        return Err(Errno::EINVAL);
    }
    as_str(body)
}

/// A node path from a caller in `domid`, made absolute and checked.
fn resolve(domid: u32, raw: &str) -> Result<String, Errno> {
    let abs = path::absolute(raw, domid).map_err(|_| Errno::EINVAL)?;
    check_abs(&abs)?;
    Ok(abs)
}

/// (stored path, token, path as given) of a WATCH or UNWATCH.
fn watch_args(domid: u32, payload: &[u8]) -> Result<(String, String, String), Errno> {
    let fields = wire::split_fields(payload);
    let [raw_path, raw_token, ..] = fields.as_slice() else {
        return Err(Errno::EINVAL);
    };
    let given = as_str(raw_path)?;
    let token = as_str(raw_token)?.to_owned();
    path::validate_watch(given).map_err(|_| Errno::EINVAL)?;
    let stored = if given.starts_with('@') {
        given.to_owned()
    } else {
        resolve(domid, given)?
    };
    Ok((stored, token, given.to_owned()))
}

fn parse_domid(text: &str) -> Result<u32, Errno> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Errno::EINVAL);
    }
    text.parse::<u32>()
        .ok()
        .filter(|&d| d <= 0xffff)
        .ok_or(Errno::EINVAL)
}
