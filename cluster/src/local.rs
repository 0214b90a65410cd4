//! A throwaway etcd on this machine: started on a temporary folder with free loopback ports,
//! waited for until it has a leader, killed (SIGKILL) on drop. For tests, the simulator's
//! cluster runs and the benchmarks; never for production (no TLS, elections tuned for
//! loopback). The binary is `$XENCHAN_ETCD`, else `etcd` on PATH (Debian's `etcd-server`,
//! installed by `scripts/setup.sh`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `$XENCHAN_ETCD`, else `etcd` on PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XENCHAN_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// Free loopback ports, all held until every one is chosen so they are distinct.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One etcd member. Every method panics, naming what failed, when etcd cannot be started:
/// its users are tests and harnesses, where that is the clearest answer.
#[derive(Debug)]
pub struct Etcd {
    /// The member's name (`m0`, `m1`...).
    pub name: String,
    /// `http://127.0.0.1:<port>`: what clients connect to.
    pub client_url: String,
    /// `http://127.0.0.1:<port>`: what the other members connect to.
    pub peer_url: String,
    initial_cluster: String,
    state: &'static str,
    /// Its data folder and `etcd.log`, removed on drop.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temp_root() -> PathBuf {
    // tmpfs makes etcd's fsyncs cheap: the 1,000-race test is about etcd's transactions,
    // not the disk.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(&shm).is_ok() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl Etcd {
    /// A one-member etcd, answering when this returns.
    pub async fn start() -> Etcd {
        let mut members = Etcd::cluster(1).await;
        members.pop().unwrap()
    }

    /// A one-member etcd whose data folder is a new temporary folder in `root` (the
    /// benchmark keeps it on the disk it measures, where [`Etcd::start`] prefers tmpfs).
    pub async fn start_in(root: &Path) -> Etcd {
        let mut members = Etcd::cluster_in(1, root).await;
        members.pop().unwrap()
    }

    /// An `n`-member etcd cluster, with a leader when this returns.
    pub async fn cluster(n: usize) -> Vec<Etcd> {
        Etcd::cluster_in(n, &temp_root()).await
    }

    /// An `n`-member etcd cluster whose data folders are in `root`.
    pub async fn cluster_in(n: usize, root: &Path) -> Vec<Etcd> {
        let ports = free_ports(2 * n);
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Etcd {
                name,
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                initial_cluster: initial_cluster.clone(),
                state: "new",
                dir: tempfile::Builder::new()
                    .prefix("xenchan-etcd-")
                    .tempdir_in(root)
                    .expect("temp dir"),
                child: None,
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
        wait_ready(&urls, Duration::from_secs(30)).await;
        members
    }

    /// Starts (again) on the same folder and ports.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(etcd_binary().expect("etcd binary"))
            .args([
                "--name",
                &self.name,
                "--data-dir",
                &self.dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                self.state,
                "--initial-cluster-token",
                "xenchan-test",
                // Fast elections so that losing a leader costs well under a request timeout.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        // A restarted member must not try to bootstrap a cluster again.
        self.state = "existing";
    }

    /// Its process id while it runs (for its CPU time and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a crash, not a clean stop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it logged so far (to show when a test fails).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// Waits until a linearizable read through `urls` succeeds (a leader exists).
pub async fn wait_ready(urls: &[String], within: Duration) {
    let start = Instant::now();
    loop {
        let ok = async {
            let mut c = etcd_client::Client::connect(
                urls,
                Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1))),
            )
            .await
            .ok()?;
            c.get("ready", None).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), ok)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "etcd at {urls:?} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
