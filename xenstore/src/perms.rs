//! Node permissions, as xenstore encodes them (`n0`, `r5`, `w5`, `b5`).
//!
//! A node's permission list starts with its owner: the first entry's domid
//! owns the node (full access) and its access letter applies to every domain
//! not listed later. Later entries grant specific domains their access.
//! Dom0 (the privileged toolstack) may do anything regardless.

use std::fmt;
use std::str::FromStr;

/// One access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The letter xenstore uses.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    /// True if this grants reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// True if this grants writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry of a permission list: a domain and its access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u32,
    /// What it may do.
    pub access: Access,
}

/// Why a permission string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermsError {
    /// Not `[nrwb]<domid>`.
    #[error("bad permission entry {0:?} (expected n|r|w|b followed by a domid, e.g. r5)")]
    BadEntry(String),
    /// An empty list (a node always has an owner).
    #[error("permission list is empty")]
    Empty,
}

impl FromStr for Perm {
    type Err = PermsError;

    fn from_str(s: &str) -> Result<Perm, PermsError> {
        let bad = || PermsError::BadEntry(s.to_owned());
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(bad()),
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let domid: u32 = digits.parse().map_err(|_| bad())?;
        if domid > 0xffff {
            return Err(bad());
        }
        Ok(Perm { domid, access })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list: owner first, then per-domain grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms {
    entries: Vec<Perm>,
}

impl Perms {
    /// A node owned by `owner`; every other domain gets `others`.
    pub fn owned_by(owner: u32, others: Access) -> Perms {
        Perms {
            entries: vec![Perm {
                domid: owner,
                access: others,
            }],
        }
    }

    /// Adds a grant for one domain.
    #[must_use]
    pub fn with(mut self, domid: u32, access: Access) -> Perms {
        self.entries.push(Perm { domid, access });
        self
    }

    /// Owned by dom0, invisible to guests (`n0`).
    pub fn dom0_only() -> Perms {
        Perms::owned_by(0, Access::None)
    }

    /// Owned by dom0, readable but not writable by `domid` (`n0,r<domid>`):
    /// libxl's perms for a domain's home and for read-only frontend nodes.
    pub fn read_only_to(domid: u32) -> Perms {
        Perms::owned_by(0, Access::None).with(domid, Access::Read)
    }

    /// Owned by guest `domid`, readable by dom0 (`n<domid>,r0`): libxl's perms
    /// for a frontend directory and the guest-writable nodes in it.
    pub fn guest_owned(domid: u32) -> Perms {
        Perms::owned_by(domid, Access::None).with(0, Access::Read)
    }

    /// Builds from entries; the first one is the owner.
    pub fn from_entries(entries: Vec<Perm>) -> Result<Perms, PermsError> {
        if entries.is_empty() {
            return Err(PermsError::Empty);
        }
        Ok(Perms { entries })
    }

    /// Parses the wire fields (`["n0", "r5"]`).
    pub fn parse_fields<S: AsRef<str>>(fields: &[S]) -> Result<Perms, PermsError> {
        let entries = fields
            .iter()
            .map(|f| f.as_ref().parse())
            .collect::<Result<Vec<Perm>, _>>()?;
        Perms::from_entries(entries)
    }

    /// The entries, owner first.
    pub fn entries(&self) -> &[Perm] {
        &self.entries
    }

    /// The owning domain.
    pub fn owner(&self) -> u32 {
        self.entries[0].domid
    }

    /// What domain `domid` may do. Dom0 and the owner may do anything.
    pub fn access_for(&self, domid: u32) -> Access {
        if domid == 0 || domid == self.owner() {
            return Access::Both;
        }
        self.entries[1..]
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.entries[0].access, |p| p.access)
    }

    /// The same list with a different owner (what a guest gets when it creates
    /// a node: the parent's grants, itself as owner).
    #[must_use]
    pub fn with_owner(&self, owner: u32) -> Perms {
        let mut entries = self.entries.clone();
        entries[0].domid = owner;
        Perms { entries }
    }

    /// The wire form: each entry followed by a nul.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.entries {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Perms {
    /// Comma-separated, as `xenstore-ls -p` prints them (`n0,r5`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl FromStr for Perms {
    type Err = PermsError;

    /// Parses the comma-separated form (`n0,r5`).
    fn from_str(s: &str) -> Result<Perms, PermsError> {
        let fields: Vec<&str> = s.split(',').filter(|f| !f.is_empty()).collect();
        Perms::parse_fields(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let p: Perms = "n0,r5".parse().unwrap();
        assert_eq!(p, Perms::read_only_to(5));
        assert_eq!(p.to_string(), "n0,r5");
        assert_eq!(p.to_wire(), b"n0\0r5\0");
        assert!("x0".parse::<Perms>().is_err());
        assert!("r".parse::<Perms>().is_err());
        assert!("r-1".parse::<Perms>().is_err());
        assert!("r70000".parse::<Perms>().is_err());
        assert!("".parse::<Perms>().is_err());
    }

    #[test]
    fn access_follows_owner_then_grants_then_default() {
        let p = Perms::read_only_to(5);
        assert_eq!(p.access_for(0), Access::Both);
        assert_eq!(p.access_for(5), Access::Read);
        assert_eq!(p.access_for(6), Access::None);
        let g = Perms::guest_owned(5);
        assert_eq!(g.access_for(5), Access::Both);
        assert_eq!(g.access_for(6), Access::None);
        let open = Perms::owned_by(0, Access::Read);
        assert_eq!(open.access_for(9), Access::Read);
    }
}
