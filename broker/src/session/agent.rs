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

use super::decide::{self, Block, LastResult};
use super::{BEACON_ANSWER_INTERVAL, End, Phase, Session};
use crate::api::types::DomainState;
use crate::domains::Desired;
use crate::metrics::ErrorKind;

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
                    Body::Result(r) => self.on_result(r, write, desired).await,
                    Body::Facts(f) => {
                        self.on_facts(f).await;
                        Ok(())
                    }
                    Body::Pong { .. } => {
                        if self.phase == Phase::Ready && self.handshook {
                            // Back from unresponsive, if it was.
                            self.refresh_state(desired);
                        }
                        Ok(())
                    }
                    Body::Ping { id } => {
                        self.send(write, Body::Pong { id }, self.timeouts().keepalive())
                            .await
                    }
                    Body::Error(e) => {
                        self.on_agent_error(e).await;
                        Ok(())
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
        self.domain.record_hello(h.applied.as_ref(), reported).await;
        tracing::info!(domain = self.name, software = %h.software, "agent answered hello");
        if decide::identity_matches(
            desired.borrow().expected_uuid().map(String::as_str),
            self.agent_uuid.as_deref(),
        ) {
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

    pub(super) async fn on_result(
        &mut self,
        r: ApplyResult,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        // Durable before anything else: a result received is never lost.
        self.domain.record_result(&r).await;
        self.domain
            .metrics()
            .result(r.items.iter().map(|i| i.status));
        // `configured` unless an item failed: an item the guest cannot apply is
        // reported `unsupported` in the items, and pushing again would not change it.
        let ok = r.none_failed();
        self.agent_applied = Some(Applied {
            generation: r.generation,
            digest: r.digest.clone(),
            lineage: None,
        });
        self.last_result = Some(LastResult {
            generation: r.generation,
            digest: r.digest.to_string(),
            ok,
        });
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.generation == r.generation)
        {
            self.in_flight = None;
        }
        tracing::info!(
            domain = self.name,
            generation = r.generation,
            ok,
            "result received"
        );
        self.domain.notify_hook(
            "add",
            if ok { "end" } else { "failed" },
            r.generation.to_string(),
        );
        self.evaluate(write, desired).await
    }

    pub(super) async fn on_facts(&mut self, f: GuestFacts) {
        if self.last_facts.as_ref() == Some(&f) {
            return;
        }
        self.last_facts = Some(f.clone());
        self.domain.record_facts(f).await;
    }

    pub(super) async fn on_agent_error(&mut self, e: ErrorReport) {
        let text = format!("agent error {}: {}", error_code_text(e.code), e.message);
        match e.code {
            // A refused push is not pushed again until something changes (no loop).
            ErrorCode::BadConfig | ErrorCode::StaleGeneration => {
                if let Some(f) = self.in_flight.take() {
                    self.refused = Some((f.generation, f.digest.clone()));
                    self.domain
                        .notify_hook("add", "failed", f.generation.to_string());
                }
                self.set_state(DomainState::Error);
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
        self.domain.record_error(ErrorKind::AgentError, text).await;
    }
}

fn error_code_text(c: ErrorCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{c:?}"))
}
