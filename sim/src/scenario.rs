//! Scenarios the simulator plays against the real broker and agents, used by the demo
//! (`--scenario`) and by the end-to-end tests. Each one starts a broker and domains in a
//! fresh [`Sim`], pushes a configuration to every domain through the control API, does
//! something to the first domain (`vm01`, the target), and returns verdicts: the right
//! state in the broker's API and in the guest roots, nothing lost, nothing applied twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use xenchan_api::client::{Client, ClientError};
use xenchan_api::config::Config;
use xenchan_api::types::{DomainState, DomainView, PrepareRequest};
use xenchan_protocol::message::{Body, ErrorCode};
use xenchan_protocol::{GuestConfig, Role};

use crate::checks::{self, Check};
use crate::configs;
use crate::domain::{DomainSpec, StopHow};
use crate::noise::{self, Actor};
use crate::tap::Dir;
use crate::wait::{self, Timeout};
use crate::world::{Sim, SimError};

mod hosts;

/// The domain each scenario acts on.
pub const TARGET: &str = "vm01";

/// Name prefix of the simulated domains (`vm01`, `vm02`, ...).
pub const PREFIX: &str = "vm";

/// What the simulator can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Every domain comes up and is configured; nothing else happens.
    Plain,
    /// `xl reboot` of the target once configured: EOF, socket gone, new domid, fresh tty;
    /// then a config change while it is down.
    Reboot,
    /// `xl destroy` of the target: EOF, socket gone; its leases stay until it is deleted.
    Destroy,
    /// The broker is killed while the target's config is on the wire, and restarted.
    BrokerRestart,
    /// The target's agent is killed while its config is arriving, and restarted.
    AgentRestart,
    /// A modem prober and console noise write into the target's channel all along.
    Noisy,
    /// The target floods its channel: giant lines, fake beacons, junk.
    Hostile,
    /// The target reads its channel at a few hundred bytes per second.
    Slow,
    /// The target's guest reports another VM's UUID.
    WrongUuid,
    /// Hosts on etcd: the running target live-migrates from its host to another.
    Migrate,
    /// Hosts on etcd: the target's host dies (`kill -9` of its broker); its domains are
    /// restarted on another host.
    HostLoss,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 11] = [
        Scenario::Plain,
        Scenario::Reboot,
        Scenario::Destroy,
        Scenario::BrokerRestart,
        Scenario::AgentRestart,
        Scenario::Noisy,
        Scenario::Hostile,
        Scenario::Slow,
        Scenario::WrongUuid,
        Scenario::Migrate,
        Scenario::HostLoss,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Reboot => "reboot",
            Scenario::Destroy => "destroy",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::AgentRestart => "agent-restart",
            Scenario::Noisy => "noisy",
            Scenario::Hostile => "hostile",
            Scenario::Slow => "slow",
            Scenario::WrongUuid => "wrong-uuid",
            Scenario::Migrate => "migrate",
            Scenario::HostLoss => "host-loss",
        }
    }

    /// One line about it.
    pub fn about(self) -> &'static str {
        match self {
            Scenario::Plain => "every domain comes up and is configured",
            Scenario::Reboot => {
                "reboot vm01 once configured (EOF, socket gone, new domid, tty echoing again): no re-push; then a change pushed while it is down arrives exactly once"
            }
            Scenario::Destroy => {
                "destroy vm01: the broker sees EOF and the socket go; its addresses stay leased until DELETE"
            }
            Scenario::BrokerRestart => {
                "SIGKILL the broker while vm01's config is on the wire, start it again: everything configured, nothing pushed twice"
            }
            Scenario::AgentRestart => {
                "SIGKILL vm01's agent while its config arrives, as a new one arrives, and once configured; restart it each time: configured, nothing applied twice"
            }
            Scenario::Noisy => {
                "a modem prober and console noise write into vm01's channel all along"
            }
            Scenario::Hostile => {
                "vm01 floods its channel (giant lines, fake beacons, junk): the broker stays bounded and responsive"
            }
            Scenario::Slow => {
                "vm01 reads its channel at 400 B/s: the others are not held up, vm01 is not called unresponsive"
            }
            Scenario::WrongUuid => {
                "vm01's guest reports another VM's UUID: flagged identity-mismatch, never pushed to"
            }
            Scenario::Migrate => {
                "(--hosts 2+) vm01 live-migrates from sim-h1 to sim-h2 (prepare, switchover, complete): same agent and tty, its address leased throughout, nothing pushed or applied again"
            }
            Scenario::HostLoss => {
                "(--hosts 2+) kill -9 of sim-h1's broker; its domains restarted on sim-h2 are claimed when sim-h1's etcd lease expires: nothing pushed or applied again"
            }
        }
    }

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The fewest hosts it needs (`--hosts`).
    pub fn min_hosts(self) -> usize {
        match self {
            Scenario::Migrate | Scenario::HostLoss => 2,
            _ => 1,
        }
    }

    /// Whether it can be played with several hosts (the others are single-host: they act
    /// on "the broker").
    pub fn multi_host(self) -> bool {
        matches!(
            self,
            Scenario::Plain | Scenario::Migrate | Scenario::HostLoss
        )
    }

    /// Why it cannot be played with `hosts` hosts, if it cannot.
    pub fn refuse_hosts(self, hosts: usize) -> Option<String> {
        if hosts < self.min_hosts() {
            Some(format!(
                "scenario {self} needs --hosts {} or more (several brokers on one etcd)",
                self.min_hosts()
            ))
        } else if hosts > 1 && !self.multi_host() {
            Some(format!(
                "scenario {self} runs on one host only (--hosts 1); with several hosts: plain, migrate, host-loss"
            ))
        } else {
            None
        }
    }

    /// The fewest domains it needs.
    pub fn min_domains(self) -> usize {
        match self {
            Scenario::Plain | Scenario::Reboot | Scenario::AgentRestart | Scenario::Noisy => 1,
            _ => 2,
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a scenario could not be played to its end.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The simulation failed.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// A wait ran out of time.
    #[error(transparent)]
    Timeout(#[from] Timeout),
    /// An agent exited on its own.
    #[error("{crashes}; its log ends with:\n{tail}")]
    AgentCrashed {
        /// Which, how.
        crashes: String,
        /// The first one's log tail.
        tail: String,
    },
    /// The API refused something the scenario needs.
    #[error("control API")]
    Api(#[from] ClientError),
    /// Too few domains.
    #[error("scenario {0} needs at least {1} domains")]
    TooFew(Scenario, usize),
    /// Not playable with this many hosts.
    #[error("{0}")]
    Hosts(String),
}

/// How a scenario is played.
#[derive(Clone)]
pub struct Params {
    /// Domains in all (`vm01` is the target).
    pub domains: usize,
    /// Keys for user `cloud` in every config.
    pub keys: Vec<String>,
    /// Bound on each wait (for all domains to be configured, for a state...).
    pub deadline: Duration,
    /// Time between a guest's socket appearing and its agent starting (its boot).
    pub boot_delay: Duration,
    /// Time a rebooting domain has no socket.
    pub reboot_gap: Duration,
    /// Where step lines go.
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
    /// Hosts: 1 is one broker on the embedded store; N >= 2 runs N brokers on one local
    /// etcd (cluster mode), domains spread over them round robin.
    pub hosts: usize,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("domains", &self.domains)
            .field("deadline", &self.deadline)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Params {
    /// `domains` domains, the fallback key, a deadline that grows with the count, and
    /// step lines to stderr.
    pub fn new(domains: usize) -> Params {
        Params {
            domains,
            keys: vec![configs::FALLBACK_KEY.trim().to_string()],
            deadline: Duration::from_secs(60 + 2 * domains as u64),
            boot_delay: Duration::from_millis(500),
            reboot_gap: Duration::from_secs(1),
            log: Arc::new(|s| eprintln!("{s}")),
            hosts: 1,
        }
    }
}

/// The outcome.
#[derive(Debug)]
pub struct Report {
    /// What was played.
    pub scenario: Scenario,
    /// Verdicts.
    pub checks: Vec<Check>,
    /// The configuration each domain should hold at the end.
    pub configs: BTreeMap<String, GuestConfig>,
    /// The broker's view at the end.
    pub views: Vec<DomainView>,
    /// Domains that should not end configured: the state they should show, or `None`
    /// when they should be gone from the API.
    pub expected: BTreeMap<String, Option<DomainState>>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Report {
    /// Every check held.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The checks that failed, one per line.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The broker settings scenarios run with: short deadlines so recoveries take seconds.
pub fn tune_broker(c: &mut Config) {
    c.timeouts.hello = 5000;
    c.timeouts.result = 15_000;
    c.timeouts.keepalive = 5000;
    c.timeouts.reconnect_min = 100;
    c.timeouts.reconnect_max = 1000;
}

/// Agent arguments matching [`tune_broker`].
pub fn agent_args() -> Vec<std::ffi::OsString> {
    vec!["--keepalive-secs".into(), "5".into()]
}

/// Records every state and connection flag the API showed for each domain.
#[derive(Debug)]
pub struct Watcher {
    seen: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    /// Polls the API every 50 ms until dropped or stopped.
    pub fn start(client: Client) -> Watcher {
        let w = Watcher {
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (seen, stop) = (Arc::clone(&w.seen), Arc::clone(&w.stop));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(list) = client.list().await {
                    let mut s = seen.lock().unwrap();
                    for v in list {
                        let e = s.entry(v.name.clone()).or_default();
                        e.insert(v.state.as_str().to_string());
                        e.insert(
                            if v.connected {
                                "connected"
                            } else {
                                "disconnected"
                            }
                            .into(),
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        w
    }

    /// Whether `name` was seen with `state` (a state name, or `connected`/`disconnected`).
    pub fn saw(&self, name: &str, state: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|s| s.contains(state))
    }

    /// Forgets what was seen.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Plays `scenario` in `sim`, which must have no broker and no domains yet.
pub async fn run(scenario: Scenario, sim: &mut Sim, p: &Params) -> Result<Report, ScenarioError> {
    let need = scenario.min_domains();
    if p.domains < need {
        return Err(ScenarioError::TooFew(scenario, need));
    }
    if let Some(why) = scenario.refuse_hosts(p.hosts) {
        return Err(ScenarioError::Hosts(why));
    }
    let start = Instant::now();
    let mut play = Play::new(sim, p).await?;
    match scenario {
        Scenario::Plain => play.plain().await?,
        Scenario::Reboot => play.reboot().await?,
        Scenario::Destroy => play.destroy().await?,
        Scenario::BrokerRestart => play.broker_restart().await?,
        Scenario::AgentRestart => play.agent_restart().await?,
        Scenario::Noisy => play.noisy().await?,
        Scenario::Hostile => play.hostile().await?,
        Scenario::Slow => play.slow().await?,
        Scenario::WrongUuid => play.wrong_uuid().await?,
        Scenario::Migrate => Box::pin(play.migrate()).await?,
        Scenario::HostLoss => Box::pin(play.host_loss()).await?,
    }
    play.finish(scenario, start).await
}

/// The state of a scenario being played.
struct Play<'a> {
    sim: &'a mut Sim,
    p: &'a Params,
    client: Client,
    configs: BTreeMap<String, GuestConfig>,
    numbers: BTreeMap<String, u32>,
    checks: Vec<Check>,
    /// Domains that should not end configured (see [`Report::expected`]).
    expected: BTreeMap<String, Option<DomainState>>,
    /// Domains whose guest files are not checked at the end (they were never configured).
    no_files: HashSet<String>,
}

impl<'a> Play<'a> {
    async fn new(sim: &'a mut Sim, p: &'a Params) -> Result<Play<'a>, ScenarioError> {
        if p.hosts > 1 {
            (p.log)(&format!(
                "starting a local etcd and {} brokers on it (cluster mode): {}",
                p.hosts,
                (1..=p.hosts)
                    .map(crate::cluster::host_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            // Boxed: etcd's start-up is a large future, and most runs never take it.
            Box::pin(sim.start_hosts(p.hosts, tune_broker)).await?;
        } else {
            sim.start_broker(tune_broker).await?;
        }
        let client = sim.client()?;
        Ok(Play {
            sim,
            p,
            client,
            configs: BTreeMap::new(),
            numbers: BTreeMap::new(),
            checks: Vec::new(),
            expected: BTreeMap::new(),
            no_files: HashSet::new(),
        })
    }

    fn log(&self, s: &str) {
        (self.p.log)(s);
    }

    fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check::new(name, ok, detail));
    }

    /// Specs for all domains; `tweak` adjusts the target's.
    fn specs(&mut self, tweak: impl FnOnce(&mut DomainSpec)) -> Vec<DomainSpec> {
        let mut specs: Vec<DomainSpec> = (0..self.p.domains)
            .map(|_| {
                let mut s = self.sim.next_spec(PREFIX);
                s.boot_delay = self.p.boot_delay;
                s.agent_args = agent_args();
                s
            })
            .collect();
        let host_dirs: Vec<_> = self
            .sim
            .hosts()
            .iter()
            .map(|h| h.socket_dir.clone())
            .collect();
        for (i, s) in specs.iter_mut().enumerate() {
            self.numbers.insert(s.name.clone(), i as u32 + 1);
            // Round robin over the hosts: vm01 on the first.
            if !host_dirs.is_empty() {
                s.socket_dir = Some(host_dirs[i % host_dirs.len()].clone());
            }
        }
        if let Some(t) = specs.first_mut() {
            tweak(t);
        }
        specs
    }

    async fn create(&mut self, specs: Vec<DomainSpec>) -> Result<(), ScenarioError> {
        let n = specs.len();
        if !self.sim.hosts().is_empty() {
            // Each host's libvirt hook tells its broker first (`prepare begin`, with the
            // UUID): what lets a broker claim the domain in etcd and follow PUTs made
            // through any other broker.
            for s in &specs {
                let host = self
                    .sim
                    .hosts()
                    .iter()
                    .find(|h| Some(&h.socket_dir) == s.socket_dir.as_ref())
                    .ok_or_else(|| SimError::NoDomain(s.name.clone()))?;
                host.client()
                    .prepare(&s.name, &prepare_request(&s.uuid))
                    .await?;
            }
            self.log(&format!(
                "{n} domain(s) prepared on their hosts, round robin (as the libvirt hook does, with their UUIDs)"
            ));
        }
        self.log(&format!(
            "starting {n} domain(s): socket, pty, xenstore, hotplug, agent"
        ));
        self.sim.add_domains(specs).await?;
        Ok(())
    }

    /// The broker a PUT of `name` goes through: with hosts, the next host after the
    /// one running it (round robin), so every PUT crosses etcd to reach the owner.
    fn put_client(&self, name: &str) -> Client {
        let hosts = self.sim.hosts();
        if hosts.is_empty() {
            return self.client.clone();
        }
        let n = self.numbers.get(name).copied().unwrap_or(1) as usize;
        let mut i = n % hosts.len();
        // Never through a lost host's broker.
        while hosts[i].lost {
            i = (i + 1) % hosts.len();
        }
        hosts[i].client()
    }

    /// The config of `name`, with `extra_keys` filler keys (a bigger push).
    fn config_for(
        &self,
        name: &str,
        extra_keys: usize,
        host_suffix: &str,
    ) -> Result<GuestConfig, ScenarioError> {
        let d = self.sim.domain(name)?;
        let n = self.numbers.get(name).copied().unwrap_or(1);
        let mut keys = self.p.keys.clone();
        keys.extend(configs::filler_keys(extra_keys, name));
        let host = format!("{name}{host_suffix}");
        Ok(configs::guest_config(n, &host, &d.spec().mac, &keys))
    }

    async fn put(&mut self, name: &str, config: GuestConfig) -> Result<DomainView, ScenarioError> {
        let client = self.put_client(name);
        self.put_through(&client, name, config).await
    }

    async fn put_through(
        &mut self,
        client: &Client,
        name: &str,
        config: GuestConfig,
    ) -> Result<DomainView, ScenarioError> {
        let uuid = self.sim.domain(name)?.spec().uuid.clone();
        let v = client.put_config(name, &config, Some(&uuid)).await?;
        if let (Some(i), Some(generation)) = (self.sim.host_of(name), v.desired_generation) {
            // Through another host's broker: the owner learns it from its etcd watch. Wait
            // for that, so that "converged" is judged on this generation, not the last one.
            let owner = self.sim.hosts()[i].client();
            if owner.socket() != client.socket() {
                wait::until_domain(
                    &owner,
                    name,
                    self.p.deadline,
                    &format!("generation {generation} to reach the broker running {name}"),
                    |v| v.desired_generation >= Some(generation),
                )
                .await?;
            }
        }
        self.configs.insert(name.to_string(), config);
        Ok(v)
    }

    async fn put_all(
        &mut self,
        names: &[String],
        extra_for_target: usize,
    ) -> Result<(), ScenarioError> {
        for name in names {
            let extra = if name == TARGET { extra_for_target } else { 0 };
            let c = self.config_for(name, extra, "")?;
            self.put(name, c).await?;
        }
        self.log(&format!(
            "configs put for {} domain(s) through the control API",
            names.len()
        ));
        Ok(())
    }

    fn others(&self) -> Vec<String> {
        self.sim
            .names()
            .into_iter()
            .filter(|n| n != TARGET)
            .collect()
    }

    /// Waits until `names` are configured; fails at once if an agent crashes meanwhile
    /// (nothing would configure its domain).
    async fn converge(&self, names: &[String]) -> Result<Vec<DomainView>, ScenarioError> {
        let crashed = async {
            loop {
                let crashes: Vec<String> =
                    self.sim.domains().flat_map(checks::agent_crashes).collect();
                if let Some(first) = crashes.first() {
                    let name = first.split(':').next().unwrap_or_default().to_string();
                    let log = self.sim.env().logs_dir.join(format!("{name}.agent.log"));
                    return ScenarioError::AgentCrashed {
                        crashes: crashes.join("; "),
                        tail: crate::broker::tail(&log, 5),
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        // With hosts, each domain is judged by the broker of the host it runs on.
        let mut groups: BTreeMap<Option<usize>, Vec<String>> = BTreeMap::new();
        for n in names {
            groups
                .entry(self.sim.host_of(n))
                .or_default()
                .push(n.clone());
        }
        let all = async {
            let mut views = Vec::new();
            for (host, group) in &groups {
                let client = match host {
                    Some(i) => self.sim.hosts()[*i].client(),
                    None => self.client.clone(),
                };
                views.extend(wait::all_converged(&client, group, self.p.deadline).await?);
            }
            Ok::<_, Timeout>(views)
        };
        tokio::select! {
            r = all => Ok(r?),
            e = crashed => Err(e),
        }
    }

    /// Waits until the tap of `name` saw a message matching `pred`.
    async fn wait_tap(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&crate::tap::TapEvent) -> bool,
    ) -> Result<(), ScenarioError> {
        let deadline = Instant::now() + self.p.deadline;
        loop {
            if self.sim.domain(name)?.with_channel(|c| c.tap.count(&pred)) > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ScenarioError::Timeout(Timeout {
                    what: format!("{name}: {what}"),
                    waited: self.p.deadline,
                    last: "not seen on the channel".into(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_partial_config(&self, min: usize) -> Result<(), ScenarioError> {
        let d = self.sim.domain(TARGET)?;
        let deadline = Instant::now() + self.p.deadline;
        loop {
            let partial = d.with_channel(|c| c.tap.partial_to_guest("config"));
            if partial >= min {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ScenarioError::Timeout(Timeout {
                    what: format!("{min} bytes of {TARGET}'s config on the wire"),
                    waited: self.p.deadline,
                    last: format!("{partial} bytes"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn plain(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|_| {});
        self.create(specs).await?;
        let names = self.sim.names();
        self.put_all(&names, 0).await?;
        self.converge(&names).await?;
        self.log("all domains configured");
        Ok(())
    }

    async fn reboot(&mut self) -> Result<(), ScenarioError> {
        self.plain().await?;
        let names = self.sim.names();
        let watcher = Watcher::start(self.client.clone());
        let (domid, mtime_before) = {
            let d = self.sim.domain(TARGET)?;
            (d.domid(), mtime(&d.root().join("etc/hostname")))
        };
        self.log(&format!("rebooting {TARGET}: the broker reads EOF, the socket is gone for {:?}, then a new domid and a fresh tty", self.p.reboot_gap));
        let gap = self.p.reboot_gap;
        self.sim
            .domain_mut(TARGET)?
            .reboot(gap)
            .await
            .map_err(|source| SimError::Domain {
                name: TARGET.into(),
                source,
            })?;
        self.converge(&names).await?;
        let d = self.sim.domain(TARGET)?;
        let boot = d.boots();
        let new_domid = d.domid();
        let pushed = checks::pushes_in_boot(d, boot);
        let echoes = checks::echoes_in_boot(d, boot);
        let mtime_after = mtime(&d.root().join("etc/hostname"));
        self.check(
            "reboot: the domain got a new domid",
            domid != new_domid,
            format!("{domid:?} -> {new_domid:?}"),
        );
        self.check(
            "reboot: the broker saw the channel go away",
            watcher.saw(TARGET, "disconnected"),
            "never saw connected=false",
        );
        self.check(
            "reboot: nothing pushed again after the reboot",
            pushed == 0,
            format!("{pushed} config frame(s) reached the guest after the reboot"),
        );
        self.check(
            "reboot: the applied files were not rewritten",
            mtime_before.is_some() && mtime_before == mtime_after,
            format!("etc/hostname mtime {mtime_before:?} -> {mtime_after:?}"),
        );
        self.check(
            "reboot: the fresh tty echoed the broker's hello (and the broker ignored it)",
            echoes > 0,
            "no echo seen: the tty was not cooked at boot, or the agent opened it before the broker spoke",
        );

        // A change made while the domain is down arrives exactly once when it is back.
        self.log(&format!(
            "shutting {TARGET} down and changing its config while it is down"
        ));
        self.sim.domain_mut(TARGET)?.shutdown().await;
        let c = self.config_for(TARGET, 0, "-v2")?;
        let v = self.put(TARGET, c).await?;
        let generation = v.desired_generation.unwrap_or(0);
        wait::until_domain(
            &self.client,
            TARGET,
            self.p.deadline,
            "to be disconnected",
            |v| !v.connected,
        )
        .await?;
        self.log(&format!("booting {TARGET} again"));
        self.sim
            .domain_mut(TARGET)?
            .boot()
            .await
            .map_err(|source| SimError::Domain {
                name: TARGET.into(),
                source,
            })?;
        self.converge(&names).await?;
        let n = checks::pushes_of(self.sim.domain(TARGET)?, generation);
        self.check(
            "reboot: the change made while down was pushed exactly once",
            n == 1,
            format!("generation {generation} reached the guest {n} times"),
        );
        Ok(())
    }

    async fn destroy(&mut self) -> Result<(), ScenarioError> {
        self.plain().await?;
        let others = self.others();
        let socket = self.sim.domain(TARGET)?.socket_path();
        self.log(&format!(
            "destroying {TARGET}: the broker reads EOF and its socket goes away"
        ));
        self.sim.domain_mut(TARGET)?.destroy().await;
        let v = wait::until_domain(
            &self.client,
            TARGET,
            self.p.deadline,
            "disconnected and pending",
            |v| !v.connected && v.state == DomainState::Pending,
        )
        .await?;
        self.check(
            "destroy: the API shows it pending",
            v.state == DomainState::Pending,
            wait::describe(&v),
        );
        self.check(
            "destroy: the socket file is gone",
            !socket.exists(),
            socket.display().to_string(),
        );
        let agent_gone = !self.sim.domain(TARGET)?.agent_running();
        self.check(
            "destroy: the guest's agent is gone",
            agent_gone,
            "agent still running",
        );
        self.converge(&others).await?;

        // Its address stays leased until the domain is deleted.
        let other = others[0].clone();
        let target_addr = configs::ipv4_for(self.numbers[TARGET]);
        let taken = self.config_with_address(&other, &target_addr)?;
        let uuid = self.sim.domain(&other)?.spec().uuid.clone();
        match self.client.put_config(&other, &taken, Some(&uuid)).await {
            Err(ClientError::Api { status: 409, error }) => self.check(
                "destroy: the destroyed domain's address stays leased until DELETE",
                error.domain.as_deref() == Some(TARGET),
                format!("409 names {:?}", error.domain),
            ),
            other_result => self.check(
                "destroy: the destroyed domain's address stays leased until DELETE",
                false,
                format!("PUT of {target_addr} to {other} answered {other_result:?}, want 409"),
            ),
        }
        self.log(&format!(
            "deleting {TARGET} through the API: its leases are released"
        ));
        let del = self.client.delete(TARGET).await?;
        self.check(
            "destroy: DELETE removed the domain",
            del.removed,
            format!("{del:?}"),
        );
        self.expected.insert(TARGET.into(), None);
        self.no_files.insert(TARGET.into());
        self.put(&other, taken).await?;
        self.converge(&others).await?;
        let gone = matches!(
            self.client.get_domain(TARGET).await,
            Err(ClientError::Api { status: 404, .. })
        );
        self.check(
            "destroy: the deleted domain is gone from the API",
            gone,
            "still listed",
        );
        Ok(())
    }

    fn config_with_address(&self, name: &str, addr: &str) -> Result<GuestConfig, ScenarioError> {
        let mut c = self
            .configs
            .get(name)
            .cloned()
            .map_or_else(|| self.config_for(name, 0, ""), Ok)?;
        let cidr: xenchan_protocol::config::Cidr = serde_json::from_value(serde_json::json!(addr))
            .map_err(|e| {
                ScenarioError::Timeout(Timeout {
                    what: format!("a valid address ({e})"),
                    waited: Duration::ZERO,
                    last: addr.into(),
                })
            })?;
        if let Some(net) = c.network.as_mut()
            && let Some(eth) = net.ethernets.values_mut().next()
        {
            eth.addresses.push(cidr);
        }
        Ok(c)
    }

    async fn broker_restart(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.rate = Some(600));
        self.create(specs).await?;
        let names = self.sim.names();
        self.put_all(&names, 30).await?;
        self.wait_partial_config(1024).await?;
        self.log(&format!(
            "killing the broker (SIGKILL) while {TARGET}'s config is on the wire"
        ));
        let killed = Instant::now();
        self.sim.broker()?.kill().await;
        self.sim.domain_mut(TARGET)?.set_rate(None);
        // The rest of the push still reaches the agent (QEMU reads the dead connection to
        // its end); its result is written while no broker is connected, and is held.
        self.wait_tap(TARGET, "the agent's result after the broker died", |e| {
            e.at > killed && e.dir == Dir::ToHost && matches!(e.msg.body, Body::Result(_))
        })
        .await?;
        self.log("the agent answered into the void; starting the broker again");
        self.sim.broker()?.restart().await.map_err(SimError::from)?;
        self.converge(&names).await?;
        let stale = self.sim.domain(TARGET)?.with_channel(|c| c.stale_delivered);
        self.check(
            "broker-restart: bytes of the old session reached the new broker stale (and were ignored)",
            stale > 0,
            "no stale bytes delivered: the scenario did not exercise the replay",
        );
        Ok(())
    }

    async fn agent_restart(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.rate = Some(600));
        self.create(specs).await?;
        let names = self.sim.names();
        self.put_all(&names, 30).await?;
        self.wait_partial_config(1024).await?;
        self.log(&format!("killing {TARGET}'s agent (SIGKILL) while its config arrives; the tty resets to cooked+echo"));
        let d = self.sim.domain_mut(TARGET)?;
        d.stop_agent(StopHow::Kill).await;
        d.set_rate(None);
        d.start_agent().map_err(|source| SimError::Domain {
            name: TARGET.into(),
            source,
        })?;
        self.converge(&names).await?;

        // A new generation; the agent dies the moment the whole push has reached it.
        let c = self.config_for(TARGET, 0, "-v2")?;
        let generation = self.put(TARGET, c).await?.desired_generation.unwrap_or(0);
        self.wait_tap(TARGET, "the new generation to reach the guest", |e| {
            e.dir == Dir::ToGuest && e.config_generation().is_some_and(|(g, _)| g == generation)
        })
        .await?;
        self.log(&format!("killing {TARGET}'s agent (SIGKILL) the moment generation {generation} reached it (mid-apply)"));
        let d = self.sim.domain_mut(TARGET)?;
        d.stop_agent(StopHow::Kill).await;
        d.start_agent().map_err(|source| SimError::Domain {
            name: TARGET.into(),
            source,
        })?;
        self.converge(&names).await?;

        self.log(&format!("killing {TARGET}'s agent again once configured"));
        let since = Instant::now();
        let d = self.sim.domain_mut(TARGET)?;
        d.stop_agent(StopHow::Kill).await;
        d.start_agent().map_err(|source| SimError::Domain {
            name: TARGET.into(),
            source,
        })?;
        // The new agent reports what it applied in a new session; the broker must not push.
        let deadline = Instant::now() + self.p.deadline;
        loop {
            let answered = self.sim.domain(TARGET)?.with_channel(|c| {
                c.tap.count(|e| {
                    e.at > since
                        && e.dir == Dir::ToHost
                        && e.msg.from == Role::Agent
                        && e.hello_applied().is_some()
                        && e.msg.session.is_some()
                })
            });
            if answered > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(ScenarioError::Timeout(Timeout {
                    what: format!("{TARGET}'s restarted agent to answer a hello"),
                    waited: self.p.deadline,
                    last: String::new(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.converge(&names).await?;
        let kills = self.sim.domain(TARGET)?.agent_exits().len();
        self.check(
            "agent-restart: the agent was killed three times",
            kills == 3,
            format!("{kills} exits"),
        );
        Ok(())
    }

    async fn noisy(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.agent = false);
        self.create(specs).await?;
        let hvc = self.sim.domain(TARGET)?.root().hvc();
        self.log(&format!(
            "a modem prober and console noise write into {TARGET}'s channel from now on"
        ));
        let actor = Actor::start(
            hvc,
            noise::Kind::Noisy {
                interval: Duration::from_millis(50),
            },
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.sim
            .domain_mut(TARGET)?
            .start_agent()
            .map_err(|source| SimError::Domain {
                name: TARGET.into(),
                source,
            })?;
        let names = self.sim.names();
        self.put_all(&names, 0).await?;
        self.converge(&names).await?;
        let written = actor.written();
        let ended = actor.stop().await;
        self.check(
            "noisy: the noise writer ran",
            ended.is_ok() && written > 0,
            format!("{ended:?}, {written} bytes"),
        );
        let stats = self
            .sim
            .domain(TARGET)?
            .with_channel(|c| c.tap.stats(Dir::ToHost));
        self.check(
            "noisy: AT commands and console noise crossed the channel",
            stats.at_commands >= 3 && stats.noise + stats.bad_checksum >= 3,
            format!("{stats:?}"),
        );
        Ok(())
    }

    async fn hostile(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.agent = false);
        self.create(specs).await?;
        let others = self.others();
        let names = self.sim.names();
        let hvc = self.sim.domain(TARGET)?.root().hvc();
        self.put_all(&names, 0).await?;
        self.log(&format!(
            "{TARGET} floods its channel: giant lines, fake beacons, junk (24 MiB)"
        ));
        let flood_start = Instant::now();
        let actor = Actor::start(hvc, noise::Kind::Hostile { budget: 24 << 20 });
        self.sim
            .domain_mut(TARGET)?
            .start_agent()
            .map_err(|source| SimError::Domain {
                name: TARGET.into(),
                source,
            })?;
        // Meanwhile the broker serves the others and its API.
        let mut slowest = Duration::ZERO;
        let mut rss_max = 0u64;
        let broker_pid = self.sim.broker()?.pid();
        let others_done = async {
            let r = wait::all_converged(&self.client, &others, self.p.deadline).await;
            (r, Instant::now())
        };
        let probe = async {
            while !actor.finished() {
                let t = Instant::now();
                let ok = self
                    .client
                    .clone()
                    .with_timeout(Duration::from_secs(10))
                    .health()
                    .await
                    .is_ok();
                let took = if ok {
                    t.elapsed()
                } else {
                    Duration::from_secs(10)
                };
                slowest = slowest.max(took);
                if let Some(rss) = broker_pid.and_then(rss_kib) {
                    rss_max = rss_max.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let ((others_result, others_at), ()) = tokio::join!(others_done, probe);
        others_result?;
        let flood_secs = flood_start.elapsed().as_secs_f64();
        let written = actor.written();
        let ended = actor.stop().await;
        self.check(
            "hostile: the flood was written",
            ended.is_ok() && written >= 16 << 20,
            format!("{ended:?}, {written} bytes"),
        );
        self.check(
            "hostile: the other domains were configured during the flood",
            others_at.duration_since(flood_start) < self.p.deadline,
            format!(
                "{:.1} s",
                others_at.duration_since(flood_start).as_secs_f64()
            ),
        );
        self.check(
            "hostile: the API answered within 5 s during the flood",
            slowest < Duration::from_secs(5),
            format!("slowest health answer {:.2} s", slowest.as_secs_f64()),
        );
        self.check(
            "hostile: the broker's memory stayed bounded (< 256 MiB RSS)",
            rss_max < 256 * 1024,
            format!("max RSS {} MiB", rss_max / 1024),
        );
        self.converge(&names).await?;
        let hellos = self.sim.domain(TARGET)?.with_channel(|c| {
            c.tap.count(|e| {
                e.dir == Dir::ToGuest
                    && e.msg.from == Role::Broker
                    && matches!(e.msg.body, Body::Hello(_))
                    && e.at.duration_since(flood_start).as_secs_f64() <= flood_secs
            })
        });
        let bound = flood_secs.ceil() as usize + 3;
        self.check(
            "hostile: fake beacons got at most one hello per second",
            hellos <= bound,
            format!("{hellos} hellos in {flood_secs:.1} s"),
        );
        let held_dropped = self.sim.domain(TARGET)?.with_channel(|c| c.held_dropped);
        (self.p.log)(&format!(
            "flood: {written} bytes in {flood_secs:.1} s; the backend dropped {held_dropped} from the middle"
        ));
        Ok(())
    }

    async fn slow(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.rate = Some(400));
        self.create(specs).await?;
        let watcher = Watcher::start(self.client.clone());
        let others = self.others();
        let names = self.sim.names();
        let c = self.config_for(TARGET, 30, "")?;
        self.put(TARGET, c).await?;
        self.wait_partial_config(64).await?;
        let push_start = Instant::now();
        self.log(&format!("{TARGET}'s config is crawling over its channel at 400 B/s; configuring the others meanwhile"));
        self.put_all(&others, 0).await?;
        self.converge(&others).await?;
        let target_done = self
            .client
            .get_domain(TARGET)
            .await
            .is_ok_and(|v| wait::converged(&v));
        self.check(
            "slow: the others were configured while the slow push was still on the wire",
            !target_done,
            format!(
                "{TARGET} was already done after {:.1} s",
                push_start.elapsed().as_secs_f64()
            ),
        );
        self.converge(&names).await?;
        let took = push_start.elapsed();
        self.check(
            "slow: the push really was slow",
            took >= Duration::from_secs(3),
            format!("{:.1} s", took.as_secs_f64()),
        );
        self.check(
            "slow: the slow guest was never called unresponsive",
            !watcher.saw(TARGET, "unresponsive"),
            "the API showed unresponsive",
        );
        Ok(())
    }

    async fn wrong_uuid(&mut self) -> Result<(), ScenarioError> {
        let specs = self.specs(|t| t.guest_uuid = Some(crate::guest::random_uuid()));
        self.create(specs).await?;
        let others = self.others();
        let names = self.sim.names();
        self.put_all(&names, 0).await?;
        self.converge(&others).await?;
        let v = wait::until_domain(
            &self.client,
            TARGET,
            self.p.deadline,
            "identity-mismatch",
            |v| v.state == DomainState::IdentityMismatch,
        )
        .await?;
        self.expected.insert(TARGET.into(), Some(v.state));
        self.no_files.insert(TARGET.into());
        // The broker shows the state before its error frame has crossed the channel.
        // Whichever side notices first says so (the agent compares the broker's hello too).
        let refused = self
            .wait_tap(
                TARGET,
                "an identity-mismatch error frame",
                |e| matches!(&e.msg.body, Body::Error(r) if r.code == ErrorCode::IdentityMismatch),
            )
            .await
            .is_ok();
        let d = self.sim.domain(TARGET)?;
        let pushes = d.with_channel(|c| {
            c.tap
                .count(|e| e.dir == Dir::ToGuest && e.config_generation().is_some())
        });
        let hostname = std::fs::read_to_string(d.root().join("etc/hostname")).unwrap_or_default();
        self.check(
            "wrong-uuid: no config ever reached the guest",
            pushes == 0,
            format!("{pushes} config frames"),
        );
        self.check(
            "wrong-uuid: an identity-mismatch error crossed the channel",
            refused,
            "no error frame seen",
        );
        self.check(
            "wrong-uuid: the guest was not touched",
            hostname.trim() == "localhost",
            format!("etc/hostname is {:?}", hostname.trim()),
        );
        Ok(())
    }

    async fn finish(self, scenario: Scenario, start: Instant) -> Result<Report, ScenarioError> {
        let Play {
            sim,
            client,
            configs,
            mut checks,
            expected,
            no_files,
            ..
        } = self;
        let views = if sim.hosts().is_empty() {
            client.list().await?
        } else {
            // Each domain as the broker of the host it runs on shows it (the others may
            // cache it too, from PUTs made through them).
            let mut views = Vec::new();
            for d in sim.domains() {
                let c = sim.client_for(d.name())?;
                match c.get_domain(d.name()).await {
                    Ok(v) => views.push(v),
                    Err(ClientError::Api { status: 404, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            views
        };
        for d in sim.domains() {
            let name = d.name().to_string();
            let want = if no_files.contains(&name) {
                None
            } else {
                configs.get(&name)
            };
            checks.extend(checks::domain_checks(d, want));
            if let Some(want) = expected.get(&name) {
                let got = views.iter().find(|v| v.name == name).map(|v| v.state);
                let wanted = want.map_or_else(|| "absent".to_string(), |s| s.to_string());
                let shown = got.map_or_else(|| "absent".to_string(), |s| s.to_string());
                checks.push(Check::new(
                    format!("{name}: API state {wanted}"),
                    got == *want,
                    format!("shows {shown}"),
                ));
            } else {
                let v = views.iter().find(|v| v.name == name);
                checks.push(Check::new(
                    format!("{name}: configured in the API"),
                    v.is_some_and(wait::converged),
                    v.map_or_else(|| "not listed".into(), wait::describe),
                ));
            }
        }
        if sim.hosts().is_empty() {
            let running = sim.broker()?.is_running();
            checks.push(Check::new(
                "the broker is still running",
                running,
                "the broker exited",
            ));
        } else {
            for i in 0..sim.hosts().len() {
                let h = sim.host_mut(i)?;
                let running = h.broker.is_running();
                if h.lost {
                    checks.push(Check::new(
                        format!("{}: its killed broker stayed dead", h.name),
                        !running,
                        "it runs",
                    ));
                } else {
                    checks.push(Check::new(
                        format!("{}: its broker is still running", h.name),
                        running,
                        "the broker exited",
                    ));
                }
            }
        }
        Ok(Report {
            scenario,
            checks,
            configs,
            views,
            expected,
            elapsed: start.elapsed(),
        })
    }
}

/// The lifecycle prepare a host's libvirt hook sends (`prepare begin`), with the UUID.
pub fn prepare_request(uuid: &str) -> PrepareRequest {
    PrepareRequest {
        uuid: Some(uuid.to_string()),
        ..PrepareRequest::default()
    }
}

fn mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
