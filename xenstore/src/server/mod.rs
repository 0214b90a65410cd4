//! A small xenstore server for tests and the simulator.
//!
//! One [`Server`] holds one tree. [`Server::listen`] serves a unix socket *as
//! a domain*: domid 0 is the dom0 tools socket, any other domid is what that
//! guest's `/dev/xen/xenbus` would be. Relative paths resolve against
//! `/local/domain/<domid>`. Several listeners share the tree, so a test can
//! play toolstack, broker and guest at once.
//!
//! Behaviour follows docs/misc/xenstore.txt and xenstored: READ, WRITE,
//! MKDIR, RM, DIRECTORY(_PART), GET/SET_PERMS, WATCH/UNWATCH with an
//! immediate first event, TRANSACTION_START/END (copy on start; any committed
//! change in between makes END answer EAGAIN), GET_DOMAIN_PATH,
//! IS_DOMAIN_INTRODUCED, INTRODUCE/RELEASE (dom0), RESET_WATCHES. Errors are
//! errno names. Permission rules are in the `tree` module.
//!
//! The toolstack side ([`Server::write`], [`Server::introduce_domain`],
//! [`Server::add_channel`], ...) acts as dom0 directly on the tree and fires
//! watches like a dom0 client would.

mod listener;
mod state;
mod tree;

use std::path::Path;
use std::sync::{Arc, Mutex};

pub use listener::ListenerHandle;
use listener::lock;
use state::{Domain, State};
use tree::{Change, Tree, check_abs};

use crate::error::{Errno, Error, Result};
use crate::layout::{self, NodeSpec};
use crate::path::{INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::Perms;
use crate::wire::{Op, PAYLOAD_MAX};

/// Resource limits, like xenstored's quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Nodes a guest may own (ENOSPC beyond).
    pub nodes_per_domain: usize,
    /// Watches per connection (E2BIG beyond).
    pub watches_per_connection: usize,
    /// Open transactions per connection (ENOSPC beyond).
    pub transactions_per_connection: usize,
    /// Concurrent connections per listener (more are closed at once).
    pub connections_per_listener: usize,
    /// Replies and events queued for a client that is not reading; past
    /// this the client is disconnected.
    pub queued_messages_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes_per_domain: 1000,
            watches_per_connection: 128,
            transactions_per_connection: 10,
            connections_per_listener: 64,
            queued_messages_per_connection: 1024,
        }
    }
}

/// An in-process xenstore. Cheap to clone: clones share the tree.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<Mutex<State>>,
}

impl Default for Server {
    fn default() -> Server {
        Server::new()
    }
}

impl Server {
    /// A store with dom0 present (`/local/domain/0/{name=Domain-0,domid=0}`)
    /// and default limits.
    pub fn new() -> Server {
        Server::with_limits(Limits::default())
    }

    /// Like [`Server::new`] with explicit limits.
    pub fn with_limits(limits: Limits) -> Server {
        let mut st = State::new(limits);
        let mut tree = Tree::new();
        for (path, value) in [
            ("/local/domain/0/name", "Domain-0"),
            ("/local/domain/0/domid", "0"),
            ("/vm", ""),
        ] {
            // Cannot fail: valid absolute paths written as dom0.
            let _ = tree.write(0, path, value.as_bytes(), usize::MAX);
        }
        st.tree = tree;
        st.domains.insert(0, Domain { uuid: None });
        Server {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// Serves `socket_path` as domain `domid` until the handle is dropped.
    pub fn listen(&self, socket_path: impl AsRef<Path>, domid: u32) -> Result<ListenerHandle> {
        listener::listen(Arc::clone(&self.state), socket_path.as_ref(), domid)
    }

    /// Open client connections over all listeners.
    pub fn connection_count(&self) -> usize {
        lock(&self.state).connection_count()
    }

    /// Number of nodes in the tree.
    pub fn node_count(&self) -> usize {
        lock(&self.state).tree.len()
    }

    // ----- toolstack API (acts as dom0) -----

    /// Writes a node as dom0 (creating parents), then sets `perms` on it if given.
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>, perms: Option<&Perms>) -> Result<()> {
        let value = value.as_ref();
        self.apply(Op::Write, path, |t, changes| {
            if value.len() >= PAYLOAD_MAX {
                return Err(Errno::E2BIG);
            }
            changes.push(t.write(0, path, value, usize::MAX)?);
            if let Some(p) = perms {
                changes.push(t.set_perms(0, path, p.clone())?);
            }
            Ok(())
        })
    }

    /// Creates a node (and parents) if missing, then sets `perms` if given.
    pub fn mkdir(&self, path: &str, perms: Option<&Perms>) -> Result<()> {
        self.apply(Op::Mkdir, path, |t, changes| {
            changes.extend(t.mkdir(0, path, usize::MAX)?);
            if let Some(p) = perms {
                changes.push(t.set_perms(0, path, p.clone())?);
            }
            Ok(())
        })
    }

    /// Removes a node and its children (no error if already gone).
    pub fn rm(&self, path: &str) -> Result<()> {
        self.apply(Op::Rm, path, |t, changes| {
            changes.extend(t.rm(0, path)?);
            Ok(())
        })
    }

    /// Replaces a node's permissions.
    pub fn set_perms(&self, path: &str, perms: &Perms) -> Result<()> {
        self.apply(Op::SetPerms, path, |t, changes| {
            changes.push(t.set_perms(0, path, perms.clone())?);
            Ok(())
        })
    }

    /// Reads a node as dom0; `None` if it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        check(Op::Read, path)?;
        let st = lock(&self.state);
        Ok(st.tree.get(path).map(|n| n.value.clone()))
    }

    /// Lists a node's children as dom0.
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        check(Op::Directory, path)?;
        let st = lock(&self.state);
        st.tree
            .directory(0, path)
            .map_err(|errno| server_err(Op::Directory, path, errno))
    }

    /// Reads a node's permissions as dom0.
    pub fn get_perms(&self, path: &str) -> Result<Perms> {
        check(Op::GetPerms, path)?;
        let st = lock(&self.state);
        st.tree
            .get_perms(0, path)
            .map_err(|errno| server_err(Op::GetPerms, path, errno))
    }

    /// Creates a domain as a toolstack would (nodes from
    /// [`layout::domain_nodes`], all at once) and fires `@introduceDomain`.
    pub fn introduce_domain(&self, domid: u32, name: &str, uuid: &str) -> Result<()> {
        let target = layout::domain_path(domid);
        if domid == 0 || domid > 0xffff {
            return Err(server_err(Op::Introduce, &target, Errno::EINVAL));
        }
        let nodes = layout::domain_nodes(domid, name, uuid);
        for n in &nodes {
            check(Op::Introduce, &n.path)?;
        }
        let mut st = lock(&self.state);
        if st.domains.contains_key(&domid) {
            return Err(server_err(Op::Introduce, &target, Errno::EEXIST));
        }
        let mut changes = Vec::new();
        let mut tree = st.tree.clone();
        changes.extend(
            tree.rm(0, &target)
                .map_err(|e| server_err(Op::Introduce, &target, e))?,
        );
        changes.extend(
            tree.rm(0, &layout::vm_path(uuid))
                .map_err(|e| server_err(Op::Introduce, &target, e))?,
        );
        write_nodes(&mut tree, &nodes, &mut changes)
            .map_err(|(p, e)| server_err(Op::Introduce, &p, e))?;
        st.tree = tree;
        st.domains.insert(
            domid,
            Domain {
                uuid: Some(uuid.to_owned()),
            },
        );
        changes.push(Change::Special(INTRODUCE_DOMAIN));
        st.commit_changes(&changes);
        Ok(())
    }

    /// Tears a domain down as a toolstack would: removes its home, its
    /// `/vm/<uuid>` and its console backends, then fires `@releaseDomain`.
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        let target = layout::domain_path(domid);
        let mut st = lock(&self.state);
        if domid == 0 {
            return Err(server_err(Op::Release, &target, Errno::EINVAL));
        }
        let Some(domain) = st.domains.remove(&domid) else {
            return Err(server_err(Op::Release, &target, Errno::ENOENT));
        };
        let mut doomed = vec![target.clone(), layout::backend_domain_path(domid)];
        doomed.extend(domain.uuid.as_deref().map(layout::vm_path));
        let mut changes = Vec::new();
        for path in &doomed {
            // Cannot fail for dom0 on valid paths whose parents exist; if a
            // parent is missing there is nothing to remove anyway.
            if let Ok(change) = st.tree.rm(0, path) {
                changes.extend(change);
            }
        }
        changes.push(Change::Special(RELEASE_DOMAIN));
        st.commit_changes(&changes);
        Ok(())
    }

    /// Adds channel console `devid` (1 for the first channel) to domain
    /// `domid`, backed by a QEMU socket at `socket_path`: writes exactly the
    /// nodes of [`layout::channel_nodes`] in one step (watchers see them all
    /// at once), replacing any earlier channel with that devid. The domain
    /// must have been introduced.
    pub fn add_channel(
        &self,
        domid: u32,
        devid: u32,
        name: &str,
        socket_path: impl AsRef<Path>,
    ) -> Result<()> {
        let front = layout::frontend_path(domid, devid);
        let socket = socket_path
            .as_ref()
            .to_str()
            .ok_or_else(|| Error::InvalidRequest {
                op: Op::Write,
                detail: format!(
                    "socket path {} is not UTF-8",
                    socket_path.as_ref().display()
                ),
            })?;
        if devid == 0 {
            // Console 0 is the primary console, never a channel.
            return Err(server_err(Op::Write, &front, Errno::EINVAL));
        }
        let nodes = layout::channel_nodes(domid, devid, name, socket);
        for n in &nodes {
            check(Op::Write, &n.path)?;
            if n.value.len() >= PAYLOAD_MAX {
                return Err(server_err(Op::Write, &n.path, Errno::E2BIG));
            }
        }
        let mut st = lock(&self.state);
        if domid == 0 || !st.domains.contains_key(&domid) {
            return Err(server_err(
                Op::Write,
                &layout::domain_path(domid),
                Errno::ENOENT,
            ));
        }
        let mut tree = st.tree.clone();
        let mut changes = Vec::new();
        for dir in [layout::backend_path(domid, devid), front.clone()] {
            if tree.get(&dir).is_some() {
                changes.extend(tree.rm(0, &dir).map_err(|e| server_err(Op::Rm, &dir, e))?);
            }
        }
        write_nodes(&mut tree, &nodes, &mut changes)
            .map_err(|(p, e)| server_err(Op::Write, &p, e))?;
        st.tree = tree;
        st.commit_changes(&changes);
        Ok(())
    }

    /// Removes channel console `devid` of `domid` (frontend and backend).
    pub fn remove_channel(&self, domid: u32, devid: u32) -> Result<()> {
        let mut st = lock(&self.state);
        let mut changes = Vec::new();
        for dir in [
            layout::frontend_path(domid, devid),
            layout::backend_path(domid, devid),
        ] {
            if let Ok(change) = st.tree.rm(0, &dir) {
                changes.extend(change);
            }
        }
        st.commit_changes(&changes);
        Ok(())
    }

    /// Runs a dom0 tree edit under the lock and fires its watches.
    fn apply(
        &self,
        op: Op,
        path: &str,
        edit: impl FnOnce(&mut Tree, &mut Vec<Change>) -> Result<(), Errno>,
    ) -> Result<()> {
        check(op, path)?;
        let mut st = lock(&self.state);
        // Edit a copy so a failure half-way leaves the tree untouched.
        let mut tree = st.tree.clone();
        let mut changes = Vec::new();
        edit(&mut tree, &mut changes).map_err(|errno| server_err(op, path, errno))?;
        st.tree = tree;
        st.commit_changes(&changes);
        Ok(())
    }
}

fn write_nodes(
    tree: &mut Tree,
    nodes: &[NodeSpec],
    changes: &mut Vec<Change>,
) -> Result<(), (String, Errno)> {
    for n in nodes {
        let fail = |e| (n.path.clone(), e);
        changes.push(
            tree.write(0, &n.path, n.value.as_bytes(), usize::MAX)
                .map_err(fail)?,
        );
        if let Some(p) = &n.perms {
            changes.push(tree.set_perms(0, &n.path, p.clone()).map_err(fail)?);
        }
    }
    Ok(())
}

fn check(op: Op, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(server_err(op, path, Errno::EINVAL));
    }
    crate::path::validate(path).map_err(|reason| Error::InvalidPath {
        path: path.to_owned(),
        reason,
    })?;
    check_abs(path).map_err(|errno| server_err(op, path, errno))
}

fn server_err(op: Op, target: &str, errno: Errno) -> Error {
    Error::Server {
        op,
        target: target.to_owned(),
        errno,
    }
}
