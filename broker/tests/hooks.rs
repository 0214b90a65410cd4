//! Hooks: a failing prepare hook aborts the config with its stderr (422, however slow
//! and whatever it leaves running), and a configuration whose leases are taken runs
//! none; every lifecycle event calls the hooks with the documented arguments and the
//! domain's JSON; a hung hook is killed at its deadline (504 naming it, and a log line);
//! other failures are counted, not fatal.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{
    DEADLINE, Dirs, PeerOptions, TestBroker, TestPeer, sample_config, wait_until, write_config,
};
use xenchan_broker::api::types::DomainState;
use xenchan_broker::client::Client;
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

    // A configuration whose lease is taken is refused before any hook runs for it.
    let e = broker
        .client
        .put_config("dup", &sample_config("dup", "192.0.2.70/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status, error } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 409, "{error:?}");
    assert!(error.error.contains("good"), "names the holder: {error:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("bad prepare begin sha256:"), "{text}");
    assert!(lines[1].starts_with("good prepare begin sha256:"), "{text}");
    assert!(!text.contains("dup prepare"), "no hook ran for dup: {text}");
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
    let ClientError::Api { status: 504, error } = e else {
        panic!("{e}")
    };
    assert!(
        error
            .error
            .contains("prepare hook 10-hang did not finish within timeouts.hook (1500 ms)"),
        "{}",
        error.error
    );
    broker.stop().await.unwrap();
}

/// The shipped deadlines (hook 5 s < request 8 s): a prepare hook that takes its time
/// and then says no, and leaves a child holding its stderr, is a 422 with its message,
/// not a request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_refusing_hook_is_422_with_its_stderr() {
    let dirs = Dirs::new();
    dirs.hook(
        "10-slow-no",
        "sleep 2; echo \"no capacity for $1 on this host\" >&2; sleep 3 & exit 1",
    );
    let mut config = dirs.config();
    let defaults = xenchan_broker::config::Timeouts::default();
    config.timeouts.hook = defaults.hook;
    config.timeouts.request = defaults.request;
    let broker = TestBroker::start(config).await;
    let t = std::time::Instant::now();
    let e = broker
        .client
        .put_config("web1", &sample_config("web1", "192.0.2.74/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status, error } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 422, "{}", error.error);
    assert_eq!(
        error.error,
        "prepare hook refused: no capacity for web1 on this host"
    );
    // Answered when the hook exited, not when its child let go of stderr.
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "{:?}",
        t.elapsed()
    );
    broker.stop().await.unwrap();
}

/// A hook sleeping past `timeouts.hook` is killed: the caller gets 504 naming it and
/// what it said before, and the broker's log says which hook it killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overrunning_hook_is_504_naming_it_and_its_kill_is_logged() {
    let dirs = Dirs::new();
    dirs.hook(
        "20-overrun",
        "[ \"$2 $3\" = 'prepare begin' ] || exit 0; echo 'asking the IPAM' >&2; exec sleep 60",
    );
    let mut config = dirs.config();
    config.timeouts.hook = 1000;
    let path = write_config(dirs.root.path(), &config);
    let log_path = dirs.root.path().join("broker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_xenchan-broker"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the broker binary");
    let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
    wait_until("the child broker's API", DEADLINE, || {
        let c = client.clone();
        async move { c.health().await.ok() }
    })
    .await;
    let e = client
        .put_config("web2", &sample_config("web2", "192.0.2.75/24"), None)
        .await
        .unwrap_err();
    let ClientError::Api { status, error } = e else {
        panic!("{e}")
    };
    assert_eq!(status, 504, "{}", error.error);
    assert_eq!(
        error.error,
        "prepare hook 20-overrun did not finish within timeouts.hook (1000 ms) and was \
         killed; its stderr: asking the IPAM"
    );
    // Nothing was stored.
    assert_eq!(
        client.get_domain("web2").await.unwrap_err().status(),
        Some(404)
    );
    let line = wait_until("the kill in the broker's log", DEADLINE, || {
        let p = log_path.clone();
        async move {
            let text = std::fs::read_to_string(&p).ok()?;
            text.lines()
                .find(|l| l.contains("hook killed"))
                .map(str::to_string)
        }
    })
    .await;
    assert!(line.contains("20-overrun"), "{line}");
    assert!(line.contains("web2"), "{line}");
    assert!(line.contains("1000 ms"), "{line}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// Drops are counted per domain and shown on the domain: a domain whose notifications
/// outrun its queue bound has its own runs dropped and counted, a calm neighbour none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notifications_are_counted_on_their_own_domain() {
    let dirs = Dirs::new();
    let log = dirs.root.path().join("hook.log");
    // Notifications (not `prepare begin`, which a PUT waits for) take 300 ms each.
    dirs.hook(
        "10-slow",
        &format!(
            "[ \"$2 $3\" = 'prepare begin' ] && exit 0\n\
             sleep 0.3; echo \"$1 $2 $3 $4\" >> {log}",
            log = log.display()
        ),
    );
    let mut config = dirs.config();
    config.limits.hook_queue_per_domain = 1;
    let broker = TestBroker::start(config).await;
    for g in 0..8 {
        broker
            .client
            .put_config(
                "busy",
                &sample_config("busy", &format!("192.0.2.{}/24", 10 + g)),
                None,
            )
            .await
            .unwrap();
    }
    broker
        .client
        .put_config("calm", &sample_config("calm", "192.0.2.90/24"), None)
        .await
        .unwrap();
    let busy = broker.client.get_domain("busy").await.unwrap();
    let calm = broker.client.get_domain("calm").await.unwrap();
    // 8 notifications, one running and one queued at a time: at least 5 dropped.
    assert!(busy.hooks_dropped >= 5, "{busy:?}");
    assert_eq!(calm.hooks_dropped, 0, "{calm:?}");
    let m = broker.client.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "xenchan_hook_runs_total{result=\"dropped\"}"),
        busy.hooks_dropped,
        "{m}"
    );
    // The calm domain's notification still ran.
    wait_until("calm's notification", DEADLINE, || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("calm prepare end")
                .then_some(())
        }
    })
    .await;
    broker.stop().await.unwrap();
}
