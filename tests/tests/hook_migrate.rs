//! `xenchan hook` in cluster mode, run as libvirtd runs it on both hosts of a migration
//! (two brokers on one real etcd): `migrate begin` on the destination prepares the
//! hand-off, `started begin` there completes it, `release end` on the destination
//! before any `started` cancels it; a refused hand-off aborts the migration. With the
//! embedded store the migration calls are nothing to do.

#[path = "../../broker/tests/support/mod.rs"]
mod support;

#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_api::types::DomainState;
use xenchan_broker::config::{Backend, Config};
use xenchan_cluster::{Cluster, Uuid};

const U_WEB1: &str = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";

fn fixture(name: &str, socket_dir: &Path) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p)
        .unwrap()
        .replace("@SOCKET_DIR@", socket_dir.to_str().unwrap())
        .replace("@ROOT@", socket_dir.parent().unwrap().to_str().unwrap())
        .into_bytes()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The hook's config file of a host (the packaged /etc/xenchan/hook.toml).
fn hook_conf(dirs: &Dirs, control: &Path) -> std::path::PathBuf {
    let conf = dirs.root.path().join("hook.toml");
    std::fs::write(&conf, format!("socket = \"{}\"\n", control.display())).unwrap();
    conf
}

/// Runs the hook as libvirtd does: argv, the XML on stdin, no environment but
/// `LC_ALL`, `PATH` and `HOME`.
async fn as_libvirt(conf: &Path, argv: [&str; 4], xml: Vec<u8>) -> Output {
    let mut args: Vec<String> = ["hook", "--syslog", "none", "--config"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    args.push(conf.to_str().unwrap().into());
    args.push("--".into());
    args.extend(argv.iter().map(|s| (*s).to_string()));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(xenchan_e2e::cli_binary())
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&xml);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    })
    .await
    .unwrap()
}

/// One libvirt call that must succeed silently (nothing on stdout: libvirt would take it
/// as a replacement XML for `migrate`).
async fn quiet(conf: &Path, argv: [&str; 4], xml: &[u8]) {
    let o = as_libvirt(conf, argv, xml.to_vec()).await;
    assert_eq!(o.status.code(), Some(0), "{argv:?}: {}", text(&o));
    assert!(o.stdout.is_empty(), "{argv:?}: {}", text(&o));
    assert!(o.stderr.is_empty(), "{argv:?}: {}", text(&o));
}

fn cluster_config(dirs: &Dirs, url: &str, host: &str) -> Config {
    let mut c = dirs.config();
    c.store.backend = Backend::Etcd;
    c.store.endpoints = vec![url.to_string()];
    c.store.prefix = "/hook/".into();
    c.store.host = Some(host.to_string());
    c.store.timeouts.connect = 500;
    c.store.timeouts.request = 3000;
    c.store.timeouts.host_ttl = 2000;
    c.timeouts.request = 8000; // below the hook's deadline (10 s)
    c
}

async fn ownership(obs: &Cluster) -> (Option<String>, Option<String>) {
    let o = obs.ownership(&Uuid::parse(U_WEB1).unwrap()).await.unwrap();
    (o.owner, o.incoming)
}

fn own(owner: &str, incoming: Option<&str>) -> (Option<String>, Option<String>) {
    (Some(owner.to_string()), incoming.map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_migration_hooks_hand_the_domain_over_and_a_failed_one_leaves_it() {
    if etcd::etcd_binary().is_none() {
        eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
        return;
    }
    xenchan_e2e::cli_binary();
    let server = etcd::Etcd::start().await;
    let url = server.client_url.clone();
    let (da, db) = (Dirs::new(), Dirs::new());
    let (ca, cb) = (
        cluster_config(&da, &url, "dom0-a"),
        cluster_config(&db, &url, "dom0-b"),
    );
    let (conf_a, conf_b) = (
        hook_conf(&da, &ca.control_socket),
        hook_conf(&db, &cb.control_socket),
    );
    let a = TestBroker::start(ca).await;
    let b = TestBroker::start(cb).await;
    let obs = etcd::connect(
        std::slice::from_ref(&url),
        "/hook/",
        "observer",
        etcd::quick(),
    )
    .await;
    let (xml_a, xml_b) = (
        fixture("xen-pv.xml", &da.sockets()),
        fixture("xen-pv.xml", &db.sockets()),
    );

    // `virsh start web1` on host a, configured through a.
    for op in [
        ["web1", "prepare", "begin", "-"],
        ["web1", "start", "begin", "-"],
        ["web1", "started", "begin", "-"],
    ] {
        quiet(&conf_a, op, &xml_a).await;
    }
    assert_eq!(ownership(&obs).await, own("dom0-a", None));
    a.client
        .put_config("web1", &sample_config("web1", "192.0.2.10/24"), None)
        .await
        .unwrap();
    let vm = PeerOptions {
        uuid: Some(U_WEB1.into()),
        ..PeerOptions::default()
    };
    let mut peer_a = TestPeer::start(&da.sockets(), "web1", vm.clone());
    peer_a.wait("the push on a", |r| r.results == 1).await;
    let u = Uuid::parse(U_WEB1).unwrap();
    wait_until("applied in etcd", support::DEADLINE, || async {
        obs.applied(&u).await.unwrap().map(drop)
    })
    .await;

    // `virsh migrate web1 qemu+ssh://b/system`: the destination's hooks, in libvirt's
    // order. migrate begin: b is incoming, a still owns; the domain shows on b.
    quiet(&conf_b, ["web1", "migrate", "begin", "-"], &xml_b).await;
    assert_eq!(ownership(&obs).await, own("dom0-a", Some("dom0-b")));
    assert_eq!(
        b.client
            .get_domain("web1")
            .await
            .unwrap()
            .desired_generation,
        Some(1)
    );
    // A second destination (here: a itself) is refused, and its migration aborted.
    let o = as_libvirt(&conf_a, ["web1", "migrate", "begin", "-"], xml_a.clone()).await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dom0-b"),
        "the refusal names the prepared destination: {}",
        text(&o)
    );
    quiet(&conf_b, ["web1", "prepare", "begin", "-"], &xml_b).await;
    quiet(&conf_b, ["web1", "start", "begin", "-"], &xml_b).await;
    assert_eq!(ownership(&obs).await, own("dom0-a", Some("dom0-b")));
    quiet(&conf_b, ["web1", "started", "begin", "-"], &xml_b).await;
    assert_eq!(ownership(&obs).await, own("dom0-b", None));
    // The VM runs on b, its agent with what it applied: configured, nothing pushed.
    let applied = peer_a.record().applied;
    peer_a.remove();
    let peer_b = TestPeer::start(
        &db.sockets(),
        "web1",
        PeerOptions {
            applied,
            ..vm.clone()
        },
    );
    b.wait_domain("web1", "configured on b", |v| {
        v.connected && v.state == DomainState::Configured
    })
    .await;
    // The source's hooks after the migration: a gives nothing away it does not own.
    quiet(&conf_a, ["web1", "stopped", "end", "-"], &xml_a).await;
    quiet(&conf_a, ["web1", "release", "end", "migrated"], &xml_a).await;
    assert_eq!(ownership(&obs).await, own("dom0-b", None));
    assert_eq!(
        peer_b.record().configs.len(),
        0,
        "pushed again after migrating"
    );

    // Back to a, failing: migrate begin and prepare begin on a, then release end there
    // without a start. The hand-off is cancelled; b keeps the domain.
    quiet(&conf_a, ["web1", "migrate", "begin", "-"], &xml_a).await;
    assert_eq!(ownership(&obs).await, own("dom0-b", Some("dom0-a")));
    quiet(&conf_a, ["web1", "prepare", "begin", "-"], &xml_a).await;
    quiet(&conf_a, ["web1", "release", "end", "-"], &xml_a).await;
    assert_eq!(ownership(&obs).await, own("dom0-b", None));
    // And an ordinary start elsewhere does not take it (started without migrate).
    quiet(&conf_a, ["web1", "started", "begin", "-"], &xml_a).await;
    assert_eq!(ownership(&obs).await, own("dom0-b", None));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_embedded_store_migration_hooks_are_nothing_to_do() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let conf = hook_conf(&dirs, &config.control_socket);
    let broker = TestBroker::start(config).await;
    let xml = fixture("xen-pv.xml", &dirs.sockets());
    quiet(&conf, ["web1", "migrate", "begin", "-"], &xml).await;
    quiet(&conf, ["web1", "prepare", "begin", "-"], &xml).await;
    quiet(&conf, ["web1", "started", "begin", "-"], &xml).await;
    let v = broker.client.get_domain("web1").await.unwrap();
    assert_eq!(v.uuid.as_deref(), Some(U_WEB1));
    // By hand, the command line says why: migration needs etcd.
    for step in ["prepare", "complete", "cancel"] {
        let sock = dirs.config().control_socket;
        let o = tokio::task::spawn_blocking(move || {
            Command::new(xenchan_e2e::cli_binary())
                .args([
                    "--socket",
                    sock.to_str().unwrap(),
                    "domain",
                    "migrate",
                    step,
                    U_WEB1,
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(o.status.code(), Some(65), "{step}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("migration needs the etcd backend"),
            "{step}: {}",
            text(&o)
        );
    }
    broker.stop().await.unwrap();
}
