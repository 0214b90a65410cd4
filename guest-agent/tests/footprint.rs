//! The idle agent's memory, after its handshake, as docs/PERFORMANCE.md reports it: the
//! real binary (`XENCHAN_AGENT_BIN`, else this build's) on a pty, a broker's hello
//! answered, then `/proc/<pid>/status` and `smaps` read: RSS split into anonymous and
//! file-backed pages, and resident pages per mapping.
//!
//! A measurement, not a check (the figure depends on the build profile):
//! `XENCHAN_AGENT_BIN=target/agent/xenchan-agent cargo test -p xenchan-agent --test
//! footprint -- --ignored --nocapture`; `XENCHAN_IDLE_MS` (default 300) is how long after
//! the handshake it is read.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// `key: N kB` from `/proc/<pid>/status`.
fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Resident KiB per mapping name (file path, `[heap]`, `[stack]`, or `anon`).
fn smaps_rss(pid: u32) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = BTreeMap::new();
    let mut name = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            name = line
                .split_whitespace()
                .nth(5)
                .map_or_else(|| "anon".to_string(), str::to_string);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.split_whitespace().next().unwrap().parse().unwrap();
            *out.entry(name.clone()).or_insert(0) += kib;
        }
    }
    out
}

#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture (see the module comment)"]
async fn idle_rss_after_the_handshake() {
    let bin = std::env::var_os("XENCHAN_AGENT_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || env!("CARGO_BIN_EXE_xenchan-agent").into(),
            std::path::PathBuf::from,
        );
    let guest = Guest::new();
    let pty = pty();
    let mut child = std::process::Command::new(&bin)
        .arg("--device")
        .arg(&pty.path)
        .arg("--root")
        .arg(&guest.root)
        .arg("--state-dir")
        .arg(guest.path("var/lib/xenchan-agent"))
        .arg("--registry-dir")
        .arg(guest.path("etc/xenchan/registry.d"))
        .arg("--no-live-hostname")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut broker = Broker::new(pty);
    broker.handshake().await;
    let idle_ms = std::env::var("XENCHAN_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    tokio::time::sleep(Duration::from_millis(idle_ms)).await;
    let pid = child.id();
    let (rss, anon, file) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
    );
    let maps = smaps_rss(pid);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("{}, {idle_ms} ms after the handshake", bin.display());
    eprintln!(
        "idle RSS {:.2} MiB: anonymous {:.2} MiB, file-backed {:.2} MiB; {threads} thread(s)",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    let mut maps: Vec<_> = maps.into_iter().filter(|(_, k)| *k > 0).collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.1));
    for (name, kib) in maps {
        eprintln!("  {kib:>6} KiB  {name}");
    }
}
