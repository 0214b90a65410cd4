//! The channel's traits, reproduced on purpose by the bridge, checked with a real pty and
//! real unix sockets. Each test fails if its trait is removed from the bridge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xenchan_sim::bridge::{Backend, BackendConfig, ChannelState, SharedState};
use xenchan_sim::guest_tty::GuestTty;
use xenchan_sim::pty::Pty;

struct Rig {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    slave: PathBuf,
    backend: Option<Backend>,
    state: SharedState,
}

fn rig_with(cfg: impl FnOnce(&mut BackendConfig)) -> Rig {
    let dir = tempfile::Builder::new().prefix("xcs-t").tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let pty = Pty::open().unwrap();
    let slave = pty.slave_path().to_path_buf();
    let mut c = BackendConfig::new(&sock);
    cfg(&mut c);
    let state: SharedState = Arc::new(Mutex::new(ChannelState::default()));
    let backend = Backend::spawn(pty, c, Arc::clone(&state)).unwrap();
    Rig {
        _dir: dir,
        sock,
        slave,
        backend: Some(backend),
        state,
    }
}

fn rig() -> Rig {
    rig_with(|_| {})
}

/// Reads from the client until `want` is contained or `timeout` passes.
async fn client_read(s: &mut UnixStream, timeout: Duration, want: Option<&[u8]>) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(w) = want
            && out.windows(w.len()).any(|x| x == w)
        {
            return out;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("client read failed: {e}"),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn guest(slave: &Path) -> GuestTty {
    let p = slave.to_path_buf();
    tokio::task::spawn_blocking(move || GuestTty::open(&p))
        .await
        .unwrap()
        .unwrap()
}

async fn guest_read(
    mut g: GuestTty,
    timeout: Duration,
    want: &'static [u8],
) -> (GuestTty, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let got = g.read_until(timeout, |b| contains(b, want)).unwrap();
        (g, got)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_echoes_until_raw_and_again_after_the_guest_closes_it() {
    let r = rig();
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    c.write_all(b"hello-before-agent\n").await.unwrap();
    let echoed = client_read(&mut c, Duration::from_secs(10), Some(b"hello-before-agent")).await;
    assert!(
        contains(&echoed, b"hello-before-agent"),
        "a cooked tty must echo the host's bytes back, got {echoed:?}"
    );

    let g = guest(&r.slave).await;
    g.make_raw().unwrap();
    c.write_all(b"after-raw\n").await.unwrap();
    let (g, got) = guest_read(g, Duration::from_secs(10), b"after-raw\n").await;
    assert!(contains(&got, b"after-raw\n"), "guest got {got:?}");
    let echoed = client_read(&mut c, Duration::from_millis(500), Some(b"after-raw")).await;
    assert!(
        !contains(&echoed, b"after-raw"),
        "a raw tty must not echo, got {echoed:?}"
    );

    // hvc resets termios on the last close: echo is back for the next agent.
    drop(g);
    r.backend.as_ref().unwrap().guest_closed();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"after-close\n").await.unwrap();
    let echoed = client_read(&mut c, Duration::from_secs(10), Some(b"after-close")).await;
    assert!(
        contains(&echoed, b"after-close"),
        "after the guest closed the tty it must echo again, got {echoed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_to_guest_is_held_to_a_one_kib_window() {
    let r = rig();
    let g = guest(&r.slave).await;
    g.make_raw().unwrap();
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        c.write_all(&data).await.unwrap();
        c
    });
    // The guest reads nothing for a while: what it holds unread must stay near the window
    // (a tty alone would take 4 KiB, its flip buffers 64 KiB more).
    let deadline = Instant::now() + Duration::from_millis(800);
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(g.unread().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most > 0, "nothing reached the guest");
    assert!(
        most <= 3 * 1024,
        "the guest held {most} unread bytes; the ring window is 1 KiB"
    );
    let fed = r
        .state
        .lock()
        .unwrap()
        .tap
        .bytes(xenchan_sim::tap::Dir::ToGuest);
    assert!(
        fed <= 4 * 1024,
        "{fed} bytes moved into a guest that reads nothing"
    );

    // Then everything arrives, in order, once the guest reads.
    let mut g = g;
    let got = tokio::task::spawn_blocking(move || {
        g.read_until(Duration::from_secs(60), |b| b.len() >= 64 * 1024)
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "bytes reordered or changed");
    drop(writer.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_bytes_written_with_no_client_are_delivered_stale_to_the_next() {
    let r = rig();
    let mut g = guest(&r.slave).await;
    g.make_raw().unwrap();
    g.write_all(b"written-while-alone\n").unwrap();
    // Let the bridge drain it while nobody is connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.state.lock().unwrap().held < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    let got = client_read(
        &mut c,
        Duration::from_secs(10),
        Some(b"written-while-alone\n"),
    )
    .await;
    assert!(contains(&got, b"written-while-alone\n"), "got {got:?}");
    assert!(r.state.lock().unwrap().stale_delivered >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_output_is_bounded_and_loses_its_middle() {
    let r = rig_with(|c| c.hold_limit = 64 * 1024);
    let g = guest(&r.slave).await;
    g.make_raw().unwrap();
    let mut g = g;
    let written = tokio::task::spawn_blocking(move || {
        let mut chunk = vec![b'm'; 4096];
        chunk[..5].copy_from_slice(b"FIRST");
        g.write_all(&chunk).unwrap();
        let middle = vec![b'x'; 4096];
        for _ in 0..64 {
            g.write_all(&middle).unwrap();
        }
        g.write_all(b"LAST\n").unwrap();
        g
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && r.state
            .lock()
            .unwrap()
            .tap
            .bytes(xenchan_sim::tap::Dir::ToHost)
            < 4096 * 65 + 5
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    let got = client_read(&mut c, Duration::from_secs(10), Some(b"LAST\n")).await;
    assert!(got.starts_with(b"FIRST"), "the oldest bytes are kept");
    assert!(got.ends_with(b"LAST\n"), "the newest bytes are kept");
    assert!(
        got.len() <= 64 * 1024,
        "held {} bytes past the limit",
        got.len()
    );
    assert!(r.state.lock().unwrap().held_dropped >= 190 * 1024);
    drop(written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_at_a_time_the_second_waits_in_the_backlog() {
    let r = rig();
    let g = guest(&r.slave).await;
    g.make_raw().unwrap();
    let mut a = UnixStream::connect(&r.sock).await.unwrap();
    a.write_all(b"from-a\n").await.unwrap();
    let (g, got) = guest_read(g, Duration::from_secs(10), b"from-a\n").await;
    assert!(contains(&got, b"from-a\n"));

    // The second connect succeeds (kernel backlog) but is not served.
    let mut b = UnixStream::connect(&r.sock).await.unwrap();
    b.write_all(b"from-b\n").await.unwrap();
    let (g, got) = guest_read(g, Duration::from_millis(600), b"from-b\n").await;
    assert!(
        !contains(&got, b"from-b"),
        "the second client must wait, got {got:?}"
    );
    let mut g = g;
    g.write_all(b"to-first\n").unwrap();
    let got = client_read(&mut a, Duration::from_secs(10), Some(b"to-first\n")).await;
    assert!(contains(&got, b"to-first\n"));
    let got = client_read(&mut b, Duration::from_millis(300), Some(b"to-first")).await;
    assert!(
        got.is_empty(),
        "the waiting client must get nothing, got {got:?}"
    );

    // When the first goes away, the second is served, and what it wrote reaches the guest.
    drop(a);
    let (mut g, got) = guest_read(g, Duration::from_secs(10), b"from-b\n").await;
    assert!(contains(&got, b"from-b\n"), "got {got:?}");
    g.write_all(b"to-second\n").unwrap();
    let got = client_read(&mut b, Duration::from_secs(10), Some(b"to-second\n")).await;
    assert!(contains(&got, b"to-second\n"));
    assert_eq!(r.state.lock().unwrap().connects, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_gives_the_client_eof_and_removes_the_socket() {
    let mut r = rig();
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.state.lock().unwrap().connected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.backend.take().unwrap().stop().await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("EOF in time")
        .expect("clean EOF");
    assert_eq!(n, 0, "the broker must read EOF");
    assert!(!r.sock.exists(), "the socket file must go away");
    assert!(UnixStream::connect(&r.sock).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_guest_receives_at_its_rate() {
    let r = rig_with(|c| c.rate = Some(2000));
    let g = guest(&r.slave).await;
    g.make_raw().unwrap();
    let mut c = UnixStream::connect(&r.sock).await.unwrap();
    let data = vec![b'z'; 4000];
    let start = Instant::now();
    c.write_all(&data).await.unwrap();
    let mut g = g;
    let got = tokio::task::spawn_blocking(move || {
        g.read_until(Duration::from_secs(30), |b| b.len() >= 4000)
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 4000);
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "4000 bytes at 2000 B/s took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_socket_path_is_refused_clearly() {
    let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(120)));
    let err = xenchan_sim::bridge::bind_backlog_one(&long).unwrap_err();
    assert!(err.to_string().contains("at most 107"), "{err}");
}
