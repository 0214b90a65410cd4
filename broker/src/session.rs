//! One task per domain: connect (or accept), handshake, push, keepalive, reconnect.
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
//! task reconnects with exponential backoff and jitter for as long as the socket exists,
//! as it must across `xl reboot`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use xenchan_protocol::message::{
    Applied, ApplyResult, Body, ConfigPush, ErrorCode, ErrorReport, GuestFacts, Hello,
};
use xenchan_protocol::session::{NoCommonVersion, negotiate};
use xenchan_protocol::{
    DecodeStats, Envelope, FrameCodec, Nonce, Role, SUPPORTED_VERSIONS, Verdict,
};

use crate::api::types::{DomainState, ItemView};
use crate::clock::now_rfc3339;
use crate::domains::{Desired, Shared};
use crate::metrics::ErrorKind;
use crate::outq;
use crate::paths::{MAX_SOCKET_PATH, check_socket_path};

/// Missed pongs after which a guest is unresponsive.
const MISSED_PONGS: u32 = 3;

/// Fewest time between two hellos sent in answer to beacons.
const BEACON_ANSWER_INTERVAL: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next delay: a random point in [d/2, d], d doubling up to the maximum, so that
    /// many sessions that lost their sockets together do not retry together.
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let lo = d / 2;
        let jitter = rand::thread_rng().gen_range(0..=d.saturating_sub(lo).as_millis() as u64);
        lo + Duration::from_millis(jitter)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// Stop asked (socket removed, domain deleted, shutdown).
    Stopped,
    /// The connection is over; reconnect. `handshook`: the agent had answered.
    Over { handshook: bool, why: String },
}

/// Connect mode: connects to `path` (`<socket_dir>/<name>.sock`, a xenstore backend's
/// `path`, or the one a prepare named) and keeps a session up until `stop`.
pub async fn run_connect(
    shared: Arc<Shared>,
    name: String,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    connect_loop(&shared, &name, path, desired, stop, previous).await;
    shared.session_ended(&name);
}

async fn connect_loop(
    shared: &Arc<Shared>,
    name: &str,
    path: PathBuf,
    mut desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        // Exactly one connection per socket: the old session lets go first.
        let _ = p.await;
    }
    if let Err(e) = check_socket_path(&path) {
        shared.set_state(name, DomainState::Error);
        shared.record_error(name, ErrorKind::SocketPath, e).await;
        stop.cancelled().await;
        return;
    }
    let t = &shared.config.timeouts;
    let mut backoff = Backoff::new(t.reconnect_min(), t.reconnect_max());
    loop {
        shared.set_state(name, DomainState::Connecting);
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(t.connect(), UnixStream::connect(&path)) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                shared.metrics.connection();
                tracing::debug!(domain = %name, "connected");
                let end = Session::new(shared, name, &stop)
                    .run(stream, &mut desired, &stop, None)
                    .await;
                shared.update(name, |s| s.connected(false));
                match end {
                    End::Stopped => return,
                    End::Over { handshook, why } => {
                        tracing::info!(domain = %name, "session ended: {why}");
                        if handshook {
                            backoff.reset();
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                shared.metrics.error(ErrorKind::Connect);
                if e.kind() == std::io::ErrorKind::NotFound {
                    // A socket named by a prepare, before QEMU creates it.
                    shared.set_state(name, DomainState::Pending);
                }
                tracing::debug!(domain = %name, "connect to {} failed: {e}", path.display());
            }
            Err(_) => {
                shared.metrics.error(ErrorKind::Connect);
                tracing::debug!(domain = %name, "connect to {} timed out", path.display());
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Listen mode: owns `path` (`<socket_dir>/<name>.sock` unless a prepare named another),
/// serves one backend connection at a time (extra ones are closed at once) until `stop`,
/// then removes the socket.
pub async fn run_listen(
    shared: Arc<Shared>,
    name: String,
    path: PathBuf,
    desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    listen_loop(&shared, &name, &path, desired, stop, previous).await;
    shared.session_ended(&name);
}

async fn listen_loop(
    shared: &Arc<Shared>,
    name: &str,
    path: &Path,
    mut desired: watch::Receiver<Desired>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) {
    if let Some(p) = previous {
        let _ = p.await;
    }
    let listener = match bind_socket(path) {
        Ok(l) => l,
        Err(e) => {
            shared.set_state(name, DomainState::Error);
            shared.record_error(name, ErrorKind::SocketPath, e).await;
            stop.cancelled().await;
            return;
        }
    };
    loop {
        shared.set_state(name, DomainState::Connecting);
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                shared.metrics.connection();
                let end = Session::new(shared, name, &stop)
                    .run(stream, &mut desired, &stop, Some(&listener))
                    .await;
                shared.update(name, |s| s.connected(false));
                match end {
                    End::Stopped => break,
                    End::Over { why, .. } => {
                        tracing::info!(domain = %name, "session ended: {why}");
                    }
                }
            }
            Err(e) => {
                shared.metrics.error(ErrorKind::Connect);
                tracing::warn!(domain = %name, "accept failed: {e}");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(shared.config.timeouts.reconnect_min()) => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Binds a listening socket, replacing a stale socket file but never another file.
pub fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    check_socket_path(path)?;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// Binds a listening socket that appears at `path` only with `mode`: it is bound under a
/// temporary name in the same folder, chmod'ed, then renamed over `path` (a bound unix
/// socket can be renamed), so there is no moment when `path` exists with the
/// permissions the umask gave. Like [`bind_socket`], a stale socket at `path` is
/// replaced and any other file refused.
pub fn bind_socket_with_mode(path: &Path, mode: u32) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    check_socket_path(path)?;
    if let Ok(m) = std::fs::symlink_metadata(path)
        && !m.file_type().is_socket()
    {
        return Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    // A hidden name no longer than the limit allows; 8 random hex digits make a clash
    // with another file unlikely, and bind refuses an existing name anyway.
    let room = MAX_SOCKET_PATH.saturating_sub(dir.as_os_str().len() + 1);
    if room < 6 {
        return Err(format!(
            "the folder of {} leaves no room for a temporary socket name",
            path.display()
        ));
    }
    let mut last = String::new();
    for _ in 0..4 {
        let mut tmp = format!(".{:08x}.tmp", rand::random::<u32>());
        tmp.truncate(room);
        let tmp = dir.join(tmp);
        let listener = match UnixListener::bind(&tmp) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = format!("{} is in use", tmp.display());
                continue;
            }
            Err(e) => return Err(format!("cannot listen on {}: {e}", tmp.display())),
        };
        let finish = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(|e| {
                    format!("cannot move {} to {}: {e}", tmp.display(), path.display())
                })
            });
        return match finish {
            Ok(()) => Ok(listener),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        };
    }
    Err(format!("cannot find a free temporary socket name: {last}"))
}

/// A push waiting for its result.
#[derive(Debug, Clone)]
struct InFlight {
    generation: u64,
    digest: String,
    deadline: Instant,
}

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

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Hello sent; waiting for the agent's answer until the deadline.
    AwaitHello(Instant),
    /// The agent answered.
    Ready,
}

/// Why nothing may be pushed in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// No common version (error sent).
    Version,
    /// The agent refused our channel or our identity.
    Refused(DomainState),
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

/// One connection's session.
struct Session<'a> {
    shared: &'a Shared,
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
    /// A (generation, digest) the agent refused as a bad config: not pushed again until
    /// the desired config changes or a push is forced.
    refused: Option<(u64, String)>,
    force_seen: u64,
    /// The outcome of the last result: (generation, digest, no item failed).
    last_result: Option<(u64, String, bool)>,
    last_facts: Option<GuestFacts>,
    ping_id: u64,
    unanswered: u32,
    next_ping: Instant,
    desired_open: bool,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, name: &'a str, stop: &CancellationToken) -> Session<'a> {
        let mut rules = xenchan_protocol::session::SessionRules::new(Role::Broker);
        let nonce = Nonce::from_bytes(rand::random());
        rules.set_session(nonce.clone());
        let force_seen = shared.desired(name).force;
        Session {
            shared,
            name,
            stop: stop.clone(),
            nonce,
            rules,
            encoder: FrameCodec::new(shared.config.limits.max_frame),
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
            force_seen,
            last_result: None,
            last_facts: None,
            ping_id: 0,
            unanswered: 0,
            next_ping: Instant::now(),
            desired_open: true,
        }
    }

    fn timeouts(&self) -> &crate::config::Timeouts {
        &self.shared.config.timeouts
    }

    fn set_state(&self, s: DomainState) {
        self.shared.set_state(self.name, s);
    }

    async fn run(
        mut self,
        stream: UnixStream,
        desired: &mut watch::Receiver<Desired>,
        stop: &CancellationToken,
        extra: Option<&UnixListener>,
    ) -> End {
        let (read, mut write) = stream.into_split();
        let mut frames =
            FramedRead::new(read, FrameCodec::new(self.shared.config.limits.max_frame));
        // Where the last result of this domain stands, to tell configured from failed
        // without asking the agent again.
        let items: Vec<ItemView> = {
            let mut v = Vec::new();
            self.shared.update(self.name, |s| v = s.items().to_vec());
            v
        };
        if let Some(first) = items.first() {
            // As for a result just received: `unsupported` is not a failure.
            let ok = items
                .iter()
                .filter(|i| i.generation == first.generation)
                .all(|i| !i.status.is_failure());
            self.last_result = Some((first.generation, String::new(), ok));
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
            self.shared.metrics.decoded(&self.stats_seen, &now_stats);
            self.stats_seen = now_stats;
            let r = match ev {
                Event::Stop => {
                    let reason = if self.shared.shutdown.is_cancelled() {
                        "broker shutting down"
                    } else {
                        "domain removed"
                    };
                    self.say_bye(&write, reason);
                    return End::Stopped;
                }
                Event::Frame(None) => Err(self.over("the peer closed the connection (EOF)")),
                Event::Frame(Some(Err(e))) => {
                    self.shared.metrics.error(ErrorKind::Read);
                    Err(self.over(&format!("read failed: {}", error_text(&e))))
                }
                Event::Frame(Some(Ok(env))) => self.on_message(env, &mut write, desired).await,
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
                    self.shared.metrics.error(ErrorKind::ExtraConnection);
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
        d
    }

    /// Writes one message under `deadline`, waiting for the socket to take it.
    async fn send(
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
                self.shared
                    .record_error(
                        self.name,
                        ErrorKind::Other,
                        format!("cannot send {}: {e}", env.kind()),
                    )
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
                self.shared.metrics.error(ErrorKind::Write);
                self.over(&format!("write failed: {e}"))
            }
            WriteError::TimedOut => {
                self.shared.metrics.error(ErrorKind::Write);
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
    async fn push(&mut self, write: &mut OwnedWriteHalf, push: ConfigPush) -> Result<(), End> {
        let (generation, digest) = (push.generation, push.digest.to_string());
        let env = Envelope::new(Role::Broker, Some(self.nonce.clone()), Body::Config(push));
        let Some(line) = self.encode(&env).await else {
            // It fits in no session: wait for another config (or a forced push).
            self.refused = Some((generation, digest));
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
                    self.shared
                        .record_error(self.name, ErrorKind::Write, why.clone())
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
    fn say_bye(&self, write: &OwnedWriteHalf, reason: &str) {
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

    async fn send_hello(&mut self, write: &mut OwnedWriteHalf) -> Result<(), End> {
        let uuid = self.shared.desired(self.name).expected_uuid().cloned();
        let hello = Hello {
            versions: Some(SUPPORTED_VERSIONS.to_vec()),
            channel: self.shared.config.channel.clone(),
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

    async fn on_message(
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

    async fn on_hello(
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
            self.shared
                .record_error(self.name, ErrorKind::VersionMismatch, message.clone())
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
        let applied = h.applied.map(|a| (a.generation, a.digest.to_string()));
        let name = self.name.to_string();
        let (a2, u2) = (applied.clone(), reported.clone());
        if let Err(e) = self
            .shared
            .store
            .call(move |db| {
                db.record_applied(
                    &name,
                    a2.as_ref().map(|(g, d)| (*g, d.as_str())),
                    u2.as_deref(),
                )
            })
            .await
        {
            self.shared.metrics.error(ErrorKind::Store);
            tracing::error!(domain = self.name, "cannot record the applied state: {e}");
        }
        self.shared.update(self.name, |s| {
            s.applied(applied, reported);
            s.connected(true);
        });
        tracing::info!(domain = self.name, software = %h.software, "agent answered hello");
        if self.identity_ok(desired) {
            self.shared.clear_error(self.name).await;
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

    /// Whether the agent's UUID matches the domain's (true when either is unknown).
    fn identity_ok(&self, desired: &watch::Receiver<Desired>) -> bool {
        let want = desired.borrow().expected_uuid().cloned();
        match (want, &self.agent_uuid) {
            (Some(w), Some(a)) => w.eq_ignore_ascii_case(a),
            _ => true,
        }
    }

    /// Decides what to do now: push, wait, or nothing; and sets the state to match.
    async fn evaluate(
        &mut self,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        if self.phase != Phase::Ready || !self.handshook {
            return Ok(());
        }
        if let Some(b) = self.block {
            self.set_state(match b {
                Block::Version => DomainState::VersionMismatch,
                Block::Refused(s) => s,
            });
            return Ok(());
        }
        if !self.identity_ok(desired) {
            self.set_state(DomainState::IdentityMismatch);
            if !self.identity_flagged {
                self.identity_flagged = true;
                let want = desired
                    .borrow()
                    .expected_uuid()
                    .cloned()
                    .unwrap_or_default();
                let got = self.agent_uuid.clone().unwrap_or_default();
                let message = format!(
                    "identity mismatch: domain {} is VM {want} but the agent reports {got}; nothing is pushed",
                    self.name
                );
                self.shared
                    .record_error(self.name, ErrorKind::IdentityMismatch, message.clone())
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
                .await?;
            }
            return Ok(());
        }
        if self.identity_flagged {
            self.identity_flagged = false;
            self.shared.clear_error(self.name).await;
        }
        let d = desired.borrow().clone();
        let Some(cfg) = d.config else {
            self.set_state(DomainState::Idle);
            return Ok(());
        };
        let digest = cfg.digest.to_string();
        if let Some(f) = &self.in_flight
            && f.generation == cfg.generation
            && f.digest == digest
        {
            self.set_state(DomainState::Pushing);
            return Ok(());
        }
        let forced = d.force > self.force_seen;
        let applied_matches = self
            .agent_applied
            .as_ref()
            .is_some_and(|a| a.generation == cfg.generation && a.digest == cfg.digest);
        if applied_matches && !forced {
            self.refresh_state_for(cfg.generation);
            return Ok(());
        }
        if !forced && self.refused.as_ref() == Some(&(cfg.generation, digest.clone())) {
            self.set_state(DomainState::Error);
            return Ok(());
        }
        self.force_seen = d.force;
        self.refused = None;
        let push = ConfigPush {
            digest: cfg.digest.clone(),
            ..ConfigPush::new(cfg.generation, cfg.config.clone())
        };
        self.set_state(DomainState::Pushing);
        self.shared.metrics.push();
        tracing::info!(
            domain = self.name,
            generation = cfg.generation,
            "pushing configuration"
        );
        self.push(write, push).await
    }

    /// Sets configured or failed for `generation` from the last result (failed only
    /// when an item failed; `unsupported` ones do not count).
    fn refresh_state_for(&self, generation: u64) {
        let ok = match &self.last_result {
            Some((g, _, ok)) if *g == generation => *ok,
            _ => true,
        };
        self.set_state(if ok {
            DomainState::Configured
        } else {
            DomainState::Failed
        });
    }

    /// Recomputes the state without acting (after an unresponsive spell).
    fn refresh_state(&self, desired: &watch::Receiver<Desired>) {
        if let Some(b) = self.block {
            self.set_state(match b {
                Block::Version => DomainState::VersionMismatch,
                Block::Refused(s) => s,
            });
        } else if !self.identity_ok(desired) {
            self.set_state(DomainState::IdentityMismatch);
        } else if self.in_flight.is_some() {
            self.set_state(DomainState::Pushing);
        } else if let Some(cfg) = desired.borrow().config.clone() {
            let applied = self
                .agent_applied
                .as_ref()
                .is_some_and(|a| a.generation == cfg.generation && a.digest == cfg.digest);
            if applied {
                self.refresh_state_for(cfg.generation);
            } else if self.refused.is_some() {
                self.set_state(DomainState::Error);
            } else {
                self.set_state(DomainState::Pushing);
            }
        } else {
            self.set_state(DomainState::Idle);
        }
    }

    async fn on_result(
        &mut self,
        r: ApplyResult,
        write: &mut OwnedWriteHalf,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<(), End> {
        // Durable before anything else: a result received is never lost.
        let name = self.name.to_string();
        let stored = r.clone();
        let at = match self
            .shared
            .store
            .call(move |db| db.record_result(&name, &stored))
            .await
        {
            Ok(at) => at,
            Err(e) => {
                self.shared.metrics.error(ErrorKind::Store);
                tracing::error!(domain = self.name, "cannot record a result: {e}");
                now_rfc3339()
            }
        };
        self.shared.metrics.result(r.items.iter().map(|i| i.status));
        // `configured` unless an item failed: an item the guest cannot apply is
        // reported `unsupported` in the items, and pushing again would not change it.
        let ok = r.none_failed();
        let items: Vec<ItemView> = r
            .items
            .iter()
            .map(|i| ItemView {
                item: i.item.clone(),
                status: i.status,
                reason: i.reason.clone(),
                generation: r.generation,
            })
            .collect();
        let applied = (r.generation, r.digest.to_string());
        self.shared.update(self.name, |s| {
            s.result(items, at);
            s.applied(Some(applied), None);
        });
        self.agent_applied = Some(Applied {
            generation: r.generation,
            digest: r.digest.clone(),
            lineage: None,
        });
        self.last_result = Some((r.generation, r.digest.to_string(), ok));
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
        self.shared.notify_hook(
            self.name,
            "add",
            if ok { "end" } else { "failed" },
            r.generation.to_string(),
        );
        self.evaluate(write, desired).await
    }

    async fn on_facts(&mut self, f: GuestFacts) {
        if self.last_facts.as_ref() == Some(&f) {
            return;
        }
        self.last_facts = Some(f.clone());
        let name = self.name.to_string();
        let stored = f.clone();
        if self
            .shared
            .store
            .call(move |db| db.record_facts(&name, &stored))
            .await
            .is_err()
        {
            self.shared.metrics.error(ErrorKind::Store);
        }
        self.shared.update(self.name, |s| s.facts(f));
    }

    async fn on_agent_error(&mut self, e: ErrorReport) {
        let text = format!("agent error {}: {}", error_code_text(e.code), e.message);
        match e.code {
            // A refused push is not pushed again until something changes (no loop).
            ErrorCode::BadConfig | ErrorCode::StaleGeneration => {
                if let Some(f) = self.in_flight.take() {
                    self.refused = Some((f.generation, f.digest.clone()));
                    self.shared
                        .notify_hook(self.name, "add", "failed", f.generation.to_string());
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
        self.shared
            .record_error(self.name, ErrorKind::AgentError, text)
            .await;
    }

    async fn on_timer(&mut self, write: &mut OwnedWriteHalf) -> Result<(), End> {
        let now = Instant::now();
        if let Phase::AwaitHello(deadline) = self.phase
            && now >= deadline
        {
            let why = format!("no answer to hello within {} ms", self.timeouts().hello);
            self.set_state(DomainState::Unresponsive);
            self.shared
                .record_error(self.name, ErrorKind::HelloTimeout, why.clone())
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
            self.shared
                .record_error(self.name, ErrorKind::ResultTimeout, why.clone())
                .await;
            return Err(self.over(&why));
        }
        if self.phase == Phase::Ready && self.handshook && now >= self.next_ping {
            if self.unanswered >= MISSED_PONGS {
                let was = self.shared.view(self.name).map(|v| v.state);
                if was != Some(DomainState::Unresponsive) {
                    self.set_state(DomainState::Unresponsive);
                    self.shared
                        .record_error(
                            self.name,
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

/// Accepts and drops every extra connection to a listening socket; pending forever
/// in connect mode.
async fn refuse_extra(extra: Option<&UnixListener>) {
    match extra {
        Some(l) => {
            if let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        }
        None => std::future::pending().await,
    }
}

fn error_code_text(c: ErrorCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{c:?}"))
}

fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut last_cap = Duration::ZERO;
        for cap in [100u64, 200, 400, 800, 800] {
            let d = b.next_delay();
            let cap = Duration::from_millis(cap);
            assert!(
                d <= cap && d >= cap / 2,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
