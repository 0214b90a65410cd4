//! Restarts lose nothing and re-push nothing: in process (graceful stop) and with kill -9
//! of a broker child process at several points.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::{
    DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until, write_config,
};
use tokio::process::{Child, Command};
use xenchan_broker::api::types::DomainState;
use xenchan_broker::client::Client;
use xenchan_broker::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_restart_loses_nothing_and_repushes_nothing() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    broker
        .client
        .put_config("keep", &sample_config("keep", "192.0.2.80/24"), Some(uuid))
        .await
        .unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "keep",
        PeerOptions {
            uuid: Some(uuid.into()),
            ..PeerOptions::default()
        },
    );
    let before = broker
        .wait_domain("keep", "configured", |v| v.state == DomainState::Configured)
        .await;
    broker.stop().await.unwrap();

    let broker = TestBroker::start(dirs.config()).await;
    peer.wait("a new session", |r| r.hellos.len() == 2).await;
    let after = broker
        .wait_domain("keep", "configured again", |v| {
            v.state == DomainState::Configured && v.connected
        })
        .await;
    assert_eq!(after.desired_generation, before.desired_generation);
    assert_eq!(after.config, before.config);
    assert_eq!(after.uuid.as_deref(), Some(uuid));
    assert_eq!(after.items, before.items);
    assert_eq!(after.last_result_at, before.last_result_at);
    assert_eq!(after.facts, before.facts);
    // Keepalives go on; still exactly one push ever.
    peer.wait("pings in the new session", |r| r.pings >= 2)
        .await;
    assert_eq!(peer.record().configs.len(), 1);
    // Leases survived too.
    let e = broker
        .client
        .put_config("thief", &sample_config("thief", "192.0.2.80/24"), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    broker.stop().await.unwrap();
}

/// A broker child process.
struct ChildBroker {
    child: Child,
    client: Client,
}

impl ChildBroker {
    async fn spawn(config_path: &Path, config: &Config) -> ChildBroker {
        let child = Command::new(env!("CARGO_BIN_EXE_xenchan-broker"))
            .arg("--config")
            .arg(config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the broker binary");
        let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
        let c = client.clone();
        wait_until("the child broker's API", DEADLINE, || {
            let c = c.clone();
            async move { c.health().await.ok() }
        })
        .await;
        ChildBroker { child, client }
    }

    /// SIGKILL, no goodbye.
    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert!(!status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_point_loses_no_accepted_config_and_no_result() {
    let dirs = Dirs::new();
    let config = dirs.config();
    let path = write_config(dirs.root.path(), &config);

    // 1. Killed right after PUTs were answered, while more were in flight.
    let b = ChildBroker::spawn(&path, &config).await;
    let c = b.client.clone();
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let writer = tokio::spawn(async move {
        for i in 1..=200u64 {
            let cfg = sample_config("k9", &format!("198.51.100.{}/24", i % 250 + 1));
            match c.put_config("k9", &cfg, None).await {
                Ok(v) => acked_tx.send_replace(v.desired_generation.unwrap()),
                Err(_) => return,
            };
        }
    });
    acked_rx.wait_for(|g| *g >= 5).await.unwrap();
    b.kill9().await;
    let _ = writer.await;
    let acked = *acked_rx.borrow();
    let b = ChildBroker::spawn(&path, &config).await;
    let v = b.client.get_domain("k9").await.unwrap();
    assert!(
        v.desired_generation.unwrap() >= acked,
        "generation {} was acknowledged, {:?} survived",
        acked,
        v.desired_generation
    );
    let kept = v.desired_generation.unwrap();

    // 2. Killed after a result was received.
    let peer = TestPeer::start(&dirs.sockets(), "k9", PeerOptions::default());
    peer.wait("the push", |r| r.results == 1).await;
    let v = wait_until("the result in the API", DEADLINE, || {
        let c = b.client.clone();
        async move {
            c.get_domain("k9")
                .await
                .ok()
                .filter(|v| v.state == DomainState::Configured)
        }
    })
    .await;
    assert_eq!(v.applied_generation, Some(kept));
    b.kill9().await;

    // 3. After the restart: everything is there and nothing is pushed again.
    let b = ChildBroker::spawn(&path, &config).await;
    let after = b.client.get_domain("k9").await.unwrap();
    assert_eq!(after.items, v.items);
    assert_eq!(after.last_result_at, v.last_result_at);
    assert_eq!(after.applied_generation, Some(kept));
    peer.wait("a new session", |r| r.hellos.len() >= 2).await;
    wait_until("configured after restart", DEADLINE, || {
        let c = b.client.clone();
        async move {
            c.get_domain("k9")
                .await
                .ok()
                .filter(|v| v.state == DomainState::Configured && v.connected)
        }
    })
    .await;
    peer.wait("a ping in the new session", |r| r.pings >= 1)
        .await;
    assert_eq!(peer.record().configs.len(), 1, "nothing re-pushed");
    b.kill9().await;
}
