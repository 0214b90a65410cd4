//! Cluster mode with xenstore discovery and no lifecycle calls (plain `xl create`,
//! `xl destroy`), on a real etcd and the xenstore crate's test server per host: a domain
//! xenstore shows running is claimed under the UUID dom0's xenstore gives; the same VM
//! appearing on another host while the first runs it is waited for there, not claimed
//! nor pushed to; when it leaves the first host's xenstore, that host gives it up and
//! the other claims it and serves it without pushing what the agent already applied.

mod cluster_support;
#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use cluster_support::{applied_in_etcd, cluster_config, observer, owner_is};
use support::{Dirs, PeerOptions, TestBroker, TestPeer, sample_config};
use xenchan_broker::api::types::DomainState;
use xenchan_broker::config::{Config, Discovery};
use xenchan_xenstore::server::Server;

const U: &str = "3a7d2c1b-5e4f-4a8b-9c0d-1e2f3a4b5c6d";
const CHANNEL: &str = xenchan_protocol::DEFAULT_CHANNEL;

macro_rules! require_etcd {
    () => {
        if etcd::etcd_binary().is_none() {
            eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
            return;
        }
    };
}

/// A host: its broker's configuration (cluster `url`, xenstore discovery over its own
/// test server), that server, and the folder its "QEMU" sockets go in.
struct Host {
    config: Config,
    xs: Server,
    _xs_listener: xenchan_xenstore::server::ListenerHandle,
    qemu: PathBuf,
}

fn host(dirs: &Dirs, url: &str, name: &str) -> Host {
    let mut config = cluster_config(dirs, url, "/xs1/", name);
    let xs_sock = dirs.root.path().join("xs.sock");
    let qemu = dirs.root.path().join("qemu");
    std::fs::create_dir_all(&qemu).unwrap();
    config.discovery = Discovery::Xenstore;
    config.xenstore_path = Some(xs_sock.clone());
    config.timeouts.xenstore = 2000;
    let xs = Server::new();
    let listener = xs.listen(&xs_sock, 0).unwrap();
    Host {
        config,
        xs,
        _xs_listener: listener,
        qemu,
    }
}

fn agent(applied: Option<xenchan_protocol::message::Applied>) -> PeerOptions {
    PeerOptions {
        uuid: Some(U.to_string()),
        applied,
        ..PeerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_xenstore_domain_is_owned_where_it_runs_and_moves_when_it_leaves() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let (ha, hb) = (host(&da, &url, "dom0-a"), host(&db, &url, "dom0-b"));
    let a = TestBroker::start(ha.config.clone()).await;
    let b = TestBroker::start(hb.config.clone()).await;
    let obs = observer(&url, "/xs1/").await;

    // The orchestrator stores the configuration under the VM's UUID; nothing runs yet.
    a.client
        .put_config(
            "web1",
            &sample_config("web1.example.com", "192.0.2.10/24"),
            Some(U),
        )
        .await
        .unwrap();
    owner_is(&obs, U, None).await;

    // `xl create` on a: xenstore shows the domain with its UUID and channel.
    let peer_a = TestPeer::start(&ha.qemu, "web1", agent(None));
    ha.xs.introduce_domain(5, "web1", U).unwrap();
    ha.xs.add_channel(5, 1, CHANNEL, &peer_a.path).unwrap();
    owner_is(&obs, U, Some("dom0-a")).await;
    let rec = peer_a.wait("the push on a", |r| r.results == 1).await;
    assert_eq!(
        rec.hellos[0].uuid.as_deref(),
        Some(U),
        "the UUID comes from dom0's xenstore"
    );
    applied_in_etcd(&obs, U, 1).await;
    let applied = peer_a.record().applied;

    // The same VM shows up in b's xenstore while a runs it (the destination side of a
    // migration done without hooks): b waits; it neither claims nor pushes.
    let peer_b = TestPeer::start(&hb.qemu, "web1", agent(applied));
    hb.xs.introduce_domain(9, "web1", U).unwrap();
    hb.xs.add_channel(9, 1, CHANNEL, &peer_b.path).unwrap();
    peer_b
        .wait("b's session with the agent", |r| !r.hellos.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    owner_is(&obs, U, Some("dom0-a")).await;
    assert_eq!(peer_b.record().configs.len(), 0, "b pushed while a owns it");

    // `xl destroy` on a: a gives the domain up and b claims it, with nothing pushed again
    // (the agent reports generation 1, which etcd holds as applied).
    ha.xs.release_domain(5).unwrap();
    owner_is(&obs, U, Some("dom0-b")).await;
    b.wait_domain("web1", "configured on b", |v| {
        v.connected && v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    assert_eq!(
        peer_b.record().configs.len(),
        0,
        "b pushed what was applied"
    );

    // b serves it: a new configuration through a reaches the agent through b.
    let v = a
        .client
        .put_config(
            "web1",
            &sample_config("web1.example.com", "192.0.2.10/25"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(v.desired_generation, Some(2));
    peer_b
        .wait("generation 2 through b", |r| r.results == 1)
        .await;
    applied_in_etcd(&obs, U, 2).await;

    // `xl destroy` on b too: nobody owns it.
    hb.xs.release_domain(9).unwrap();
    owner_is(&obs, U, None).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
