//! `discovery = "xenstore"` against the xenstore crate's test server: a domain introduced
//! with a channel is discovered and configured; released -> its session stops; rebooted
//! (new domid, same UUID and name) -> re-attached with nothing pushed again; backends of
//! another channel or with `connection=pty` are ignored; a domain without a `vm` node
//! works by name; xenstore going away and coming back. Test peers play QEMU + agent on
//! the socket paths the backends name.

mod support;

use std::path::{Path, PathBuf};

use support::{DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_broker::api::types::{DomainState, DomainView};
use xenchan_broker::client::Client;
use xenchan_broker::config::{Config, Discovery};
use xenchan_xenstore::layout;
use xenchan_xenstore::server::Server;

const CHANNEL: &str = xenchan_protocol::DEFAULT_CHANNEL;
const U1: &str = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";
const U2: &str = "0b8e9c1d-2f3a-4b5c-8d7e-6f5a4b3c2d1e";
const U3: &str = "9d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09";

/// The broker's configuration for xenstore discovery over `xs_sock`, and a folder for
/// the "QEMU" sockets (not the socket folder: xenstore says where they are).
fn setup(dirs: &Dirs) -> (Config, PathBuf, PathBuf) {
    let xs_sock = dirs.root.path().join("xs.sock");
    let qemu = dirs.root.path().join("qemu");
    std::fs::create_dir_all(&qemu).unwrap();
    let mut config = dirs.config();
    config.discovery = Discovery::Xenstore;
    config.xenstore_path = Some(xs_sock.clone());
    config.timeouts.xenstore = 2000;
    (config, xs_sock, qemu)
}

fn agent(uuid: Option<&str>) -> PeerOptions {
    PeerOptions {
        uuid: uuid.map(str::to_string),
        ..PeerOptions::default()
    }
}

/// A metric's value (0 if absent).
async fn metric(client: &Client, name: &str) -> u64 {
    let text = client.metrics().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn wait_metric(client: &Client, name: &str, what: &str, cond: impl Fn(u64) -> bool) {
    let cond = &cond;
    wait_until(what, DEADLINE, || async move {
        cond(metric(client, name).await).then_some(())
    })
    .await;
}

fn configured_on(v: &DomainView, domid: u32) -> bool {
    v.state == DomainState::Configured && v.connected && v.domid == Some(domid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_is_discovered_configured_released_and_reattached_after_reboot() {
    let dirs = Dirs::new();
    let (config, xs_sock, qemu) = setup(&dirs);
    let xs = Server::new();
    let _xs_listener = xs.listen(&xs_sock, 0).unwrap();
    let peer = TestPeer::start(&qemu, "web1", agent(Some(U1)));
    let broker = TestBroker::start(config).await;
    broker
        .client
        .put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();

    xs.introduce_domain(5, "web1", U1).unwrap();
    xs.add_channel(5, 1, CHANNEL, &peer.path).unwrap();
    let rec = peer.wait("the pushed config", |r| r.results == 1).await;
    let hello = &rec.hellos[0];
    assert_eq!(hello.domain.as_deref(), Some("web1"));
    assert_eq!(
        hello.uuid.as_deref(),
        Some(U1),
        "the UUID comes from xenstore"
    );
    let v = broker
        .wait_domain("web1", "configured on domid 5", |v| configured_on(v, 5))
        .await;
    assert_eq!(v.uuid.as_deref(), Some(U1));
    assert_eq!(v.socket.as_deref(), Some(peer.path.as_path()));

    // The domain is destroyed: the session stops (bye), the domain waits.
    xs.release_domain(5).unwrap();
    peer.wait("the broker's bye", |r| r.byes == 1).await;
    let v = broker
        .wait_domain("web1", "pending after release", |v| {
            v.state == DomainState::Pending && !v.connected && v.domid.is_none()
        })
        .await;
    assert_eq!(v.desired_generation, Some(1), "the configuration stays");

    // xl reboot: the same name and UUID come back with a new domid.
    xs.introduce_domain(6, "web1", U1).unwrap();
    xs.add_channel(6, 1, CHANNEL, &peer.path).unwrap();
    peer.wait("a second session", |r| r.hellos.len() == 2).await;
    broker
        .wait_domain("web1", "configured on domid 6", |v| configured_on(v, 6))
        .await;

    // Release and introduce in one burst (the broker may see them in one scan): the
    // session moves to the new domid all the same.
    xs.release_domain(6).unwrap();
    xs.introduce_domain(7, "web1", U1).unwrap();
    xs.add_channel(7, 1, CHANNEL, &peer.path).unwrap();
    peer.wait("a third session", |r| r.hellos.len() == 3).await;
    broker
        .wait_domain("web1", "configured on domid 7", |v| configured_on(v, 7))
        .await;

    let rec = peer.record();
    assert_eq!(
        rec.configs.len(),
        1,
        "the applied generation is never pushed again"
    );
    assert_eq!(
        rec.max_open, 1,
        "never two connections to one socket: {rec:?}"
    );
    assert!(rec.hellos.iter().all(|h| h.uuid.as_deref() == Some(U1)));
    broker.stop().await.unwrap();
}

/// Writes a console backend by hand, `name` last, so that no scan ever sees it half
/// written as a socket channel.
fn write_backend(xs: &Server, domid: u32, devid: u32, name: &str, connection: &str, path: &Path) {
    let dir = layout::backend_path(domid, devid);
    let at = |k: &str| format!("{dir}/{k}");
    xs.write(&at("connection"), connection, None).unwrap();
    xs.write(&at("path"), path.to_str().unwrap(), None).unwrap();
    xs.write(&at("state"), "4", None).unwrap();
    xs.write(&at("name"), name, None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_channels_and_pty_backends_are_ignored_and_a_missing_vm_node_is_fine() {
    let dirs = Dirs::new();
    let (config, xs_sock, qemu) = setup(&dirs);
    let xs = Server::new();
    let _xs_listener = xs.listen(&xs_sock, 0).unwrap();
    let broker = TestBroker::start(config).await;

    // Another channel's backend, and a pty backend of ours: neither is a socket for us.
    let other = TestPeer::start(&qemu, "other", agent(Some(U2)));
    xs.introduce_domain(7, "other", U2).unwrap();
    xs.add_channel(7, 1, "org.example.other.1", &other.path)
        .unwrap();
    let pty = TestPeer::start(&qemu, "ptyvm", agent(None));
    xs.introduce_domain(8, "ptyvm", "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9")
        .unwrap();
    write_backend(&xs, 8, 1, CHANNEL, "pty", &pty.path);

    // A domain whose `vm` node is missing: it goes by its name.
    let novm = TestPeer::start(&qemu, "novm", agent(Some(U3)));
    xs.introduce_domain(9, "novm", U3).unwrap();
    xs.rm(&format!("{}/vm", layout::domain_path(9))).unwrap();
    xs.add_channel(9, 1, CHANNEL, &novm.path).unwrap();
    broker
        .client
        .put_config("novm", &sample_config("novm", "192.0.2.11/24"), None)
        .await
        .unwrap();
    let rec = novm.wait("the pushed config", |r| r.results == 1).await;
    assert_eq!(rec.hellos[0].uuid, None, "no UUID known for it");
    let v = broker
        .wait_domain("novm", "configured", |v| configured_on(v, 9))
        .await;
    assert_eq!(v.uuid, None);
    assert_eq!(v.reported_uuid.as_deref(), Some(U3));

    // Each scan is a full snapshot and novm was added last: the others were seen, and
    // ignored.
    let names: Vec<String> = broker
        .client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["novm"]);
    assert_eq!(other.record().connections, 0);
    assert_eq!(pty.record().connections, 0);

    // A second channel of ours on the same domain does not start a second session.
    write_backend(&xs, 9, 2, CHANNEL, "socket", &other.path);
    xs.release_domain(7).unwrap();
    let extra = TestPeer::start(&qemu, "late", agent(None));
    xs.introduce_domain(10, "late", "2c3d4e5f-6071-4829-93a4-b5c6d7e8f9a0")
        .unwrap();
    xs.add_channel(10, 1, CHANNEL, &extra.path).unwrap();
    extra.wait("its hello", |r| r.hellos.len() == 1).await;
    assert_eq!(
        other.record().connections,
        0,
        "console 2 of novm is ignored"
    );
    assert_eq!(novm.record().connections, 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xenstore_going_away_and_coming_back() {
    let dirs = Dirs::new();
    let (config, xs_sock, qemu) = setup(&dirs);
    let xs = Server::new();
    let web1 = TestPeer::start(&qemu, "web1", agent(Some(U1)));
    let db1 = TestPeer::start(&qemu, "db1", agent(Some(U2)));
    xs.introduce_domain(5, "web1", U1).unwrap();
    xs.add_channel(5, 1, CHANNEL, &web1.path).unwrap();

    // No xenstore yet: the broker starts all the same (its API answers) and keeps trying.
    let broker = TestBroker::start(config).await;
    let c = &broker.client;
    assert_eq!(c.list().await.unwrap(), Vec::new());
    let listener = xs.listen(&xs_sock, 0).unwrap();
    web1.wait("a session once xenstore is up", |r| r.hellos.len() == 1)
        .await;
    wait_metric(c, "xenchan_xenstore_connected", "xenstore up", |v| v == 1).await;
    broker
        .wait_domain("web1", "idle on domid 5", |v| {
            v.state == DomainState::Idle && v.domid == Some(5)
        })
        .await;

    // xenstore goes away: the session with QEMU stays up.
    listener.stop();
    wait_metric(
        c,
        "xenchan_xenstore_connected",
        "xenstore down again",
        |v| v == 0,
    )
    .await;
    let v = c.get_domain("web1").await.unwrap();
    assert!(v.connected, "{v:?}");
    assert_eq!(web1.record().byes, 0);

    // Meanwhile web1 is destroyed and db1 starts.
    xs.release_domain(5).unwrap();
    xs.introduce_domain(6, "db1", U2).unwrap();
    xs.add_channel(6, 1, CHANNEL, &db1.path).unwrap();

    // xenstore is back: what changed is reconciled.
    let _listener = xs.listen(&xs_sock, 0).unwrap();
    db1.wait("db1's session", |r| r.hellos.len() == 1).await;
    web1.wait("web1's session stopped", |r| r.byes == 1).await;
    // Nothing was configured for it: it is forgotten.
    wait_until("web1 forgotten", DEADLINE, || async {
        (c.get_domain("web1").await.err()?.status() == Some(404)).then_some(())
    })
    .await;
    wait_metric(
        c,
        "xenchan_xenstore_connections_total",
        "a reconnection",
        |v| v >= 2,
    )
    .await;
    let db = c.get_domain("db1").await.unwrap();
    assert_eq!(db.uuid.as_deref(), Some(U2));
    broker.stop().await.unwrap();
}

fn vm_uuid(d: u32) -> String {
    format!("00000000-0000-4000-8000-{d:012x}")
}

/// A domain as a toolstack makes it: introduced, then its channel's backend.
fn create_vm(xs: &Server, qemu: &Path, d: u32) {
    xs.introduce_domain(d, &format!("vm{d}"), &vm_uuid(d))
        .unwrap();
    xs.add_channel(d, 1, CHANNEL, qemu.join(format!("vm{d}.sock")))
        .unwrap();
}

async fn event_requests(c: &Client) -> u64 {
    metric(c, "xenchan_xenstore_requests_total{cause=\"event\"}").await
}

/// Creates and destroys one domain at a time, `rounds` times from domid `first`, and
/// returns the median xenstore requests the broker made per create and per destroy.
async fn churn(
    broker: &TestBroker,
    xs: &Server,
    qemu: &Path,
    first: u32,
    rounds: u32,
) -> (u64, u64) {
    let c = &broker.client;
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for d in first..first + rounds {
        let name = format!("vm{d}");
        let before = event_requests(c).await;
        create_vm(xs, qemu, d);
        broker
            .wait_domain(&name, "discovered", |v| v.domid == Some(d))
            .await;
        let mid = event_requests(c).await;
        xs.release_domain(d).unwrap();
        wait_until("the domain forgotten", DEADLINE, || {
            let name = name.clone();
            async move { c.get_domain(&name).await.is_err().then_some(()) }
        })
        .await;
        ups.push(mid - before);
        downs.push(event_requests(c).await - mid);
    }
    ups.sort_unstable();
    downs.sort_unstable();
    (ups[ups.len() / 2], downs[downs.len() / 2])
}

/// Runs domains 1..=n (those not running yet are created) and waits until the broker
/// lists them all.
async fn grow_to(broker: &TestBroker, xs: &Server, qemu: &Path, n: u32) {
    for d in 1..=n {
        if xs.read(&layout::domain_path(d)).unwrap().is_none() {
            create_vm(xs, qemu, d);
        }
    }
    let c = &broker.client;
    let n = n as usize;
    wait_until("every domain discovered", DEADLINE, || async move {
        (c.list().await.unwrap_or_default().len() == n).then_some(())
    })
    .await;
}

/// Issue 16: an `@introduceDomain`/`@releaseDomain` (and the backend nodes a toolstack
/// writes with it) costs xenstore requests for that domain only, not a rescan of every
/// running domain: the cost of one domain created and destroyed is the same with 10 and
/// with 200 others running. (A full rescan reads about seven nodes per running domain.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_costs_requests_for_its_domain_only() {
    let dirs = Dirs::new();
    let (mut config, xs_sock, qemu) = setup(&dirs);
    // No session connects (no QEMU behind the sockets): retry slowly, and keep the
    // periodic rescan out of the way (it is counted apart anyway).
    config.timeouts.reconnect_min = 5000;
    config.timeouts.reconnect_max = 30_000;
    let xs = Server::new();
    let _xs_listener = xs.listen(&xs_sock, 0).unwrap();
    let broker = TestBroker::start(config).await;

    grow_to(&broker, &xs, &qemu, 10).await;
    let small = churn(&broker, &xs, &qemu, 10_001, 5).await;
    grow_to(&broker, &xs, &qemu, 200).await;
    let large = churn(&broker, &xs, &qemu, 20_001, 5).await;
    eprintln!(
        "xenstore requests per domain created / destroyed: {} / {} with 10 running, {} / {} with 200",
        small.0, small.1, large.0, large.1
    );
    // Reading one domain takes 7 requests (its backend folder, the channel's name,
    // connection and path, the domain's name, vm and uuid) and listing the backend
    // folder one; the events of one toolstack step may arrive in two batches, so a
    // domain may be read twice. A rescan of 200 domains is about 1,400.
    assert!(
        small.0 > 0 && small.1 > 0,
        "the broker counts its xenstore requests: {small:?}"
    );
    assert!(
        large.0 < 40 && large.1 < 20 && large.0 <= 3 * small.0 && large.1 <= 3 * small.1,
        "the cost of an event grows with the domains running: {small:?} with 10, {large:?} with 200"
    );
    broker.stop().await.expect("clean stop");
}
