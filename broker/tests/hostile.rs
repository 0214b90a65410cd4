//! Hostile and broken guests next to a well-behaved one: a garbage flood, a guest that
//! never answers and one that sends 10 MB without a delimiter. The good domain is
//! configured on time and the broker's memory (a child process, measured in
//! /proc/<pid>/status) stays bounded.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{
    Behaviour, DEADLINE, Dirs, PeerOptions, TestPeer, rss_kib, sample_config, wait_until,
    write_config,
};
use tokio::process::Command;
use xenchan_broker::api::types::DomainState;
use xenchan_broker::client::Client;

const TEN_MB: usize = 10 * 1024 * 1024;

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_neither_slow_a_good_one_nor_grow_the_broker() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.timeouts.hello = 500;
    let path = write_config(dirs.root.path(), &config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_xenchan-broker"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
    wait_until("the broker", DEADLINE, || {
        let c = client.clone();
        async move { c.health().await.ok() }
    })
    .await;

    let good = TestPeer::start(&dirs.sockets(), "good", PeerOptions::default());
    client
        .put_config("good", &sample_config("good", "192.0.2.90/24"), None)
        .await
        .unwrap();
    good.wait("the first config", |r| r.results == 1).await;
    let (baseline, _) = rss_kib(pid);

    let peer = |name: &str, behaviour: Behaviour| {
        TestPeer::start(
            &dirs.sockets(),
            name,
            PeerOptions {
                behaviour,
                ..PeerOptions::default()
            },
        )
    };
    let flood = peer("flood", Behaviour::Garbage);
    let silent = peer("silent", Behaviour::Silent);
    let huge = peer("huge", Behaviour::NoDelimiter(TEN_MB));
    for (i, n) in ["flood", "silent", "huge"].iter().enumerate() {
        client
            .put_config(
                n,
                &sample_config(n, &format!("192.0.2.{}/24", 91 + i)),
                None,
            )
            .await
            .unwrap();
    }
    huge.wait("10 MB without a newline", |r| {
        r.hostile_bytes >= TEN_MB as u64
    })
    .await;
    flood
        .wait("20 MB of garbage", |r| r.hostile_bytes >= 20 * 1024 * 1024)
        .await;

    // While they go on, the good domain gets new generations on time.
    let mut worst = Duration::ZERO;
    for g in 2..=4u64 {
        let t = Instant::now();
        client
            .put_config(
                "good",
                &sample_config("good", &format!("192.0.2.{}/24", 100 + g)),
                None,
            )
            .await
            .unwrap();
        wait_until("the good domain configured", DEADLINE, || {
            let c = client.clone();
            async move {
                c.get_domain("good").await.ok().filter(|v| {
                    v.applied_generation == Some(g) && v.state == DomainState::Configured
                })
            }
        })
        .await;
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_secs(2),
        "the good domain took {worst:?}"
    );

    // The silent guest is noticed and retried, never configured.
    let v = wait_until("the silent guest's error", DEADLINE, || {
        let c = client.clone();
        async move {
            c.get_domain("silent").await.ok().filter(|v| {
                v.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("no answer to hello"))
            })
        }
    })
    .await;
    assert_ne!(v.state, DomainState::Configured);
    silent
        .wait("a reconnect after the hello deadline", |r| {
            r.connections >= 2
        })
        .await;
    assert!(silent.record().configs.is_empty());
    assert!(flood.record().configs.is_empty());

    // A session publishes its decoder's counters after each event it handles: the huge
    // and the flooding guests' sessions see none until their hello deadlines, which may
    // come after everything above on a fast machine, so wait for all of them.
    let m = wait_until("the decoder metrics", DEADLINE, || {
        let c = client.clone();
        async move {
            let m = c.metrics().await.ok()?;
            (metric(&m, "xenchan_frames_skipped_total{reason=\"oversize\"}") >= 1
                && metric(&m, "xenchan_frames_skipped_total{reason=\"at_command\"}") > 1000
                && metric(&m, "xenchan_frames_skipped_total{reason=\"bad_checksum\"}") > 1000
                && metric(&m, "xenchan_errors_total{kind=\"hello_timeout\"}") >= 2)
                .then_some(m)
        }
    })
    .await;
    assert!(
        metric(&m, "xenchan_frames_skipped_total{reason=\"oversize\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "xenchan_frames_skipped_total{reason=\"at_command\"}") > 1000,
        "{m}"
    );
    assert!(
        metric(&m, "xenchan_frames_skipped_total{reason=\"bad_checksum\"}") > 1000,
        "{m}"
    );
    assert!(
        metric(&m, "xenchan_errors_total{kind=\"hello_timeout\"}") >= 1,
        "{m}"
    );

    let (rss, hwm) = rss_kib(pid);
    eprintln!("broker memory: baseline {baseline} KiB, now {rss} KiB, peak {hwm} KiB");
    // 10 MB arrived in one line and 20+ MB of garbage; the codec bounds each buffer to
    // about one frame (64 KiB), so the peak grows by far less than one such line.
    assert!(
        hwm.saturating_sub(baseline) < 8 * 1024,
        "peak RSS grew by {} KiB (baseline {baseline} KiB)",
        hwm.saturating_sub(baseline)
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
