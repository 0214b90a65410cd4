//! The reads of a PUT's lease check, kept for the write that follows.
//!
//! A PUT first checks that its leases are free (before its hooks run) and then writes
//! (`put_domain`). The check reads, in one etcd round trip, everything the write is
//! planned on ([`xenchan_cluster::Cluster::read_domain`]); the write then goes straight
//! out, guarded by what was read, instead of reading it all again. A read that is stale by
//! then only fails its guard, and the write plans again on etcd's answer in the same round
//! trip: correctness never rests on what is kept here, only the number of round trips.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xenchan_cluster::{ClusterError, DomainRead, Uuid};

use super::{EtcdStore, store_error};
use crate::leases::{Lease, LeaseConflict};
use crate::store::StoreError;
use crate::store::etcd::lease_key;

/// Most reads kept at once: one per PUT between its check and its write (16 API
/// requests in flight, a bulk PUT's items); a check whose write never comes (hooks
/// refused it) leaves one behind, and reaching the bound drops them all.
const MAX_KEPT: usize = 4096;

/// A read older than this is not used: by then it is most likely stale, and a fresh
/// round trip costs no more than a failed guard.
const FRESH: Duration = Duration::from_secs(5);

/// The reads kept, by domain name.
#[derive(Debug, Default)]
pub(super) struct Prefetched(Mutex<HashMap<String, (Instant, DomainRead)>>);

impl Prefetched {
    /// Keeps the read of `name`'s lease check.
    pub(super) fn keep(&self, name: &str, read: DomainRead) {
        let mut m = self.0.lock().expect("prefetched reads");
        if m.len() >= MAX_KEPT && !m.contains_key(name) {
            m.clear();
        }
        m.insert(name.to_string(), (Instant::now(), read));
    }

    /// The read kept for `name`, if it is recent and of VM `uuid`; taken (a read plans
    /// one write).
    pub(super) fn take(&self, name: &str, uuid: &Uuid) -> Option<DomainRead> {
        let (at, read) = self.0.lock().expect("prefetched reads").remove(name)?;
        (at.elapsed() < FRESH && read.uuid() == uuid).then_some(read)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("prefetched reads").len()
    }
}

impl EtcdStore {
    /// The lease check of a PUT (before its hooks run): who holds its leases, read in one
    /// round trip that is kept for the write.
    pub(super) async fn conflict(
        &self,
        name: &str,
        wanted: &[Lease],
    ) -> Result<Option<LeaseConflict>, StoreError> {
        // Without a known UUID the holder may be this very VM (put through another
        // broker): the transaction in `put` decides then.
        let Some(uuid) = self.uuid_of(name) else {
            return Ok(None);
        };
        // One read for every lease (and what the write plans on: kept for it).
        let keys: Vec<String> = wanted.iter().map(lease_key).collect();
        let read = match self.cluster()?.read_domain(&uuid, &keys).await {
            Ok(r) => r,
            // Unusable leases: the write refuses them, naming the field.
            Err(ClusterError::Invalid(_)) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let held = wanted
            .iter()
            .zip(&keys)
            .find_map(|(l, k)| read.held_by_other(k).map(|h| (l.clone(), h.to_string())));
        if let Some((lease, holder)) = held {
            let holder = self.holder_name(&holder).await;
            return Ok(Some(LeaseConflict { lease, holder }));
        }
        self.prefetched.keep(name, read);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_taken_once_by_the_same_vm_and_the_set_is_bounded() {
        let u = Uuid::parse("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10").unwrap();
        let other = Uuid::parse("00000000-0000-0000-0000-000000000001").unwrap();
        let p = Prefetched::default();
        p.keep("web1", DomainRead::nothing_for(&u));
        assert!(p.take("web1", &other).is_none(), "another VM's read");
        assert!(p.take("web1", &u).is_none(), "taken (and dropped) already");
        p.keep("web1", DomainRead::nothing_for(&u));
        assert!(p.take("web2", &u).is_none());
        assert_eq!(
            p.take("web1", &u).map(|r| r.uuid().clone()),
            Some(u.clone())
        );
        for i in 0..MAX_KEPT {
            p.keep(&format!("d{i}"), DomainRead::nothing_for(&u));
        }
        assert_eq!(p.len(), MAX_KEPT);
        p.keep("one-more", DomainRead::nothing_for(&u));
        assert_eq!(p.len(), 1, "reaching the bound drops the leftovers");
    }
}
