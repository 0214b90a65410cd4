//! Transactions: isolation, commit, abort, conflicts and retries.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{Env, ev, next_event, no_event};
use xenchan_xenstore::Errno;

#[test]
fn writes_are_invisible_until_commit() {
    let env = Env::new();
    let mut a = env.dom0();
    let mut b = env.dom0();
    b.watch("/t", "w").unwrap();
    next_event(&mut b);
    let mut tx = a.begin().unwrap();
    tx.write("/t/x", "1").unwrap();
    tx.write("/t/y", "2").unwrap();
    assert_eq!(tx.read_string("/t/x").unwrap(), "1");
    assert!(b.read("/t/x").unwrap_err().is_not_found());
    no_event(&mut b);
    tx.commit().unwrap();
    assert_eq!(b.read_string("/t/y").unwrap(), "2");
    // Watches fire only on commit.
    let mut got = vec![next_event(&mut b), next_event(&mut b)];
    got.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(got, vec![ev("/t/x", "w"), ev("/t/y", "w")]);
}

#[test]
fn abort_and_drop_discard_changes() {
    let env = Env::new();
    let mut a = env.dom0();
    let mut tx = a.begin().unwrap();
    tx.write("/ab/x", "1").unwrap();
    tx.abort().unwrap();
    assert!(!a.exists("/ab/x").unwrap());
    {
        let mut tx = a.begin().unwrap();
        tx.write("/ab/y", "1").unwrap();
        // dropped here without commit
    }
    assert!(!a.exists("/ab/y").unwrap());
}

#[test]
fn snapshot_reads_ignore_later_changes() {
    let env = Env::new();
    let mut a = env.dom0();
    let mut b = env.dom0();
    a.write("/s", "old").unwrap();
    let mut tx = a.begin().unwrap();
    b.write("/s", "new").unwrap();
    assert_eq!(tx.read_string("/s").unwrap(), "old");
    // The intervening write makes the commit conflict.
    assert_eq!(tx.commit().unwrap_err().errno(), Some(&Errno::EAGAIN));
    assert_eq!(a.read_string("/s").unwrap(), "new");
}

#[test]
fn conflicting_commit_is_eagain_and_leaves_tree_untouched() {
    let env = Env::new();
    let mut a = env.dom0();
    let mut b = env.dom0();
    let mut tx = a.begin().unwrap();
    tx.write("/c/mine", "1").unwrap();
    b.write("/c/theirs", "1").unwrap();
    let err = tx.commit().unwrap_err();
    assert!(err.is_again(), "{err:?}");
    assert!(!b.exists("/c/mine").unwrap());
}

#[test]
fn transaction_helper_retries_on_conflict() {
    let env = Env::new();
    let mut a = env.dom0();
    let mut b = env.dom0();
    a.write("/counter", "0").unwrap();
    let attempts = AtomicU32::new(0);
    a.transaction(|tx| {
        let n: u32 = tx.read_string("/counter")?.parse().unwrap();
        // Sabotage the first two attempts with a concurrent write.
        if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
            b.write("/noise", "x").unwrap();
        }
        tx.write("/counter", (n + 1).to_string())
    })
    .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(a.read_string("/counter").unwrap(), "1");
}

#[test]
fn concurrent_increments_do_not_lose_updates() {
    let env = Env::new();
    env.dom0().write("/inc", "0").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut c = env.dom0();
            c.set_transaction_retries(1000);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    c.transaction(|tx| {
                        let n: u32 = tx.read_string("/inc")?.parse().unwrap();
                        tx.write("/inc", (n + 1).to_string())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(env.dom0().read_string("/inc").unwrap(), "100");
}

#[test]
fn error_in_body_aborts() {
    let env = Env::new();
    let mut a = env.dom0();
    let err = a
        .transaction(|tx| {
            tx.write("/e/x", "1")?;
            tx.read("/e/missing")
        })
        .unwrap_err();
    assert!(err.is_not_found());
    assert!(!a.exists("/e/x").unwrap());
}

#[test]
fn transaction_rm_mkdir_directory_and_perms() {
    let env = Env::new();
    let mut a = env.dom0();
    a.write("/tr/old/x", "1").unwrap();
    a.transaction(|tx| {
        tx.rm("/tr/old")?;
        tx.mkdir("/tr/new")?;
        assert_eq!(tx.directory("/tr")?, vec!["new"]);
        tx.set_perms("/tr/new", &xenchan_xenstore::Perms::read_only_to(4))?;
        assert_eq!(tx.get_perms("/tr/new")?.to_string(), "n0,r4");
        Ok(())
    })
    .unwrap();
    assert_eq!(a.directory("/tr").unwrap(), vec!["new"]);
}
