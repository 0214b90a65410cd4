//! The lifecycle endpoints for the libvirt hook: `POST /v1/domains/{name}/prepare` and
//! `.../release` (docs/API.md): registration and idempotence, UUID clashes, lease
//! confirmation, a refusing prepare hook, a channel path outside the socket folder, and
//! release of known, released and unknown domains.

mod support;

use std::path::PathBuf;

use support::{DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_broker::api::types::{
    ChannelKind, ChannelSpec, DomainState, Lifecycle, PrepareRequest,
};
use xenchan_broker::client::ClientError;

const CHANNEL: &str = xenchan_protocol::DEFAULT_CHANNEL;
const U1: &str = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";
const U2: &str = "0b8e9c1d-2f3a-4b5c-8d7e-6f5a4b3c2d1e";

fn request(uuid: Option<&str>, path: Option<PathBuf>) -> PrepareRequest {
    PrepareRequest {
        uuid: uuid.map(str::to_string),
        channels: vec![
            ChannelSpec {
                name: "org.qemu.guest_agent.0".into(),
                path: Some("/elsewhere/ignored.sock".into()),
                kind: ChannelKind::Virtio,
            },
            ChannelSpec {
                name: CHANNEL.into(),
                path,
                kind: ChannelKind::Xen,
            },
        ],
    }
}

fn api_error(e: ClientError) -> (u16, xenchan_broker::api::types::ApiError) {
    match e {
        ClientError::Api { status, error } => (status, error),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_registers_is_idempotent_and_guards_the_uuid_and_release_keeps_the_config() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;

    // Registered without a configuration, pending, UUID recorded (lowercase).
    let v = c
        .prepare("web1", &request(Some(&U1.to_uppercase()), None))
        .await
        .unwrap();
    assert_eq!(v.state, DomainState::Pending);
    assert_eq!(v.lifecycle, Some(Lifecycle::Running));
    assert_eq!(v.uuid.as_deref(), Some(U1));
    assert_eq!(v.desired_generation, None);
    let again = c.prepare("web1", &request(Some(U1), None)).await.unwrap();
    assert_eq!(again, v, "prepare is idempotent");
    // Without a UUID the recorded one stays.
    let v = c.prepare("web1", &request(None, None)).await.unwrap();
    assert_eq!(v.uuid.as_deref(), Some(U1));

    // Another domain with the same UUID: 409 naming the holder.
    let (status, err) = api_error(
        c.prepare("web2", &request(Some(U1), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert_eq!(err.domain.as_deref(), Some("web1"));
    assert!(
        err.error.contains("web1") && err.error.contains(U1),
        "{}",
        err.error
    );
    assert_eq!(c.get_domain("web2").await.unwrap_err().status(), Some(404));

    // The VM starts: its socket appears, the agent answers, the config is pushed.
    c.put_config("web1", &sample_config("web1", "192.0.2.20/24"), None)
        .await
        .unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "web1",
        PeerOptions {
            uuid: Some(U1.into()),
            ..PeerOptions::default()
        },
    );
    let rec = peer.wait("the config", |r| r.results == 1).await;
    assert_eq!(rec.hellos[0].uuid.as_deref(), Some(U1));
    broker
        .wait_domain("web1", "configured", |v| {
            v.state == DomainState::Configured && v.connected
        })
        .await;

    // While its agent is connected the domain cannot become another VM.
    let (status, err) = api_error(
        c.prepare("web1", &request(Some(U2), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert!(
        err.error.contains(U1) && err.error.contains(U2),
        "{}",
        err.error
    );

    // Release: the session stops, the configuration stays.
    let r = c.release("web1").await.unwrap();
    assert!(r.released);
    peer.wait("the broker's bye", |r| r.byes == 1).await;
    let v = c.get_domain("web1").await.unwrap();
    assert_eq!(v.lifecycle, Some(Lifecycle::Stopped));
    assert_eq!(v.state, DomainState::Pending);
    assert!(!v.connected);
    assert_eq!(v.desired_generation, Some(1));
    assert!(!c.release("web1").await.unwrap().released, "idempotent");
    let r = c.release("nobody").await.unwrap();
    assert_eq!((r.name.as_str(), r.released), ("nobody", false));
    assert_eq!(
        c.get_domain("nobody").await.unwrap_err().status(),
        Some(404)
    );

    // web1's socket file is still there (a QEMU that lingers): rescans leave it alone.
    // A prepare triggers one; `probe` (released with its socket left behind as well) is
    // attached by that very rescan, so once it is, web1 has been looked at too.
    let probe = TestPeer::start(&dirs.sockets(), "probe", PeerOptions::default());
    probe.wait("probe's session", |r| r.hellos.len() == 1).await;
    c.release("probe").await.unwrap();
    probe.wait("probe's bye", |r| r.byes == 1).await;
    c.prepare("probe", &PrepareRequest::default())
        .await
        .unwrap();
    probe
        .wait("probe's second session", |r| r.hellos.len() == 2)
        .await;
    assert_eq!(
        peer.record().connections,
        1,
        "a released domain is not reattached"
    );

    // The VM starts again (prepare, same UUID): re-attached, nothing pushed again.
    c.prepare("web1", &request(Some(U1), None)).await.unwrap();
    peer.wait("a second session", |r| r.hellos.len() == 2).await;
    let v = broker
        .wait_domain("web1", "configured again", |v| {
            v.state == DomainState::Configured && v.connected
        })
        .await;
    assert_eq!(v.lifecycle, Some(Lifecycle::Running));
    assert_eq!(peer.record().configs.len(), 1);

    // A domain without configuration is forgotten on release (its socket is gone).
    c.prepare("bare", &PrepareRequest::default()).await.unwrap();
    assert!(c.release("bare").await.unwrap().released);
    assert_eq!(c.get_domain("bare").await.unwrap_err().status(), Some(404));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_prepare_hook_gives_422_with_its_stderr_and_release_runs_hooks() {
    let dirs = Dirs::new();
    let log = dirs.root.path().join("hook.log");
    dirs.hook(
        "10-gate",
        &format!(
            "echo \"$1 $2 $3 $4\" >> {log}\n\
             if [ \"$1 $2 $3\" = 'web9 prepare begin' ]; then\n\
               echo 'web9 may not start on this host' >&2; exit 1\n\
             fi\n\
             exit 0",
            log = log.display()
        ),
    );
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    let (status, err) = api_error(
        c.prepare("web9", &request(Some(U1), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 422);
    assert_eq!(
        err.error,
        "prepare hook refused: web9 may not start on this host"
    );
    assert_eq!(c.get_domain("web9").await.unwrap_err().status(), Some(404));
    // Nothing was recorded: its UUID is free for another domain.
    c.prepare("web8", &request(Some(U1), None)).await.unwrap();
    c.release("web8").await.unwrap();
    let text = wait_until("the release hook", DEADLINE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("web8 release end -").then_some(text)
        }
    })
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "web9 prepare begin -");
    assert_eq!(lines[1], "web8 prepare begin -");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_confirms_leases_and_refuses_one_held_by_another_domain() {
    let dirs = Dirs::new();
    // Hostnames were not leases when these configs were accepted...
    let mut config = dirs.config();
    config.leases.hostname = false;
    let broker = TestBroker::start(config.clone()).await;
    for (name, addr) in [("a1", "192.0.2.31/24"), ("a2", "192.0.2.32/24")] {
        broker
            .client
            .put_config(name, &sample_config("shared-name", addr), None)
            .await
            .unwrap();
    }
    broker.stop().await.unwrap();
    // ...now they are: the first prepare takes the hostname, the second is refused.
    config.leases.hostname = true;
    let broker = TestBroker::start(config).await;
    let c = &broker.client;
    c.prepare("a1", &PrepareRequest::default()).await.unwrap();
    let (status, err) = api_error(
        c.prepare("a2", &PrepareRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert_eq!(err.domain.as_deref(), Some("a1"));
    assert_eq!(err.error, "hostname shared-name is leased to domain a1");
    // a2 was not marked running.
    assert_eq!(c.get_domain("a2").await.unwrap().lifecycle, None);
    // a1 releases: it keeps its configuration and its leases (the orchestrator's).
    c.release("a1").await.unwrap();
    let (status, _) = api_error(
        c.prepare("a2", &PrepareRequest::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    c.delete("a1").await.unwrap();
    c.prepare("a2", &PrepareRequest::default()).await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_path_outside_the_socket_folder_is_used_for_the_connection() {
    let dirs = Dirs::new();
    let elsewhere = dirs.root.path().join("qemu");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let path = elsewhere.join("x7.sock");
    let config = dirs.config();
    let broker = TestBroker::start(config.clone()).await;
    let c = &broker.client;

    // Bad paths are refused with the field at fault.
    for (bad, why) in [
        (PathBuf::from("relative.sock"), "absolute"),
        (elsewhere.join("../qemu/x7.sock"), "normal"),
        (dirs.sockets().join("other.sock"), "socket_dir"),
    ] {
        let (status, err) = api_error(
            c.prepare("web7", &request(None, Some(bad)))
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 400);
        assert_eq!(err.path.as_deref(), Some("channels[1].path"));
        assert!(err.error.contains(why), "{}", err.error);
    }
    let mut twice = request(None, Some(path.clone()));
    twice.channels.push(twice.channels[1].clone());
    let (status, _) = api_error(c.prepare("web7", &twice).await.unwrap_err());
    assert_eq!(status, 400);

    // Prepared before QEMU starts: pending until its socket exists.
    let v = c
        .prepare("web7", &request(Some(U2), Some(path.clone())))
        .await
        .unwrap();
    assert_eq!(v.socket.as_deref(), Some(path.as_path()));
    c.put_config("web7", &sample_config("web7", "192.0.2.70/24"), None)
        .await
        .unwrap();
    let peer = TestPeer::start(
        &elsewhere,
        "x7",
        PeerOptions {
            uuid: Some(U2.into()),
            ..PeerOptions::default()
        },
    );
    let rec = peer.wait("the config", |r| r.results == 1).await;
    assert_eq!(rec.hellos[0].domain.as_deref(), Some("web7"));
    broker
        .wait_domain("web7", "configured", |v| v.state == DomainState::Configured)
        .await;

    // The path is durable: a restarted broker goes back to it, and pushes nothing.
    broker.stop().await.unwrap();
    let broker = TestBroker::start(config).await;
    peer.wait("a session with the new broker", |r| r.hellos.len() == 2)
        .await;
    let v = broker
        .wait_domain("web7", "configured again", |v| {
            v.state == DomainState::Configured && v.connected
        })
        .await;
    assert_eq!(v.socket.as_deref(), Some(path.as_path()));
    assert_eq!(peer.record().configs.len(), 1);

    // Release stops that session for good.
    assert!(broker.client.release("web7").await.unwrap().released);
    peer.wait("the broker's bye", |r| r.byes == 2).await;
    let v = broker.client.get_domain("web7").await.unwrap();
    assert!(
        !v.connected && v.lifecycle == Some(Lifecycle::Stopped),
        "{v:?}"
    );
    broker.stop().await.unwrap();
    assert_eq!(peer.record().max_open, 1);
}

/// A VM undefined (`virsh undefine`) and defined again under another name keeps its
/// UUID: the refusal says how to clear the old registration, and doing so works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_still_registered_to_an_undefined_vm_says_how_to_clear_it() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    c.prepare("old-name", &request(Some(U1), None))
        .await
        .unwrap();
    let (status, err) = api_error(
        c.prepare("new-name", &request(Some(U1), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    assert!(
        err.error
            .contains("clear it with `xenchan domain rm old-name`"),
        "{}",
        err.error
    );
    c.delete("old-name").await.unwrap();
    let v = c
        .prepare("new-name", &request(Some(U1), None))
        .await
        .unwrap();
    assert_eq!(v.uuid.as_deref(), Some(U1));
    broker.stop().await.unwrap();
}

/// A prepared domain whose channel socket vanishes after a session (QEMU exited, or a
/// same-host `xl migrate` lost the path) is not waited for silently: once the socket has
/// been missing for 10 s, `last_error` names its path; the next session clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_channel_socket_is_named_in_last_error() {
    let dirs = Dirs::new();
    let elsewhere = dirs.root.path().join("qemu");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let path = elsewhere.join("x8.sock");
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    c.prepare("web8", &request(Some(U1), Some(path.clone())))
        .await
        .unwrap();
    let opts = || PeerOptions {
        uuid: Some(U1.into()),
        ..PeerOptions::default()
    };
    let mut peer = TestPeer::start(&elsewhere, "x8", opts());
    broker
        .wait_domain("web8", "connected", |v| v.connected)
        .await;
    peer.remove();
    let gone = std::time::Instant::now();
    let v = broker
        .wait_domain("web8", "the vanished socket named", |v| {
            v.last_error.is_some()
        })
        .await;
    let error = v.last_error.unwrap();
    eprintln!("named after {:?}: {error}", gone.elapsed());
    assert!(
        gone.elapsed() >= std::time::Duration::from_secs(9),
        "named during the grace a reboot needs: {:?}",
        gone.elapsed()
    );
    assert!(
        error.contains("vanished") && error.contains(&path.display().to_string()),
        "{error}"
    );
    assert!(!v.connected);
    // QEMU back on the same path: the next session clears the error.
    let _peer = TestPeer::start(&elsewhere, "x8", opts());
    broker
        .wait_domain("web8", "connected, error cleared", |v| {
            v.connected && v.last_error.is_none()
        })
        .await;
    broker.stop().await.unwrap();
}
