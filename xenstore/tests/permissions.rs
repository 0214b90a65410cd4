//! Guest permission enforcement and the channel node layout as guests and
//! the broker read it.

mod common;

use common::{Env, GUEST, OTHER};
use xenchan_xenstore::layout::{self, BackendChannel};
use xenchan_xenstore::{Access, Errno, Perms};

fn errno(r: Result<impl std::fmt::Debug, xenchan_xenstore::Error>) -> Errno {
    r.expect_err("expected a server error")
        .errno()
        .cloned()
        .expect("a server errno")
}

#[test]
fn guest_reads_its_channel_frontend() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    let f = layout::read_frontend(&mut g, "device/console/1").unwrap();
    assert_eq!(f.devid, 1);
    assert_eq!(f.name, "org.xenchan.0");
    assert_eq!(f.output.as_deref(), Some("chardev:libxl-channel1"));
    assert_eq!(f.console_type.as_deref(), Some("ioemu"));
    assert_eq!(
        f.backend.as_deref(),
        Some("/local/domain/0/backend/console/5/1")
    );
    assert_eq!(f.state, Some(4));
    assert_eq!(g.read_string("device/console/1/limit").unwrap(), "1048576");
    assert_eq!(g.read_string("device/console/1/backend-id").unwrap(), "0");
    assert_eq!(
        layout::read_channel_name(&mut g, "device/console/1").unwrap(),
        "org.xenchan.0"
    );
    // The frontend's backend directory is readable by the guest too.
    assert_eq!(
        g.read_string("/local/domain/0/backend/console/5/1/path")
            .unwrap(),
        "/run/xenchan/sockets/vm-five.sock"
    );
}

#[test]
fn guest_cannot_change_read_only_frontend_nodes() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    for key in ["name", "type", "output", "limit"] {
        let p = format!("device/console/1/{key}");
        assert_eq!(errno(g.write(&p, "evil")), Errno::EACCES, "{key}");
        assert_eq!(errno(g.rm(&p)), Errno::EACCES, "{key}");
        assert_eq!(
            errno(g.set_perms(&p, &Perms::guest_owned(GUEST))),
            Errno::EACCES,
            "{key}"
        );
    }
    assert_eq!(
        g.read_string("device/console/1/name").unwrap(),
        "org.xenchan.0"
    );
    // The guest's own protocol nodes are writable.
    g.write("device/console/1/state", "3").unwrap();
    // Its home, device dir and the backend are not.
    assert_eq!(errno(g.write("name", "renamed")), Errno::EACCES);
    assert_eq!(
        errno(g.write("device/console/9/name", "fake")),
        Errno::EACCES
    );
    assert_eq!(
        errno(g.write("/local/domain/0/backend/console/5/1/path", "/x")),
        Errno::EACCES
    );
    assert_eq!(
        errno(g.rm("/local/domain/0/backend/console/5/1")),
        Errno::EACCES
    );
}

#[test]
fn guest_cannot_read_or_write_other_domains() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    assert_eq!(errno(g.read("/local/domain/6/name")), Errno::EACCES);
    assert_eq!(errno(g.directory("/local/domain/6")), Errno::EACCES);
    assert_eq!(errno(g.write("/local/domain/6/data/x", "1")), Errno::EACCES);
    // Existence of other domains' nodes does not leak: a missing node is EACCES too.
    assert_eq!(errno(g.read("/local/domain/6/no-such-node")), Errno::EACCES);
    assert_eq!(errno(g.read("/local/domain/0/name")), Errno::EACCES);
    assert_eq!(errno(g.write("/tool/x", "1")), Errno::EACCES);
    // Domain 6 is likewise confined.
    let mut o = env.guest(OTHER);
    assert_eq!(
        errno(o.read("/local/domain/5/device/console/1/name")),
        Errno::EACCES
    );
    // While a missing node in its own area is ENOENT.
    assert_eq!(errno(g.read("data/nothing")), Errno::ENOENT);
}

#[test]
fn guest_owns_what_it_creates() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    g.write("data/agent/version", "1").unwrap();
    let perms = g.get_perms("data/agent/version").unwrap();
    assert_eq!(perms.owner(), GUEST);
    // It may open its node to dom0 read/write but may not give it away.
    g.set_perms(
        "data/agent",
        &Perms::owned_by(GUEST, Access::None).with(0, Access::Both),
    )
    .unwrap();
    assert_eq!(
        errno(g.set_perms("data/agent", &Perms::owned_by(OTHER, Access::Both))),
        Errno::EACCES
    );
    g.rm("data/agent").unwrap();
}

#[test]
fn guest_node_quota() {
    let dir = tempfile::tempdir().unwrap();
    let server = xenchan_xenstore::server::Server::with_limits(xenchan_xenstore::server::Limits {
        nodes_per_domain: 5,
        ..Default::default()
    });
    server.introduce_domain(GUEST, "q", common::UUID).unwrap();
    let _l = server.listen(dir.path().join("g.sock"), GUEST).unwrap();
    let mut g = xenchan_xenstore::Client::connect_unix(dir.path().join("g.sock")).unwrap();
    // `data` itself is guest-owned and counts.
    for i in 0..4 {
        g.write(&format!("data/{i}"), "").unwrap();
    }
    assert_eq!(errno(g.write("data/overflow", "")), Errno::ENOSPC);
}

#[test]
fn broker_discovers_channel_backends() {
    let env = Env::with_guests();
    env.server
        .add_channel(
            OTHER,
            1,
            "org.xenchan.0",
            "/run/xenchan/sockets/vm-six.sock",
        )
        .unwrap();
    env.server
        .add_channel(GUEST, 2, "second", "/run/two.sock")
        .unwrap();
    // A primary console backend (no name) is not a channel.
    env.server
        .write("/local/domain/0/backend/console/5/0/state", "4", None)
        .unwrap();
    let mut d = env.dom0();
    let found = layout::list_backends(&mut d).unwrap();
    let summary: Vec<(u32, u32, &str, Option<&str>)> = found
        .iter()
        .map(|b: &BackendChannel| (b.domid, b.devid, b.name.as_str(), b.path.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                5,
                1,
                "org.xenchan.0",
                Some("/run/xenchan/sockets/vm-five.sock")
            ),
            (5, 2, "second", Some("/run/two.sock")),
            (
                6,
                1,
                "org.xenchan.0",
                Some("/run/xenchan/sockets/vm-six.sock")
            ),
        ]
    );
    let b = &found[0];
    assert_eq!(b.connection.as_deref(), Some("socket"));
    assert_eq!(
        b.frontend.as_deref(),
        Some("/local/domain/5/device/console/1")
    );
    assert_eq!(b.hotplug_status.as_deref(), Some("connected"));
    assert_eq!(
        d.read_string("/local/domain/0/backend/console/5/1/frontend-id")
            .unwrap(),
        "5"
    );
}

#[test]
fn channel_node_set_is_exact() {
    let env = Env::with_guests();
    let mut d = env.dom0();
    let mut front = d.directory("/local/domain/5/device/console/1").unwrap();
    front.sort();
    assert_eq!(
        front,
        [
            "backend",
            "backend-id",
            "limit",
            "name",
            "output",
            "state",
            "type"
        ]
    );
    let mut back = d.directory("/local/domain/0/backend/console/5/1").unwrap();
    back.sort();
    assert_eq!(
        back,
        [
            "connection",
            "frontend",
            "frontend-id",
            "hotplug-status",
            "name",
            "path",
            "state"
        ]
    );
    assert_eq!(
        d.get_perms("/local/domain/5/device/console/1")
            .unwrap()
            .to_string(),
        "n5,r0"
    );
    assert_eq!(
        d.get_perms("/local/domain/5/device/console/1/name")
            .unwrap()
            .to_string(),
        "n0,r5"
    );
    assert_eq!(
        d.get_perms("/local/domain/5/device/console/1/state")
            .unwrap()
            .to_string(),
        "n5,r0"
    );
    assert_eq!(
        d.get_perms("/local/domain/0/backend/console/5/1/path")
            .unwrap()
            .to_string(),
        "n0,r5"
    );
}

#[test]
fn release_removes_backends_and_channel_needs_a_domain() {
    let env = Env::with_guests();
    env.server.release_domain(GUEST).unwrap();
    let mut d = env.dom0();
    assert!(!d.exists("/local/domain/0/backend/console/5").unwrap());
    assert!(!d.exists("/local/domain/5").unwrap());
    let err = env
        .server
        .add_channel(GUEST, 1, "x", "/run/x.sock")
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        env.server
            .add_channel(OTHER, 0, "primary", "/run/x.sock")
            .is_err()
    );
    assert!(env.server.release_domain(GUEST).unwrap_err().is_not_found());
}

#[test]
fn guest_may_query_domains() {
    let env = Env::with_guests();
    let mut g = env.guest(GUEST);
    assert!(g.is_domain_introduced(OTHER).unwrap());
    assert_eq!(g.get_domain_path(OTHER).unwrap(), "/local/domain/6");
}
