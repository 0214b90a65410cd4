//! Name <-> UUID of the domains in the local cache. The cache is keyed by name, etcd by
//! UUID, and both directions are asked on hot paths (every PUT by name, every watch event
//! by UUID): both are indexed. A linear search by UUID made each watch event cost O(N)
//! string compares, a tenth of the brokers' CPU at 10,000 domains.

use std::collections::HashMap;

use xenchan_cluster::Uuid;

/// Both directions of the name -> UUID map.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_name: HashMap<String, Uuid>,
    /// The last name recorded for each UUID (two names with one UUID are an operator's
    /// mistake this map keeps answering for: the newer one wins, as before).
    by_uuid: HashMap<Uuid, String>,
}

impl Names {
    pub(crate) fn uuid(&self, name: &str) -> Option<&Uuid> {
        self.by_name.get(name)
    }

    pub(crate) fn name(&self, uuid: &Uuid) -> Option<&String> {
        self.by_uuid.get(uuid)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Records that `name` is VM `uuid` (replacing what `name` was).
    pub(crate) fn insert(&mut self, name: &str, uuid: Uuid) {
        if let Some(old) = self.by_name.insert(name.to_string(), uuid.clone())
            && old != uuid
        {
            self.unlink(name, &old);
        }
        self.by_uuid.insert(uuid, name.to_string());
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.unlink(name, &old);
        }
    }

    /// `name` no longer is `uuid`: another name with that UUID answers for it, if any.
    fn unlink(&mut self, name: &str, uuid: &Uuid) {
        if self.by_uuid.get(uuid).is_some_and(|n| n == name) {
            // Rare (two names, one UUID): a scan, only then.
            match self.by_name.iter().find(|(_, u)| *u == uuid) {
                Some((other, _)) => {
                    let other = other.clone();
                    self.by_uuid.insert(uuid.clone(), other);
                }
                None => {
                    self.by_uuid.remove(uuid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u8) -> Uuid {
        Uuid::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap()
    }

    #[test]
    fn both_directions_follow_every_change() {
        let mut m = Names::default();
        m.insert("web1", u(1));
        m.insert("web2", u(2));
        assert_eq!(m.uuid("web1"), Some(&u(1)));
        assert_eq!(m.name(&u(2)).map(String::as_str), Some("web2"));
        assert_eq!(m.len(), 2);
        // web1 is now another VM: its old UUID names nothing.
        m.insert("web1", u(3));
        assert_eq!(m.name(&u(1)), None);
        assert_eq!(m.name(&u(3)).map(String::as_str), Some("web1"));
        // Two names, one UUID: the newer answers; removing it leaves the other.
        m.insert("copy", u(2));
        assert_eq!(m.name(&u(2)).map(String::as_str), Some("copy"));
        m.remove("copy");
        assert_eq!(m.name(&u(2)).map(String::as_str), Some("web2"));
        // Removing the one not answering changes nothing for the UUID.
        m.insert("copy", u(2));
        m.remove("web2");
        assert_eq!(m.name(&u(2)).map(String::as_str), Some("copy"));
        m.remove("copy");
        assert_eq!(m.name(&u(2)), None);
        m.remove("nothing");
        assert_eq!(m.len(), 1);
        assert_eq!(m.uuid("web1"), Some(&u(3)));
    }
}
