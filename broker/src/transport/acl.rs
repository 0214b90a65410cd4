//! Granting one more group access to a file with a POSIX ACL entry.
//!
//! The control socket is 0660 with the unit's group (operators). Read-only callers are in
//! another group, and a file has one group: without an ACL entry they could not even
//! connect, and the roles check would never see them. So the broker adds
//! `group:<read-only>:rw-` to the socket and `group:<read-only>:--x` to its folder (the
//! runtime folder is 0750), the way `setfacl -m` would, without needing the `acl` tools.
//!
//! [`with_group`] is the rule, pure over the bytes of `system.posix_acl_access`
//! (linux/posix_acl_xattr.h): little-endian version 2, then entries of (tag u16, perm u16,
//! id u32), sorted by tag then id. [`grant_group`] reads, merges and writes it.

use std::path::Path;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
const ATTR: &str = "system.posix_acl_access";

/// Read, write and execute/search bits as ACLs spell them.
pub const R: u16 = 4;
pub const W: u16 = 2;
pub const X: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    tag: u16,
    id: u32,
    perm: u16,
}

/// Why an existing ACL could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    #[error("the ACL is {0} bytes, not a version-2 header and whole 8-byte entries")]
    Length(usize),
    #[error("the ACL has version {0}, not 2")]
    Version(u32),
}

fn parse(bytes: &[u8]) -> Result<Vec<Entry>, AclError> {
    if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
        return Err(AclError::Length(bytes.len()));
    }
    let version = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(AclError::Version(version));
    }
    Ok(bytes[4..]
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// The ACL that `existing` (or, with none, the one `mode` implies) becomes with `gid`
/// granted `perm`: the group's entry added or replaced, and the mask widened to cover it
/// (as `setfacl -m` recalculates it). Pure.
pub fn with_group(
    existing: Option<&[u8]>,
    mode: u32,
    gid: u32,
    perm: u16,
) -> Result<Vec<u8>, AclError> {
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    let mut entries = match existing {
        Some(b) => parse(b)?,
        None => vec![
            Entry {
                tag: USER_OBJ,
                id: UNDEFINED_ID,
                perm: bits(6),
            },
            Entry {
                tag: GROUP_OBJ,
                id: UNDEFINED_ID,
                perm: bits(3),
            },
            Entry {
                tag: OTHER,
                id: UNDEFINED_ID,
                perm: bits(0),
            },
        ],
    };
    entries.retain(|e| !(e.tag == GROUP && e.id == gid) && e.tag != MASK);
    entries.push(Entry {
        tag: GROUP,
        id: gid,
        perm: perm & 7,
    });
    let mask = entries
        .iter()
        .filter(|e| matches!(e.tag, GROUP_OBJ | USER | GROUP))
        .fold(0, |m, e| m | e.perm);
    entries.push(Entry {
        tag: MASK,
        id: UNDEFINED_ID,
        perm: mask,
    });
    entries.sort_by_key(|e| (e.tag, e.id));
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    Ok(out)
}

/// The permissions `gid` holds by a named entry in `path`'s ACL, if it has one.
pub fn group_perm(path: &Path, gid: u32) -> std::io::Result<Option<u16>> {
    let Some(bytes) = read(path)? else {
        return Ok(None);
    };
    let entries = parse(&bytes).map_err(std::io::Error::other)?;
    Ok(entries
        .iter()
        .find(|e| e.tag == GROUP && e.id == gid)
        .map(|e| e.perm))
}

fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    // 64 entries: far more than any ACL a runtime folder carries.
    let mut buf = vec![0u8; 4 + 8 * 64];
    match rustix::fs::getxattr(path, ATTR, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Grants group `gid` `perm` on `path` by an ACL entry (see the module comment). Fails
/// with the OS error when the file system has no ACLs (`EOPNOTSUPP`).
pub fn grant_group(path: &Path, gid: u32, perm: u16) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path)?.mode();
    let existing = read(path)?;
    let acl = with_group(existing.as_deref(), mode, gid, perm).map_err(std::io::Error::other)?;
    rustix::fs::setxattr(path, ATTR, &acl, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// Lets members of group `gid` connect to the control socket at `socket`: an ACL entry
/// `rw-` on the socket, and `--x` on its folder when the folder does not already let them
/// search it. Returns what could not be done, as sentences for the log (the broker runs
/// on without them: root and operators are not affected).
pub fn open_socket_to_group(socket: &Path, gid: u32, group: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut problems = Vec::new();
    let hint = "members of that group cannot connect; give them access another way \
                (docs/API.md, \"Roles\")";
    match std::fs::metadata(socket) {
        Ok(m) if m.gid() == gid => {}
        Ok(_) => {
            if let Err(e) = grant_group(socket, gid, R | W) {
                problems.push(format!(
                    "cannot add an ACL entry for group `{group}` to {}: {e}; {hint}",
                    socket.display()
                ));
            }
        }
        Err(e) => problems.push(format!("cannot stat {}: {e}", socket.display())),
    }
    if let Some(dir) = socket.parent() {
        match std::fs::metadata(dir) {
            Ok(m) => {
                let searchable = m.mode() & 0o001 != 0 || (m.gid() == gid && m.mode() & 0o010 != 0);
                let granted = group_perm(dir, gid)
                    .ok()
                    .flatten()
                    .is_some_and(|p| p & X != 0);
                if !searchable
                    && !granted
                    && let Err(e) = grant_group(dir, gid, X)
                {
                    problems.push(format!(
                        "cannot add an ACL entry for group `{group}` to {}: {e}; {hint}",
                        dir.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("cannot stat {}: {e}", dir.display())),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(b: &[u8]) -> Vec<(u16, u16, u32)> {
        parse(b)
            .unwrap()
            .into_iter()
            .map(|e| (e.tag, e.perm, e.id))
            .collect()
    }

    #[test]
    fn a_mode_becomes_an_acl_with_the_group_and_a_mask() {
        let acl = with_group(None, 0o660, 1234, R | W).unwrap();
        assert_eq!(
            entries(&acl),
            vec![
                (USER_OBJ, 6, UNDEFINED_ID),
                (GROUP_OBJ, 6, UNDEFINED_ID),
                (GROUP, 6, 1234),
                (MASK, 6, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]
        );
    }

    #[test]
    fn a_search_only_grant_on_a_folder_keeps_the_group_bits_as_the_mask() {
        let acl = with_group(None, 0o40750, 7, X).unwrap();
        let e = entries(&acl);
        assert!(e.contains(&(GROUP, 1, 7)));
        // r-x | --x: `ls -l` still shows 0750.
        assert!(e.contains(&(MASK, 5, UNDEFINED_ID)));
    }

    #[test]
    fn granting_again_replaces_the_entry_and_keeps_the_others() {
        let first = with_group(None, 0o660, 10, R).unwrap();
        let second = with_group(Some(&first), 0o660, 11, R | W).unwrap();
        let third = with_group(Some(&second), 0o660, 10, R | W).unwrap();
        let e = entries(&third);
        assert_eq!(e.iter().filter(|x| x.0 == GROUP).count(), 2);
        assert!(e.contains(&(GROUP, 6, 10)));
        assert!(e.contains(&(GROUP, 6, 11)));
        assert_eq!(e.iter().filter(|x| x.0 == MASK).count(), 1);
        // Sorted by tag then id, as the kernel requires.
        let mut sorted = e.clone();
        sorted.sort_by_key(|x| (x.0, x.2));
        assert_eq!(e, sorted);
    }

    #[test]
    fn a_broken_existing_acl_is_named_not_overwritten() {
        assert_eq!(
            with_group(Some(&[2, 0, 0]), 0o660, 1, R),
            Err(AclError::Length(3))
        );
        assert_eq!(
            with_group(Some(&[1, 0, 0, 0]), 0o660, 1, R),
            Err(AclError::Version(1))
        );
    }
}
