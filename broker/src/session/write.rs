//! Writing to the backend: every write under a deadline, a push's write until the
//! backend has taken its last byte (then its result deadline starts), a bye that never
//! waits.

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::time::Instant;
use xenchan_protocol::message::{Body, ConfigPush, Hello};
use xenchan_protocol::{Envelope, Role, SUPPORTED_VERSIONS};

use super::decide::Refusal;
use super::{End, InFlight, Phase, Session};
use crate::api::types::DomainState;
use crate::metrics::ErrorKind;
use crate::outq;

/// Why a write did not finish.
#[derive(Debug)]
enum WriteError {
    /// The session was asked to stop meanwhile.
    Stopped,
    /// The socket failed (EPIPE when the backend went away...).
    Failed(std::io::Error),
    /// The deadline passed: the guest is not reading (fast enough).
    TimedOut,
}

impl Session<'_> {
    /// Writes one message under `deadline`, waiting for the socket to take it.
    pub(super) async fn send(
        &mut self,
        write: &mut OwnedWriteHalf,
        body: Body,
        deadline: Duration,
    ) -> Result<(), End> {
        let env = Envelope::new(Role::Broker, Some(self.nonce.clone()), body);
        let Some(line) = self.encode(&env).await else {
            return Ok(());
        };
        match self.write_line(write, &line, deadline, false).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(e, env.kind(), line.len(), deadline)),
        }
    }

    /// The frame of `env`, or `None` (and the error recorded) when it is larger than the
    /// frame limit. Only a config can be this large; the API refuses those, so this is a
    /// frame limit lowered after the config was stored.
    async fn encode(&self, env: &Envelope) -> Option<Vec<u8>> {
        match self.encoder.encode_line(env) {
            Ok(l) => Some(l),
            Err(e) => {
                self.domain
                    .record_error(ErrorKind::Other, format!("cannot send {}: {e}", env.kind()))
                    .await;
                None
            }
        }
    }

    /// Writes `line` within `deadline`; with `taken`, the deadline also covers the peer
    /// (QEMU) reading all of it ([`outq::drained`]), which is as fast as the guest
    /// drains its console ring. Stopping the session ends the wait at once.
    async fn write_line(
        &self,
        write: &mut OwnedWriteHalf,
        line: &[u8],
        deadline: Duration,
        taken: bool,
    ) -> Result<(), WriteError> {
        let writing = async {
            write.write_all(line).await?;
            if taken {
                let stream: &UnixStream = write.as_ref();
                outq::drained(stream.as_fd()).await;
            }
            Ok::<(), std::io::Error>(())
        };
        tokio::select! {
            () = self.stop.cancelled() => Err(WriteError::Stopped),
            r = tokio::time::timeout(deadline, writing) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(WriteError::Failed(e)),
                Err(_) => Err(WriteError::TimedOut),
            },
        }
    }

    /// How a failed write of a `kind` message of `bytes` ends the session.
    fn write_failed(&self, e: WriteError, kind: &str, bytes: usize, deadline: Duration) -> End {
        match e {
            WriteError::Stopped => End::Stopped,
            WriteError::Failed(e) => {
                self.domain.metrics().error(ErrorKind::Write);
                self.over(&format!("write failed: {e}"))
            }
            WriteError::TimedOut => {
                self.domain.metrics().error(ErrorKind::Write);
                self.over(&format!(
                    "the guest did not take the whole {kind} ({bytes} bytes) within {} ms: it is not reading",
                    deadline.as_millis()
                ))
            }
        }
    }

    /// Pushes a configuration. The result deadline starts once the backend has taken
    /// the whole frame: on a slow guest most of the time goes to the 1 KiB console ring,
    /// and a result deadline that counted it would give up on guests that apply quickly.
    /// Writing is bounded on its own (`timeouts.write`), so a guest that never reads
    /// cannot hold the session.
    pub(super) async fn push(
        &mut self,
        write: &mut OwnedWriteHalf,
        push: ConfigPush,
    ) -> Result<(), End> {
        let (generation, digest) = (push.generation, push.digest.to_string());
        let env = Envelope::new(Role::Broker, Some(self.nonce.clone()), Body::Config(push));
        let Some(line) = self.encode(&env).await else {
            // It fits in no session: wait for another config (or a forced push).
            self.refused = Some((generation, digest, Refusal::Bad));
            self.set_state(DomainState::Error);
            return Ok(());
        };
        let started = Instant::now();
        let limit = self.timeouts().write();
        if let Err(e) = self.write_line(write, &line, limit, true).await {
            return Err(match e {
                WriteError::TimedOut => {
                    // Worth the operator's attention (`last_error`), unlike an EPIPE.
                    let why = format!(
                        "the guest did not take the whole config of generation {generation} ({} bytes) within {} ms (timeouts.write): it is not reading",
                        line.len(),
                        limit.as_millis()
                    );
                    self.set_state(DomainState::Error);
                    self.domain
                        .record_error(ErrorKind::Write, why.clone())
                        .await;
                    self.over(&why)
                }
                e => self.write_failed(e, "config", line.len(), limit),
            });
        }
        tracing::debug!(
            domain = self.name,
            generation,
            bytes = line.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "the backend took the whole push; waiting for its result"
        );
        self.in_flight = Some(InFlight {
            generation,
            digest,
            deadline: Instant::now() + self.timeouts().result(),
        });
        Ok(())
    }

    /// Best effort, never waits: the peer may be gone or not reading.
    pub(super) fn say_bye(&self, write: &OwnedWriteHalf, reason: &str) {
        let env = Envelope::new(
            Role::Broker,
            Some(self.nonce.clone()),
            Body::Bye {
                reason: reason.to_string(),
            },
        );
        if let Ok(line) = self.encoder.encode_line(&env) {
            let _ = write.try_write(&line);
        }
    }

    pub(super) async fn send_hello(&mut self, write: &mut OwnedWriteHalf) -> Result<(), End> {
        let uuid = self.domain.desired().expected_uuid().cloned();
        let hello = Hello {
            versions: Some(SUPPORTED_VERSIONS.to_vec()),
            channel: self.domain.channel().to_string(),
            domain: Some(self.name.to_string()),
            uuid,
            software: format!("xenchan-broker {}", env!("CARGO_PKG_VERSION")),
            ..Hello::default()
        };
        let timeout = self.timeouts().hello();
        self.hello_sent = Instant::now();
        if !self.handshook {
            self.phase = Phase::AwaitHello(Instant::now() + timeout);
            self.set_state(DomainState::Handshaking);
        }
        self.send(write, Body::Hello(hello), timeout).await
    }
}
