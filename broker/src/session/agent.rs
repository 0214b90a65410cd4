//! What the agent says: hello (versions, identity, applied state, instance), results,
//! facts, errors, pings; each handler updates the session's view and the registry, then
//! lets the decision ([`super::decide`]) say what follows.

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::time::Instant;
use xenchan_protocol::message::{
    Applied, ApplyResult, Body, ErrorCode, ErrorReport, GuestFacts, Hello,
};
use xenchan_protocol::session::{NoCommonVersion, negotiate};
use xenchan_protocol::{Envelope, SUPPORTED_VERSIONS, Verdict};

use super::accept::{self, DropReason, FactsStep, ResultVerdict};
use super::decide::{self, Block, LastResult, Offer, Refusal};
use super::{BEACON_ANSWER_INTERVAL, End, Phase, Session, caps};
use crate::api::types::DomainState;
use crate::domains::Desired;
use crate::metrics::ErrorKind;

/// The longest part of a guest's text (its software name, an error's message) that goes
/// into a reason or an error the broker records.
const MAX_GUEST_TEXT: usize = 512;

/// `s` cut to `max` characters, control characters replaced: guest text shown to an
/// operator.
fn guest_text(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

impl Session<'_> {
    pub(super) async fn on_message(
        &mut self,
        env: Envelope,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        match self.rules.classify(&env) {
            Verdict::Beacon => {
                // An agent without a session (perhaps a stale beacon replayed by QEMU):
                // say hello again, at most once a second; never take it as the answer.
                if self.hello_sent.elapsed() >= BEACON_ANSWER_INTERVAL {
                    self.send_hello(write).await?;
                }
                Ok(())
            }
            Verdict::Accept => {
                self.unanswered = 0;
                match env.body {
                    Body::Hello(h) => self.on_hello(h, write, desired).await,
                    // After an answer, decide again and act: an operator's `push --force`
                    // that came while this push was in flight (it waited, AwaitResult)
                    // is due now. Only setting the state would show `pushing` with
                    // nothing sent, for good.
                    Body::Result(r) => {
                        self.on_result(r, desired).await?;
                        self.evaluate(write, desired).await
                    }
                    Body::Facts(f) => {
                        self.on_facts(f).await;
                        Ok(())
                    }
                    Body::Pong { .. } => {
                        if self.phase == Phase::Ready && self.handshook {
                            // Back from unresponsive, if it was.
                            self.evaluate(write, desired).await
                        } else {
                            Ok(())
                        }
                    }
                    Body::Ping { id } => {
                        self.send(write, Body::Pong { id }, self.timeouts().keepalive())
                            .await
                    }
                    Body::Error(e) => {
                        self.on_agent_error(e).await;
                        self.evaluate(write, desired).await
                    }
                    Body::Bye { reason } => {
                        Err(self.over(&format!("the agent said bye ({reason})")))
                    }
                    Body::Config(_) => Ok(()),
                }
            }
            Verdict::NewSession | Verdict::OwnEcho | Verdict::Stale | Verdict::UnknownVersion => {
                Ok(())
            }
        }
    }

    pub(super) async fn on_hello(
        &mut self,
        h: Hello,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        self.phase = Phase::Ready;
        self.handshook = true;
        self.on_agent_instance(&h);
        self.next_ping = Instant::now() + self.timeouts().keepalive();
        let reported = h.uuid.as_deref().map(|u| u.trim().to_ascii_lowercase());
        self.agent_uuid.clone_from(&reported);
        if let Err(NoCommonVersion { ours, theirs }) =
            negotiate(SUPPORTED_VERSIONS, h.versions.as_deref())
        {
            let message =
                format!("no common protocol version (broker: {ours:?}, agent: {theirs:?})");
            self.block = Some(Block::Version);
            self.set_state(DomainState::VersionMismatch);
            self.domain
                .record_error(ErrorKind::VersionMismatch, message.clone())
                .await;
            return self
                .send(
                    write,
                    Body::Error(ErrorReport {
                        code: ErrorCode::NoCommonVersion,
                        message,
                    }),
                    self.timeouts().hello(),
                )
                .await;
        }
        self.block = None;
        self.identity_flagged = false;
        self.agent_applied.clone_from(&h.applied);
        // What it can apply: the offer is filtered for it (a hello without capabilities
        // is a revision-1 agent, which has the revision-1 item set).
        self.caps = caps::intern(h.capabilities());
        self.peer = if h.software.is_empty() {
            "the agent".to_string()
        } else {
            format!("agent {}", guest_text(&h.software, 64))
        };
        let seen = (h.applied.clone(), reported.clone());
        if self.hello_recorded.as_ref() != Some(&seen) {
            self.domain.record_hello(h.applied.as_ref(), reported).await;
            self.hello_recorded = Some(seen);
        }
        tracing::info!(domain = self.name, software = %h.software, "agent answered hello");
        let identity_ok = {
            let d = desired.borrow();
            decide::identity_matches(
                d.uuid.as_deref(),
                d.discovered_uuid.as_deref(),
                self.agent_uuid.as_deref(),
            )
        };
        if identity_ok {
            self.domain.clear_error().await;
        }
        self.evaluate(write, desired).await
    }

    /// Decides whether a push in flight survives this hello of the agent.
    ///
    /// On a slow channel the agent answers every hello the broker sent (one per beacon it
    /// saw) long after it was sent, each answer saying "nothing applied yet" although
    /// the push is already on its way: those answers must not cause a second push. An
    /// agent that restarted, though, lost the push it was sent: it must get it again.
    /// The agent's instance (random per process start) tells the two apart. An agent
    /// that does not send one is treated as possibly restarted, as before the field.
    fn on_agent_instance(&mut self, h: &Hello) {
        let instance = h.instance().map(str::to_string);
        let same_run = instance.is_some() && instance == self.agent_instance;
        if !same_run && self.agent_instance.is_some() {
            tracing::info!(
                domain = self.name,
                before = self.agent_instance.as_deref().unwrap_or(""),
                now = instance.as_deref().unwrap_or("?"),
                "the agent restarted"
            );
        }
        self.agent_instance = instance;
        let Some(f) = &self.in_flight else {
            return;
        };
        // A hello reporting the push applied means its result was lost on the way (a
        // damaged frame is dropped): nothing is in flight any more.
        let reported = h
            .applied
            .as_ref()
            .is_some_and(|a| a.generation == f.generation && a.digest.as_str() == f.digest);
        if same_run && !reported {
            tracing::debug!(
                domain = self.name,
                generation = f.generation,
                "the agent answered a hello again; its push is still on the way"
            );
        } else {
            self.in_flight = None;
        }
    }

    /// A result: stored only when it answers the push in flight or reports a change of
    /// an item of the configuration the agent has (its retries); anything else is counted
    /// and dropped ([`accept::judge_result`]). A result never causes a push: it updates
    /// the items and the state, nothing more.
    pub(super) async fn on_result(
        &mut self,
        r: ApplyResult,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        let d = desired.borrow().clone();
        self.update_offer(&d);
        let stored = self.domain.last_items();
        let verdict = {
            let in_flight = self
                .in_flight
                .as_ref()
                .map(|f| offer(f.generation, &f.digest));
            let applied = self
                .agent_applied
                .as_ref()
                .map(|a| offer(a.generation, a.digest.as_str()));
            let wanted = self
                .offer
                .as_ref()
                .map(|o| offer(o.source.0, o.body.digest().as_str()));
            accept::judge_result(&r, in_flight, applied, wanted, &stored)
        };
        let answered = match verdict {
            ResultVerdict::Drop(reason) => {
                self.domain.metrics().dropped(reason);
                tracing::debug!(
                    domain = self.name,
                    generation = r.generation,
                    reason = reason.as_str(),
                    "result dropped"
                );
                return Ok(());
            }
            ResultVerdict::Answer => {
                if let Some(f) = self.in_flight.take() {
                    self.answered = Some((f.generation, f.digest));
                }
                true
            }
            ResultVerdict::Change => false,
        };
        // What the broker left out of the document for this agent is part of the result.
        let left_out = self
            .offer
            .as_ref()
            .filter(|o| {
                o.source.0 == r.generation
                    && (*o.body.digest() == r.digest
                        || self
                            .answered
                            .as_ref()
                            .is_some_and(|(_, dg)| *dg == o.body.digest().as_str()))
            })
            .map(|o| o.body.unsupported_items())
            .unwrap_or_default();
        let record = ApplyResult {
            items: accept::merge_items(&r.items, &left_out),
            ..r.clone()
        };
        // `configured` unless an item failed: an item the guest cannot apply is
        // reported `unsupported` in the items, and pushing again would not change it.
        let ok = r.none_failed();
        let was_ok = self
            .last_result
            .as_ref()
            .filter(|l| l.generation == r.generation)
            .map(|l| l.ok);
        self.agent_applied = Some(Applied {
            generation: r.generation,
            digest: r.digest.clone(),
            lineage: Some(self.domain.lineage()),
        });
        self.last_result = Some(LastResult {
            generation: r.generation,
            digest: r.digest.to_string(),
            ok,
        });
        // The state this result leads to goes into the same in-memory update as the
        // result: a reader never sees the new applied generation beside a stale `pushing`
        // (the bench's hotplug check caught that window). evaluate() decides again after.
        let next = self.decide(&d).state();
        // Durable before anything else: a result accepted is never lost.
        self.domain.record_result(&record, next).await;
        self.domain
            .metrics()
            .result(r.items.iter().map(|i| i.status));
        match accept::degraded_reason(r.generation, &r.items) {
            Some(why) => self.domain.record_reason(why).await,
            None => self.domain.clear_error().await,
        }
        tracing::info!(
            domain = self.name,
            generation = r.generation,
            ok,
            answered,
            "result recorded"
        );
        if answered || was_ok != Some(ok) {
            self.domain.notify_hook(
                "add",
                if ok { "end" } else { "failed" },
                r.generation.to_string(),
            );
        }
        self.refresh_state(desired);
        Ok(())
    }

    /// Facts: written at most once per interval, the latest inside one written when it
    /// ends ([`accept::FactsGate`]).
    pub(super) async fn on_facts(&mut self, f: GuestFacts) {
        match self.facts.offer(f, Instant::now()) {
            FactsStep::Write(f) => self.domain.record_facts(f).await,
            FactsStep::Held { replaced } => {
                if replaced {
                    self.domain.metrics().dropped(DropReason::FactsCoalesced);
                }
            }
            FactsStep::Drop(reason) => self.domain.metrics().dropped(reason),
        }
    }

    /// An error of the agent. A refusal of a push (`bad-config`, `stale-generation`)
    /// stops pushing that configuration until something changes (no loop); one that
    /// answers nothing in flight, or repeats the last one, is counted and dropped.
    pub(super) async fn on_agent_error(&mut self, e: ErrorReport) {
        let message = guest_text(&e.message, MAX_GUEST_TEXT);
        let mut text = format!("agent error {}: {message}", error_code_text(e.code));
        match e.code {
            ErrorCode::BadConfig | ErrorCode::StaleGeneration => {
                let Some(f) = self.in_flight.take() else {
                    self.domain.metrics().dropped(DropReason::ErrorNotAsked);
                    return;
                };
                let why = if e.code == ErrorCode::StaleGeneration {
                    Refusal::Stale
                } else {
                    Refusal::Bad
                };
                if why == Refusal::Stale {
                    let theirs = match &self.agent_applied {
                        Some(a) => format!("generation {}", a.generation),
                        None => "a later generation".to_string(),
                    };
                    text = format!(
                        "stale generation: the agent refused our generation {} (lineage {}) because it applied {theirs} of that lineage; a restored store or a stale broker? `xenchan domain push --force {}` overrides (agent: {message})",
                        f.generation,
                        self.domain.lineage(),
                        self.name
                    );
                }
                self.domain
                    .notify_hook("add", "failed", f.generation.to_string());
                self.refused = Some((f.generation, f.digest, why));
                self.set_state(match why {
                    Refusal::Stale => DomainState::StaleGeneration,
                    Refusal::Bad => DomainState::Error,
                });
            }
            ErrorCode::ChannelMismatch => {
                self.block = Some(Block::Refused(DomainState::Error));
                self.set_state(DomainState::Error);
            }
            ErrorCode::IdentityMismatch => {
                self.block = Some(Block::Refused(DomainState::IdentityMismatch));
                self.set_state(DomainState::IdentityMismatch);
            }
            ErrorCode::NoCommonVersion => {
                self.block = Some(Block::Version);
                self.set_state(DomainState::VersionMismatch);
            }
            ErrorCode::Unexpected | ErrorCode::Other => {}
        }
        if self.last_agent_error.as_ref() == Some(&text) {
            self.domain.metrics().dropped(DropReason::ErrorNotAsked);
            return;
        }
        self.last_agent_error = Some(text.clone());
        self.domain.record_error(ErrorKind::AgentError, text).await;
    }
}

fn offer(generation: u64, digest: &str) -> Offer<'_> {
    Offer { generation, digest }
}

fn error_code_text(c: ErrorCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{c:?}"))
}
