//! Watches: first event on registration, descendants, removal, unwatch,
//! special domain events, events interleaved with replies.

mod common;

use std::time::{Duration, Instant};

use common::{Env, GUEST, OTHER, ev, next_event, no_event};
use xenchan_xenstore::Errno;

#[test]
fn watch_fires_once_on_registration() {
    let env = Env::new();
    let mut c = env.dom0();
    c.watch("/w", "tok").unwrap();
    assert_eq!(next_event(&mut c), ev("/w", "tok"));
    no_event(&mut c);
}

#[test]
fn watch_fires_for_path_and_descendants_not_siblings() {
    let env = Env::new();
    let mut w = env.dom0();
    let mut c = env.dom0();
    w.watch("/w", "t").unwrap();
    next_event(&mut w);
    c.write("/w/a/b", "1").unwrap();
    assert_eq!(next_event(&mut w), ev("/w/a/b", "t"));
    c.write("/w", "x").unwrap();
    assert_eq!(next_event(&mut w), ev("/w", "t"));
    c.write("/wx", "sibling with a common prefix").unwrap();
    c.write("/other", "1").unwrap();
    no_event(&mut w);
}

#[test]
fn write_fires_watches_on_ancestors() {
    let env = Env::new();
    let mut w = env.dom0();
    w.watch("/", "root").unwrap();
    w.watch("/a", "a").unwrap();
    assert_eq!(next_event(&mut w), ev("/", "root"));
    assert_eq!(next_event(&mut w), ev("/a", "a"));
    env.dom0().write("/a/b/c", "v").unwrap();
    let mut got = vec![next_event(&mut w), next_event(&mut w)];
    got.sort_by(|x, y| x.token.cmp(&y.token));
    assert_eq!(got, vec![ev("/a/b/c", "a"), ev("/a/b/c", "root")]);
}

#[test]
fn rm_fires_on_path_ancestors_and_watched_descendants() {
    let env = Env::new();
    let mut c = env.dom0();
    c.write("/r/x/y", "1").unwrap();
    let mut w = env.dom0();
    w.watch("/r", "up").unwrap();
    w.watch("/r/x/y", "down").unwrap();
    w.watch("/r/x/never-existed", "ghost").unwrap();
    for _ in 0..3 {
        next_event(&mut w);
    }
    c.rm("/r/x").unwrap();
    let mut got = vec![next_event(&mut w), next_event(&mut w)];
    got.sort_by(|x, y| x.token.cmp(&y.token));
    // A watch below the removed node fires with its own path.
    assert_eq!(got, vec![ev("/r/x/y", "down"), ev("/r/x", "up")]);
    no_event(&mut w);
}

#[test]
fn unwatch_stops_events_and_unknown_unwatch_is_enoent() {
    let env = Env::new();
    let mut w = env.dom0();
    let mut c = env.dom0();
    w.watch("/u", "t").unwrap();
    next_event(&mut w);
    c.write("/u/1", "").unwrap();
    assert_eq!(next_event(&mut w), ev("/u/1", "t"));
    w.unwatch("/u", "t").unwrap();
    c.write("/u/2", "").unwrap();
    no_event(&mut w);
    assert_eq!(
        w.unwatch("/u", "t").unwrap_err().errno(),
        Some(&Errno::ENOENT)
    );
}

#[test]
fn unwatch_drops_queued_events_of_that_watch() {
    let env = Env::new();
    let mut w = env.dom0();
    w.watch("/q", "gone").unwrap();
    w.watch("/k", "kept").unwrap();
    env.dom0().write("/q/1", "").unwrap();
    env.dom0().write("/k/1", "").unwrap();
    // A request makes the client read (and queue) whatever arrived first.
    std::thread::sleep(Duration::from_millis(100));
    w.read("/").unwrap();
    w.unwatch("/q", "gone").unwrap();
    let mut rest = Vec::new();
    while let Some(e) = w.wait_event(Duration::from_millis(150)).unwrap() {
        rest.push(e);
    }
    assert!(rest.iter().all(|e| e.token == "kept"), "{rest:?}");
    assert!(rest.contains(&ev("/k/1", "kept")));
}

#[test]
fn duplicate_watch_is_eexist_and_same_path_other_token_is_fine() {
    let env = Env::new();
    let mut w = env.dom0();
    w.watch("/d", "a").unwrap();
    assert_eq!(
        w.watch("/d", "a").unwrap_err().errno(),
        Some(&Errno::EEXIST)
    );
    w.watch("/d", "b").unwrap();
}

#[test]
fn events_arriving_between_request_and_reply_are_queued() {
    let env = Env::new();
    let mut w = env.dom0();
    w.watch("/busy", "t").unwrap();
    // Other clients write while w keeps doing requests: every event must end
    // up in w's queue, none may be mistaken for a reply.
    let writer = {
        let mut c = env.dom0();
        std::thread::spawn(move || {
            for i in 0..100 {
                c.write(&format!("/busy/{i}"), "v").unwrap();
            }
        })
    };
    for _ in 0..200 {
        assert_eq!(w.read_string("/local/domain/0/name").unwrap(), "Domain-0");
    }
    writer.join().unwrap();
    let mut seen = Vec::new();
    while let Some(e) = w.wait_event(Duration::from_millis(300)).unwrap() {
        seen.push(e.path);
    }
    assert_eq!(seen.first().map(String::as_str), Some("/busy"));
    assert_eq!(seen.len(), 101, "first event plus 100 writes");
    assert_eq!(w.dropped_events(), 0);
}

#[test]
fn introduce_and_release_domain_fire_special_watches() {
    let env = Env::new();
    let mut w = env.dom0();
    w.watch("@introduceDomain", "in").unwrap();
    w.watch("@releaseDomain", "out").unwrap();
    assert_eq!(next_event(&mut w), ev("@introduceDomain", "in"));
    assert_eq!(next_event(&mut w), ev("@releaseDomain", "out"));
    env.server.introduce_domain(9, "vm9", common::UUID).unwrap();
    assert_eq!(next_event(&mut w), ev("@introduceDomain", "in"));
    assert!(w.exists("/local/domain/9/name").unwrap());
    env.server.release_domain(9).unwrap();
    assert_eq!(next_event(&mut w), ev("@releaseDomain", "out"));
    assert!(!w.exists("/local/domain/9").unwrap());
    assert!(!w.exists(&format!("/vm/{}", common::UUID)).unwrap());
    no_event(&mut w);
}

#[test]
fn guests_do_not_get_special_events_or_unreadable_paths() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    g.watch("@releaseDomain", "r").unwrap();
    g.watch("/local/domain", "all").unwrap();
    next_event(&mut g);
    next_event(&mut g);
    env.dom0().write("/local/domain/6/secret", "s").unwrap();
    env.server.release_domain(OTHER).unwrap();
    // Nothing about domain 6 (not readable by 5), no @releaseDomain.
    no_event(&mut g);
    // But its own readable nodes do fire.
    env.dom0()
        .write("/local/domain/5/device/console/1/state", "5")
        .unwrap();
    assert_eq!(
        next_event(&mut g),
        ev("/local/domain/5/device/console/1/state", "all")
    );
}

#[test]
fn relative_watch_reports_relative_paths() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    g.watch("device/console", "c").unwrap();
    assert_eq!(next_event(&mut g), ev("device/console", "c"));
    env.server
        .add_channel(GUEST, 2, "second", "/run/x.sock")
        .unwrap();
    let first = next_event(&mut g);
    assert!(first.path.starts_with("device/console/2"), "{first:?}");
}

#[test]
fn add_channel_is_seen_whole_by_the_first_event() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    g.watch("device/console", "c").unwrap();
    next_event(&mut g);
    env.server
        .add_channel(GUEST, 3, "late", "/run/late.sock")
        .unwrap();
    next_event(&mut g);
    // By the time any event arrives every node is there.
    assert_eq!(g.read_string("device/console/3/name").unwrap(), "late");
    assert_eq!(
        g.read_string("device/console/3/output").unwrap(),
        "chardev:libxl-channel3"
    );
}

#[test]
fn wait_event_zero_timeout_does_not_block() {
    let env = Env::new();
    let mut c = env.dom0();
    let start = Instant::now();
    assert_eq!(c.wait_event(Duration::ZERO).unwrap(), None);
    assert!(start.elapsed() < Duration::from_millis(100));
}
