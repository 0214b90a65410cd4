//! One lock per domain name for the API's writes (issue 16).
//!
//! A write's durable commit and its in-memory update happen under the domain's lock, so
//! the registry ends in the order the store committed. Only writes to the *same* domain
//! need that order: whatever two domains must agree on (leases, `limits.max_domains`) the
//! store decides inside its own transaction. So PUTs for different domains run in
//! parallel, and their commits reach the store thread together and share a group commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// The per-domain locks. An entry exists only while someone holds or waits for it.
#[derive(Debug, Default)]
pub struct DomainLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one domain's lock; released on drop.
#[derive(Debug)]
pub struct DomainGuard<'a> {
    // Fields drop in this order: the lock is released before the entry is looked at.
    _guard: OwnedMutexGuard<()>,
    _entry: Entry<'a>,
}

/// A holder's or waiter's share of a map entry: the last one out removes the entry, or
/// the map would grow with every name ever written (a waiter may give up: the request
/// deadline cancels it).
#[derive(Debug)]
struct Entry<'a> {
    locks: &'a DomainLocks,
    name: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        drop(self.lock.take());
        // Under the map's lock nobody can clone the entry now, so a count of one (the
        // map's) means no holder and no waiter.
        if map
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.name);
        }
    }
}

impl DomainLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        // The map is consistent after any panic (an insert or a remove either happened or
        // not), so poisoning is ignored.
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the lock of `name`. Never held while a hook runs.
    pub async fn lock(&self, name: &str) -> DomainGuard<'_> {
        let lock = Arc::clone(self.map().entry(name.to_string()).or_default());
        let entry = Entry {
            locks: self,
            name: name.to_string(),
            lock: Some(Arc::clone(&lock)),
        };
        DomainGuard {
            _guard: lock.lock_owned().await,
            _entry: entry,
        }
    }

    /// How many domains have an entry (held or waited for).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no domain's lock is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn other_domains_proceed_the_same_domain_waits() {
        let locks = DomainLocks::default();
        let a = locks.lock("a").await;
        // Another domain is not held up.
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b"))
            .await
            .expect("b is not serialised behind a");
        drop(b);
        // The same domain waits until the holder is done.
        let waiting = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(waiting.is_err(), "a second writer of a must wait");
        assert_eq!(locks.len(), 1, "b's entry is gone, a's stays while held");
        drop(a);
        assert!(
            locks.is_empty(),
            "a waiter that gave up leaves no entry behind"
        );
        let again = tokio::time::timeout(Duration::from_secs(1), locks.lock("a"))
            .await
            .expect("a is free again");
        drop(again);
        assert!(locks.is_empty(), "no entry without a holder");
    }
}
