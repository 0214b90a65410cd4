//! One connection's session: handshake, push, keepalive, until the connection ends or
//! the session is stopped (connecting and reconnecting are [`crate::transport`]'s).
//!
//! Every step has a deadline (connect, hello, result, each write); reads go through
//! [`FrameCodec`], which bounds the buffer whatever the guest sends; writes wait for the
//! socket (the host-to-guest ring is 1 KiB) under a deadline. A push's write lasts until
//! the backend has taken its last byte (`timeouts.write`), and only then does its
//! result deadline start (`timeouts.result`): a slow guest's ring is not held against
//! how fast it applies. A session never waits on
//! another domain: the only shared things are the store thread (each session has at most
//! one write queued, and awaits it) and a short in-memory lock.
//!
//! Ending a session (EOF, EPIPE, a missed deadline) is not an error of the domain: the
//! transport reconnects with exponential backoff and jitter for as long as the socket
//! exists, as it must across `xl reboot`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use xenchan_protocol::config::Capabilities;
use xenchan_protocol::message::{Applied, Body, ConfigPush, ErrorCode, ErrorReport};
use xenchan_protocol::{DecodeStats, Envelope, FrameCodec, Nonce, Role};

use crate::api::types::DomainState;
use crate::budget::Budget;
use crate::domains::Desired;
use crate::metrics::ErrorKind;
use crate::transport::refuse_extra;

mod accept;
mod agent;
mod caps;
mod decide;
mod handle;
mod offer;
mod write;

pub use handle::DomainHandle;

use accept::FactsGate;
use decide::{Agent, Block, Decision, LastResult, Offer, Progress, Refusal, Want};
use offer::PeerOffer;

/// Missed pongs after which a guest is unresponsive.
const MISSED_PONGS: u32 = 3;

/// Fewest time between two hellos sent in answer to beacons.
const BEACON_ANSWER_INTERVAL: Duration = Duration::from_secs(1);

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Stop asked (socket removed, domain deleted, shutdown).
    Stopped,
    /// The connection is over; reconnect. `handshook`: the agent had answered.
    Over { handshook: bool, why: String },
}

/// Runs the session of `name` on one connection until it ends. `extra`: the listening
/// socket in listen mode, whose further connections are refused meanwhile.
pub(crate) async fn serve(
    domain: &DomainHandle,
    stream: UnixStream,
    desired: &mut watch::Receiver<Desired>,
    stop: &CancellationToken,
    extra: Option<&UnixListener>,
) -> End {
    Session::new(domain, stop)
        .run(stream, desired, stop, extra)
        .await
}

/// A push waiting for its result.
#[derive(Debug, Clone)]
struct InFlight {
    generation: u64,
    digest: String,
    deadline: Instant,
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hello sent; waiting for the agent's answer until the deadline.
    AwaitHello(Instant),
    /// The agent answered.
    Ready,
}

// One short-lived value per turn of the session loop: boxing the frame would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Stop,
    Frame(Option<Result<Envelope, xenchan_protocol::codec::CodecError>>),
    Desired,
    DesiredGone,
    Timer,
    Extra,
}

/// The read buffer's first capacity (see `run_loop`).
const READ_BUFFER_START: usize = 1024;

/// One connection's session.
struct Session<'a> {
    domain: &'a DomainHandle,
    /// The domain's name (for logs).
    name: &'a str,
    /// Stops the session (socket removed, domain deleted, shutdown), also mid-write.
    stop: CancellationToken,
    nonce: Nonce,
    rules: xenchan_protocol::session::SessionRules,
    encoder: FrameCodec,
    stats_seen: DecodeStats,
    phase: Phase,
    hello_sent: Instant,
    handshook: bool,
    agent_uuid: Option<String>,
    /// The instance of the agent process that answered last ([`Hello::instance`]).
    agent_instance: Option<String>,
    agent_applied: Option<Applied>,
    block: Option<Block>,
    identity_flagged: bool,
    in_flight: Option<InFlight>,
    /// A (generation, digest) the agent refused (a bad config, a stale generation): not
    /// pushed again until the desired config changes or a push is forced.
    refused: Option<(u64, String, Refusal)>,
    /// The (generation, digest) whose push the agent answered in this session: a result
    /// never causes another push of it.
    answered: Option<(u64, String)>,
    force_seen: u64,
    /// The outcome of the last result.
    last_result: Option<LastResult>,
    /// What the agent can apply (its hello; a hello without them: the revision-1 set).
    caps: Arc<Capabilities>,
    /// How the agent names itself in `unsupported` reasons (`agent xenchan-agent 0.2.0`).
    peer: String,
    /// The desired configuration as this agent receives it.
    offer: Option<PeerOffer>,
    /// When facts are written (at most once per `timeouts.facts`).
    facts: FactsGate,
    /// The (applied, UUID) of the last hello recorded in this session: the same again is
    /// not written again.
    hello_recorded: Option<(Option<Applied>, Option<String>)>,
    /// The last error the agent sent in this session: the same again is not recorded.
    last_agent_error: Option<String>,
    ping_id: u64,
    unanswered: u32,
    next_ping: Instant,
    desired_open: bool,
}

impl<'a> Session<'a> {
    fn new(domain: &'a DomainHandle, stop: &CancellationToken) -> Session<'a> {
        let mut rules = xenchan_protocol::session::SessionRules::new(Role::Broker);
        let nonce = Nonce::from_bytes(rand::random());
        rules.set_session(nonce.clone());
        let force_seen = domain.desired().force;
        let facts = FactsGate::new(domain.timeouts().facts(), domain.stored_facts());
        Session {
            domain,
            name: domain.name(),
            stop: stop.clone(),
            nonce,
            rules,
            encoder: FrameCodec::new(domain.limits().max_frame),
            stats_seen: DecodeStats::default(),
            phase: Phase::Ready,
            hello_sent: Instant::now(),
            handshook: false,
            agent_uuid: None,
            agent_instance: None,
            agent_applied: None,
            block: None,
            identity_flagged: false,
            in_flight: None,
            refused: None,
            answered: None,
            force_seen,
            last_result: None,
            caps: caps::intern(Capabilities::v1()),
            peer: "the agent".into(),
            offer: None,
            facts,
            hello_recorded: None,
            last_agent_error: None,
            ping_id: 0,
            unanswered: 0,
            next_ping: Instant::now(),
            desired_open: true,
        }
    }

    fn timeouts(&self) -> &crate::config::Timeouts {
        self.domain.timeouts()
    }

    fn set_state(&self, s: DomainState) {
        self.domain.set_state(s);
    }

    async fn run(
        mut self,
        stream: UnixStream,
        desired: &mut watch::Receiver<Desired>,
        stop: &CancellationToken,
        extra: Option<&UnixListener>,
    ) -> End {
        let end = self.run_loop(stream, desired, stop, extra).await;
        if let End::Over { .. } = end {
            // Facts held for the end of their interval are not lost with the connection.
            self.flush_facts().await;
        }
        end
    }

    async fn run_loop(
        &mut self,
        stream: UnixStream,
        desired: &mut watch::Receiver<Desired>,
        stop: &CancellationToken,
        extra: Option<&UnixListener>,
    ) -> End {
        let (read, mut write) = stream.into_split();
        // An idle session holds its read buffer for as long as the guest runs, and what
        // it reads is a hello, pongs and results of a few hundred bytes: start small (the
        // buffer grows to a larger frame when one comes) instead of tokio-util's 8 KiB.
        let mut frames = FramedRead::with_capacity(
            read,
            FrameCodec::new(self.domain.limits().max_frame),
            READ_BUFFER_START,
        );
        // Where the last result of this domain stands, to tell configured from failed
        // without asking the agent again.
        let items = self.domain.last_items();
        if let Some(first) = items.first() {
            // As for a result just received: `unsupported` is not a failure.
            let ok = items
                .iter()
                .filter(|i| i.generation == first.generation)
                .all(|i| !i.status.is_failure());
            self.last_result = Some(LastResult {
                generation: first.generation,
                digest: String::new(),
                ok,
            });
        }
        if let Err(end) = self.send_hello(&mut write).await {
            return end;
        }
        loop {
            let deadline = self.next_deadline();
            let ev = tokio::select! {
                () = stop.cancelled() => Event::Stop,
                f = frames.next() => Event::Frame(f),
                r = desired.changed(), if self.desired_open => {
                    if r.is_ok() { Event::Desired } else { Event::DesiredGone }
                }
                () = tokio::time::sleep_until(deadline) => Event::Timer,
                () = refuse_extra(extra) => Event::Extra,
            };
            let now_stats = frames.decoder().stats();
            self.domain.metrics().decoded(&self.stats_seen, &now_stats);
            self.stats_seen = now_stats;
            let r = match ev {
                Event::Stop => {
                    let reason = if self.domain.shutting_down() {
                        "broker shutting down"
                    } else {
                        "domain removed"
                    };
                    self.say_bye(&write, reason);
                    return End::Stopped;
                }
                Event::Frame(None) => Err(self.over("the peer closed the connection (EOF)")),
                Event::Frame(Some(Err(e))) => {
                    self.domain.metrics().error(ErrorKind::Read);
                    Err(self.over(&format!("read failed: {}", xenchan_basics::chain(&e))))
                }
                Event::Frame(Some(Ok(env))) => {
                    // The frames budget (issue 18): over it, the next read waits here.
                    self.domain.spend(Budget::Frames, stop).await;
                    self.on_message(env, &mut write, desired).await
                }
                Event::Desired => {
                    let _ = desired.borrow_and_update();
                    self.evaluate(&mut write, desired).await
                }
                Event::DesiredGone => {
                    self.desired_open = false;
                    Ok(())
                }
                Event::Timer => self.on_timer(&mut write).await,
                Event::Extra => {
                    self.domain.metrics().error(ErrorKind::ExtraConnection);
                    tracing::warn!(
                        domain = self.name,
                        "refused a second connection to the socket"
                    );
                    Ok(())
                }
            };
            if let Err(end) = r {
                return end;
            }
        }
    }

    fn over(&self, why: &str) -> End {
        End::Over {
            handshook: self.handshook,
            why: why.to_string(),
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_secs(3600);
        if let Phase::AwaitHello(h) = self.phase {
            d = d.min(h);
        }
        if let Some(f) = &self.in_flight {
            d = d.min(f.deadline);
        }
        if self.phase == Phase::Ready && self.handshook {
            d = d.min(self.next_ping);
        }
        if let Some(f) = self.facts.due() {
            d = d.min(f);
        }
        d
    }

    /// Brings [`Session::offer`] up to date with `d` and the agent's capabilities.
    fn update_offer(&mut self, d: &Desired) {
        let Some(cfg) = &d.config else {
            self.offer = None;
            return;
        };
        if !self
            .offer
            .as_ref()
            .is_some_and(|o| o.is_for(cfg, &self.caps))
        {
            self.offer = Some(PeerOffer::new(cfg, &self.caps, &self.peer, self.name));
        }
    }

    /// The decision now, from this session's view and the desired state ([`decide`]).
    fn decide(&mut self, d: &Desired) -> Decision {
        self.update_offer(d);
        let agent = Agent {
            ready: self.phase == Phase::Ready && self.handshook,
            block: self.block,
            uuid: self.agent_uuid.as_deref(),
            applied: self.agent_applied.as_ref().map(|a| Offer {
                generation: a.generation,
                digest: a.digest.as_str(),
            }),
        };
        let want = Want {
            offer: self.offer.as_ref().map(|o| Offer {
                generation: o.source.0,
                digest: o.body.digest().as_str(),
            }),
            recorded_uuid: d.uuid.as_deref(),
            discovered_uuid: d.discovered_uuid.as_deref(),
            force: d.force,
        };
        let progress = Progress {
            in_flight: self.in_flight.as_ref().map(|f| Offer {
                generation: f.generation,
                digest: &f.digest,
            }),
            refused: self.refused.as_ref().map(|(generation, digest, why)| {
                (
                    Offer {
                        generation: *generation,
                        digest,
                    },
                    *why,
                )
            }),
            answered: self.answered.as_ref().map(|(generation, digest)| Offer {
                generation: *generation,
                digest,
            }),
            force_seen: self.force_seen,
            last_result: self.last_result.as_ref(),
            identity_flagged: self.identity_flagged,
        };
        decide::decide(&agent, &want, &progress)
    }

    /// Decides what to do now (push, wait, or nothing), sets the state to match and
    /// carries the decision out.
    async fn evaluate(
        &mut self,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        let d = desired.borrow().clone();
        let decision = self.decide(&d);
        if let Some(s) = decision.state() {
            self.set_state(s);
        }
        if decision.identity_passed() && self.identity_flagged {
            self.identity_flagged = false;
            self.domain.clear_error().await;
        }
        match decision {
            Decision::RefuseIdentity { first: true } => {
                self.identity_flagged = true;
                let want = d.expected_uuid().cloned().unwrap_or_default();
                let got = self
                    .agent_uuid
                    .as_deref()
                    .map_or_else(|| "no UUID".to_string(), |u| format!("VM {u}"));
                let message = format!(
                    "identity mismatch: domain {} is VM {want} but the agent reports {got}; nothing is pushed",
                    self.name
                );
                self.domain
                    .record_error(ErrorKind::IdentityMismatch, message.clone())
                    .await;
                // Nothing more than the error: not one byte of configuration goes to a VM
                // that is not the one it is meant for.
                self.send(
                    write,
                    Body::Error(ErrorReport {
                        code: ErrorCode::IdentityMismatch,
                        message,
                    }),
                    self.timeouts().hello(),
                )
                .await
            }
            Decision::Push { forced } => {
                let Some(offer) = &self.offer else {
                    return Ok(());
                };
                self.force_seen = d.force;
                self.refused = None;
                self.answered = None;
                let generation = offer.source.0;
                let mut push = ConfigPush {
                    digest: offer.body.digest().clone(),
                    ..ConfigPush::new(generation, offer.body.config().clone())
                }
                .with_lineage(self.domain.lineage());
                if forced && d.force_order {
                    push = push.forced();
                }
                self.domain.spend(Budget::Pushes, &self.stop).await;
                self.domain.metrics().push();
                tracing::info!(
                    domain = self.name,
                    generation,
                    left_out = offer.body.unsupported().len(),
                    force = push.force,
                    "pushing configuration"
                );
                self.push(write, push).await
            }
            Decision::NotReady
            | Decision::Blocked(_)
            | Decision::RefuseIdentity { first: false }
            | Decision::Idle
            | Decision::AwaitResult
            | Decision::Configured
            | Decision::Degraded
            | Decision::Refused(_) => Ok(()),
        }
    }

    /// Recomputes the state without acting (after an unresponsive spell): acting is
    /// left to the events that change the decision's inputs.
    fn refresh_state(&mut self, desired: &watch::Receiver<Desired>) {
        let d = desired.borrow().clone();
        if let Some(s) = self.decide(&d).state() {
            self.set_state(s);
        }
    }

    /// Writes facts held for the end of their interval, if it has come (or `now`).
    async fn write_due_facts(&mut self, now: Instant) {
        if let Some(f) = self.facts.take_due(now) {
            self.domain.record_facts(f).await;
        }
    }

    /// Writes facts still held (the connection is over).
    async fn flush_facts(&mut self) {
        if let Some(due) = self.facts.due() {
            self.write_due_facts(due).await;
        }
    }

    async fn on_timer(&mut self, write: &mut OwnedWriteHalf) -> Result<(), End> {
        let now = Instant::now();
        self.write_due_facts(now).await;
        if let Phase::AwaitHello(deadline) = self.phase
            && now >= deadline
        {
            let why = format!("no answer to hello within {} ms", self.timeouts().hello);
            self.set_state(DomainState::Unresponsive);
            self.domain
                .record_error(ErrorKind::HelloTimeout, why.clone())
                .await;
            return Err(self.over(&why));
        }
        if let Some(f) = &self.in_flight
            && now >= f.deadline
        {
            let why = format!(
                "no result for generation {} within {} ms",
                f.generation,
                self.timeouts().result
            );
            self.set_state(DomainState::Error);
            self.domain
                .record_error(ErrorKind::ResultTimeout, why.clone())
                .await;
            return Err(self.over(&why));
        }
        if self.phase == Phase::Ready && self.handshook && now >= self.next_ping {
            if self.unanswered >= MISSED_PONGS {
                let was = self.domain.state();
                if was != Some(DomainState::Unresponsive) {
                    self.set_state(DomainState::Unresponsive);
                    self.domain
                        .record_error(
                            ErrorKind::Unresponsive,
                            format!("{MISSED_PONGS} pings went unanswered"),
                        )
                        .await;
                }
            }
            self.ping_id += 1;
            self.unanswered = self.unanswered.saturating_add(1);
            self.next_ping = now + self.timeouts().keepalive();
            let id = self.ping_id;
            self.send(write, Body::Ping { id }, self.timeouts().keepalive())
                .await?;
        }
        Ok(())
    }
}
