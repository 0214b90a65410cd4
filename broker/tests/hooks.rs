//! Hooks: a failing prepare hook aborts the config with its stderr; every lifecycle
//! event calls the hooks with the documented arguments and the domain's JSON; a hung
//! hook is killed at its deadline; other failures are counted, not fatal.

mod support;

use support::{DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until};
use xenchan_broker::api::types::DomainState;
use xenchan_broker::client::ClientError;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_prepare_hook_aborts_the_config_with_its_stderr() {
    let dirs = Dirs::new();
    let log = dirs.root.path().join("hook.log");
    dirs.hook(
        "10-log",
        &format!(
            "echo \"$1 $2 $3 $4\" >> {log}\n\
             if [ \"$2 $3\" = 'prepare begin' ] && grep -q '\"hostname\": *\"evil' ; then\n\
               echo 'evil.example is not allowed on this host' >&2; exit 1\n\
             fi\n\
             exit 0",
            log = log.display()
        ),
    );
    let broker = TestBroker::start(dirs.config()).await;
    let e = broker
        .client
        .put_config("bad", &sample_config("evil.example", "192.0.2.70/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status, error } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 422);
    assert_eq!(
        error.error,
        "prepare hook refused: evil.example is not allowed on this host"
    );
    assert_eq!(
        broker.client.get_domain("bad").await.unwrap_err().status(),
        Some(404)
    );
    // Its leases were not taken either.
    broker
        .client
        .put_config("good", &sample_config("good", "192.0.2.70/24"), None)
        .await
        .unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("bad prepare begin sha256:"), "{text}");
    assert!(lines[1].starts_with("good prepare begin sha256:"), "{text}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_step_runs_the_hooks() {
    let dirs = Dirs::new();
    let log = dirs.root.path().join("hook.log");
    let stdin_dir = dirs.root.path().join("stdin");
    std::fs::create_dir_all(&stdin_dir).unwrap();
    dirs.hook(
        "10-log",
        &format!(
            "cat > {dir}/$2-$3.json; echo \"$1 $2 $3 $4\" >> {log}",
            dir = stdin_dir.display(),
            log = log.display()
        ),
    );
    // A failing notification hook is logged and counted, and changes nothing.
    dirs.hook(
        "20-fail",
        "[ \"$2\" = prepare ] && [ \"$3\" = begin ] && exit 0; exit 3",
    );
    let broker = TestBroker::start(dirs.config()).await;
    broker
        .client
        .put_config("h1", &sample_config("h1", "192.0.2.71/24"), None)
        .await
        .unwrap();
    let mut peer = TestPeer::start(&dirs.sockets(), "h1", PeerOptions::default());
    broker
        .wait_domain("h1", "configured", |v| v.state == DomainState::Configured)
        .await;
    peer.remove();
    broker
        .wait_domain("h1", "pending", |v| v.state == DomainState::Pending)
        .await;
    broker.client.delete("h1").await.unwrap();
    let want = [
        "h1 prepare end 1",
        "h1 add begin -",
        "h1 add end 1",
        "h1 remove end -",
        "h1 unprepare end -",
    ];
    let got = wait_until("every hook call", DEADLINE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            want.iter().all(|w| text.contains(w)).then_some(text)
        }
    })
    .await;
    assert!(
        got.lines()
            .next()
            .unwrap()
            .starts_with("h1 prepare begin sha256:"),
        "{got}"
    );
    // The domain's JSON on stdin.
    let end: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stdin_dir.join("add-end.json")).unwrap()).unwrap();
    assert_eq!(end["name"], "h1");
    assert_eq!(end["applied_generation"], 1);
    assert_eq!(end["config"]["hostname"], "h1");
    let m = broker.client.metrics().await.unwrap();
    assert!(
        metric(&m, "xenchan_hook_runs_total{result=\"failed\"}") >= 4,
        "{m}"
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_prepare_hook_is_killed_at_its_deadline_and_blocks_nobody() {
    let dirs = Dirs::new();
    dirs.hook("10-hang", "[ \"$1\" = slow ] && exec sleep 60; exit 0");
    let mut config = dirs.config();
    config.timeouts.hook = 1500;
    let broker = TestBroker::start(config).await;
    let t = std::time::Instant::now();
    let c = broker.client.clone();
    let slow = tokio::spawn(async move {
        c.put_config("slow", &sample_config("slow", "192.0.2.72/24"), None)
            .await
    });
    // While the hook hangs, other requests, other configs included, go through.
    let fast = broker
        .client
        .put_config("fast", &sample_config("fast", "192.0.2.73/24"), None)
        .await
        .unwrap();
    assert_eq!(fast.desired_generation, Some(1));
    assert!(
        !slow.is_finished(),
        "the slow PUT is still waiting for its hook"
    );
    let e = slow.await.unwrap().unwrap_err();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    let ClientError::Api { status: 422, error } = e else {
        panic!("{e}")
    };
    assert!(
        error.error.contains("timed out after 1500 ms"),
        "{}",
        error.error
    );
    broker.stop().await.unwrap();
}
