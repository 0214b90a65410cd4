//! Cluster mode: the migration hand-off (libvirt's lock-manager rules) and host loss,
//! with two brokers on one real etcd and fake agents that keep what they applied when
//! their VM moves (docs/CLUSTER.md).

mod support;

#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;

mod cluster_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cluster_support::{applied_in_etcd, cluster_config, observer, owner_is};
use support::{
    DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until, write_config,
};
use tokio::process::{Child, Command};
use xenchan_broker::api::types::{DomainState, MigratePrepareRequest, PrepareRequest};
use xenchan_broker::client::{Client, ClientError};
use xenchan_broker::config::Config;
use xenchan_cluster::{Cluster, Uuid};

const U: &str = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";
const THIEF: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

macro_rules! require_etcd {
    () => {
        if etcd::etcd_binary().is_none() {
            eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
            return;
        }
    };
}

/// The agent of VM `U`, with what it applied so far (its state file moves with the VM).
fn vm_peer(applied: Option<xenchan_protocol::message::Applied>) -> PeerOptions {
    PeerOptions {
        uuid: Some(U.to_string()),
        applied,
        ..PeerOptions::default()
    }
}

fn uuid_req() -> PrepareRequest {
    PrepareRequest {
        uuid: Some(U.into()),
        ..PrepareRequest::default()
    }
}

/// Another VM PUT with web1's address through `broker` is refused, naming web1.
async fn lease_still_held(broker: &Client, when: &str) {
    let e = broker
        .put_config(
            "thief",
            &sample_config("thief.example.com", "192.0.2.10/24"),
            Some(THIEF),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{when}: {e:?}");
    let ClientError::Api { error, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(error.domain.as_deref(), Some("web1"), "{when}: {error:?}");
}

fn api_error(e: &ClientError) -> &xenchan_broker::api::types::ApiError {
    match e {
        ClientError::Api { error, .. } => error,
        other => panic!("not a refusal: {other:?}"),
    }
}

/// A prepare on b refused because a runs the domain: 409, `path` "owner", `domain` the
/// owner, and a message saying why and what to do.
fn refused_as_running_on_a(e: &ClientError) {
    assert_eq!(e.status(), Some(409), "{e:?}");
    let error = api_error(e);
    assert_eq!(
        (error.path.as_deref(), error.domain.as_deref()),
        (Some("owner"), Some("dom0-a")),
        "{error:?}"
    );
    for words in [
        "runs on dom0-a",
        "two hosts",
        "migrate it",
        "lease has expired",
    ] {
        assert!(
            error.error.contains(words),
            "{words:?} not in {:?}",
            error.error
        );
    }
}

/// web1 (VM `U`) runs on `a`, configured at generation 1; etcd has it as applied.
async fn running_on_a(a: &Client, da: &Dirs, obs: &Cluster) -> TestPeer {
    a.prepare("web1", &uuid_req()).await.unwrap();
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    assert_eq!(
        a.put_config("web1", &cfg, Some(U))
            .await
            .unwrap()
            .desired_generation,
        Some(1)
    );
    let peer = TestPeer::start(&da.sockets(), "web1", vm_peer(None));
    peer.wait("the first push", |r| r.results == 1).await;
    applied_in_etcd(obs, U, 1).await;
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_complete_moves_the_domain_and_pushes_nothing_again() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m1/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m1/", "dom0-b")).await;
    let obs = observer(&url, "/m1/").await;
    let mut peer_a = running_on_a(&a.client, &da, &obs).await;

    // prepare on the destination: b is incoming, a still owns, the domain shows on b.
    let rev0 = obs.revision().await.unwrap();
    let step = b
        .client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (
            step.owner.as_deref(),
            step.incoming.as_deref(),
            step.changed
        ),
        (Some("dom0-a"), Some("dom0-b"), true)
    );
    assert_eq!(step.name.as_deref(), Some("web1"));
    let rev1 = obs.revision().await.unwrap();
    owner_is(&obs, U, Some("dom0-a")).await;
    let v = b.client.get_domain("web1").await.unwrap();
    assert_eq!(v.desired_generation, Some(1), "{v:?}");
    assert_eq!(v.uuid.as_deref(), Some(U));
    // Again: the same migration, nothing changes.
    let again = b
        .client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap();
    assert!(!again.changed);
    // Another destination while b is prepared: 409 naming b.
    let e = a
        .client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e:?}");
    assert_eq!(api_error(&e).path.as_deref(), Some("incoming"));
    assert_eq!(api_error(&e).domain.as_deref(), Some("dom0-b"));
    // Completing is the destination's call: a is not the prepared destination.
    let e = a.client.migrate_complete(U).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e:?}");
    assert_eq!(api_error(&e).domain.as_deref(), Some("dom0-b"));
    // The VM's lease is held during the migration, through either broker.
    lease_still_held(&a.client, "during the migration, through a").await;
    lease_still_held(&b.client, "during the migration, through b").await;

    // complete: ownership moves to b.
    let rev2 = obs.revision().await.unwrap();
    let step = b.client.migrate_complete(U).await.unwrap();
    eprintln!(
        "etcd revisions: prepare {}, complete {}",
        rev1 - rev0,
        obs.revision().await.unwrap() - rev2
    );
    assert_eq!(
        (
            step.owner.as_deref(),
            step.incoming.as_deref(),
            step.changed
        ),
        (Some("dom0-b"), None, true)
    );
    owner_is(&obs, U, Some("dom0-b")).await;
    assert!(!b.client.migrate_complete(U).await.unwrap().changed);

    // The VM now runs on b: its agent (with what it applied) on b's socket; a's gone.
    let applied = peer_a.record().applied;
    assert_eq!(applied.as_ref().map(|x| x.generation), Some(1));
    peer_a.remove();
    let peer_b = TestPeer::start(&db.sockets(), "web1", vm_peer(applied));
    b.wait_domain("web1", "configured on b without a push", |v| {
        v.connected && v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    // The source's libvirt releases it: a does not own it, so nothing changes.
    a.client.release("web1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    owner_is(&obs, U, Some("dom0-b")).await;
    assert_eq!(
        peer_b.record().configs.len(),
        0,
        "the destination pushed again"
    );
    assert_eq!(peer_a.record().configs.len(), 1, "one push in all");

    // A PUT through the old source reaches the new owner's agent, once.
    let cfg2 = sample_config("web1.example.com", "192.0.2.10/25");
    let v = a.client.put_config("web1", &cfg2, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(2));
    peer_b.wait("generation 2 on b", |r| r.results == 1).await;
    lease_still_held(&a.client, "after the migration").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer_b.record().configs.len(), 1);
    assert_eq!(peer_a.record().configs.len(), 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_leaves_the_source_owning() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m2/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m2/", "dom0-b")).await;
    let obs = observer(&url, "/m2/").await;
    let peer_a = running_on_a(&a.client, &da, &obs).await;

    b.client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap();
    lease_still_held(&b.client, "while prepared").await;
    let step = b.client.migrate_cancel(U).await.unwrap();
    assert_eq!(
        (
            step.owner.as_deref(),
            step.incoming.as_deref(),
            step.changed
        ),
        (Some("dom0-a"), None, true)
    );
    assert!(
        !b.client.migrate_cancel(U).await.unwrap().changed,
        "a repeat changes nothing"
    );
    // b no longer follows the domain; completing now is refused naming what is missing.
    let e = b.client.get_domain("web1").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e:?}");
    let e = b.client.migrate_complete(U).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e:?}");
    assert_eq!(api_error(&e).path.as_deref(), Some("incoming"));
    assert!(api_error(&e).error.contains("no migration"), "{e:?}");
    owner_is(&obs, U, Some("dom0-a")).await;

    // The source still runs it: a PUT through b reaches a's agent.
    let cfg2 = sample_config("web1.example.com", "192.0.2.10/25");
    b.client.put_config("web1", &cfg2, Some(U)).await.unwrap();
    peer_a.wait("generation 2 on a", |r| r.results == 2).await;
    lease_still_held(&a.client, "after the cancel").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// libvirt's failed incoming migration: `migrate begin`, `prepare begin` on the
/// destination, then `release end` there without the VM ever running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_released_on_the_destination_leaves_the_source_owning() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m3/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m3/", "dom0-b")).await;
    let obs = observer(&url, "/m3/").await;
    let peer_a = running_on_a(&a.client, &da, &obs).await;
    let u = Uuid::parse(U).unwrap();

    b.client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap();
    b.client.prepare("web1", &uuid_req()).await.unwrap();
    owner_is(&obs, U, Some("dom0-a")).await;
    b.client.release("web1").await.unwrap();
    let o = obs.ownership(&u).await.unwrap();
    assert_eq!(
        (o.owner.as_deref(), o.incoming.as_deref()),
        (Some("dom0-a"), None),
        "the release on the destination cancelled the migration"
    );
    lease_still_held(&b.client, "after the failed migration").await;
    // The source still serves it.
    let cfg2 = sample_config("web1.example.com", "192.0.2.10/25");
    a.client.put_config("web1", &cfg2, None).await.unwrap();
    peer_a.wait("generation 2 on a", |r| r.results == 2).await;
    // When the source stops it, the destination (released) does not take it.
    a.client.release("web1").await.unwrap();
    owner_is(&obs, U, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(obs.ownership(&u).await.unwrap().owner, None);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_with_the_embedded_store_is_refused_naming_the_backend() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    for e in [
        broker
            .client
            .migrate_prepare(U, &MigratePrepareRequest::default())
            .await
            .unwrap_err(),
        broker.client.migrate_complete(U).await.unwrap_err(),
        broker.client.migrate_cancel(U).await.unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(400), "{e:?}");
        assert_eq!(api_error(&e).path.as_deref(), Some("store.backend"));
        assert!(api_error(&e).error.contains("etcd"), "{e:?}");
    }
    let e = broker.client.migrate_complete("web1").await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e:?}");
    assert_eq!(api_error(&e).path.as_deref(), Some("uuid"));
    let (status, _) = broker
        .client
        .request(
            hyper::Method::POST,
            &format!("/v1/domains/{U}/migrate/abort"),
            Some(Vec::new()),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 404);
    broker.stop().await.unwrap();
}

/// A broker child process (kill -9 is a lost host: no goodbye, its etcd lease expires).
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

    async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert!(!status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_domain_restarted_elsewhere_is_claimed_and_not_pushed_again() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let config_a = cluster_config(&da, &url, "/m4/", "dom0-a");
    let a = ChildBroker::spawn(&write_config(da.root.path(), &config_a), &config_a).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m4/", "dom0-b")).await;
    let obs = observer(&url, "/m4/").await;
    let mut peer_a = running_on_a(&a.client, &da, &obs).await;
    owner_is(&obs, U, Some("dom0-a")).await;
    // A PUT through b (cached there at generation 2), then one through a (3): b's cache
    // is stale, and must not be what b pushes when the VM comes to it.
    let cfg = |n: u8| sample_config("web1.example.com", &format!("192.0.2.10/{n}"));
    b.client
        .put_config("web1", &cfg(25), Some(U))
        .await
        .unwrap();
    let v = a.client.put_config("web1", &cfg(26), None).await.unwrap();
    assert_eq!(v.desired_generation, Some(3));
    peer_a.wait("generation 3 on a", |r| r.results == 3).await;
    applied_in_etcd(&obs, U, 3).await;

    // Host a dies; the VM is restarted on b at once, its agent keeping what it applied.
    // While a's lease lives, b cannot know a is dead: the start is refused naming a (the
    // lock-manager rule), and the orchestrator retries until a's lease expires.
    a.kill9().await;
    let died = std::time::Instant::now();
    let applied = peer_a.record().applied;
    peer_a.remove();
    let e = b.client.prepare("web1", &uuid_req()).await.unwrap_err();
    refused_as_running_on_a(&e);
    let mut refusals = 1;
    while let Err(e) = b.client.prepare("web1", &uuid_req()).await {
        refused_as_running_on_a(&e);
        refusals += 1;
        assert!(
            died.elapsed() < DEADLINE,
            "still refused after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "b's prepare accepted {:?} after a was killed ({refusals} refusals; host TTL 2 s)",
        died.elapsed()
    );
    let peer_b = TestPeer::start(&db.sockets(), "web1", vm_peer(applied));
    owner_is(&obs, U, Some("dom0-b")).await;
    eprintln!(
        "b owns the domain {:?} after a was killed (host TTL 2 s)",
        died.elapsed()
    );
    b.wait_domain("web1", "configured on b", |v| {
        v.connected
            && v.state == DomainState::Configured
            && v.desired_generation == Some(3)
            && v.applied_generation == Some(3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        peer_b.record().configs.len(),
        0,
        "b pushed to an agent that had applied the current generation"
    );
    lease_still_held(&b.client, "after the host loss").await;
    // The desired state survived the host: the next PUT is generation 4, pushed once.
    let v = b.client.put_config("web1", &cfg(27), None).await.unwrap();
    assert_eq!(v.desired_generation, Some(4));
    peer_b.wait("generation 4", |r| r.results == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer_b.record().configs.len(), 1);
    b.stop().await.unwrap();
}

/// Without lifecycle calls (socket-folder discovery only, as with plain `xl create`): a
/// socket appearing is a start, its VM UUID the one recorded by the operator's PUT for
/// that name. a claims web1 when its socket appears; a dies; the VM restarted on b (its
/// socket in b's folder) is claimed by b once a's lease expires and configured with
/// nothing pushed again; its socket going away gives ownership up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_folder_domain_is_claimed_where_its_socket_appears_and_after_host_loss() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let config_a = cluster_config(&da, &url, "/m8/", "dom0-a");
    let a = ChildBroker::spawn(&write_config(da.root.path(), &config_a), &config_a).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m8/", "dom0-b")).await;
    let obs = observer(&url, "/m8/").await;
    let cfg = |n: u8| sample_config("web1.example.com", &format!("192.0.2.10/{n}"));
    a.client
        .put_config("web1", &cfg(24), Some(U))
        .await
        .unwrap();
    owner_is(&obs, U, None).await;
    let peer_a = TestPeer::start(&da.sockets(), "web1", vm_peer(None));
    owner_is(&obs, U, Some("dom0-a")).await;
    peer_a.wait("the first push", |r| r.results == 1).await;
    // A PUT through b (which records the UUID for the name there too) reaches a.
    let v = b
        .client
        .put_config("web1", &cfg(25), Some(U))
        .await
        .unwrap();
    assert_eq!(v.desired_generation, Some(2));
    peer_a.wait("generation 2 on a", |r| r.results == 2).await;
    applied_in_etcd(&obs, U, 2).await;

    a.kill9().await;
    let died = std::time::Instant::now();
    let applied = peer_a.record().applied;
    let mut peer_a = peer_a;
    peer_a.remove();
    let mut peer_b = TestPeer::start(&db.sockets(), "web1", vm_peer(applied));
    owner_is(&obs, U, Some("dom0-b")).await;
    eprintln!(
        "b owns the domain {:?} after a was killed (host TTL 2 s)",
        died.elapsed()
    );
    b.wait_domain("web1", "configured on b", |v| {
        v.connected && v.state == DomainState::Configured && v.applied_generation == Some(2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer_b.record().configs.len(), 0, "b pushed again");
    let v = b.client.put_config("web1", &cfg(26), None).await.unwrap();
    assert_eq!(v.desired_generation, Some(3));
    peer_b.wait("generation 3 on b", |r| r.results == 1).await;
    applied_in_etcd(&obs, U, 3).await;
    // The VM stops on b (its socket goes away): ownership is given up.
    peer_b.remove();
    owner_is(&obs, U, None).await;
    b.stop().await.unwrap();
}

/// libvirt's lock-manager rule: a VM runs on one host. Starting it on b while a runs it
/// (no migration prepared) is refused before anything changes on b; after a stops it,
/// b may start it, and b owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_domain_another_live_host_runs_is_refused_naming_that_host() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m6/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m6/", "dom0-b")).await;
    let obs = observer(&url, "/m6/").await;
    let peer_a = running_on_a(&a.client, &da, &obs).await;

    let e = b.client.prepare("web1", &uuid_req()).await.unwrap_err();
    refused_as_running_on_a(&e);
    assert!(
        api_error(&e).error.contains("in at most"),
        "the owner's lease expiry is named: {e:?}"
    );
    owner_is(&obs, U, Some("dom0-a")).await;
    // Nothing was registered on b.
    let e = b.client.get_domain("web1").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e:?}");
    // a still serves it.
    let cfg2 = sample_config("web1.example.com", "192.0.2.10/25");
    b.client.put_config("web1", &cfg2, Some(U)).await.unwrap();
    peer_a.wait("generation 2 on a", |r| r.results == 2).await;

    // a stops it: b may start it now, and owns it.
    a.client.release("web1").await.unwrap();
    owner_is(&obs, U, None).await;
    b.client.prepare("web1", &uuid_req()).await.unwrap();
    owner_is(&obs, U, Some("dom0-b")).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Two hosts starting one VM at the same moment: exactly one runs it; the other is
/// refused naming it and keeps nothing running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_starting_one_domain_at_once_have_one_winner() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m7/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m7/", "dom0-b")).await;
    let obs = observer(&url, "/m7/").await;
    for n in 0..20 {
        let (name, uuid) = (
            format!("vm{n}"),
            format!("00000000-0000-4000-8000-{n:012x}"),
        );
        let req = PrepareRequest {
            uuid: Some(uuid.clone()),
            ..PrepareRequest::default()
        };
        let (ra, rb) = tokio::join!(a.client.prepare(&name, &req), b.client.prepare(&name, &req));
        let (winner, loser, e) = match (ra, rb) {
            (Ok(_), Err(e)) => ("dom0-a", &b, e),
            (Err(e), Ok(_)) => ("dom0-b", &a, e),
            r => panic!("{name}: both or neither started: {r:?}"),
        };
        assert_eq!(e.status(), Some(409), "{e:?}");
        assert_eq!(api_error(&e).domain.as_deref(), Some(winner));
        owner_is(&obs, &uuid, Some(winner)).await;
        if let Ok(v) = loser.client.get_domain(&name).await {
            assert_ne!(
                v.lifecycle,
                Some(xenchan_broker::api::types::Lifecycle::Running),
                "{name}: the refused host marked it running: {v:?}"
            );
        }
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A migration completed early (libvirt's qemu driver runs `started` on the destination
/// before the memory is copied) and then failed: the destination releases the domain,
/// and the source, still running it, takes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_migration_that_fails_returns_the_domain_to_the_source() {
    require_etcd!();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &url, "/m5/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &url, "/m5/", "dom0-b")).await;
    let obs = observer(&url, "/m5/").await;
    let peer_a = running_on_a(&a.client, &da, &obs).await;

    b.client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap();
    b.client.prepare("web1", &uuid_req()).await.unwrap();
    b.client.migrate_complete(U).await.unwrap();
    owner_is(&obs, U, Some("dom0-b")).await;
    // The migration fails after all: libvirt stops the destination's domain.
    b.client.release("web1").await.unwrap();
    owner_is(&obs, U, Some("dom0-a")).await;
    // a serves it again: a PUT through b reaches a's agent, once.
    let cfg2 = sample_config("web1.example.com", "192.0.2.10/25");
    b.client.put_config("web1", &cfg2, None).await.unwrap();
    peer_a.wait("generation 2 on a", |r| r.results == 2).await;
    lease_still_held(&b.client, "after the failed hand-off").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer_a.record().configs.len(), 2);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_refuses_migration_steps_naming_it() {
    require_etcd!();
    let mut server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let db = Dirs::new();
    let b = TestBroker::start(cluster_config(&db, &url, "/m6/", "dom0-b")).await;
    server.kill();
    let e = b
        .client
        .migrate_prepare(U, &MigratePrepareRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    let text = api_error(&e).error.clone();
    assert!(
        text.contains("etcd") && text.contains(&url),
        "the 503 names etcd and its endpoint: {text}"
    );
    let e = b.client.migrate_complete(U).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    b.stop().await.unwrap();
}
