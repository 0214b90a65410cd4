//! The agent's side of the protocol on one open device: beacon until a broker answers,
//! check its hello, answer pings, apply pushed configurations, and go back to beaconing
//! when the broker goes quiet. Generic over the byte stream so the same loop serves an
//! hvc tty, a virtio port, or a socket in tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tracing::{debug, error, info, warn};
use xenchan_protocol::message::{
    ApplyResult, ConfigPush, ErrorCode, ErrorReport, GuestFacts, Hello,
};
use xenchan_protocol::session::negotiate;
use xenchan_protocol::{
    Admission, Body, Capabilities, DecodeStats, Envelope, FrameCodec, ItemResult, ItemStatus,
    Nonce, Role, SUPPORTED_VERSIONS, Verdict, admit,
};

use xenchan_basics::Backoff;
use xenchan_basics::commit::{AfterCommit, Batch};

use crate::apply::{self, Applier, ApplyContext};
use crate::coalesce::Coalesce;
use crate::facts;
use crate::identity;
use crate::links::LinkFeed;
use crate::options::AgentOptions;
use crate::state::{AppliedState, StateStore};

/// Outgoing bytes waiting for the device beyond this are a stuck device: beacons are
/// not queued while anything waits, and other messages are dropped past it.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// What the agent keeps across devices and sessions.
#[derive(Debug)]
pub(crate) struct AgentCore {
    pub opts: Arc<AgentOptions>,
    pub store: StateStore,
    pub applied: Option<AppliedState>,
    pub appliers: Arc<Vec<Box<dyn Applier>>>,
    /// This run of the agent ([`Hello::instance`]): chosen at random once per process, so
    /// the broker can tell a repeated answer from an agent that restarted.
    pub instance: String,
    /// The last push, while some of its items failed: applied again with capped backoff
    /// (each attempt answered with a `result` for the same generation) until none fails
    /// or another push replaces it.
    pub retry: Option<Retry>,
    /// rtnetlink link and address notifications, when the agent configures a running
    /// kernel (root `/` or a network namespace) and could subscribe.
    pub links: Option<LinkFeed>,
}

/// A push whose failed items are tried again.
#[derive(Debug)]
pub(crate) struct Retry {
    push: ConfigPush,
    at: Instant,
    backoff: Backoff,
}

/// Why [`serve`] returned.
#[derive(Debug)]
pub(crate) enum End {
    /// The shutdown future completed (a bye was sent if a session was open).
    Shutdown,
    /// The device's link went away or now points elsewhere.
    Gone,
    /// The device failed (hang-up, I/O error): close it and open it again.
    Hangup(io::Error),
}

/// Counters of one [`serve`] call, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServeStats {
    pub reads: u64,
    pub eofs: u64,
    pub beacons: u64,
    pub sessions: u64,
    pub decode: DecodeStats,
}

/// Serves the protocol on `io` until shutdown, the device goes away (`gone` resolves) or
/// fails. `tty`: a read of 0 bytes is a hang-up; otherwise (a virtio port) it means no
/// host is connected, and reading pauses with back-off instead of spinning.
pub(crate) async fn serve<T, G, S>(
    io: &mut T,
    tty: bool,
    core: &mut AgentCore,
    gone: G,
    shutdown: &mut Pin<&mut S>,
) -> (End, ServeStats)
where
    T: AsyncRead + AsyncWrite + Unpin,
    G: Future<Output = ()>,
    S: Future<Output = ()> + ?Sized,
{
    let timing = core.opts.timing;
    let (facts_tx, mut facts_rx) = tokio::sync::mpsc::channel(2);
    let link_apply = Coalesce::new(timing.link_settle, timing.link_apply_gap);
    let mut s = Session {
        codec: FrameCodec::new(core.opts.max_frame),
        rules: xenchan_protocol::session::SessionRules::new(Role::Agent),
        out: BytesMut::new(),
        after: AfterCommit::default(),
        beacon_every: timing.beacon_min,
        next_beacon: Some(Instant::now()),
        last_rx: Instant::now(),
        eof_pause: timing.eof_min,
        paused_until: None,
        stats: ServeStats::default(),
        uuid: identity::read_vm_uuid(&core.opts.root),
        facts: FactsReporter::new(facts_tx, timing.facts_min_interval),
        link_apply,
        core,
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut gone = std::pin::pin!(gone);
    let end = loop {
        let reading = s.paused_until.is_none();
        let deadline = s.next_deadline();
        let feed = s.core.links.clone();
        let link_changes = async move {
            match feed {
                Some(f) => f.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.as_mut() => {
                s.say_bye(&mut wr).await;
                break End::Shutdown;
            }
            () = &mut gone => break End::Gone,
            r = rd.read(&mut chunk), if reading => match r {
                Ok(0) => {
                    s.stats.eofs += 1;
                    // A last line without a newline is still a line.
                    while let Ok(Some(msg)) = s.codec.decode_eof(&mut rbuf) {
                        s.handle(msg).await;
                    }
                    if tty {
                        break End::Hangup(io::Error::new(io::ErrorKind::UnexpectedEof, "the tty hung up"));
                    }
                    if s.stats.eofs == 1 {
                        info!("the device reads end-of-file: no host is connected yet");
                    }
                    s.paused_until = Some(Instant::now() + s.eof_pause);
                    s.eof_pause = (s.eof_pause * 2).min(timing.eof_max);
                }
                Ok(n) => {
                    s.stats.reads += 1;
                    s.eof_pause = timing.eof_min;
                    rbuf.extend_from_slice(&chunk[..n]);
                    loop {
                        match s.codec.decode(&mut rbuf) {
                            Ok(Some(msg)) => s.handle(msg).await,
                            Ok(None) => break,
                            Err(e) => {
                                warn!(error = %e, "decoder failed; dropping buffered input");
                                rbuf.clear();
                                break;
                            }
                        }
                    }
                    s.note_noise();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break End::Hangup(e),
            },
            r = wr.write(&s.out), if !s.out.is_empty() => match r {
                Ok(0) => break End::Hangup(io::Error::new(io::ErrorKind::WriteZero, "the device took no bytes")),
                Ok(n) => {
                    s.out.advance(n);
                    if s.out.is_empty() {
                        s.after_answer();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break End::Hangup(e),
            },
            Some(f) = facts_rx.recv() => s.on_facts(f),
            c = link_changes => {
                s.on_links(&c);
                s.facts_timer(Instant::now());
            }
            () = tokio::time::sleep_until(deadline) => {
                s.on_timer();
                s.retry_if_due().await;
                s.apply_if_link_appeared().await;
            }
        }
    };
    s.stats.decode = s.codec.stats();
    (end, s.stats)
}

struct Session<'c> {
    core: &'c mut AgentCore,
    codec: FrameCodec,
    rules: xenchan_protocol::session::SessionRules,
    out: BytesMut,
    /// What the last push's commit left for after its result is written out: its state
    /// folder's sync and the files it replaced (see `after_answer`).
    after: AfterCommit,
    /// Current beacon interval (doubles while nobody answers).
    beacon_every: Duration,
    /// When to beacon next; `None` while in a session.
    next_beacon: Option<Instant>,
    /// Last message of the current session from the broker.
    last_rx: Instant,
    eof_pause: Duration,
    paused_until: Option<Instant>,
    stats: ServeStats,
    uuid: Option<String>,
    facts: FactsReporter,
    /// Applying the failed push again because a link it waits for appeared: coalesced
    /// (a burst of links is one apply, after `link_settle`) and at most one per
    /// `link_apply_gap`.
    link_apply: Coalesce<Instant>,
}

/// The facts report, off the session's path: gathered on other threads, sent when it
/// differs from what this session was last told. Requests (session start, an apply, a
/// link or address notification, the poll) are coalesced and gatherings are at least
/// `facts_min_interval` apart, so a burst of changes gives few reports, the latest
/// state winning.
struct FactsReporter {
    tx: tokio::sync::mpsc::Sender<GuestFacts>,
    gather: Coalesce<Instant>,
    /// The next periodic look during a session.
    next_poll: Option<Instant>,
    /// What the current session was last sent.
    last_sent: Option<GuestFacts>,
}

impl FactsReporter {
    fn new(tx: tokio::sync::mpsc::Sender<GuestFacts>, min_interval: Duration) -> Self {
        FactsReporter {
            tx,
            gather: Coalesce::new(Duration::ZERO, min_interval),
            next_poll: None,
            last_sent: None,
        }
    }

    /// When the timer must fire for the reporter.
    fn deadline(&self) -> Option<Instant> {
        match (self.gather.due(), self.next_poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Session<'_> {
    fn opts(&self) -> &AgentOptions {
        &self.core.opts
    }

    fn broker_gone_after(&self) -> Duration {
        self.opts().timing.keepalive * 3
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut d = far;
        if let Some(b) = self.next_beacon {
            d = d.min(b);
        }
        if self.rules.current().is_some() {
            d = d.min(self.last_rx + self.broker_gone_after());
        }
        if let Some(p) = self.paused_until {
            d = d.min(p);
        }
        if let Some(f) = self.facts.deadline()
            && self.rules.current().is_some()
        {
            d = d.min(f);
        }
        if let Some(r) = &self.core.retry
            && self.rules.current().is_some()
        {
            d = d.min(r.at);
            if let Some(l) = self.link_apply.due() {
                d = d.min(l);
            }
        }
        d
    }

    /// Link and address notifications: the facts may have changed, and a link the
    /// failed push waits for may have appeared.
    fn on_links(&mut self, c: &xenchan_netconf::LinkChanges) {
        if c.changed {
            self.want_facts();
        }
        let Some(r) = &self.core.retry else {
            return;
        };
        let results = self
            .core
            .applied
            .as_ref()
            .map_or(&[][..], |a| a.items.as_slice());
        let waiting = xenchan_netconf::waiting_macs(&r.push.config, results);
        if link_fixes(&waiting, c) {
            debug!(macs = ?c.appeared, "a link the configuration waits for appeared");
            self.link_apply.want(Instant::now());
        }
    }

    /// Applies the failed push again once a link it waits for appeared (coalesced and
    /// rate-limited), in a session only: the outcome is reported as a `result` for the
    /// same generation. Outside a session the request waits for the next one.
    async fn apply_if_link_appeared(&mut self) {
        if self.core.retry.is_none() {
            self.link_apply.forget();
            return;
        }
        let Some(session) = self.rules.current().cloned() else {
            return;
        };
        if !self.link_apply.try_start(Instant::now()) {
            return;
        }
        let Some(push) = self.core.retry.as_ref().map(|r| r.push.clone()) else {
            return;
        };
        info!(
            generation = push.generation,
            "an interface the configuration names appeared; applying its items again"
        );
        self.config(Some(session), push).await;
        self.link_apply.finish(Instant::now());
    }

    /// Applies the last push again when its retry is due, in a session only: each
    /// attempt's outcome is reported (a `result` for the same generation).
    async fn retry_if_due(&mut self) {
        let Some(session) = self.rules.current().cloned() else {
            return;
        };
        let Some(push) = self
            .core
            .retry
            .as_ref()
            .filter(|r| r.at <= Instant::now())
            .map(|r| r.push.clone())
        else {
            return;
        };
        info!(generation = push.generation, "retrying the failed items");
        self.config(Some(session), push).await;
    }

    /// After an apply: keep retrying while an item failed, with the backoff of earlier
    /// attempts at the same push; forget it once nothing failed.
    fn schedule_retry(&mut self, push: ConfigPush, failed: bool) {
        let previous = self.core.retry.take();
        if !failed {
            return;
        }
        let t = self.opts().timing;
        let mut backoff = match previous {
            Some(r) if r.push.generation == push.generation && r.push.digest == push.digest => {
                r.backoff
            }
            _ => Backoff::new(t.retry_min, t.retry_max),
        };
        let delay = backoff.next_delay();
        debug!(
            generation = push.generation,
            ?delay,
            "failed items will be retried"
        );
        self.core.retry = Some(Retry {
            push,
            at: Instant::now() + delay,
            backoff,
        });
    }

    /// Fresh facts are wanted (a session started, an item changed the guest, a link or
    /// address changed).
    fn want_facts(&mut self) {
        self.facts.gather.want(Instant::now());
    }

    fn facts_timer(&mut self, now: Instant) {
        if self.facts.next_poll.is_some_and(|p| p <= now) {
            self.facts.gather.want(now);
            self.facts.next_poll = Some(now + self.opts().timing.facts_poll);
        }
        // Only a session is told facts: outside one the request waits for the next.
        if self.rules.current().is_some() && self.facts.gather.try_start(now) {
            let opts = Arc::clone(&self.core.opts);
            let per_source = opts.timing.facts_timeout;
            let tx = self.facts.tx.clone();
            tokio::spawn(async move {
                let f = facts::gather_bounded(opts, per_source).await;
                let _ = tx.send(f).await;
            });
        }
    }

    fn on_facts(&mut self, f: GuestFacts) {
        self.facts.gather.finish(Instant::now());
        let Some(nonce) = self.rules.current().cloned() else {
            return;
        };
        if self.facts.last_sent.as_ref() == Some(&f) {
            debug!("facts unchanged; not sent");
            return;
        }
        self.send(&Envelope::new(
            Role::Agent,
            Some(nonce),
            Body::Facts(f.clone()),
        ));
        self.facts.last_sent = Some(f);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|p| p <= now) {
            self.paused_until = None;
        }
        if self.rules.current().is_some() && now >= self.last_rx + self.broker_gone_after() {
            warn!(
                silent_ms = self.broker_gone_after().as_millis() as u64,
                "no message from the broker for 3 keepalive intervals; it is gone, beaconing again"
            );
            self.end_session();
        }
        if let Some(b) = self.next_beacon
            && b <= now
        {
            self.beacon(now);
        }
        self.facts_timer(now);
    }

    fn end_session(&mut self) {
        self.rules.clear();
        self.facts.next_poll = None;
        self.facts.last_sent = None;
        self.beacon_every = self.opts().timing.beacon_min;
        self.next_beacon = Some(Instant::now());
    }

    fn beacon(&mut self, now: Instant) {
        // One beacon waiting is enough: on a virtio port with no host, writes block and
        // beacons would otherwise pile up to be replayed stale.
        if self.out.is_empty() {
            let hello = self.hello();
            self.send(&Envelope::new(Role::Agent, None, Body::Hello(hello)));
            self.stats.beacons += 1;
            debug!(next_ms = self.beacon_every.as_millis() as u64, "beacon");
        }
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        self.next_beacon = Some(now + self.beacon_every.mul_f64(jitter));
        self.beacon_every = (self.beacon_every * 2).min(self.opts().timing.beacon_max);
    }

    fn hello(&self) -> Hello {
        Hello {
            versions: Some(SUPPORTED_VERSIONS.to_vec()),
            channel: self.opts().channel.clone(),
            domain: None,
            uuid: self.uuid.clone(),
            software: facts::software(),
            applied: self.core.applied.as_ref().map(AppliedState::applied),
            instance: Some(self.core.instance.clone()),
            capabilities: Some(Capabilities::ours()),
        }
    }

    /// Once the result is out, on the blocking pool: syncs the state folder (the state
    /// file is renamed, so a kill loses nothing; a power loss before this sync may bring
    /// the previous record back, and the broker pushes again) and lets the replaced files
    /// go (freeing them may wait on the disk). Nobody waits on either.
    fn after_answer(&mut self) {
        if !self.after.is_empty() {
            let after = std::mem::take(&mut self.after);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = after.finish() {
                    error!(error = %xenchan_basics::chain(&e), "cannot save what was applied");
                }
            });
        }
    }

    fn send(&mut self, msg: &Envelope) {
        if self.out.len() > MAX_PENDING {
            warn!(
                kind = msg.kind(),
                "device is not taking bytes; dropping a message"
            );
            return;
        }
        if let Err(e) = Encoder::<&Envelope>::encode(&mut self.codec, msg, &mut self.out) {
            error!(kind = msg.kind(), error = %e, "cannot encode a message");
        }
    }

    fn send_error(&mut self, session: Option<Nonce>, code: ErrorCode, message: String) {
        self.send(&Envelope::new(
            Role::Agent,
            session,
            Body::Error(ErrorReport { code, message }),
        ));
    }

    fn note_noise(&mut self) {
        let st = self.codec.stats();
        let skipped = st.skipped();
        if skipped > self.stats.decode.skipped() {
            debug!(
                skipped,
                at_commands = st.at_commands,
                nul = st.nul,
                oversize = st.oversize,
                invalid = st.invalid,
                noise = st.noise,
                "skipped lines that are not messages"
            );
        }
        self.stats.decode = st;
    }

    async fn handle(&mut self, msg: Envelope) {
        let verdict = self.rules.classify(&msg);
        match verdict {
            Verdict::OwnEcho | Verdict::Stale | Verdict::UnknownVersion | Verdict::Beacon => {
                debug!(?verdict, kind = msg.kind(), "ignoring message");
            }
            Verdict::NewSession => self.new_session(msg),
            Verdict::Accept => {
                self.last_rx = Instant::now();
                self.accept(msg).await;
            }
        }
    }

    fn new_session(&mut self, msg: Envelope) {
        let (Some(nonce), Body::Hello(hello)) = (msg.session, msg.body) else {
            return;
        };
        if hello.channel != self.opts().channel {
            warn!(ours = %self.opts().channel, theirs = %hello.channel, "broker hello names another channel; not answering it");
            let m = format!(
                "this device is channel {}, the broker's hello says {}",
                self.opts().channel,
                hello.channel
            );
            self.send_error(Some(nonce), ErrorCode::ChannelMismatch, m);
            return;
        }
        if let (Some(ours), Some(theirs)) = (&self.uuid, &hello.uuid)
            && !ours.eq_ignore_ascii_case(theirs)
        {
            warn!(ours = %ours, theirs = %theirs, "broker hello names another VM; not answering it");
            let m = format!("this VM's UUID is {ours}, the broker's hello says {theirs}");
            self.send_error(Some(nonce), ErrorCode::IdentityMismatch, m);
            return;
        }
        let version = match negotiate(SUPPORTED_VERSIONS, hello.versions.as_deref()) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "broker speaks no protocol version we speak");
                self.send_error(Some(nonce), ErrorCode::NoCommonVersion, e.to_string());
                return;
            }
        };
        info!(
            session = %nonce,
            version,
            domain = hello.domain.as_deref().unwrap_or("?"),
            broker = %hello.software,
            "session started"
        );
        self.stats.sessions += 1;
        self.rules.set_session(nonce.clone());
        self.next_beacon = None;
        self.beacon_every = self.opts().timing.beacon_min;
        self.last_rx = Instant::now();
        let answer = self.hello();
        self.send(&Envelope::new(
            Role::Agent,
            Some(nonce),
            Body::Hello(answer),
        ));
        // The facts follow in their own frame once gathered, off this path: the hello is
        // answered at once whatever a facts source does. A new session is told afresh.
        self.facts.last_sent = None;
        self.facts.next_poll = Some(Instant::now() + self.opts().timing.facts_poll);
        self.want_facts();
        self.facts_timer(Instant::now());
    }

    async fn accept(&mut self, msg: Envelope) {
        let session = msg.session.clone();
        match msg.body {
            Body::Hello(_) => {
                // The broker repeated its hello (it saw a beacon): answer it again.
                let answer = self.hello();
                self.send(&Envelope::new(Role::Agent, session, Body::Hello(answer)));
            }
            Body::Ping { id } => {
                self.send(&Envelope::new(Role::Agent, session, Body::Pong { id }));
            }
            Body::Pong { .. } => {}
            Body::Config(push) => self.config(session, push).await,
            Body::Bye { reason } => {
                info!(reason = %reason, "broker said bye; beaconing again");
                self.end_session();
            }
            Body::Error(report) => {
                warn!(code = ?report.code, message = %report.message, "broker reported an error");
            }
            Body::Result(_) | Body::Facts(_) => {
                debug!(
                    kind = msg.body.kind(),
                    "ignoring a message only an agent sends"
                );
            }
        }
    }

    async fn config(&mut self, session: Option<Nonce>, push: ConfigPush) {
        let kept = push.clone();
        if let Some(e) = &push.decode.error {
            warn!(generation = push.generation, error = %e, "refusing a configuration that does not decode");
            self.send_error(session, ErrorCode::BadConfig, e.to_string());
            return;
        }
        let admission = admit(
            self.core
                .applied
                .as_ref()
                .map(AppliedState::applied)
                .as_ref(),
            &push,
        );
        if let Some(m) = admission.refusal() {
            warn!(generation = push.generation, "{m}");
            self.send_error(session, ErrorCode::StaleGeneration, m);
            return;
        }
        if let Admission::Rollback { applied, pushed } = admission {
            warn!(
                applied,
                pushed, "the operator forced an older generation: rolling back"
            );
        }
        let actual = push.config.digest();
        // With fields dropped the document we hold is not the one digested: the frame's
        // CRC vouches for the bytes, and the digest stays the broker's name for them.
        if push.decode.unsupported.is_empty() && actual != push.digest {
            warn!(
                generation = push.generation,
                "refusing a configuration whose digest does not match"
            );
            let m = format!(
                "digest {} does not match the document (its digest is {actual})",
                push.digest
            );
            self.send_error(session, ErrorCode::BadConfig, m);
            return;
        }
        if let Err(e) = push.config.validate() {
            warn!(generation = push.generation, error = %e, "refusing an invalid configuration");
            self.send_error(session, ErrorCode::BadConfig, e.to_string());
            return;
        }
        let opts = Arc::clone(&self.core.opts);
        let appliers = Arc::clone(&self.core.appliers);
        let previous = self.core.applied.clone();
        let store = self.core.store.clone();
        let pushed = push.clone();
        let deadline = self.opts().timing.apply_timeout;
        let applied = tokio::time::timeout(
            deadline,
            tokio::task::spawn_blocking(move || {
                apply_and_commit(&appliers, &opts, previous.as_ref(), &pushed, &store)
            }),
        )
        .await;
        let state = match applied {
            Ok(Ok((state, after))) => {
                // The previous push's, if its result is still on its way: done now, off
                // this thread, rather than dropped here (its drop would block).
                self.after_answer();
                self.after = after;
                state
            }
            failure => {
                let why = match failure {
                    Err(_) => {
                        format!("applying took longer than {deadline:?}; the outcome is unknown")
                    }
                    Ok(Err(e)) => format!("the agent failed internally ({e})"),
                    Ok(Ok(_)) => unreachable!(),
                };
                error!(generation = push.generation, "{why}");
                let items = push
                    .config
                    .items()
                    .into_iter()
                    .map(|i| ItemResult::failed(i, why.clone()))
                    .collect();
                // Keep what the appliers remembered: nothing was undone.
                let kept = self
                    .core
                    .applied
                    .as_ref()
                    .map(|a| a.appliers.clone())
                    .unwrap_or_default();
                let state = AppliedState {
                    generation: push.generation,
                    digest: push.digest.clone(),
                    lineage: push.lineage.clone(),
                    items: with_unsupported(items, &push),
                    appliers: kept,
                };
                if !self
                    .core
                    .applied
                    .as_ref()
                    .is_some_and(|prev| same_outcome(prev, &state))
                {
                    let batch = Batch::new();
                    if let Err(e) = self
                        .core
                        .store
                        .stage(&state, &batch)
                        .and_then(|()| batch.commit().map(drop).map_err(io::Error::other))
                    {
                        error!(dir = %self.core.store.dir().display(), error = %e, "cannot save what was applied");
                    }
                }
                state
            }
        };
        for item in &state.items {
            match item.status {
                ItemStatus::Failed => {
                    warn!(item = %item.item, reason = item.reason.as_deref().unwrap_or(""), "item failed");
                }
                ItemStatus::Unsupported => {
                    info!(item = %item.item, reason = item.reason.as_deref().unwrap_or(""), "item unsupported");
                }
                s => info!(item = %item.item, status = s.as_str(), "item done"),
            }
        }
        let items = state.items.clone();
        self.core.applied = Some(state);
        if let Some(l) = &self.core.links {
            l.clear_boot();
        }
        if items.iter().any(|i| i.status == ItemStatus::Applied) {
            // The guest changed (its hostname, addresses): the broker's view follows.
            self.want_facts();
        }
        self.schedule_retry(kept, items.iter().any(|i| i.status.is_failure()));
        let result = ApplyResult {
            generation: push.generation,
            digest: push.digest,
            items,
        };
        self.send(&Envelope::new(Role::Agent, session, Body::Result(result)));
    }

    async fn say_bye<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) {
        if let Some(n) = self.rules.current().cloned() {
            self.send(&Envelope::new(
                Role::Agent,
                Some(n),
                Body::Bye {
                    reason: "agent shutting down".into(),
                },
            ));
        }
        if self.out.is_empty() {
            return;
        }
        let t = self.opts().timing.bye_timeout;
        let pending = self.out.split();
        if tokio::time::timeout(t, wr.write_all(&pending))
            .await
            .is_err()
        {
            debug!("device did not take the last bytes before shutdown");
        }
    }
}

/// Whether link changes may fix an item waiting for a MAC: a waited-for MAC appeared,
/// or notifications were lost (the kernel's buffer overflowed) while something waits.
fn link_fixes(
    waiting: &std::collections::BTreeSet<String>,
    c: &xenchan_netconf::LinkChanges,
) -> bool {
    !waiting.is_empty() && (c.overflowed || c.appeared.iter().any(|m| waiting.contains(m)))
}

/// Applies `push` and makes it durable in one commit (blocking): every applier stages
/// the files it changes, then the state file is staged behind a barrier (it must never
/// say a configuration is in place before its files are), then one commit fsyncs every
/// temporary file, renames the files, syncs their folders, and renames the state file;
/// the state folder's sync is left to the returned [`AfterCommit`], done once the result
/// is written out (the files are durable before the answer; after a power loss in that
/// moment the agent reports the previous generation, and the broker pushes again).
/// A re-push of what is in place leaves even the state file alone. A commit that fails
/// before the state file fails every item that changed something, naming the file; a
/// failure on the state file itself is logged (the broker then pushes again after a
/// restart, which changes nothing).
fn apply_and_commit(
    appliers: &[Box<dyn Applier>],
    opts: &AgentOptions,
    previous: Option<&AppliedState>,
    push: &ConfigPush,
    store: &StateStore,
) -> (AppliedState, AfterCommit) {
    let batch = Batch::new();
    let ctx = ApplyContext {
        opts,
        previous,
        batch: &batch,
    };
    let (items, states) = apply::apply_config(appliers, &ctx, &push.config);
    let mut state = AppliedState {
        generation: push.generation,
        digest: push.digest.clone(),
        lineage: push.lineage.clone(),
        items: with_unsupported(items, push),
        appliers: states,
    };
    if previous.is_some_and(|prev| same_outcome(prev, &state)) {
        debug!("nothing changed; state file left as it is");
    } else {
        batch.barrier();
        batch.defer_final_syncs();
        if let Err(e) = store.stage(&state, &batch) {
            error!(dir = %store.dir().display(), error = %e, "cannot save what was applied");
        }
    }
    match batch.commit() {
        Ok(done) => {
            debug!(
                files = done.files,
                removed = done.removed,
                folders_synced = done.dir_syncs,
                "push committed"
            );
        }
        Err(e) if e.path.starts_with(store.dir()) => {
            error!(dir = %store.dir().display(), error = %xenchan_basics::chain(&e), "cannot save what was applied");
        }
        Err(e) => {
            let why = xenchan_basics::chain(&e);
            error!(error = %why, "the push's files could not all be put in place");
            xenchan_netconf::fail_changed(&mut state.items, &why);
        }
    }
    (state, batch.take_after())
}

/// The applier's results followed by one `unsupported` entry per item or field of the
/// push this agent does not know (path and reason), so nothing is dropped silently.
fn with_unsupported(mut items: Vec<ItemResult>, push: &ConfigPush) -> Vec<ItemResult> {
    items.extend(push.decode.unsupported.iter().map(|e| ItemResult {
        item: e.path.clone(),
        status: ItemStatus::Unsupported,
        reason: Some(e.message.clone()),
    }));
    items
}

/// Whether `new` records nothing `prev` does not: the same generation, digest and
/// applier states, and every item either unchanged or with the same outcome as before.
fn same_outcome(prev: &AppliedState, new: &AppliedState) -> bool {
    prev.generation == new.generation
        && prev.digest == new.digest
        && prev.appliers == new.appliers
        && prev.items.len() == new.items.len()
        && prev
            .items
            .iter()
            .zip(&new.items)
            .all(|(p, n)| p.item == n.item && (n.status == ItemStatus::Unchanged || p == n))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;
    use crate::options::Timing;

    fn core(dir: &std::path::Path) -> AgentCore {
        let opts = AgentOptions {
            timing: Timing::fast(Duration::from_secs(10)),
            live_hostname: false,
            ..AgentOptions::under_root(dir)
        };
        AgentCore {
            store: StateStore::open(&opts.state_dir).unwrap(),
            opts: Arc::new(opts),
            applied: None,
            appliers: Arc::new(apply::default_appliers()),
            instance: Hello::new_instance(rand::random()),
            retry: None,
            links: None,
        }
    }

    /// A virtio port with no host reads EOF at once, every time. A socket whose peer shut
    /// down its sending side does exactly that, while still taking our writes.
    #[tokio::test]
    async fn eof_without_a_host_neither_ends_nor_spins() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path());
        let (mut port, mut host) = UnixStream::pair().unwrap();
        host.shutdown().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut shutdown = std::pin::pin!(async {
            let _ = rx.await;
        });
        let window = Duration::from_millis(600);
        let watch_host = async {
            let started = Instant::now();
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut beacons = 0;
            while beacons < 2 || started.elapsed() < window {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), host.read(&mut chunk))
                    .await
                    .expect("the agent kept beaconing")
                    .unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let Some(m) = codec.decode(&mut buf).unwrap() {
                    assert!(m.session.is_none() && matches!(m.body, Body::Hello(_)));
                    beacons += 1;
                }
            }
            tx.send(()).unwrap();
            beacons
        };
        let serving = serve(
            &mut port,
            false,
            &mut core,
            std::future::pending(),
            &mut shutdown,
        );
        let (beacons, (end, stats)) = tokio::join!(watch_host, serving);
        assert!(matches!(end, End::Shutdown), "{end:?}");
        assert!(beacons >= 2);
        // 20 ms doubling to 200 ms: about 6 reads in 600 ms. Spinning would be thousands.
        assert!(
            (2..=15).contains(&stats.eofs),
            "{} EOF reads in {window:?}",
            stats.eofs
        );
    }

    #[test]
    fn only_a_waited_for_mac_or_lost_notifications_trigger_an_apply() {
        let macs = |m: &[&str]| -> std::collections::BTreeSet<String> {
            m.iter().map(|s| (*s).to_string()).collect()
        };
        let changes = |appeared: &[&str], overflowed: bool| xenchan_netconf::LinkChanges {
            appeared: macs(appeared),
            changed: true,
            overflowed,
        };
        let a = "00:16:3e:00:00:0a";
        let b = "00:16:3e:00:00:0b";
        let cases = [
            (macs(&[]), changes(&[a], false), false),
            (macs(&[]), changes(&[], true), false),
            (macs(&[a]), changes(&[], false), false),
            (macs(&[a]), changes(&[b], false), false),
            (macs(&[a]), changes(&[b, a], false), true),
            (macs(&[a]), changes(&[], true), true),
        ];
        for (waiting, c, want) in cases {
            assert_eq!(link_fixes(&waiting, &c), want, "{waiting:?} {c:?}");
        }
    }

    /// On a tty, EOF is a hang-up: the device is closed and opened again.
    #[tokio::test]
    async fn eof_on_a_tty_is_a_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = core(dir.path());
        let (mut port, host) = UnixStream::pair().unwrap();
        drop(host);
        let mut shutdown = std::pin::pin!(std::future::pending::<()>());
        let (end, _) = tokio::time::timeout(
            Duration::from_secs(5),
            serve(
                &mut port,
                true,
                &mut core,
                std::future::pending(),
                &mut shutdown,
            ),
        )
        .await
        .unwrap();
        assert!(matches!(end, End::Hangup(_)), "{end:?}");
    }
}
