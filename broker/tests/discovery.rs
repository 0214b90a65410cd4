//! Discovery of sockets present at start and created later; reconnects after EOF, ENOENT
//! and refusal; one connection per socket; the state-folder lock; the unix path limit;
//! listen mode.

mod support;

use std::time::Duration;

use support::{DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_basics::exit::{Exit, HasExit};
use xenchan_broker::BrokerError;
use xenchan_broker::api::types::DomainState;
use xenchan_broker::config::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_present_at_start_and_created_later_are_found() {
    let dirs = Dirs::new();
    // Present before the broker starts.
    let early = TestPeer::start(&dirs.sockets(), "early", PeerOptions::default());
    // Files that are not <domain>.sock sockets are ignored.
    std::fs::write(dirs.sockets().join("notes.txt"), "x").unwrap();
    std::fs::write(dirs.sockets().join("fake.sock"), "not a socket").unwrap();
    let broker = TestBroker::start(dirs.config()).await;
    early
        .wait("the broker's hello", |r| r.hellos.len() == 1)
        .await;
    broker
        .wait_domain("early", "idle (no config)", |v| {
            v.state == DomainState::Idle && v.connected
        })
        .await;

    // Created while it runs.
    let late = TestPeer::start(&dirs.sockets(), "late", PeerOptions::default());
    late.wait("the broker's hello", |r| r.hellos.len() == 1)
        .await;
    broker
        .client
        .put_config("late", &sample_config("late", "192.0.2.40/24"), None)
        .await
        .unwrap();
    late.wait("its config", |r| r.results == 1).await;
    let names: Vec<String> = broker
        .client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        names,
        vec!["early", "late"],
        "fake.sock and notes.txt are not domains"
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_eof_enoent_and_refusal_without_repushing() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("r1", "192.0.2.50/24");
    broker.client.put_config("r1", &cfg, None).await.unwrap();
    let mut peer = TestPeer::start(&dirs.sockets(), "r1", PeerOptions::default());
    peer.wait("the first config", |r| r.results == 1).await;

    // EOF: the peer hangs up (QEMU going away, xl reboot).
    peer.hang_up();
    peer.wait("a second session", |r| {
        r.connections == 2 && r.hellos.len() == 2
    })
    .await;
    broker
        .wait_domain("r1", "configured again", |v| {
            v.state == DomainState::Configured && v.connected
        })
        .await;

    // ENOENT: the socket vanishes; the domain goes pending; it comes back.
    peer.remove();
    broker
        .wait_domain("r1", "pending without socket", |v| {
            v.state == DomainState::Pending && !v.connected
        })
        .await;
    peer.resume();
    peer.wait("a third session", |r| r.hellos.len() == 3).await;

    // Refusal: the socket file stays but nobody listens (ECONNREFUSED).
    peer.refuse();
    let c = broker.client.clone();
    wait_until("connect errors counted", DEADLINE, || {
        let c = c.clone();
        async move {
            let m = c.metrics().await.ok()?;
            let n: u64 = m
                .lines()
                .find(|l| l.starts_with("xenchan_errors_total{kind=\"connect\"}"))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            (n >= 3).then_some(())
        }
    })
    .await;
    broker
        .wait_domain("r1", "connecting while refused", |v| {
            v.state == DomainState::Connecting
        })
        .await;
    peer.resume();
    let rec = peer.wait("a fourth session", |r| r.hellos.len() == 4).await;
    broker
        .wait_domain("r1", "configured after refusal", |v| {
            v.state == DomainState::Configured
        })
        .await;
    assert_eq!(
        rec.configs.len(),
        1,
        "the applied generation is never pushed again"
    );
    assert_eq!(rec.max_open, 1, "never two connections to one socket");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_socket_never_gets_two_connections() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let mut peer = TestPeer::start(&dirs.sockets(), "flap", PeerOptions::default());
    for i in 1..=5u32 {
        peer.wait("a session", |r| r.hellos.len() >= i as usize)
            .await;
        peer.remove();
        peer.resume();
    }
    let rec = peer.wait("the last session", |r| r.hellos.len() >= 6).await;
    // One connection per session, none left behind. (Whether two ever overlapped is
    // asserted in the reconnect test; here the socket flaps faster than this peer's
    // own tasks run, so its instantaneous view is not exact.)
    assert_eq!(rec.connections as usize, rec.hellos.len(), "{rec:?}");
    let c = broker.client.clone();
    wait_until("exactly one live connection", DEADLINE, || {
        let c = c.clone();
        let open = peer.record().open;
        async move {
            let v = c.get_domain("flap").await.ok()?;
            (open <= 1 && v.connected).then_some(())
        }
    })
    .await;
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_state_folder_refuses_to_start() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let mut second = dirs.config();
    second.control_socket = dirs.root.path().join("other.sock");
    let e = xenchan_broker::run(second, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(matches!(e, BrokerError::Lock(_)), "{e:?}");
    assert_eq!(e.exit(), Exit::Unavailable);
    assert_eq!(e.exit().code(), 69);
    assert!(e.to_string().contains("another xenchan-broker"), "{e}");
    assert!(!dirs.root.path().join("other.sock").exists());
    // The first one is unaffected.
    broker.client.health().await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_socket_paths_fail_clearly() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    // Short enough for x.sock, too long for a 64-character name.
    let base = dirs.root.path().join("s");
    let pad = 100usize.saturating_sub(base.as_os_str().len() + 1);
    config.socket_dir = base.join("d".repeat(pad.max(1)));
    std::fs::create_dir_all(&config.socket_dir).unwrap();
    let broker = TestBroker::start(config.clone()).await;
    // Bind at a short path and move the socket in: a long name cannot be bound.
    let short = dirs.root.path().join("t.sock");
    let _l = std::os::unix::net::UnixListener::bind(&short).unwrap();
    let name = "n".repeat(40);
    std::fs::rename(&short, config.socket_dir.join(format!("{name}.sock"))).unwrap();
    let v = broker
        .wait_domain(&name, "an error", |v| v.state == DomainState::Error)
        .await;
    let err = v.last_error.unwrap();
    assert!(err.contains("107") && err.contains("bytes"), "{err}");
    broker.stop().await.unwrap();

    // The control socket path is checked at start.
    let mut config = dirs.config();
    config.control_socket = dirs.root.path().join("c".repeat(120));
    let e = xenchan_broker::run(config, std::future::ready(()))
        .await
        .unwrap_err();
    assert_eq!(e.exit(), Exit::Config);
    assert_eq!(e.exit().code(), 78);
    assert!(format!("{e:?}").contains("108"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_mode_serves_one_backend_connection_per_domain() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.mode = Mode::Listen;
    let broker = TestBroker::start(config.clone()).await;
    broker
        .client
        .put_config("l1", &sample_config("l1", "192.0.2.60/24"), None)
        .await
        .unwrap();
    let path = config.socket_path("l1");
    wait_until("the broker's socket", DEADLINE, || {
        let p = path.clone();
        async move { p.exists().then_some(()) }
    })
    .await;
    let (record, _task) = support::connect_as_backend(&path, PeerOptions::default()).await;
    let r = record.clone();
    wait_until("the config over the backend connection", DEADLINE, || {
        let r = r.clone();
        async move { (r().results == 1).then_some(()) }
    })
    .await;
    broker
        .wait_domain("l1", "configured", |v| v.state == DomainState::Configured)
        .await;
    // A second backend connection is closed at once.
    let mut extra = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .expect("the extra connection is closed, not left hanging")
    .unwrap_or(0);
    assert_eq!(n, 0);
    // Deleting the domain removes its socket.
    broker.client.delete("l1").await.unwrap();
    wait_until("the socket to go", DEADLINE, || {
        let p = path.clone();
        async move { (!p.exists()).then_some(()) }
    })
    .await;
    broker.stop().await.unwrap();
}
