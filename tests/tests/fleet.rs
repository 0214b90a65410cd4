//! The broker's side of the fleet-safe protocol (issues 15 and 18), with the real broker
//! (in this process) and either the real agent binary on a pty ([`Relay`]) or a
//! revision-1 peer that speaks the frames kept in `protocol/tests/fixtures/v1`:
//!
//! - an agent gets only what it understands; the rest is recorded `unsupported` with the
//!   reason, without a failed push, a timeout or a second push;
//! - a revision-1 agent (no capabilities) is configured;
//! - a flood of valid but repeated results and facts costs no store write and no push;
//! - an older generation of the store's lineage (a restored backup) is refused by the
//!   agent, shown in the API, not retried, and an operator's force overrides it;
//! - a recorded UUID fails closed: an agent reporting none gets nothing;
//! - the facts show the pushed hostname after the push.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use xenchan_api::client::Client;
use xenchan_api::config::{Config, Mode};
use xenchan_api::types::{DomainState, DomainView};
use xenchan_e2e::binaries;
use xenchan_e2e::relay::{Gate, Relay};
use xenchan_protocol::message::{ApplyResult, ConfigPush, ItemResult};
use xenchan_protocol::{Body, Envelope, FrameCodec, GuestConfig, ItemStatus, Role};
use xenchan_sim::guest::{GuestIdentity, GuestRoot};
use xenchan_sim::process::Proc;
use xenchan_sim::tap::{Dir, Tap};

const DOMAIN: &str = "web1";
const DEADLINE: Duration = Duration::from_secs(30);
/// Frames of each kind in the flood.
const N: u64 = 300;

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
    c.timeouts.hello = 10_000;
    c.timeouts.result = 20_000;
    c.timeouts.keepalive = 2000;
    c.timeouts.reconnect_min = 20;
    c.timeouts.reconnect_max = 200;
    c.timeouts.facts = 1000;
    c
}

/// A broker running in this process.
struct Broker {
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), xenchan_broker::BrokerError>>>,
}

impl Broker {
    async fn start(config: Config) -> Broker {
        let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(xenchan_broker::run(config, async move {
            let _ = rx.await;
        }));
        let end = tokio::time::Instant::now() + DEADLINE;
        while client.health().await.is_err() {
            assert!(
                tokio::time::Instant::now() < end,
                "the broker never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Broker {
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("the broker stops")
                .expect("the broker task does not panic")
                .expect("the broker stops cleanly");
        }
    }

    async fn put(&self, json: &str, uuid: Option<&str>) {
        let cfg = GuestConfig::from_json(json.as_bytes()).unwrap();
        self.client.put_config(DOMAIN, &cfg, uuid).await.unwrap();
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
                "timed out waiting for {what}; last view: {:?}",
                self.client.get_domain(DOMAIN).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one metric line (`name` with its labels).
    async fn metric(&self, name: &str) -> u64 {
        let m = self.client.metrics().await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
    }

    async fn pushes(&self) -> u64 {
        self.metric("xenchan_pushes_total").await
    }

    /// Store writes made for what agents reported: (applied, result, facts).
    async fn writes(&self) -> (u64, u64, u64) {
        (
            self.metric("xenchan_session_writes_total{kind=\"applied\"}")
                .await,
            self.metric("xenchan_session_writes_total{kind=\"result\"}")
                .await,
            self.metric("xenchan_session_writes_total{kind=\"facts\"}")
                .await,
        )
    }
}

/// The real agent on a relay's pty, in a guest root of its own.
struct Guest {
    dir: tempfile::TempDir,
    sockets: PathBuf,
    relay: Relay,
    root: GuestRoot,
    agent: Option<Proc>,
}

impl Guest {
    fn new() -> Guest {
        // Built (or found) first: a build takes longer than the broker's hello deadline.
        let _ = binaries();
        // Short: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("xf").tempdir().unwrap();
        let sockets = dir.path().join("s");
        std::fs::create_dir_all(&sockets).unwrap();
        let relay = Relay::start(&sockets.join(format!("{DOMAIN}.sock")), Gate::Open).unwrap();
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
        Guest {
            dir,
            sockets,
            relay,
            root,
            agent: None,
        }
    }

    fn config(&self) -> Config {
        broker_config(self.dir.path(), &self.sockets)
    }

    fn start_agent(&mut self) {
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
        let log = self.dir.path().join("agent.log");
        self.agent = Some(Proc::spawn("agent", cmd, &log).unwrap());
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn hostname(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/hostname")).unwrap()
    }

    async fn finish(mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.terminate(Duration::from_secs(5)).await;
        }
    }
}

/// Copies the regular files of `from` into `to` (a backup of the broker's state folder).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facts_show_the_pushed_hostname() {
    let mut g = Guest::new();
    let b = Broker::start(g.config()).await;
    g.start_agent();
    b.until("the first facts", |v| v.facts.is_some()).await;
    b.put(r#"{"hostname":"web1.example.com"}"#, None).await;
    b.until("configured", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    assert_eq!(g.hostname(), "web1\n");
    // The agent sends its facts again after an apply; the broker writes them at the end
    // of their interval (1 s here) at the latest.
    let v = b
        .until("facts with the pushed hostname", |v| {
            v.facts.as_ref().is_some_and(|f| f.hostname == "web1")
        })
        .await;
    assert_eq!(v.last_error, None);
    b.stop().await;
    g.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_no_uuid_gets_nothing_when_one_is_recorded() {
    let mut g = Guest::new();
    // The guest cannot tell its UUID (no /sys/hypervisor/uuid, no DMI).
    std::fs::remove_file(g.root.join("sys/hypervisor/uuid")).unwrap();
    let recorded = "6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a";
    let b = Broker::start(g.config()).await;
    b.put(r#"{"hostname":"web1.example.com"}"#, Some(recorded))
        .await;
    g.start_agent();
    let v = b
        .until("flagged", |v| v.state == DomainState::IdentityMismatch)
        .await;
    let error = v.last_error.clone().unwrap_or_default();
    assert!(error.contains(recorded), "{error}");
    assert!(error.contains("no UUID"), "{error}");
    assert_eq!(v.reported_uuid, None);
    // Keepalive keeps the session up; still nothing is pushed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.pushes().await, 0);
    assert_eq!(g.relay.with(|s| s.configs_sent().len()), 0);
    assert_eq!(g.hostname(), "localhost\n", "the guest got nothing");
    let v = b.client.get_domain(DOMAIN).await.unwrap();
    assert_eq!(v.state, DomainState::IdentityMismatch);
    assert_eq!(v.applied_generation, None);
    b.stop().await;
    g.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_of_a_restored_store_is_refused_shown_and_forced() {
    let mut g = Guest::new();
    let config = g.config();
    let state = config.state_dir.clone();
    let backup = g.dir.path().join("backup");
    g.start_agent();
    // Generation 1 applied; the store is backed up (broker stopped).
    let b = Broker::start(config.clone()).await;
    b.put(r#"{"hostname":"one.example.com"}"#, None).await;
    b.until("generation 1 applied", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    b.stop().await;
    copy_dir(&state, &backup);
    // Generation 2 applied by the same store.
    let b = Broker::start(config.clone()).await;
    b.put(r#"{"hostname":"two.example.com"}"#, None).await;
    b.until("generation 2 applied", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(2)
    })
    .await;
    assert_eq!(g.hostname(), "two\n");
    b.stop().await;
    // The backup is restored: same lineage, generation 1 desired.
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    let b = Broker::start(config.clone()).await;
    let v = b
        .until("the stale generation shown", |v| {
            v.state == DomainState::StaleGeneration
        })
        .await;
    let error = v.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("our generation 1") && error.contains("applied generation 2"),
        "{error}\n{}",
        g.agent_log()
    );
    assert!(error.contains("--force"), "{error}");
    assert_eq!(v.desired_generation, Some(1));
    // Refused once, not retried: keepalives pass, no second push.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.pushes().await, 1);
    assert_eq!(g.hostname(), "two\n", "the guest kept generation 2");
    let v = b.client.get_domain(DOMAIN).await.unwrap();
    assert_eq!(v.state, DomainState::StaleGeneration);
    // A plain re-push is refused the same way (it is not the override); the operator's
    // force comes while that push is still on its way (held at the relay), so the
    // broker waits for its answer, and only then sends the forced one.
    let sent_before = g.relay.with(|s| s.configs_sent().len());
    g.relay.set_gate(Gate::CloseAtConfig);
    b.client.push(DOMAIN).await.unwrap();
    g.relay
        .wait(
            "the plain push held",
            xenchan_e2e::relay::State::holds_a_config,
        )
        .await;
    b.client.push_force(DOMAIN).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        g.relay.with(|s| s.configs_sent().len()),
        sent_before + 1,
        "the forced push waits for the answer to the one in flight"
    );
    g.relay.set_gate(Gate::Open);
    b.until("generation 1 forced", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    assert_eq!(g.hostname(), "one\n");
    let sent = g.relay.with(xenchan_e2e::relay::State::configs_sent);
    let forced = sent.last().unwrap();
    assert!(sent.len() > sent_before);
    assert!(forced.force, "the forced push says so");
    assert_eq!(forced.generation, 1);
    assert!(forced.lineage.is_some(), "every push carries the lineage");
    assert!(
        sent[..sent.len() - 1].iter().all(|c| !c.force),
        "only the forced push is forced"
    );
    b.stop().await;
    g.finish().await;
}

/// What the revision-1 peer saw and did.
#[derive(Debug, Default)]
struct V1Record {
    configs: Vec<ConfigPush>,
    nonce: Option<xenchan_protocol::Nonce>,
}

/// A revision-1 agent: answers with the fixture frames of `protocol/tests/fixtures/v1`
/// (its hello has no capabilities), each re-sealed with the broker's session nonce, and
/// answers every config with a result for what it was sent. `extra` sends raw lines.
struct V1Peer {
    record: Arc<Mutex<V1Record>>,
    extra: mpsc::UnboundedSender<Vec<u8>>,
    task: JoinHandle<()>,
}

fn fixture(name: &str) -> Envelope {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/fixtures/v1/agent")
        .join(name);
    let mut tap = Tap::default();
    tap.record(Dir::ToHost, &std::fs::read(&path).unwrap());
    tap.events()
        .next()
        .unwrap_or_else(|| panic!("{} holds no frame", path.display()))
        .msg
        .clone()
}

impl V1Peer {
    fn start(socket: &Path) -> V1Peer {
        let listener = UnixListener::bind(socket).unwrap();
        let record = Arc::new(Mutex::new(V1Record::default()));
        let (extra, mut extra_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let rec = record.clone();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let codec = FrameCodec::new(65536);
            let mut tap = Tap::default();
            let mut seen = 0usize;
            let mut buf = vec![0u8; 8192];
            let seal = |env: &Envelope| codec.encode_line(env).unwrap();
            loop {
                tokio::select! {
                    n = read.read(&mut buf) => {
                        let n = n.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        tap.record(Dir::ToGuest, &buf[..n]);
                        let msgs: Vec<Envelope> =
                            tap.events().skip(seen).map(|e| e.msg.clone()).collect();
                        seen += msgs.len();
                        for m in msgs {
                            let mut out = Vec::new();
                            match m.body {
                                Body::Hello(_) => {
                                    rec.lock().unwrap().nonce.clone_from(&m.session);
                                    for name in ["hello.frame", "facts.frame"] {
                                        let mut env = fixture(name);
                                        env.session.clone_from(&m.session);
                                        out.push(seal(&env));
                                    }
                                }
                                Body::Config(c) => {
                                    let result = Envelope::new(
                                        Role::Agent,
                                        m.session.clone(),
                                        Body::Result(ApplyResult {
                                            generation: c.generation,
                                            digest: c.digest.clone(),
                                            items: vec![
                                                ItemResult::new("hostname", ItemStatus::Applied),
                                                ItemResult::new("user:cloud", ItemStatus::Applied),
                                            ],
                                        }),
                                    );
                                    out.push(seal(&result));
                                    rec.lock().unwrap().configs.push(c);
                                }
                                Body::Ping { id } => {
                                    out.push(seal(&Envelope::new(
                                        Role::Agent,
                                        m.session.clone(),
                                        Body::Pong { id },
                                    )));
                                }
                                _ => {}
                            }
                            for line in out {
                                if write.write_all(&line).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Some(line) = extra_rx.recv() => {
                        if write.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        V1Peer {
            record,
            extra,
            task,
        }
    }
}

/// A document with what a revision-1 agent lacks: the `time` kind and a `users` v2 field.
const FLEET_DOC: &str = r#"{"hostname":"web1.example.com",
    "users":[{"name":"cloud","ssh_authorized_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ alice@laptop"],"shell":"/bin/bash"}],
    "time":{"timezone":"Europe/Paris"}}"#;

async fn v1_world() -> (tempfile::TempDir, Broker, V1Peer) {
    let dir = tempfile::Builder::new().prefix("xv").tempdir().unwrap();
    let sockets = dir.path().join("s");
    std::fs::create_dir_all(&sockets).unwrap();
    let peer = V1Peer::start(&sockets.join(format!("{DOMAIN}.sock")));
    let b = Broker::start(broker_config(dir.path(), &sockets)).await;
    b.put(FLEET_DOC, None).await;
    (dir, b, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_1_agent_is_configured_with_what_it_understands() {
    let (_dir, b, peer) = v1_world().await;
    let v = b
        .until("configured", |v| {
            v.state == DomainState::Configured && v.applied_generation == Some(1)
        })
        .await;
    // One push, filtered: no `time`, no `shell`, and the digest of that document, which
    // the agent reported as applied.
    let configs = peer.record.lock().unwrap().configs.clone();
    assert_eq!(configs.len(), 1, "{configs:?}");
    let pushed = &configs[0];
    assert!(pushed.config.time.is_none());
    assert!(pushed.config.users[0].shell.is_none());
    assert_eq!(
        pushed.config.hostname.as_ref().unwrap().as_str(),
        "web1.example.com"
    );
    assert_eq!(pushed.digest, pushed.config.digest());
    assert_ne!(v.desired_digest.as_deref(), Some(pushed.digest.as_str()));
    assert_eq!(v.applied_digest.as_deref(), Some(pushed.digest.as_str()));
    assert!(pushed.lineage.is_some());
    assert!(!pushed.force);
    // What was left out is recorded `unsupported` with the reason, next to the agent's
    // items; it is not a failure.
    let mut items: Vec<(&str, ItemStatus)> = v
        .items
        .iter()
        .map(|i| (i.item.as_str(), i.status))
        .collect();
    items.sort_by_key(|i| i.0);
    assert_eq!(
        items,
        vec![
            ("hostname", ItemStatus::Applied),
            ("time", ItemStatus::Unsupported),
            ("user:cloud", ItemStatus::Applied),
            ("users[0].shell", ItemStatus::Unsupported),
        ],
        "{v:?}"
    );
    for i in v
        .items
        .iter()
        .filter(|i| i.status == ItemStatus::Unsupported)
    {
        let reason = i.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("xenchan-agent 0.1.0"), "{reason}");
    }
    assert_eq!(v.last_error, None);
    // No timeout, no second push: keepalives pass and nothing more is sent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.pushes().await, 1);
    assert_eq!(peer.record.lock().unwrap().configs.len(), 1);
    let v = b.client.get_domain(DOMAIN).await.unwrap();
    assert_eq!(v.state, DomainState::Configured);
    assert!(v.facts.is_some(), "the fixture's facts are stored");
    peer.task.abort();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_repeated_results_and_facts_writes_nothing_and_pushes_nothing() {
    let (_dir, b, peer) = v1_world().await;
    b.until("configured", |v| {
        v.state == DomainState::Configured && v.applied_generation == Some(1)
    })
    .await;
    // The facts of the hello were written once (immediately: the first of the interval).
    b.until("facts stored", |v| v.facts.is_some()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = b.writes().await;
    let pushes = b.pushes().await;
    let dropped = |r: &str| format!("xenchan_frames_dropped_total{{reason=\"{r}\"}}");
    let results_dropped = b.metric(&dropped("result_unchanged")).await;
    let facts_dropped = b.metric(&dropped("facts_unchanged")).await;
    // The same valid result (its current generation) and the same facts, 300 times each.
    let (nonce, pushed) = {
        let r = peer.record.lock().unwrap();
        (r.nonce.clone(), r.configs[0].clone())
    };
    let codec = FrameCodec::new(65536);
    let result = codec
        .encode_line(&Envelope::new(
            Role::Agent,
            nonce.clone(),
            Body::Result(ApplyResult {
                generation: pushed.generation,
                digest: pushed.digest.clone(),
                items: vec![
                    ItemResult::new("hostname", ItemStatus::Applied),
                    ItemResult::new("user:cloud", ItemStatus::Applied),
                ],
            }),
        ))
        .unwrap();
    let mut facts = fixture("facts.frame");
    facts.session = nonce;
    let facts = codec.encode_line(&facts).unwrap();
    for _ in 0..N {
        peer.extra.send(result.clone()).unwrap();
        peer.extra.send(facts.clone()).unwrap();
    }
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = b.metric(&dropped("result_unchanged")).await - results_dropped;
        let f = b.metric(&dropped("facts_unchanged")).await - facts_dropped;
        if r >= N && f >= N {
            assert_eq!((r, f), (N, N));
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the flood was not all seen: {r} results, {f} facts dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past a facts interval, in case anything was held.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b.writes().await,
        before,
        "(applied, result, facts) store writes"
    );
    assert_eq!(b.pushes().await, pushes);
    assert_eq!(peer.record.lock().unwrap().configs.len(), 1);
    let v = b.client.get_domain(DOMAIN).await.unwrap();
    assert_eq!(v.state, DomainState::Configured);
    assert_eq!(v.applied_generation, Some(1), "{v:?}");
    peer.task.abort();
    b.stop().await;
}
