//! A real etcd for tests (`xenchan_cluster::local`: started on a temporary folder with free
//! loopback ports, waited for until it answers, killed on drop). Tests skip (saying why) only when the `etcd`
//! binary is missing (`scripts/setup.sh` installs Debian's `etcd-server`).

#![allow(dead_code)]

use std::time::Duration;

#[allow(unused_imports)] // each test binary uses its own part
pub use xenchan_cluster::local::{Etcd, etcd_binary, free_ports, wait_ready};

use xenchan_cluster::{Cluster, ClusterConfig, Timeouts, Uuid};

/// Returns early from a test, saying why, when etcd is not installed.
#[macro_export]
macro_rules! require_etcd {
    () => {
        if support::etcd_binary().is_none() {
            eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
            return;
        }
    };
}

/// A broker's handle as host `host` under `prefix`.
pub async fn connect(urls: &[String], prefix: &str, host: &str, timeouts: Timeouts) -> Cluster {
    let config = ClusterConfig {
        endpoints: urls.to_vec(),
        prefix: prefix.to_string(),
        host: host.to_string(),
        timeouts,
    };
    Cluster::connect(&config).await.expect("connect to etcd")
}

/// Test timeouts: short TTL so host loss shows in seconds.
pub fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(5),
        host_ttl: Duration::from_secs(2),
    }
}

/// A distinct UUID per (set, n).
pub fn uuid(set: u16, n: u64) -> Uuid {
    Uuid::parse(&format!("00000000-{set:04x}-4000-8000-{n:012x}")).unwrap()
}

/// etcd's count of KV requests answered (ranges, transactions, puts, deletes: each one
/// round trip), from its /metrics.
pub fn kv_requests(client_url: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = client_url.strip_prefix("http://").expect("http URL");
    let mut s = std::net::TcpStream::connect(addr).expect("etcd metrics");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    s.take(16 << 20).read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_service=\"etcdserverpb.KV\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
