//! The node tree and its permission rules, as xenstored applies them.
//!
//! - Dom0 may do anything; the owner of a node may do anything to it.
//! - Reading (READ, DIRECTORY, GET_PERMS) needs read access to the node itself.
//! - Writing an existing node or removing it needs write access to it.
//! - Creating a node needs write access to its nearest existing ancestor; the
//!   new nodes inherit that ancestor's permissions, with the creating guest as
//!   owner (dom0-created nodes keep the inherited owner).
//! - A missing node reads as ENOENT if its nearest existing ancestor is
//!   readable, else EACCES (so guests cannot probe other domains' trees).
//! - Only dom0 or the owner may change permissions; a guest may not hand a
//!   node to another owner.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::Errno;
use crate::path::{self, basename, is_child, join, parent};
use crate::perms::Perms;

/// One node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Vec<u8>,
    pub(crate) perms: Perms,
    pub(crate) children: BTreeSet<String>,
}

/// What a modification did, for firing watches.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A node was created, written, or had its permissions changed.
    Modified { path: String, perms: Perms },
    /// A subtree went away: every removed node with the permissions it had.
    Removed {
        path: String,
        removed: BTreeMap<String, Perms>,
    },
    /// A special event (`@introduceDomain`, `@releaseDomain`).
    Special(&'static str),
}

/// The whole store. Cloned to snapshot it for a transaction.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    nodes: HashMap<String, Node>,
}

impl Tree {
    /// A tree with only `/`, owned by dom0 and closed to guests.
    pub(crate) fn new() -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(
            "/".to_owned(),
            Node {
                value: Vec::new(),
                perms: Perms::dom0_only(),
                children: BTreeSet::new(),
            },
        );
        Tree { nodes }
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node, if `domid` may read it; else the errno xenstored would give.
    fn readable(&self, domid: u32, path: &str) -> Result<&Node, Errno> {
        match self.nodes.get(path) {
            Some(node) if node.perms.access_for(domid).can_read() => Ok(node),
            Some(_) => Err(Errno::EACCES),
            None => Err(self.missing(domid, path)),
        }
    }

    /// ENOENT, or EACCES when the nearest existing ancestor is unreadable.
    fn missing(&self, domid: u32, path: &str) -> Errno {
        let mut current = parent(path);
        while let Some(p) = current {
            if let Some(node) = self.nodes.get(p) {
                return if node.perms.access_for(domid).can_read() {
                    Errno::ENOENT
                } else {
                    Errno::EACCES
                };
            }
            current = parent(p);
        }
        Errno::ENOENT
    }

    pub(crate) fn read(&self, domid: u32, path: &str) -> Result<Vec<u8>, Errno> {
        Ok(self.readable(domid, path)?.value.clone())
    }

    pub(crate) fn directory(&self, domid: u32, path: &str) -> Result<Vec<String>, Errno> {
        Ok(self
            .readable(domid, path)?
            .children
            .iter()
            .cloned()
            .collect())
    }

    pub(crate) fn get_perms(&self, domid: u32, path: &str) -> Result<Perms, Errno> {
        Ok(self.readable(domid, path)?.perms.clone())
    }

    /// Nodes owned by `domid` (for the per-domain quota).
    fn owned_by(&self, domid: u32) -> usize {
        self.nodes
            .values()
            .filter(|n| n.perms.owner() == domid)
            .count()
    }

    /// Creates `path` and missing parents. Returns false if it already existed.
    fn create(&mut self, domid: u32, path: &str, quota: usize) -> Result<bool, Errno> {
        if self.nodes.contains_key(path) {
            return Ok(false);
        }
        let mut missing = vec![path.to_owned()];
        let mut ancestor = parent(path).ok_or(Errno::EINVAL)?;
        while !self.nodes.contains_key(ancestor) {
            missing.push(ancestor.to_owned());
            ancestor = parent(ancestor).ok_or(Errno::EINVAL)?;
        }
        let anc = &self.nodes[ancestor];
        if !anc.perms.access_for(domid).can_write() {
            return Err(Errno::EACCES);
        }
        let perms = if domid == 0 {
            anc.perms.clone()
        } else {
            anc.perms.with_owner(domid)
        };
        if domid != 0 && self.owned_by(domid) + missing.len() > quota {
            return Err(Errno::ENOSPC);
        }
        for p in missing.iter().rev() {
            self.nodes.insert(
                p.clone(),
                Node {
                    value: Vec::new(),
                    perms: perms.clone(),
                    children: BTreeSet::new(),
                },
            );
            if let Some(par_node) = parent(p).and_then(|par| self.nodes.get_mut(par)) {
                par_node.children.insert(basename(p).to_owned());
            }
        }
        Ok(true)
    }

    pub(crate) fn write(
        &mut self,
        domid: u32,
        path: &str,
        value: &[u8],
        quota: usize,
    ) -> Result<Change, Errno> {
        match self.nodes.get(path) {
            Some(node) if !node.perms.access_for(domid).can_write() => {
                return Err(Errno::EACCES);
            }
            Some(_) => {}
            None => {
                self.create(domid, path, quota)?;
            }
        }
        let node = self.nodes.get_mut(path).ok_or(Errno::ENOENT)?;
        node.value = value.to_vec();
        Ok(Change::Modified {
            path: path.to_owned(),
            perms: node.perms.clone(),
        })
    }

    pub(crate) fn mkdir(
        &mut self,
        domid: u32,
        path: &str,
        quota: usize,
    ) -> Result<Option<Change>, Errno> {
        if let Some(node) = self.nodes.get(path) {
            // Like xenstored: an existing node still needs write access.
            if !node.perms.access_for(domid).can_write() {
                return Err(Errno::EACCES);
            }
            return Ok(None);
        }
        self.create(domid, path, quota)?;
        Ok(Some(Change::Modified {
            path: path.to_owned(),
            perms: self.nodes[path].perms.clone(),
        }))
    }

    pub(crate) fn rm(&mut self, domid: u32, path: &str) -> Result<Option<Change>, Errno> {
        if path == "/" {
            return Err(Errno::EINVAL);
        }
        let Some(node) = self.nodes.get(path) else {
            // Not an error if the node is gone, as long as its parent exists.
            let par = parent(path).ok_or(Errno::EINVAL)?;
            return match self.nodes.get(par) {
                Some(p) if p.perms.access_for(domid).can_read() => Ok(None),
                Some(_) => Err(Errno::EACCES),
                None => Err(self.missing(domid, par)),
            };
        };
        if !node.perms.access_for(domid).can_write() {
            return Err(Errno::EACCES);
        }
        let mut removed = BTreeMap::new();
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            if let Some(n) = self.nodes.remove(&p) {
                stack.extend(n.children.iter().map(|c| join(&p, c)));
                removed.insert(p, n.perms);
            }
        }
        if let Some(par) = parent(path).and_then(|par| self.nodes.get_mut(par)) {
            par.children.remove(basename(path));
        }
        Ok(Some(Change::Removed {
            path: path.to_owned(),
            removed,
        }))
    }

    pub(crate) fn set_perms(
        &mut self,
        domid: u32,
        path: &str,
        perms: Perms,
    ) -> Result<Change, Errno> {
        let errno_missing = self.missing(domid, path);
        let node = self.nodes.get_mut(path).ok_or(errno_missing)?;
        if domid != 0 {
            if node.perms.owner() != domid {
                return Err(Errno::EACCES);
            }
            // A guest may not give its node away.
            if perms.owner() != domid {
                return Err(Errno::EACCES);
            }
        }
        node.perms = perms.clone();
        Ok(Change::Modified {
            path: path.to_owned(),
            perms,
        })
    }

    /// Every path at or below `root`, for tests and debugging.
    #[cfg(test)]
    pub(crate) fn paths_under(&self, root: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .keys()
            .filter(|p| is_child(p, root))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// Does a change fire a watch on `wpath` for a watcher in domain `domid`?
/// Returns the event path (absolute) if so.
pub(crate) fn watch_match(change: &Change, wpath: &str, domid: u32) -> Option<String> {
    match change {
        Change::Special(name) => (wpath == *name && domid == 0).then(|| (*name).to_owned()),
        Change::Modified { path, perms } => {
            (is_child(path, wpath) && perms.access_for(domid).can_read()).then(|| path.clone())
        }
        Change::Removed { path, removed } => {
            if is_child(path, wpath) {
                let readable = removed
                    .get(path)
                    .is_some_and(|p| p.access_for(domid).can_read());
                return readable.then(|| path.clone());
            }
            // A watch below a removed subtree fires with its own path, if
            // that node existed and the watcher could read it.
            if is_child(wpath, path) {
                let readable = removed
                    .get(wpath)
                    .is_some_and(|p| p.access_for(domid).can_read());
                return readable.then(|| wpath.to_owned());
            }
            None
        }
    }
}

/// Checks an absolute node path as the server receives it.
pub(crate) fn check_abs(path: &str) -> Result<(), Errno> {
    if !path.starts_with('/') {
        return Err(Errno::EINVAL);
    }
    path::validate(path).map_err(|_| Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Access;

    const Q: usize = 1000;

    fn tree() -> Tree {
        let mut t = Tree::new();
        t.write(0, "/local/domain/5", b"", Q).unwrap();
        t.set_perms(0, "/local/domain/5", Perms::read_only_to(5))
            .unwrap();
        t.write(0, "/local/domain/5/data", b"", Q).unwrap();
        t.set_perms(0, "/local/domain/5/data", Perms::guest_owned(5))
            .unwrap();
        t.write(0, "/local/domain/6/secret", b"x", Q).unwrap();
        t
    }

    #[test]
    fn write_creates_parents_with_inherited_perms() {
        let mut t = tree();
        t.write(5, "/local/domain/5/data/a/b", b"v", Q).unwrap();
        assert_eq!(t.read(5, "/local/domain/5/data/a/b").unwrap(), b"v");
        assert_eq!(
            t.get_perms(0, "/local/domain/5/data/a").unwrap(),
            Perms::guest_owned(5)
        );
        assert_eq!(t.directory(0, "/local/domain/5/data").unwrap(), vec!["a"]);
    }

    #[test]
    fn guest_is_confined() {
        let mut t = tree();
        assert_eq!(
            t.write(5, "/local/domain/5/x", b"v", Q).unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(
            t.read(5, "/local/domain/6/secret").unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(
            t.read(5, "/local/domain/6/nothing").unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(
            t.read(5, "/local/domain/5/nothing").unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(
            t.write(5, "/local/domain/6/x", b"v", Q).unwrap_err(),
            Errno::EACCES
        );
        assert_eq!(t.rm(5, "/local/domain/5").unwrap_err(), Errno::EACCES);
        assert_eq!(
            t.set_perms(5, "/local/domain/5/data", Perms::owned_by(6, Access::Both))
                .unwrap_err(),
            Errno::EACCES
        );
    }

    #[test]
    fn guest_quota_is_enforced() {
        let mut t = tree();
        assert_eq!(
            t.write(5, "/local/domain/5/data/a/b/c", b"", 2)
                .unwrap_err(),
            Errno::ENOSPC
        );
        // data itself is owned by 5 and counts.
        t.write(5, "/local/domain/5/data/a", b"", 2).unwrap();
    }

    #[test]
    fn rm_removes_subtree_and_reports_it() {
        let mut t = tree();
        t.write(0, "/a/b/c", b"", Q).unwrap();
        let Some(Change::Removed { removed, .. }) = t.rm(0, "/a").unwrap() else {
            panic!("expected a removal");
        };
        assert_eq!(
            removed.keys().cloned().collect::<Vec<_>>(),
            vec!["/a", "/a/b", "/a/b/c"]
        );
        assert!(t.paths_under("/a").is_empty());
        assert!(t.rm(0, "/a").unwrap().is_none());
        assert_eq!(t.rm(0, "/nope/x").unwrap_err(), Errno::ENOENT);
        assert_eq!(t.rm(0, "/").unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn watch_matching_rules() {
        let p = Perms::dom0_only();
        let w = Change::Modified {
            path: "/a/b".into(),
            perms: p.clone(),
        };
        assert_eq!(watch_match(&w, "/a", 0).as_deref(), Some("/a/b"));
        assert_eq!(watch_match(&w, "/a/b", 0).as_deref(), Some("/a/b"));
        assert_eq!(watch_match(&w, "/a/b/c", 0), None);
        assert_eq!(watch_match(&w, "/a", 5), None, "unreadable for guest");
        let mut removed = BTreeMap::new();
        removed.insert("/a".to_owned(), p.clone());
        removed.insert("/a/b".to_owned(), p);
        let r = Change::Removed {
            path: "/a".into(),
            removed,
        };
        assert_eq!(watch_match(&r, "/", 0).as_deref(), Some("/a"));
        assert_eq!(watch_match(&r, "/a/b", 0).as_deref(), Some("/a/b"));
        assert_eq!(watch_match(&r, "/a/zz", 0), None);
        let s = Change::Special("@releaseDomain");
        assert!(watch_match(&s, "@releaseDomain", 0).is_some());
        assert!(watch_match(&s, "@releaseDomain", 5).is_none());
        assert!(watch_match(&s, "/", 0).is_none());
    }
}
