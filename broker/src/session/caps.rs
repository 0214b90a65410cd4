//! One shared copy of each set of capabilities agents announce.
//!
//! Agents baked into the same template announce the same capabilities, and a session
//! keeps them for as long as the guest runs (its offer is filtered for them). A
//! `BTreeMap` of a handful of kinds is about 600 bytes with its strings: per session,
//! twice (the session's and its offer's), that was a tenth of a configured domain's
//! memory (a heap profile of the scale benchmark, docs/PERFORMANCE.md). Sessions now
//! share one `Arc` per distinct set.
//!
//! The table is bounded: a guest can announce any set it likes, so past [`MAX_SETS`]
//! live sets a new one is simply not shared (that session holds its own copy, as before).

use std::sync::{Arc, Mutex, PoisonError, Weak};

use xenchan_protocol::config::Capabilities;

/// Distinct sets shared at most (a fleet runs a few agent versions at a time).
const MAX_SETS: usize = 64;

static SETS: Mutex<Vec<Weak<Capabilities>>> = Mutex::new(Vec::new());

/// `caps` as a shared copy: the one already held by another session when the sets are
/// equal.
pub(super) fn intern(caps: Capabilities) -> Arc<Capabilities> {
    intern_in(
        &mut SETS.lock().unwrap_or_else(PoisonError::into_inner),
        caps,
    )
}

fn intern_in(sets: &mut Vec<Weak<Capabilities>>, caps: Capabilities) -> Arc<Capabilities> {
    if let Some(shared) = sets.iter().filter_map(Weak::upgrade).find(|s| **s == caps) {
        return shared;
    }
    if sets.len() >= MAX_SETS {
        // Sets whose last session ended make room.
        sets.retain(|w| w.strong_count() > 0);
    }
    let shared = Arc::new(caps);
    if sets.len() < MAX_SETS {
        sets.push(Arc::downgrade(&shared));
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_share_one_copy_and_a_full_table_shares_no_more() {
        let mut sets = Vec::new();
        let a = intern_in(&mut sets, Capabilities::v1());
        let b = intern_in(&mut sets, Capabilities::v1());
        assert!(Arc::ptr_eq(&a, &b));
        let other = intern_in(&mut sets, Capabilities::v1().with("time", 1));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(sets.len(), 2);

        // A guest announcing a new set each time fills the table; its sets are not
        // kept once their sessions end, and the table never grows past its bound.
        let mut held = Vec::new();
        for i in 0..(2 * MAX_SETS as u32) {
            held.push(intern_in(&mut sets, Capabilities::v1().with("x", i)));
            assert!(sets.len() <= MAX_SETS);
        }
        // The first sets still share.
        assert!(Arc::ptr_eq(&a, &intern_in(&mut sets, Capabilities::v1())));
        // Once those sessions are gone, their entries make room for new sets.
        held.clear();
        let fresh = intern_in(&mut sets, Capabilities::v1().with("y", 1));
        assert!(Arc::ptr_eq(
            &fresh,
            &intern_in(&mut sets, Capabilities::v1().with("y", 1))
        ));
        assert!(sets.len() <= 3);
    }
}
