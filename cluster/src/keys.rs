//! The keyspace: every etcd key this crate reads or writes is built and parsed here, so the
//! layout documented in the crate docs and in docs/CLUSTER.md has one source of truth.
//!
//! Identifiers are checked before they become part of a key: a key is built from a UUID, a
//! host name or a lease string, and none of them may smuggle a `/` (or anything else) that
//! would make it alias another key.

use crate::error::Invalid;

/// A VM's UUID in canonical form (lowercase, 8-4-4-4-12 hex): the domain's identity in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(String);

impl Uuid {
    /// Checks and canonicalises (lowercases) a UUID.
    pub fn parse(s: &str) -> Result<Uuid, Invalid> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == lens.len()
            && groups
                .iter()
                .zip(lens)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Uuid(s.to_ascii_lowercase()))
        } else {
            Err(Invalid::new(
                "uuid",
                s,
                "not a UUID (8-4-4-4-12 hexadecimal digits)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest host name: a DNS name.
pub const MAX_HOST: usize = 253;
/// Longest lease string (`addr/<IPv6>` is far shorter; the bound keeps keys small).
pub const MAX_LEASE: usize = 256;

/// Checks a host identity: letters, digits, `.`, `-`, `_`; 1 to 253 bytes.
pub fn check_host(host: &str) -> Result<(), Invalid> {
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(Invalid::new("host", host, "must be 1 to 253 bytes"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(Invalid::new(
            "host",
            host,
            format!("character {c:?} not allowed (letters, digits, '.', '-', '_')"),
        ));
    }
    Ok(())
}

/// Checks a lease string (`addr/192.0.2.10`, `host/web1`): printable ASCII without spaces,
/// 1 to 256 bytes, no empty or `..` segment (so that two spellings never name one lease).
pub fn check_lease(lease: &str) -> Result<(), Invalid> {
    if lease.is_empty() || lease.len() > MAX_LEASE {
        return Err(Invalid::new("lease", lease, "must be 1 to 256 bytes"));
    }
    if let Some(c) = lease.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Invalid::new(
            "lease",
            lease,
            format!("character {c:?} not allowed (printable ASCII without spaces)"),
        ));
    }
    if lease
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(Invalid::new(
            "lease",
            lease,
            "empty, '.' or '..' path segment",
        ));
    }
    Ok(())
}

/// What one key under a domain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainKey {
    Desired,
    Applied,
    Owner,
    Incoming,
    /// The domain's index entry of a lease it holds.
    Lease(String),
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Domain(Uuid, DomainKey),
    /// A lease and (as value) the UUID holding it.
    Lease(String),
    /// A host's liveness key.
    Host(String),
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// A keyspace under `prefix`, which gets a trailing `/` when it lacks one; it must start
    /// with `/` so that it reads like a path in `etcdctl get --prefix`.
    pub fn new(prefix: &str) -> Result<Keyspace, Invalid> {
        if !prefix.starts_with('/') {
            return Err(Invalid::new("prefix", prefix, "must start with '/'"));
        }
        if prefix.len() > 128 || prefix.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(Invalid::new(
                "prefix",
                prefix,
                "must be at most 128 bytes of printable ASCII without spaces",
            ));
        }
        let mut p = prefix.to_string();
        if !p.ends_with('/') {
            p.push('/');
        }
        Ok(Keyspace { prefix: p })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The folder of every domain key: what a broker watches.
    pub fn domains(&self) -> String {
        format!("{}domains/", self.prefix)
    }

    pub fn domain(&self, uuid: &Uuid, what: &DomainKey) -> String {
        let tail = match what {
            DomainKey::Desired => "desired".to_string(),
            DomainKey::Applied => "applied".to_string(),
            DomainKey::Owner => "owner".to_string(),
            DomainKey::Incoming => "incoming".to_string(),
            DomainKey::Lease(l) => format!("leases/{l}"),
        };
        format!("{}domains/{uuid}/{tail}", self.prefix)
    }

    /// The folder of a domain's lease index.
    pub fn domain_leases(&self, uuid: &Uuid) -> String {
        format!("{}domains/{uuid}/leases/", self.prefix)
    }

    pub fn lease(&self, lease: &str) -> String {
        format!("{}leases/{lease}", self.prefix)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.prefix)
    }

    /// The cluster's lineage (one for every broker on this prefix).
    pub fn lineage(&self) -> String {
        format!("{}lineage", self.prefix)
    }

    /// What `key` is, or `None` for a key this crate never writes (ignored, not trusted).
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(rest) = rest.strip_prefix("domains/") {
            let (uuid, tail) = rest.split_once('/')?;
            let uuid = Uuid::parse(uuid).ok()?;
            if uuid.as_str() != rest.split_once('/')?.0 {
                return None; // only canonical (lowercase) UUIDs are ours
            }
            let what = match tail {
                "desired" => DomainKey::Desired,
                "applied" => DomainKey::Applied,
                "owner" => DomainKey::Owner,
                "incoming" => DomainKey::Incoming,
                _ => {
                    let lease = tail.strip_prefix("leases/")?;
                    check_lease(lease).ok()?;
                    DomainKey::Lease(lease.to_string())
                }
            };
            return Some(Key::Domain(uuid, what));
        }
        if let Some(lease) = rest.strip_prefix("leases/") {
            check_lease(lease).ok()?;
            return Some(Key::Lease(lease.to_string()));
        }
        if let Some(host) = rest.strip_prefix("hosts/") {
            check_host(host).ok()?;
            return Some(Key::Host(host.to_string()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";

    #[test]
    fn uuids_are_checked_and_lowercased() {
        let table: &[(&str, Option<&str>)] = &[
            (U, Some(U)),
            ("6F1C2B1E-0D3A-4C8E-9A51-2B7E0C4D9F10", Some(U)),
            ("6f1c2b1e0d3a4c8e9a512b7e0c4d9f10", None),
            ("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f1", None),
            ("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f1g", None),
            ("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d/f10", None),
            ("", None),
        ];
        for (input, want) in table {
            let got = Uuid::parse(input).ok();
            assert_eq!(got.as_ref().map(Uuid::as_str), *want, "{input:?}");
        }
    }

    #[test]
    fn hosts_and_leases_are_checked() {
        for ok in ["web1", "dom0-a.example", "h_1"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "ä", &"x".repeat(254)] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        for ok in ["addr/192.0.2.10", "host/web1", "addr/2001:db8::1"] {
            assert!(check_lease(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "addr/",
            "/addr",
            "addr//x",
            "addr/../x",
            "addr/a b",
            "addr/\n",
        ] {
            let e = check_lease(bad).unwrap_err();
            assert_eq!(e.field, "lease", "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_parse() {
        let ks = Keyspace::new("/xenchan").unwrap();
        assert_eq!(ks.prefix(), "/xenchan/");
        let u = Uuid::parse(U).unwrap();
        let table = [
            DomainKey::Desired,
            DomainKey::Applied,
            DomainKey::Owner,
            DomainKey::Incoming,
            DomainKey::Lease("addr/192.0.2.10".into()),
        ];
        for what in table {
            let key = ks.domain(&u, &what);
            assert_eq!(ks.parse(key.as_bytes()), Some(Key::Domain(u.clone(), what)));
        }
        assert_eq!(
            ks.parse(ks.lease("host/web1").as_bytes()),
            Some(Key::Lease("host/web1".into()))
        );
        assert_eq!(
            ks.parse(ks.host("dom0-a").as_bytes()),
            Some(Key::Host("dom0-a".into()))
        );
    }

    #[test]
    fn foreign_keys_are_not_ours() {
        let ks = Keyspace::new("/xenchan/").unwrap();
        let upper = format!("/xenchan/domains/{}/owner", U.to_uppercase());
        let table: &[&[u8]] = &[
            b"/other/domains/6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10/owner",
            b"/xenchan/domains/not-a-uuid/owner",
            upper.as_bytes(),
            b"/xenchan/domains/6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10/other",
            b"/xenchan/domains/6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10/leases/a//b",
            b"/xenchan/hosts/a/b",
            b"/xenchan/\xff",
        ];
        for key in table {
            assert_eq!(ks.parse(key), None, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(Keyspace::new("xenchan").is_err());
        assert!(Keyspace::new("/a b").is_err());
        assert_eq!(Keyspace::new("/").unwrap().prefix(), "/");
    }
}
