//! `Client::open_device` over a real character device. A raw pty stands in
//! for `/dev/xen/xenbus`: its master end is relayed to the test server's
//! guest socket, just as the kernel relays xenbus to xenstored.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Env, GUEST, ev, next_event};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use xenchan_xenstore::Client;

struct Pty {
    master: File,
    // Held open so the pty stays alive while the client opens it by path.
    slave: File,
    path: PathBuf,
}

fn raw_pty() -> Option<Pty> {
    let made = openpty(None, None).and_then(|pty| {
        let mut t = tcgetattr(&pty.slave)?;
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t)?;
        let path = nix::unistd::ttyname(&pty.slave)?;
        Ok(Pty {
            master: File::from(pty.master),
            slave: File::from(pty.slave),
            path,
        })
    });
    match made {
        Ok(pty) => Some(pty),
        Err(e) => {
            eprintln!("SKIPPED: cannot set up a raw pty ({e}); device transport not checked");
            None
        }
    }
}

/// Copies bytes both ways until either side closes.
fn relay(master: File, sock: UnixStream) -> Vec<std::thread::JoinHandle<()>> {
    let mut m_in = master.try_clone().unwrap();
    let mut m_out = master;
    let mut s_in = sock.try_clone().unwrap();
    let mut s_out = sock;
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = m_in.read(&mut buf) {
            if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(std::net::Shutdown::Both);
    });
    let down = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s_in.read(&mut buf) {
            if n == 0 || m_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    vec![up, down]
}

#[test]
fn device_transport_round_trips_against_the_server() {
    let Some(pty) = raw_pty() else {
        return;
    };
    let env = Env::with_guests();
    let sock = UnixStream::connect(env.sock(GUEST)).unwrap();
    let threads = relay(pty.master, sock);

    let started = Instant::now();
    let mut c = Client::open_device(&pty.path)
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    // What the udev helper does: one read, quickly.
    assert_eq!(
        c.read_string("device/console/1/name").unwrap(),
        "org.xenchan.0"
    );
    eprintln!(
        "open + first read over the device took {:?}",
        started.elapsed()
    );

    c.write("data/over-device", "yes").unwrap();
    assert_eq!(
        env.server
            .read("/local/domain/5/data/over-device")
            .unwrap()
            .as_deref(),
        Some(&b"yes"[..])
    );
    c.watch("data", "d").unwrap();
    assert_eq!(next_event(&mut c), ev("data", "d"));
    env.dom0().write("/local/domain/5/data/x", "1").unwrap();
    assert_eq!(next_event(&mut c), ev("data/x", "d"));
    c.transaction(|tx| tx.write("data/tx", "1")).unwrap();
    assert_eq!(next_event(&mut c), ev("data/tx", "d"));

    // Closing the pty slave ends the relay; the server drops the guest connection.
    drop(c);
    drop(pty.slave);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn device_transport_times_out_when_nothing_answers() {
    let Some(pty) = raw_pty() else {
        return;
    };
    let mut c = Client::open_device(&pty.path)
        .unwrap()
        .with_timeout(Duration::from_millis(150));
    let start = Instant::now();
    let err = c.read("name").unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // The request did reach the "device" intact.
    let mut master = pty.master;
    let mut buf = [0u8; 64];
    let n = master.read(&mut buf).unwrap();
    let (msg, _) = xenchan_xenstore::wire::decode(&buf[..n]).unwrap().unwrap();
    assert_eq!(msg.op(), Some(xenchan_xenstore::wire::Op::Read));
    assert_eq!(msg.payload, b"name\0");
}

#[test]
fn open_picks_socket_or_device_like_libxenstore() {
    let env = Env::new();
    let mut c = Client::open(env.sock(0)).unwrap();
    assert_eq!(c.read_string("/local/domain/0/name").unwrap(), "Domain-0");
    let Some(pty) = raw_pty() else {
        return;
    };
    // A non-socket path is opened as a device (nothing answers on this one).
    let mut d = Client::open(&pty.path)
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    assert!(d.read("x").unwrap_err().is_timeout());
    drop(pty);
}
