//! The `xenchan` binary against a real broker (in this process) and a fake QEMU + agent.

#[path = "../../broker/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Output;

use support::{DEADLINE, Dirs, KEY, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};

/// Runs `xenchan` with `args` against `socket` (blocking, off the runtime threads).
async fn xenchan(socket: &Path, args: &[&str]) -> Output {
    let socket = socket.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(xenchan_e2e::cli_binary())
            .env("XENCHAN_SOCKET", &socket)
            .env_remove("XENCHAN_REGISTRY_DIR")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_commands_over_the_api() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let peer = TestPeer::start(&dirs.sockets(), "web1", PeerOptions::default());

    // set --file
    let file = dirs.root.path().join("web1.json");
    std::fs::write(
        &file,
        sample_config("web1", "192.0.2.10/24").canonical_json(),
    )
    .unwrap();
    let o = xenchan(
        &sock,
        &["domain", "set", "web1", "--file", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("web1: configuration created, generation 1"),
        "{}",
        text(&o)
    );
    peer.wait("the pushed config", |r| r.results == 1).await;
    broker
        .wait_domain("web1", "configured", |v| v.applied_generation == Some(1))
        .await;

    // get (table and JSON), list, status
    let o = xenchan(&sock, &["domain", "get", "web1"]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        out.contains("state:") && out.contains("configured (connected)"),
        "{out}"
    );
    assert!(
        out.contains("network:eth0") && out.contains("applied"),
        "{out}"
    );
    let o = xenchan(&sock, &["domain", "get", "web1", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["applied_generation"], 1);
    assert_eq!(v["state"], "configured");
    let o = xenchan(&sock, &["domain", "list"]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web1") && l.contains("configured")),
        "{out}"
    );
    let o = xenchan(&sock, &["domain", "list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let o = xenchan(&sock, &["status"]).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("broker ok: 1 domains, 1 sessions"), "{out}");

    // set from flags, with a key file
    let key = dirs.root.path().join("key.pub");
    std::fs::write(&key, format!("# a comment\n{KEY}\n\n")).unwrap();
    let o = xenchan(
        &sock,
        &[
            "domain",
            "set",
            "web2",
            "--hostname",
            "web2.example.com",
            "--mac",
            "00:16:3e:00:00:02",
            "--address",
            "192.0.2.20/24",
            "--gateway",
            "192.0.2.1",
            "--dns",
            "192.0.2.53",
            "--ssh-key-file",
            key.to_str().unwrap(),
            "--user",
            "cloud",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = broker.client.get_domain("web2").await.unwrap();
    let cfg = v.config.unwrap();
    assert_eq!(cfg.hostname.unwrap().as_str(), "web2.example.com");
    assert_eq!(cfg.users[0].ssh_authorized_keys.len(), 1);

    // push
    let o = xenchan(&sock, &["domain", "push", "web1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    peer.wait("the forced re-push", |r| r.configs.len() == 2)
        .await;

    // rm, twice
    let o = xenchan(&sock, &["domain", "rm", "web2"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("released address 192.0.2.20"),
        "{}",
        text(&o)
    );
    let o = xenchan(&sock, &["domain", "rm", "web2"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("had no configuration"));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();

    // 69: no broker.
    let o = xenchan(&sock, &["domain", "list"]).await;
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach the broker"),
        "{}",
        text(&o)
    );

    let broker = TestBroker::start(config).await;
    // 2: usage.
    let o = xenchan(&sock, &["domain", "set", "x", "--address", "192.0.2.1/24"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = xenchan(&sock, &["domain", "frobnicate"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Options parse into the typed document's fields: a bad value names its option.
    for (opt, value) in [
        ("--mac", "00:16:3e:zz:00:01"),
        ("--address", "192.0.2.300/24"),
        ("--hostname", "bad_host"),
        ("--uuid", "not-a-uuid"),
    ] {
        let o = xenchan(&sock, &["domain", "set", "x", opt, value]).await;
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(opt),
            "{}",
            text(&o)
        );
    }
    let o = xenchan(&sock, &["domain", "set", "../x", "--hostname", "x"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("must not start with `.`"),
        "{}",
        text(&o)
    );
    // 65: a bad line of a key file, named by file and line, before anything is sent.
    let keys = dirs.root.path().join("bad.pub");
    std::fs::write(&keys, "# keys\nssh-ed25519 notbase64\n").unwrap();
    let o = xenchan(
        &sock,
        &[
            "domain",
            "set",
            "x",
            "--ssh-key-file",
            keys.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.pub:2"),
        "{}",
        text(&o)
    );
    // 74: unreadable file.
    let o = xenchan(
        &sock,
        &["domain", "set", "x", "--file", "/nonexistent/cfg.json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(74), "{}", text(&o));
    // 65: invalid document, naming the field.
    let bad = dirs.root.path().join("bad.json");
    std::fs::write(&bad, br#"{"hostname":"-bad-"}"#).unwrap();
    let o = xenchan(
        &sock,
        &["domain", "set", "x", "--file", bad.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("hostname"),
        "{}",
        text(&o)
    );
    // 65: a lease conflict, naming the other domain.
    broker
        .client
        .put_config("owner", &sample_config("owner", "192.0.2.30/24"), None)
        .await
        .unwrap();
    let o = xenchan(
        &sock,
        &[
            "domain",
            "set",
            "thief",
            "--mac",
            "00:16:3e:00:00:09",
            "--address",
            "192.0.2.30/24",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("leased to domain owner"),
        "{}",
        text(&o)
    );
    // 65: unknown domain.
    let o = xenchan(&sock, &["domain", "get", "ghost"]).await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    // The broker 400 path too (a name the API refuses).
    let o = xenchan(&sock, &["domain", "get", "bad name"]).await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    // registry is mounted.
    let o = xenchan(
        &sock,
        &[
            "--registry-dir",
            dirs.root.path().join("none").to_str().unwrap(),
            "registry",
            "lookup",
            "org.xenchan.agent.1",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let c = broker.client.clone();
    wait_until("the broker still healthy", DEADLINE, || {
        let c = c.clone();
        async move { c.health().await.ok() }
    })
    .await;
    broker.stop().await.unwrap();
}

/// `xenchan events --follow --json` prints each new event as a JSON line as it is
/// recorded; `--since` takes an age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_new_events_as_they_come() {
    use tokio::io::AsyncBufReadExt;
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let mut child = tokio::process::Command::new(xenchan_e2e::cli_binary())
        .env("XENCHAN_SOCKET", &sock)
        .args(["events", "--follow", "--json", "--domain", "f1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Let it read the (empty) log first, then cause two events.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for host in ["f1a", "f1b"] {
        broker
            .client
            .put_config("f1", &sample_config(host, "192.0.2.90/24"), None)
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a followed event in time")
            .unwrap()
            .expect("the follower is still running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        got.push(v);
    }
    assert_eq!(got[0]["kind"], "config");
    assert!(
        got[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("generation 1 ")
    );
    assert!(
        got[1]["detail"]
            .as_str()
            .unwrap()
            .starts_with("generation 2 ")
    );
    assert!(got[0]["caller"]["uid"].is_u64());
    child.kill().await.unwrap();

    let o = xenchan(&sock, &["events", "--since", "1h", "--kind", "config"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        3,
        "a header and two events: {}",
        text(&o)
    );
    let o = xenchan(&sock, &["events", "--since", "yesterday"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    broker.stop().await.unwrap();
}

/// `domain set --file F` without a name: many configurations (an array, or one per
/// document), each answered on its own line; a refused one makes the command fail and
/// is named, the others are stored all the same; items go `--batch` per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_set_with_a_file_of_many_configurations() {
    xenchan_e2e::cli_binary();
    let dirs = Dirs::new();
    let config = dirs.config();
    let sock = config.control_socket.clone();
    let broker = TestBroker::start(config).await;
    let doc = |name: &str, addr: &str| {
        let cfg: serde_json::Value =
            serde_json::from_slice(&sample_config(name, addr).canonical_json()).unwrap();
        serde_json::json!({"name": name, "config": cfg})
    };

    // An array: all accepted.
    let array = dirs.root.path().join("many.json");
    let items: Vec<serde_json::Value> = (1..=5)
        .map(|i| doc(&format!("vm{i}"), &format!("192.0.2.{i}/24")))
        .collect();
    std::fs::write(&array, serde_json::to_vec(&items).unwrap()).unwrap();
    let o = xenchan(
        &sock,
        &[
            "domain",
            "set",
            "--file",
            array.to_str().unwrap(),
            "--batch",
            "2",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for i in 1..=5 {
        assert!(
            out.contains(&format!("vm{i}: configuration created, generation 1")),
            "{}",
            text(&o)
        );
    }
    assert_eq!(broker.client.list().await.unwrap().len(), 5);

    // One per line, one of them refused (its address is vm1's): the others are stored,
    // the command fails naming it and the reason.
    let lines = dirs.root.path().join("many.jsonl");
    let mut text_lines = String::new();
    for (name, addr) in [
        ("vm6", "192.0.2.6/24"),
        ("vm7", "192.0.2.1/24"),
        ("vm8", "192.0.2.8/24"),
    ] {
        text_lines.push_str(&serde_json::to_string(&doc(name, addr)).unwrap());
        text_lines.push('\n');
    }
    std::fs::write(&lines, text_lines).unwrap();
    let o = xenchan(&sock, &["domain", "set", "--file", lines.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("vm6: configuration created"), "{}", text(&o));
    assert!(out.contains("vm8: configuration created"), "{}", text(&o));
    assert!(
        out.contains("vm7: refused (409): address 192.0.2.1 is leased to domain vm1"),
        "{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("1 of 3 configurations refused: vm7"),
        "{}",
        text(&o)
    );
    assert!(broker.client.get_domain("vm8").await.is_ok());

    // --json: every result in one document.
    let o = xenchan(
        &sock,
        &["domain", "set", "--file", array.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["succeeded"], 5);
    assert_eq!(v["results"][4]["outcome"], "unchanged");

    // A file that is not JSON: nothing sent, the document named.
    let bad = dirs.root.path().join("bad.json");
    std::fs::write(&bad, "{\"name\":\"vm9\",\"config\":{}}\n{oops").unwrap();
    let o = xenchan(&sock, &["domain", "set", "--file", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("document 2 of the file is not JSON"),
        "{}",
        text(&o)
    );
    assert!(broker.client.get_domain("vm9").await.is_err());
    // --uuid needs a name.
    let o = xenchan(
        &sock,
        &[
            "domain",
            "set",
            "--file",
            array.to_str().unwrap(),
            "--uuid",
            "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
