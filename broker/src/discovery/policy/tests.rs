//! Every source's rules, on plain values.

use super::*;

fn ep(source: Source, path: &str, domid: Option<u32>) -> Endpoint {
    Endpoint {
        source,
        path: PathBuf::from(path),
        domid,
    }
}

#[test]
fn attach_rules() {
    let dir = ep(Source::Dir, "/run/xenchan/web1.sock", None);
    let prepared = ep(Source::Prepared, "/srv/web1.sock", None);
    let xs5 = ep(Source::Xenstore, "/run/qemu/5.sock", Some(5));
    let xs9 = ep(Source::Xenstore, "/run/qemu/9.sock", Some(9));
    let listen = ep(Source::Listen, "/run/xenchan/web1.sock", None);
    let none = Attached::default();
    #[rustfmt::skip]
    let table: Vec<(&str, Attached<'_>, &Endpoint, bool, Attach)> = vec![
        ("same socket again", Attached { current: Some(&dir), ..none }, &dir, false, Attach::Already),
        ("a new socket in the folder", none, &dir, true, Attach::Start),
        ("a rescan finds a socket", none, &dir, false, Attach::Start),
        ("a prepared path wins over the folder",
            Attached { current: Some(&prepared), ..none }, &dir, true, Attach::Refuse),
        ("released: a rescan does not attach the old socket",
            Attached { stopped: true, ..none }, &dir, false, Attach::Refuse),
        ("released: a socket created again does",
            Attached { stopped: true, ..none }, &dir, true, Attach::Start),
        ("a prepare replaces the folder's socket",
            Attached { current: Some(&dir), ..none }, &prepared, true, Attach::Start),
        ("a prepare attaches even after a release",
            Attached { stopped: true, ..none }, &prepared, false, Attach::Start),
        ("xenstore: a new domain", none, &xs5, false, Attach::Start),
        ("xenstore: the released domid is not attached again",
            Attached { released_domid: Some(5), ..none }, &xs5, false, Attach::Refuse),
        ("xenstore: a new domid after a release is",
            Attached { released_domid: Some(5), ..none }, &xs9, false, Attach::Start),
        ("xenstore: a new domid restarts the session",
            Attached { current: Some(&xs5), ..none }, &xs9, false, Attach::Start),
        ("listen: always", Attached { stopped: true, ..none }, &listen, false, Attach::Start),
        ("listen: same socket", Attached { current: Some(&listen), ..none }, &listen, true,
            Attach::Already),
    ];
    for (why, now, ep, fresh, expected) in table {
        assert_eq!(attach(&now, ep, fresh), expected, "{why}");
    }
}

#[test]
fn prepare_rules() {
    let p = || Some(PathBuf::from("/srv/web1.sock"));
    let table = [
        (Sources::Listen, None, None, OnPrepare::Listen),
        (Sources::Listen, p(), None, OnPrepare::Listen),
        (
            Sources::SocketDir,
            p(),
            None,
            OnPrepare::Connect(p().unwrap()),
        ),
        (
            Sources::SocketDir,
            p(),
            Some(Source::Dir),
            OnPrepare::Connect(p().unwrap()),
        ),
        (
            Sources::SocketDir,
            None,
            Some(Source::Prepared),
            OnPrepare::Detach,
        ),
        (
            Sources::SocketDir,
            None,
            Some(Source::Dir),
            OnPrepare::Nothing,
        ),
        (Sources::SocketDir, None, None, OnPrepare::Nothing),
        (Sources::Xenstore, p(), None, OnPrepare::Nothing),
    ];
    for (sources, path, current, expected) in table {
        assert_eq!(
            on_prepare(sources, path.clone(), current),
            expected,
            "{sources:?} {path:?} {current:?}"
        );
    }
}

#[test]
fn resume_rules() {
    let p = || Some(PathBuf::from("/srv/web1.sock"));
    let configured = Stored {
        has_config: true,
        ..Stored::default()
    };
    let running = Stored {
        running: true,
        ..Stored::default()
    };
    let running_at = Stored {
        running: true,
        channel_path: p(),
        ..Stored::default()
    };
    let released = Stored {
        has_config: true,
        stopped: true,
        channel_path: p(),
        ..Stored::default()
    };
    let table = [
        (Sources::Listen, &configured, OnPrepare::Listen),
        (Sources::Listen, &running, OnPrepare::Listen),
        (Sources::Listen, &released, OnPrepare::Nothing),
        (Sources::Listen, &Stored::default(), OnPrepare::Nothing),
        (
            Sources::SocketDir,
            &running_at,
            OnPrepare::Connect(p().unwrap()),
        ),
        (Sources::SocketDir, &running, OnPrepare::Nothing),
        (Sources::SocketDir, &configured, OnPrepare::Nothing),
        (Sources::SocketDir, &released, OnPrepare::Nothing),
        (Sources::Xenstore, &running_at, OnPrepare::Nothing),
    ];
    for (sources, stored, expected) in table {
        assert_eq!(
            on_resume(sources, stored),
            expected,
            "{sources:?} {stored:?}"
        );
    }
}

#[test]
fn release_lingering() {
    assert!(lingers_after_release(Sources::SocketDir, || true, None));
    assert!(!lingers_after_release(
        Sources::SocketDir,
        || false,
        Some(3)
    ));
    assert!(lingers_after_release(Sources::Xenstore, || false, Some(3)));
    assert!(!lingers_after_release(Sources::Xenstore, || true, None));
    assert!(!lingers_after_release(Sources::Listen, || true, Some(3)));
    assert!(!lingers_after_release(
        Sources::Listen,
        || panic!("not asked"),
        None
    ));
    assert_eq!(
        Sources::of(Mode::Listen, Discovery::Xenstore),
        Sources::Listen
    );
    assert_eq!(
        Sources::of(Mode::Connect, Discovery::SocketDir),
        Sources::SocketDir
    );
    assert_eq!(
        Sources::of(Mode::Connect, Discovery::Xenstore),
        Sources::Xenstore
    );
}
