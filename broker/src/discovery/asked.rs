//! The domains a prepare asks discovery to look at again.
//!
//! A prepare may make a socket (or a xenstore backend) that is already there attachable.
//! Discovery used to answer each such request with a rescan of everything it knows: a
//! readdir of the socket folder and a pass over every domain, per prepare, which made
//! starting N domains cost O(N²) (measured: the rescans were most of the broker's CPU
//! while 10,000 domains were prepared). Now each prepare names its domain and discovery
//! looks at those only; past [`MAX_NAMED`] waiting names it rescans once instead.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Names kept before one rescan becomes cheaper than looking at each.
pub const MAX_NAMED: usize = 4096;

/// What discovery should look at again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// These domains (sorted, no repeats; empty when a wake-up found nothing new).
    Names(Vec<String>),
    /// Everything: too many names were waiting.
    All,
}

/// The requests waiting for discovery, and its wake-up.
#[derive(Debug, Default)]
pub struct Rediscover {
    asked: Mutex<Asked>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Asked {
    names: BTreeSet<String>,
    all: bool,
}

impl Rediscover {
    /// Asks discovery to look at `name` again (never waits).
    pub fn ask(&self, name: &str) {
        {
            let mut a = self.lock();
            if !a.all {
                if a.names.len() >= MAX_NAMED {
                    a.all = true;
                    a.names.clear();
                } else {
                    a.names.insert(name.to_string());
                }
            }
        }
        // A permit is kept when discovery is busy, so no request is missed.
        self.wake.notify_one();
    }

    /// Waits for a request and takes everything asked so far.
    pub async fn wanted(&self) -> Wanted {
        self.wake.notified().await;
        self.take()
    }

    fn take(&self) -> Wanted {
        let mut a = self.lock();
        if std::mem::take(&mut a.all) {
            a.names.clear();
            return Wanted::All;
        }
        Wanted::Names(std::mem::take(&mut a.names).into_iter().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Asked> {
        // Only sets of names behind it: a panic elsewhere leaves them usable.
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_taken_once_and_too_many_become_one_rescan() {
        let r = Rediscover::default();
        r.ask("b");
        r.ask("a");
        r.ask("b");
        assert_eq!(r.take(), Wanted::Names(vec!["a".into(), "b".into()]));
        assert_eq!(r.take(), Wanted::Names(vec![]), "taken already");
        for i in 0..=MAX_NAMED {
            r.ask(&format!("d{i}"));
        }
        assert_eq!(r.take(), Wanted::All);
        r.ask("c");
        assert_eq!(r.take(), Wanted::Names(vec!["c".into()]));
    }

    #[tokio::test]
    async fn a_request_made_while_discovery_is_busy_wakes_it_later() {
        let r = Rediscover::default();
        r.ask("early"); // nobody waits yet: the permit is kept
        assert_eq!(r.wanted().await, Wanted::Names(vec!["early".into()]));
        let waiting = r.wanted();
        r.ask("late");
        assert_eq!(waiting.await, Wanted::Names(vec!["late".into()]));
    }
}
