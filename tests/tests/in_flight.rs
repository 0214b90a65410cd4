//! A push in flight over a slow channel, with the real broker and the real agent binary:
//! the agent answers every hello the broker sent (one per beacon the broker saw), late;
//! the answers of one agent run must not cause a second push, but an agent restarted
//! after the push was sent must get it again.
//!
//! The channel is a [`Relay`] whose gate holds the broker's frames until the test lets
//! them through, which makes the slow channel's ordering deterministic: no sleeps.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use xenchan_api::client::Client;
use xenchan_api::config::{Config, Mode};
use xenchan_api::types::{DomainState, DomainView};
use xenchan_e2e::binaries;
use xenchan_e2e::relay::{Gate, Relay, State};
use xenchan_protocol::GuestConfig;
use xenchan_sim::guest::{GuestIdentity, GuestRoot};
use xenchan_sim::process::Proc;

const DOMAIN: &str = "web1";
const DEADLINE: Duration = Duration::from_secs(30);

/// A broker in this process, an agent process and the relay between them.
struct World {
    dir: tempfile::TempDir,
    relay: Relay,
    root: GuestRoot,
    client: Client,
    broker_stop: Option<oneshot::Sender<()>>,
    broker: Option<JoinHandle<Result<(), xenchan_broker::BrokerError>>>,
    agent: Option<Proc>,
    agents_started: u32,
}

impl World {
    async fn new(gate: Gate) -> World {
        // Built (or found) first: a build takes longer than the broker's hello deadline.
        let _ = binaries();
        // Short: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("xe").tempdir().unwrap();
        let sockets = dir.path().join("s");
        std::fs::create_dir_all(&sockets).unwrap();
        let relay = Relay::start(&sockets.join(format!("{DOMAIN}.sock")), gate).unwrap();
        let root = GuestRoot::create(
            dir.path().join("guest"),
            &GuestIdentity {
                uuid: xenchan_sim::guest::random_uuid(),
                mac: "00:16:3e:00:00:01".into(),
                cloud_uid: nix::unistd::geteuid().as_raw(),
                cloud_gid: nix::unistd::getegid().as_raw(),
            },
        )
        .unwrap();
        let config = broker_config(dir.path(), &sockets);
        let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
        let (tx, rx) = oneshot::channel::<()>();
        let broker = tokio::spawn(xenchan_broker::run(config, async move {
            let _ = rx.await;
        }));
        let w = World {
            dir,
            relay,
            root,
            client,
            broker_stop: Some(tx),
            broker: Some(broker),
            agent: None,
            agents_started: 0,
        };
        let end = tokio::time::Instant::now() + DEADLINE;
        while w.client.health().await.is_err() {
            assert!(
                tokio::time::Instant::now() < end,
                "the broker's API never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w
    }

    /// Starts the real agent on the relay's pty.
    fn start_agent(&mut self) {
        self.agents_started += 1;
        let mut cmd = tokio::process::Command::new(&binaries().agent);
        cmd.arg("--device")
            .arg(self.relay.device())
            .arg("--root")
            .arg(self.root.path())
            .arg("--state-dir")
            .arg(self.root.state_dir())
            .arg("--channel-dir")
            .arg(self.root.channel_dir())
            .arg("--virtio-dir")
            .arg(self.root.join("dev/virtio-ports"))
            .arg("--registry-dir")
            .arg(self.root.join("etc/xenchan/registry.d"))
            .arg("--no-live-hostname")
            .env("RUST_LOG", "debug");
        let log = self.log(self.agents_started);
        self.agent = Some(Proc::spawn("agent", cmd, &log).unwrap());
    }

    fn log(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{n}.log"))
    }

    /// SIGKILL: the agent dies with whatever it was doing.
    async fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill().await;
        }
    }

    async fn put(&self, json: &str) {
        let cfg = GuestConfig::from_json(json.as_bytes()).unwrap();
        self.client.put_config(DOMAIN, &cfg, None).await.unwrap();
    }

    /// Polls the API until `cond` holds on the domain.
    async fn until(&self, what: &str, cond: impl Fn(&DomainView) -> bool) -> DomainView {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(v) = self.client.get_domain(DOMAIN).await
                && cond(&v)
            {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "timed out waiting for {what}; last view: {:?}\n{}",
                self.client.get_domain(DOMAIN).await,
                self.agent_logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn agent_logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.agents_started {
            let _ = writeln!(out, "--- agent {n} ---");
            out.push_str(&std::fs::read_to_string(self.log(n)).unwrap_or_default());
        }
        out
    }

    /// `xenchan_pushes_total`.
    async fn pushes(&self) -> u64 {
        let m = self.client.metrics().await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("xenchan_pushes_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no xenchan_pushes_total in\n{m}"))
    }

    async fn finish(mut self) {
        if let Some(tx) = self.broker_stop.take() {
            let _ = tx.send(());
        }
        if let Some(b) = self.broker.take() {
            tokio::time::timeout(DEADLINE, b)
                .await
                .expect("the broker stops")
                .expect("the broker task does not panic")
                .expect("the broker stops cleanly");
        }
        if let Some(mut a) = self.agent.take() {
            let _ = a.terminate(Duration::from_secs(5)).await;
        }
    }
}

fn broker_config(dir: &Path, sockets: &Path) -> Config {
    let mut c = Config {
        socket_dir: sockets.to_path_buf(),
        control_socket: dir.join("broker.sock"),
        state_dir: dir.join("state"),
        hooks_dir: dir.join("hooks"),
        registry_dir: dir.join("registry.d"),
        mode: Mode::Connect,
        ..Config::default()
    };
    c.timeouts.connect = 1000;
    // The gate holds the answer to our hello for several beacon intervals.
    c.timeouts.hello = 30_000;
    // Long enough that a push wrongly thought to be in flight would outlast the test.
    c.timeouts.result = 60_000;
    c.timeouts.keepalive = 2000;
    c.timeouts.reconnect_min = 20;
    c.timeouts.reconnect_max = 200;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_channel_gets_one_config_frame_per_generation() {
    let mut w = World::new(Gate::Closed).await;
    w.start_agent();
    w.put(r#"{"hostname":"web1.example.com"}"#).await;
    // The agent beacons (1 s doubling); the broker sees the beacons (guest-to-host bytes
    // flow) and says hello again for one that comes a second or more after its first
    // hello. Both hellos wait at the gate, as on a channel too slow to have delivered the
    // first one yet.
    w.relay
        .wait("two broker hellos waiting at the gate", |s| {
            s.broker_hellos() >= 2
        })
        .await;
    assert_eq!(w.relay.with(|s| s.configs_sent().len()), 0);
    w.relay.set_gate(Gate::Open);
    let v = w
        .until("configured", |v| {
            v.state == DomainState::Configured && v.applied_generation == Some(1)
        })
        .await;
    assert_eq!(v.applied_digest, v.desired_digest);
    // The agent's second answer precedes its result on the channel: any push it caused
    // is counted by now.
    let pushes = w.pushes().await;
    w.relay
        .wait("every push on the wire", |s| {
            s.configs_sent().len() as u64 >= pushes
        })
        .await;
    let (sent, delivered, answers) = w
        .relay
        .with(|s| (s.configs_sent(), s.configs_delivered(), s.agent_answers()));
    // The scenario did happen: the agent answered at least two hellos, all from one run.
    assert!(answers.len() >= 2, "{answers:?}");
    let instance = answers[0]
        .instance
        .clone()
        .expect("the agent sends its instance");
    assert!(
        answers
            .iter()
            .all(|h| h.instance.as_ref() == Some(&instance))
    );
    assert!(answers.iter().all(|h| h.applied.is_none()), "{answers:?}");
    assert_eq!(pushes, 1, "pushes counted by the broker");
    assert_eq!(sent.len(), 1, "config frames the broker wrote");
    assert_eq!(sent[0].generation, 1);
    assert_eq!(delivered, 1, "config frames the guest received");
    assert_eq!(w.relay.with(|s| s.connections), 1, "all in one session");
    assert_eq!(
        std::fs::read_to_string(w.root.join("etc/hostname")).unwrap(),
        "web1\n",
        "the guest got the hostname (short name in /etc/hostname)"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_before_applying_gets_the_push_again() {
    let mut w = World::new(Gate::CloseAtConfig).await;
    w.start_agent();
    w.put(r#"{"hostname":"web1.example.com"}"#).await;
    // The handshake passes; the push stops at the gate, on its way to the guest.
    w.relay
        .wait("the push waiting at the gate", State::holds_a_config)
        .await;
    let first = w.relay.with(State::agent_answers);
    assert_eq!(
        first.iter().filter(|h| h.applied.is_none()).count(),
        first.len()
    );
    // The agent dies before it gets the push, and the push with it.
    w.kill_agent().await;
    assert!(w.relay.drop_held() >= 1);
    w.relay.set_gate(Gate::Open);
    w.start_agent();
    let v = w
        .until("configured", |v| {
            v.state == DomainState::Configured && v.applied_generation == Some(1)
        })
        .await;
    assert_eq!(v.applied_digest, v.desired_digest);
    let (sent, answers) = w.relay.with(|s| (s.configs_sent(), s.agent_answers()));
    assert_eq!(sent.len(), 2, "pushed again to the restarted agent");
    assert!(sent.iter().all(|c| c.generation == 1));
    let before = answers[0].instance.clone().expect("an instance");
    let after = answers
        .last()
        .unwrap()
        .instance
        .clone()
        .expect("an instance");
    assert_ne!(before, after, "the restarted agent has a new instance");
    assert_eq!(w.relay.with(|s| s.connections), 1, "all in one session");
    assert_eq!(
        std::fs::read_to_string(w.root.join("etc/hostname")).unwrap(),
        "web1\n",
        "the guest got the hostname (short name in /etc/hostname)"
    );
    w.finish().await;
}
