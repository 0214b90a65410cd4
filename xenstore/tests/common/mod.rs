//! Shared set-up: a server in a temp dir with a dom0 socket and guest sockets.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use xenchan_xenstore::server::{ListenerHandle, Server};
use xenchan_xenstore::{Client, WatchEvent};

pub const GUEST: u32 = 5;
pub const OTHER: u32 = 6;
pub const UUID: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_UUID: &str = "66666666-2222-3333-4444-555555555555";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub dom0: ListenerHandle,
    pub listeners: Vec<ListenerHandle>,
}

impl Env {
    /// A server with a dom0 socket only.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::new();
        let dom0 = server.listen(dir.path().join("dom0.sock"), 0).unwrap();
        Env {
            dir,
            server,
            dom0,
            listeners: Vec::new(),
        }
    }

    /// Plus guests GUEST and OTHER introduced, each with a socket playing
    /// its /dev/xen/xenbus, and a channel on GUEST's console 1.
    pub fn with_guests() -> Env {
        let mut env = Env::new();
        env.server.introduce_domain(GUEST, "vm-five", UUID).unwrap();
        env.server
            .introduce_domain(OTHER, "vm-six", OTHER_UUID)
            .unwrap();
        env.server
            .add_channel(
                GUEST,
                1,
                "org.xenchan.0",
                "/run/xenchan/sockets/vm-five.sock",
            )
            .unwrap();
        for domid in [GUEST, OTHER] {
            let l = env.server.listen(env.sock(domid), domid).unwrap();
            env.listeners.push(l);
        }
        env
    }

    pub fn sock(&self, domid: u32) -> PathBuf {
        if domid == 0 {
            self.dir.path().join("dom0.sock")
        } else {
            self.dir.path().join(format!("xenbus-{domid}.sock"))
        }
    }

    pub fn dom0(&self) -> Client {
        Client::connect_unix(self.sock(0))
            .unwrap()
            .with_timeout(Duration::from_secs(5))
    }

    pub fn guest(&self, domid: u32) -> Client {
        Client::connect_unix(self.sock(domid))
            .unwrap()
            .with_timeout(Duration::from_secs(5))
    }
}

/// The next event, failing the test if none comes within 5 s.
pub fn next_event(c: &mut Client) -> WatchEvent {
    c.wait_event(Duration::from_secs(5))
        .unwrap()
        .expect("expected a watch event within 5 s")
}

/// Asserts no event arrives within a short grace period.
pub fn no_event(c: &mut Client) {
    let got = c.wait_event(Duration::from_millis(150)).unwrap();
    assert_eq!(got, None, "unexpected watch event");
}

pub fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.to_owned(),
        token: token.to_owned(),
    }
}
