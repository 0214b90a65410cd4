//! Hostile clients against the server, hostile or dead servers against the
//! client, raw wire checks, and clean shutdown.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::{Env, GUEST};
use xenchan_xenstore::wire::{self, Header, Message, Op};
use xenchan_xenstore::{Client, Error};

/// Sends one raw request and returns the reply (skipping watch events).
fn raw_call(s: &mut UnixStream, op: Op, req_id: u32, tx_id: u32, payload: &[u8]) -> Message {
    let msg = Message::new(op, req_id, tx_id, payload.to_vec()).unwrap();
    s.write_all(&msg.encode()).unwrap();
    loop {
        let m = raw_read(s).expect("a reply");
        if m.op() != Some(Op::WatchEvent) {
            return m;
        }
    }
}

fn raw_read(s: &mut UnixStream) -> Option<Message> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; wire::HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = Header::parse(&head);
    let mut payload = vec![0u8; h.payload_len().unwrap()];
    s.read_exact(&mut payload).ok()?;
    Some(Message { header: h, payload })
}

fn wait_for_connections(env: &Env, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.server.connection_count() != n {
        assert!(
            Instant::now() < deadline,
            "connection count stuck at {}",
            env.server.connection_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn huge_length_header_closes_only_that_connection() {
    let env = Env::new();
    let mut good = env.dom0();
    good.write("/alive", "1").unwrap();
    let mut bad = UnixStream::connect(env.sock(0)).unwrap();
    let h = Header {
        msg_type: Op::Write.code(),
        req_id: 1,
        tx_id: 0,
        len: u32::MAX,
    };
    bad.write_all(&h.to_bytes()).unwrap();
    // The server hangs up on it...
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bad.read(&mut buf).unwrap(), 0);
    // ...and everybody else carries on.
    assert_eq!(good.read_string("/alive").unwrap(), "1");
    wait_for_connections(&env, 1);
}

#[test]
fn garbage_does_not_kill_the_server() {
    let env = Env::new();
    for seed in 0u32..20 {
        let mut s = UnixStream::connect(env.sock(0)).unwrap();
        // Pseudo-random junk, some of it with plausible small lengths.
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 13) as u8)
            .collect();
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        drop(s);
    }
    let mut c = env.dom0();
    c.write("/after-garbage", "ok").unwrap();
    assert_eq!(c.read_string("/after-garbage").unwrap(), "ok");
    wait_for_connections(&env, 1);
}

#[test]
fn unknown_types_and_malformed_payloads_get_errors() {
    let env = Env::with_guests();
    let mut s = UnixStream::connect(env.sock(0)).unwrap();
    let unknown = Message::with_type(0xffff, 7, 0, b"x\0".to_vec()).unwrap();
    s.write_all(&unknown.encode()).unwrap();
    let r = raw_read(&mut s).unwrap();
    assert_eq!(
        (r.op(), r.header.req_id, r.payload.as_slice()),
        (Some(Op::Error), 7, &b"ENOSYS\0"[..])
    );
    let cases: [(Op, &[u8], &[u8]); 7] = [
        (Op::Write, b"/no-nul-separator", b"EINVAL\0"),
        (Op::Read, b"/a\0/b\0", b"EINVAL\0"),
        (Op::Read, b"/bad path\0", b"EINVAL\0"),
        (Op::Read, b"\xff\xfe\0", b"EINVAL\0"),
        (Op::Watch, b"/only-path\0", b"EINVAL\0"),
        (Op::TransactionEnd, b"T\0", b"ENOENT\0"),
        (Op::GetDomainPath, b"abc\0", b"EINVAL\0"),
    ];
    for (i, (op, payload, want)) in cases.into_iter().enumerate() {
        let r = raw_call(
            &mut s,
            op,
            100 + i as u32,
            if op == Op::TransactionEnd { 999 } else { 0 },
            payload,
        );
        assert_eq!(r.op(), Some(Op::Error), "{op} {payload:?}");
        assert_eq!(r.header.req_id, 100 + i as u32);
        assert_eq!(r.payload, want, "{op} {payload:?}");
    }
    // Replies echo req_id and type; READ without a trailing nul is tolerated.
    let r = raw_call(&mut s, Op::Read, 0xdead_beef, 0, b"/local/domain/0/name");
    assert_eq!(
        (r.op(), r.header.req_id, r.payload.as_slice()),
        (Some(Op::Read), 0xdead_beef, &b"Domain-0"[..])
    );
    // A transaction id that is not ours.
    let r = raw_call(&mut s, Op::Read, 1, 12345, b"/local\0");
    assert_eq!(r.payload, b"ENOENT\0");
    // TRANSACTION_START inside a transaction.
    let r = raw_call(&mut s, Op::TransactionStart, 1, 5, b"\0");
    assert_eq!(r.payload, b"EBUSY\0");
}

#[test]
fn only_dom0_may_introduce_or_release_over_the_wire() {
    let env = Env::with_guests();
    let mut g = UnixStream::connect(env.sock(GUEST)).unwrap();
    let r = raw_call(&mut g, Op::Introduce, 1, 0, b"9\x000\x000\0");
    assert_eq!(r.payload, b"EACCES\0");
    let r = raw_call(&mut g, Op::Release, 2, 0, b"6\0");
    assert_eq!(r.payload, b"EACCES\0");
    let mut d = UnixStream::connect(env.sock(0)).unwrap();
    let mut w = env.dom0();
    w.watch("@introduceDomain", "i").unwrap();
    common::next_event(&mut w);
    let r = raw_call(&mut d, Op::Introduce, 3, 0, b"9\x001234\x005\0");
    assert_eq!(
        (r.op(), r.payload.as_slice()),
        (Some(Op::Introduce), &b"OK\0"[..])
    );
    assert_eq!(
        common::next_event(&mut w),
        common::ev("@introduceDomain", "i")
    );
    assert!(w.is_domain_introduced(9).unwrap());
}

#[test]
fn a_client_that_never_reads_is_dropped_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = xenchan_xenstore::server::Server::with_limits(xenchan_xenstore::server::Limits {
        queued_messages_per_connection: 8,
        ..Default::default()
    });
    let _l = server.listen(dir.path().join("s.sock"), 0).unwrap();
    let mut lazy = UnixStream::connect(dir.path().join("s.sock")).unwrap();
    // A watch on everything, then never read: its queue and socket fill up.
    let watch = Message::new(Op::Watch, 1, 0, wire::join_fields(&[b"/", b"t"])).unwrap();
    lazy.write_all(&watch.encode()).unwrap();
    let mut busy = Client::connect_unix(dir.path().join("s.sock")).unwrap();
    let start = Instant::now();
    // Long paths make big events, so the lazy client's socket buffer fills
    // and then its bounded queue does.
    let long = "x".repeat(2000);
    for i in 0..400 {
        busy.write(&format!("/spam/{long}/{i}"), "v").unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "writers must not block on a lazy watcher"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connection_count() != 1 {
        assert!(Instant::now() < deadline, "lazy client not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn client_times_out_on_a_server_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let holder = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Swallow requests, answer nothing, until the client goes away.
        let mut buf = [0u8; 256];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let mut c = Client::connect_unix(&path)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = c.read("/x").unwrap_err();
    let took = start.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(err.to_string().contains("READ /x"), "{err}");
    drop(c);
    holder.join().unwrap();
}

/// A scripted server: reads one request, then runs `answer` on the stream.
fn scripted(
    answer: impl FnOnce(&mut UnixStream, Message) + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scripted.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let req = raw_read(&mut s).unwrap();
        answer(&mut s, req);
        let mut buf = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    (dir, path, t)
}

#[test]
fn client_rejects_oversized_reply_without_allocating() {
    let (_dir, path, t) = scripted(|s, req| {
        let h = Header {
            msg_type: Op::Read.code(),
            req_id: req.header.req_id,
            tx_id: 0,
            len: 1 << 30,
        };
        s.write_all(&h.to_bytes()).unwrap();
    });
    let mut c = Client::connect_unix(&path).unwrap();
    let err = c.read("/x").unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
    // The stream is desynchronised: further use says so instead of guessing.
    assert!(matches!(c.read("/x"), Err(Error::Broken)));
    drop(c);
    t.join().unwrap();
}

#[test]
fn client_rejects_reply_of_the_wrong_type() {
    let (_dir, path, t) = scripted(|s, req| {
        let m = Message::new(Op::Directory, req.header.req_id, 0, b"a\0".to_vec()).unwrap();
        s.write_all(&m.encode()).unwrap();
    });
    let mut c = Client::connect_unix(&path).unwrap();
    let err = c.read("/x").unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    drop(c);
    t.join().unwrap();
}

#[test]
fn client_drops_a_late_reply_and_takes_an_event_before_the_reply() {
    let (_dir, path, t) = scripted(|s, req| {
        // Answer the first request only after the client gave up on it.
        std::thread::sleep(Duration::from_millis(300));
        let late = Message::new(Op::Read, req.header.req_id, 0, b"stale".to_vec()).unwrap();
        s.write_all(&late.encode()).unwrap();
        let req2 = raw_read(s).unwrap();
        let ev = Message::new(Op::WatchEvent, 0, 0, wire::join_fields(&[b"/w/x", b"tok"])).unwrap();
        let reply = Message::new(Op::Read, req2.header.req_id, 0, b"fresh".to_vec()).unwrap();
        let mut both = ev.encode();
        both.extend_from_slice(&reply.encode());
        // Split the bytes awkwardly to exercise partial reads.
        for chunk in both.chunks(7) {
            s.write_all(chunk).unwrap();
            s.flush().unwrap();
        }
    });
    let mut c = Client::connect_unix(&path)
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    assert!(c.read("/x").unwrap_err().is_timeout());
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.read("/x").unwrap(), b"fresh");
    assert_eq!(
        c.wait_event(Duration::ZERO).unwrap(),
        Some(common::ev("/w/x", "tok"))
    );
    drop(c);
    t.join().unwrap();
}

#[test]
fn client_reports_a_closed_connection() {
    let (_dir, path, t) = scripted(|s, _req| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let mut c = Client::connect_unix(&path).unwrap();
    let err = c.read("/x").unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    t.join().unwrap();
}

#[test]
fn connect_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect_unix(dir.path().join("absent.sock")).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.sock"));
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        Client::connect_unix(&long),
        Err(Error::SocketPathTooLong { .. })
    ));
    let server = xenchan_xenstore::server::Server::new();
    assert!(matches!(
        server.listen(&long, 0),
        Err(Error::SocketPathTooLong { .. })
    ));
    assert!(matches!(
        Client::open_first(&[dir.path().join("a"), dir.path().join("b")]),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn stopping_a_listener_with_live_clients_is_prompt() {
    let env = Env::with_guests();
    let mut clients: Vec<Client> = (0..5).map(|_| env.guest(GUEST)).collect();
    for c in &mut clients {
        c.watch("device", "t").unwrap();
    }
    // A raw client stuck half-way through a header.
    let mut half = UnixStream::connect(env.sock(GUEST)).unwrap();
    half.write_all(&[1, 2, 3]).unwrap();
    wait_for_connections(&env, 6);
    let start = Instant::now();
    let Env {
        listeners,
        dom0,
        server,
        dir: _dir,
    } = env;
    drop(listeners);
    drop(dom0);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        start.elapsed()
    );
    assert_eq!(server.connection_count(), 0);
    for c in &mut clients {
        let err = c.read("name").unwrap_err();
        assert!(
            matches!(err, Error::Closed { .. } | Error::Io { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn stale_socket_file_is_replaced_but_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = xenchan_xenstore::server::Server::new();
    let live = server.listen(&path, 0).unwrap();
    assert!(matches!(server.listen(&path, 0), Err(Error::Open { .. })));
    drop(live);
    assert!(!path.exists(), "socket file removed on stop");
}

#[test]
fn connect_to_a_listener_with_a_full_backlog_times_out() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    // Fill the backlog with connections nobody accepts.
    let mut fillers = Vec::new();
    loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match nix::sys::socket::connect(s.as_raw_fd(), &UnixAddr::new(&path).unwrap()) {
            Ok(()) => fillers.push(s),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let start = Instant::now();
    let err = Client::connect_unix_with_timeout(&path, Duration::from_millis(200)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
}
