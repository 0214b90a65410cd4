//! Test support: a peer that plays QEMU (a unix listener in the socket folder) and the
//! guest agent behind it (the agent side of the protocol, with [`FrameCodec`]), a broker
//! harness over temporary folders, and condition waits with deadlines.
//!
//! Shared by the broker's integration tests and the CLI's end-to-end ones
//! (tests/tests/{cli,hook,hook_migrate,roles}.rs, which include this file by path). Not
//! every test uses every helper.
#![allow(dead_code, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use xenchan_broker::client::Client;
use xenchan_broker::config::{Config, Mode};
use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::{
    Applied, ApplyResult, Body, ConfigPush, ErrorCode, ErrorReport, GuestFacts, Hello,
};
use xenchan_protocol::session::SessionRules;
use xenchan_protocol::{Envelope, FrameCodec, ItemResult, ItemStatus, Role, Verdict};

/// Default deadline for conditions in tests: generous for a loaded 2-core machine, and
/// only ever reached when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, or panics naming `what` at the deadline.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the guest behind the socket behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// A well-behaved agent.
    Agent,
    /// Reads everything, answers nothing.
    Silent,
    /// Floods lines of garbage (noise, AT commands, broken frames) as fast as the broker
    /// reads, and answers nothing.
    Garbage,
    /// Sends this many bytes without a newline, then stays silent.
    NoDelimiter(usize),
    /// Speaks the protocol correctly and floods (issue 18): answers the broker's hello,
    /// then sends valid `result` frames (for the last generation pushed, else 1),
    /// `facts` frames (a new hostname each time, so none is a repeat) and `error` frames
    /// (a new message each time) as fast as the socket takes them. `hostile_bytes` counts the frames sent.
    Flood,
}

/// What the agent says about itself.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Behaviour.
    pub behaviour: Behaviour,
    /// The UUID in its hello.
    pub uuid: Option<String>,
    /// The channel in its hello.
    pub channel: String,
    /// Versions it speaks (None: says nothing, i.e. 1).
    pub versions: Option<Vec<u32>>,
    /// Items it reports as failed.
    pub fail_items: Vec<String>,
    /// Items it reports as unsupported (reason: "no network manager found").
    pub unsupported_items: Vec<String>,
    /// What it has applied before the first connection (its state file).
    pub applied: Option<Applied>,
    /// Send a stale beacon (no session) right after a connection is accepted.
    pub beacon_first: bool,
    /// The agent instance in its hellos (`None`: an agent that predates the field).
    pub instance: Option<String>,
    /// Instances of the successive answers in one connection (the last one repeats),
    /// overriding `instance`: a change plays an agent that restarted between answers.
    pub answer_instances: Vec<String>,
    /// Plays a slow channel: beacon (every 200 ms) and leave the broker's hellos unread
    /// until this many have arrived, then answer each of them, in order, as an agent
    /// reading them late does. 0 or 1: answer each hello at once.
    pub answer_after_hellos: usize,
    /// Plays a slow guest: read at most this many bytes per interval from the socket
    /// (what QEMU does when the guest drains its 1 KiB console ring slowly).
    pub read_rate: Option<(usize, Duration)>,
    /// Plays a guest that stops reading: after answering its first hello, nothing more
    /// is read (the connection stays open).
    pub deaf_after_hello: bool,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            behaviour: Behaviour::Agent,
            uuid: None,
            channel: xenchan_protocol::DEFAULT_CHANNEL.to_string(),
            versions: Some(vec![1]),
            fail_items: Vec::new(),
            unsupported_items: Vec::new(),
            applied: None,
            beacon_first: false,
            instance: None,
            answer_instances: Vec::new(),
            answer_after_hellos: 0,
            read_rate: None,
            deaf_after_hello: false,
        }
    }
}

/// What the peer has seen and done.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Connections accepted.
    pub connections: u32,
    /// Connections open now.
    pub open: u32,
    /// Most connections open at once.
    pub max_open: u32,
    /// Broker hellos received (each new session).
    pub hellos: Vec<Hello>,
    /// Configs received.
    pub configs: Vec<ConfigPush>,
    /// Errors received from the broker.
    pub errors: Vec<ErrorReport>,
    /// Byes received.
    pub byes: u32,
    /// Pings received.
    pub pings: u32,
    /// Results sent.
    pub results: u32,
    /// What the agent has applied (kept across connections, like its state file).
    pub applied: Option<Applied>,
    /// Bytes of hostile output written.
    pub hostile_bytes: u64,
}

#[derive(Debug)]
struct PeerState {
    /// Descriptors of the connections accepted and not yet seen closed, by id.
    live: Mutex<Vec<(u64, std::os::fd::OwnedFd)>>,
    next_id: std::sync::atomic::AtomicU64,
    record: Mutex<Record>,
    changed: Notify,
    kick: Notify,
    opts: Mutex<PeerOptions>,
}

impl PeerState {
    fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.record.lock().unwrap());
        self.changed.notify_waiters();
    }
}

/// A fake QEMU + agent on `<dir>/<name>.sock`.
#[derive(Debug)]
pub struct TestPeer {
    /// The socket path.
    pub path: PathBuf,
    state: Arc<PeerState>,
    listener: Option<JoinHandle<()>>,
}

impl TestPeer {
    /// Listens on `<dir>/<name>.sock` and serves every connection (concurrently, so that
    /// the test can see if the broker ever opens two).
    pub fn start(dir: &Path, name: &str, opts: PeerOptions) -> TestPeer {
        let path = dir.join(format!("{name}.sock"));
        let applied = opts.applied.clone();
        let state = Arc::new(PeerState {
            live: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
            record: Mutex::new(Record {
                applied,
                ..Record::default()
            }),
            changed: Notify::new(),
            kick: Notify::new(),
            opts: Mutex::new(opts),
        });
        let mut peer = TestPeer {
            path,
            state,
            listener: None,
        };
        peer.listen();
        peer
    }

    fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind test socket");
        let state = Arc::clone(&self.state);
        self.listener = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&state);
                tokio::spawn(serve(stream, st));
            }
        }));
    }

    /// A snapshot of what happened.
    pub fn record(&self) -> Record {
        self.state.record.lock().unwrap().clone()
    }

    /// Changes the behaviour for the next connections.
    pub fn set_options(&self, f: impl FnOnce(&mut PeerOptions)) {
        f(&mut self.state.opts.lock().unwrap());
    }

    /// Waits until `cond` holds on the record.
    pub async fn wait(&self, what: &str, cond: impl Fn(&Record) -> bool) -> Record {
        let end = Instant::now() + DEADLINE;
        loop {
            let notified = self.state.changed.notified();
            {
                let r = self.record();
                if cond(&r) {
                    return r;
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for the peer: {what}; record: {:?}",
                self.record()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Closes every open connection (the broker reads EOF), keeps listening.
    pub fn hang_up(&self) {
        self.state.kick.notify_waiters();
    }

    /// Stops listening and removes the socket file (the broker sees ENOENT).
    pub fn remove(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.hang_up();
        let _ = std::fs::remove_file(&self.path);
    }

    /// Stops listening but leaves the socket file: connects are refused.
    pub fn refuse(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.hang_up();
    }

    /// Listens again (after `remove` or `refuse`).
    pub fn resume(&mut self) {
        self.listen();
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.state.kick.notify_waiters();
    }
}

/// Connects to a listening broker (listen mode) and plays the agent on that connection.
pub async fn connect_as_backend(
    path: &Path,
    opts: PeerOptions,
) -> (Arc<dyn Fn() -> Record + Send + Sync>, JoinHandle<()>) {
    // The socket file exists from bind() on, a moment before listen(): until then a
    // connect is refused, so retry (as a backend would) until the deadline.
    let until = std::time::Instant::now() + DEADLINE;
    let stream = loop {
        match UnixStream::connect(path).await {
            Ok(s) => break s,
            Err(e)
                if std::time::Instant::now() < until
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("connect to the broker's socket: {e}"),
        }
    };
    let state = Arc::new(PeerState {
        live: Mutex::new(Vec::new()),
        next_id: std::sync::atomic::AtomicU64::new(0),
        record: Mutex::new(Record {
            applied: opts.applied.clone(),
            ..Record::default()
        }),
        changed: Notify::new(),
        kick: Notify::new(),
        opts: Mutex::new(opts),
    });
    let st = Arc::clone(&state);
    let task = tokio::spawn(serve(stream, st));
    let st = Arc::clone(&state);
    (Arc::new(move || st.record.lock().unwrap().clone()), task)
}

async fn serve(stream: UnixStream, state: Arc<PeerState>) {
    let id = state
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        use std::os::fd::AsFd;
        // Which connections does the broker still hold, right now? Polled here rather
        // than tracked by each connection's task, so that this peer's own scheduling
        // lag is not taken for a second broker connection.
        let mut live = state.live.lock().unwrap();
        live.retain(|(_, fd)| !broker_closed(fd.as_fd()));
        if !broker_closed(stream.as_fd()) {
            live.push((id, stream.as_fd().try_clone_to_owned().expect("dup")));
        }
        let open = live.len() as u32;
        state.update(|r| {
            r.connections += 1;
            r.open = open;
            r.max_open = r.max_open.max(open);
        });
    }
    let opts = state.opts.lock().unwrap().clone();
    // A second descriptor of the same socket: once the behaviour is over, it tells when
    // the broker really closes its end, so `open` counts the broker's connections
    // exactly (and not this peer's bookkeeping).
    let probe = {
        use std::os::fd::AsFd;
        let fd = stream.as_fd().try_clone_to_owned().expect("dup the socket");
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true).unwrap();
        UnixStream::from_std(std).unwrap()
    };
    let kicked = state.kick.notified();
    tokio::pin!(kicked);
    kicked.as_mut().enable();
    let (read, write) = stream.into_split();
    match opts.behaviour.clone() {
        Behaviour::Agent => {
            tokio::select! {
                () = async {
                    match opts.read_rate {
                        Some((chunk, every)) => {
                            agent(Throttled::new(read, chunk, every), write, &state, &opts).await;
                        }
                        None => agent(read, write, &state, &opts).await,
                    }
                } => {}
                () = &mut kicked => {}
            }
        }
        Behaviour::Silent => {
            let mut frames = FramedRead::new(read, FrameCodec::default());
            tokio::select! {
                () = async { while let Some(Ok(_)) = frames.next().await {} } => {}
                () = &mut kicked => {}
            }
        }
        Behaviour::Garbage => {
            tokio::select! {
                () = garbage(read, write, &state) => {}
                () = &mut kicked => {}
            }
        }
        Behaviour::NoDelimiter(n) => {
            tokio::select! {
                () = no_delimiter(read, write, n, &state) => {}
                () = &mut kicked => {}
            }
        }
        Behaviour::Flood => {
            tokio::select! {
                () = flood(read, write, &state, &opts) => {}
                () = &mut kicked => {}
            }
        }
    }
    wait_for_close(probe).await;
    let open = {
        let mut live = state.live.lock().unwrap();
        live.retain(|(i, _)| *i != id);
        live.len() as u32
    };
    state.update(|r| r.open = open);
}

/// [`Behaviour::Flood`].
async fn flood(
    read: tokio::net::unix::OwnedReadHalf,
    write: tokio::net::unix::OwnedWriteHalf,
    state: &PeerState,
    opts: &PeerOptions,
) {
    let mut frames = FramedRead::new(read, FrameCodec::default());
    let mut out = FramedWrite::new(write, FrameCodec::default());
    let mut rules = SessionRules::new(Role::Agent);
    let mut answers = 0usize;
    // The broker's hello first: a flood is of valid frames in a real session.
    loop {
        let Some(Ok(env)) = frames.next().await else {
            return;
        };
        if matches!(rules.classify(&env), Verdict::NewSession | Verdict::Accept)
            && matches!(env.body, Body::Hello(_))
        {
            if !answer_hello(env, &mut rules, &mut out, state, opts, &mut answers).await {
                return;
            }
            break;
        }
    }
    let session = rules.current().cloned();
    let default = sample_config("flood", "192.0.2.250/24");
    let pushed: Mutex<(u64, xenchan_protocol::Digest, Vec<String>)> =
        Mutex::new((1, default.digest(), default.items()));
    // Reads what the broker sends (pushes, pings), so its writes never block; the
    // flood does not wait for any of it.
    let drain = async {
        while let Some(Ok(env)) = frames.next().await {
            if let Body::Config(push) = env.body {
                state.update(|r| r.configs.push(push.clone()));
                *pushed.lock().unwrap() = (push.generation, push.digest, push.config.items());
            }
        }
    };
    let send = async {
        let mut n: u64 = 0;
        loop {
            let (generation, digest, items) = pushed.lock().unwrap().clone();
            let result = Body::Result(ApplyResult {
                generation,
                digest,
                items: items
                    .into_iter()
                    .map(|i| ItemResult::new(i, ItemStatus::Applied))
                    .collect(),
            });
            let facts = Body::Facts(GuestFacts {
                agent: "test-peer 0".into(),
                os: "Test OS 1".into(),
                kernel: "6.1.0-test".into(),
                hostname: format!("flood-{n}"),
                interfaces: Vec::new(),
                host_keys: Vec::new(),
            });
            // An error report with a new message each time: never a repeat, so each one
            // would be an event row if the broker did not charge it to the writes budget.
            let error = Body::Error(ErrorReport {
                code: ErrorCode::Other,
                message: format!("flood error {n}"),
            });
            for body in [result, facts, error] {
                if out
                    .send(&Envelope::new(Role::Agent, session.clone(), body))
                    .await
                    .is_err()
                {
                    return;
                }
                n += 1;
            }
            state.update(|r| {
                r.results += 1;
                r.hostile_bytes = n;
            });
        }
    };
    tokio::select! {
        () = drain => {}
        () = send => {}
    }
}

/// Whether the broker has closed its end of a connection, now.
fn broker_closed(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // POLLHUP is reported (unasked) once the other end is closed. POLLRDHUP is not asked
    // for: nix cannot decode revents holding a bit it does not name (revents() gives
    // None), which once made every connection look open.
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| {
        n > 0
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    })
}

/// Half-closes (the broker reads EOF) and waits until the broker closes its end.
async fn wait_for_close(mut probe: UnixStream) {
    use tokio::io::AsyncReadExt;
    let _ = probe.shutdown().await;
    let mut buf = [0u8; 4096];
    let end = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(end, probe.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

async fn agent<R: tokio::io::AsyncRead + Unpin>(
    read: R,
    write: tokio::net::unix::OwnedWriteHalf,
    state: &PeerState,
    opts: &PeerOptions,
) {
    let mut frames = FramedRead::new(read, FrameCodec::default());
    let mut out = FramedWrite::new(write, FrameCodec::default());
    let mut rules = SessionRules::new(Role::Agent);
    let mut answers = 0usize;
    if opts.beacon_first {
        let beacon = Envelope::new(Role::Agent, None, Body::Hello(hello(opts, None)));
        if out.send(&beacon).await.is_err() {
            return;
        }
    }
    if opts.answer_after_hellos > 1 {
        let mut held = Vec::new();
        let mut beacons = tokio::time::interval(Duration::from_millis(200));
        while held.len() < opts.answer_after_hellos {
            tokio::select! {
                f = frames.next() => match f {
                    Some(Ok(env)) => {
                        if env.from == Role::Broker && matches!(env.body, Body::Hello(_)) {
                            held.push(env);
                        }
                    }
                    _ => return,
                },
                _ = beacons.tick() => {
                    let beacon = Envelope::new(Role::Agent, None, Body::Hello(hello(opts, None)));
                    if out.send(&beacon).await.is_err() {
                        return;
                    }
                }
            }
        }
        for env in held {
            if matches!(rules.classify(&env), Verdict::NewSession | Verdict::Accept)
                && !answer_hello(env, &mut rules, &mut out, state, opts, &mut answers).await
            {
                return;
            }
        }
    }
    while let Some(Ok(env)) = frames.next().await {
        let verdict = rules.classify(&env);
        match (verdict, env.body) {
            (Verdict::NewSession | Verdict::Accept, body @ Body::Hello(_)) => {
                let env = Envelope { body, ..env };
                if !answer_hello(env, &mut rules, &mut out, state, opts, &mut answers).await {
                    return;
                }
                if opts.deaf_after_hello {
                    // Keeps the connection, reads nothing more.
                    std::future::pending::<()>().await;
                }
            }
            (Verdict::Accept, Body::Config(push)) => {
                let session = rules.current().cloned();
                state.update(|r| r.configs.push(push.clone()));
                let reply = if push.config.digest() == push.digest {
                    let items = push
                        .config
                        .items()
                        .into_iter()
                        .map(|i| {
                            if opts.fail_items.contains(&i) {
                                ItemResult::failed(i, "refused by the test peer")
                            } else if opts.unsupported_items.contains(&i) {
                                ItemResult {
                                    item: i,
                                    status: ItemStatus::Unsupported,
                                    reason: Some("no network manager found".into()),
                                }
                            } else {
                                ItemResult::new(i, ItemStatus::Applied)
                            }
                        })
                        .collect();
                    state.update(|r| {
                        r.applied = Some(push.applied());
                        r.results += 1;
                    });
                    Body::Result(ApplyResult {
                        generation: push.generation,
                        digest: push.digest,
                        items,
                    })
                } else {
                    Body::Error(ErrorReport {
                        code: ErrorCode::BadConfig,
                        message: "digest mismatch".into(),
                    })
                };
                if out
                    .send(&Envelope::new(Role::Agent, session, reply))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            (Verdict::Accept, Body::Ping { id }) => {
                state.update(|r| r.pings += 1);
                let pong = Envelope::new(Role::Agent, rules.current().cloned(), Body::Pong { id });
                if out.send(&pong).await.is_err() {
                    return;
                }
            }
            (Verdict::Accept, Body::Bye { .. }) => state.update(|r| r.byes += 1),
            (Verdict::Accept, Body::Error(e)) => state.update(|r| r.errors.push(e)),
            _ => {}
        }
    }
}

/// A reader that gives at most `chunk` bytes per `every`.
struct Throttled<R> {
    inner: R,
    chunk: usize,
    every: Duration,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<R> Throttled<R> {
    fn new(inner: R, chunk: usize, every: Duration) -> Self {
        Throttled {
            inner,
            chunk: chunk.max(1),
            every,
            pause: None,
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Throttled<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let mut tmp = vec![0u8; self.chunk.min(buf.remaining())];
        let mut small = tokio::io::ReadBuf::new(&mut tmp);
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(small.filled());
                let every = self.every;
                self.pause = Some(Box::pin(tokio::time::sleep(every)));
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Adopts the session of a broker hello and answers it (hello, then facts). False when
/// the connection is gone.
async fn answer_hello(
    env: Envelope,
    rules: &mut SessionRules,
    out: &mut FramedWrite<tokio::net::unix::OwnedWriteHalf, FrameCodec>,
    state: &PeerState,
    opts: &PeerOptions,
    answers: &mut usize,
) -> bool {
    let Body::Hello(h) = env.body else {
        return true;
    };
    let nonce = env.session.clone().expect("a broker hello has a nonce");
    rules.set_session(nonce.clone());
    state.update(|r| r.hellos.push(h));
    let applied = state.record.lock().unwrap().applied.clone();
    let mut answer = hello(opts, applied);
    if let Some(i) = opts
        .answer_instances
        .get((*answers).min(opts.answer_instances.len().saturating_sub(1)))
    {
        answer.instance = Some(i.clone());
    }
    *answers += 1;
    let answer = Envelope::new(Role::Agent, Some(nonce.clone()), Body::Hello(answer));
    let facts = Envelope::new(
        Role::Agent,
        Some(nonce),
        Body::Facts(GuestFacts {
            agent: "test-peer 0".into(),
            os: "Test OS 1".into(),
            kernel: "6.1.0-test".into(),
            hostname: "localhost".into(),
            interfaces: Vec::new(),
            host_keys: Vec::new(),
        }),
    );
    out.send(&answer).await.is_ok() && out.send(&facts).await.is_ok()
}

fn hello(opts: &PeerOptions, applied: Option<Applied>) -> Hello {
    Hello {
        versions: opts.versions.clone(),
        channel: opts.channel.clone(),
        domain: None,
        uuid: opts.uuid.clone(),
        software: "test-peer 0".into(),
        applied,
        instance: opts.instance.clone(),
        // A revision-1 agent: no capabilities, the v1 item set.
        capabilities: None,
    }
}

async fn garbage(
    read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    state: &PeerState,
) {
    let drain = async {
        let mut frames = FramedRead::new(read, FrameCodec::default());
        while let Some(Ok(_)) = frames.next().await {}
    };
    let flood = async {
        let chunk: Vec<u8> = {
            let mut c = Vec::new();
            for i in 0..64 {
                c.extend_from_slice(b"AT+CGMI\r\n\x1b[0m login: \n\0\0\xff\xfe\n");
                c.extend_from_slice(b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"nope\"}\n");
                c.extend_from_slice(
                    b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"hello\",\"channel\":\"x\"",
                );
                c.extend_from_slice(format!("{i}\n").as_bytes());
            }
            c
        };
        loop {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
            state.update(|r| r.hostile_bytes += chunk.len() as u64);
        }
    };
    tokio::select! {
        () = drain => {}
        () = flood => {}
    }
}

async fn no_delimiter(
    read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    total: usize,
    state: &PeerState,
) {
    let drain = async {
        let mut frames = FramedRead::new(read, FrameCodec::default());
        while let Some(Ok(_)) = frames.next().await {}
    };
    let send = async {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if write.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
            state.update(|r| r.hostile_bytes = sent as u64);
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = drain => {}
        () = send => {}
    }
}

/// A configuration for tests: a hostname, one address on one Xen MAC, one user's key.
pub fn sample_config(hostname: &str, address: &str) -> GuestConfig {
    let doc = format!(
        r#"{{"hostname":"{hostname}",
            "network":{{"version":2,"ethernets":{{"eth0":{{
                "match":{{"macaddress":"00:16:3e:00:00:01"}},
                "addresses":["{address}"],
                "routes":[{{"to":"default","via":"192.0.2.1"}}],
                "nameservers":{{"addresses":["192.0.2.53"]}}}}}}}},
            "users":[{{"name":"cloud","ssh_authorized_keys":["{KEY}"]}}]}}"#
    );
    GuestConfig::from_json(doc.as_bytes()).expect("a valid sample config")
}

/// A valid ed25519 public key.
pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@xenchan";

/// Temp folders for one broker.
#[derive(Debug)]
pub struct Dirs {
    /// The root (removed on drop).
    pub root: tempfile::TempDir,
}

impl Dirs {
    /// New temp folders.
    pub fn new() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("xc")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(root.path().join("sockets")).unwrap();
        std::fs::create_dir_all(root.path().join("hooks")).unwrap();
        Dirs { root }
    }

    /// The socket folder.
    pub fn sockets(&self) -> PathBuf {
        self.root.path().join("sockets")
    }

    /// The hooks folder.
    pub fn hooks(&self) -> PathBuf {
        self.root.path().join("hooks")
    }

    /// A broker configuration over these folders with short timeouts.
    pub fn config(&self) -> Config {
        let mut c = Config {
            socket_dir: self.sockets(),
            control_socket: self.root.path().join("broker.sock"),
            state_dir: self.root.path().join("state"),
            hooks_dir: self.hooks(),
            registry_dir: self.root.path().join("registry.d"),
            mode: Mode::Connect,
            ..Config::default()
        };
        c.timeouts.connect = 1000;
        c.timeouts.hello = 2000;
        c.timeouts.result = 3000;
        c.timeouts.keepalive = 300;
        c.timeouts.hook = 3000;
        c.timeouts.reconnect_min = 20;
        c.timeouts.reconnect_max = 200;
        c.timeouts.request = 10_000;
        c.timeouts.shutdown = 1000;
        c
    }

    /// Writes an executable hook script.
    pub fn hook(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.hooks().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A broker running in this process.
#[derive(Debug)]
pub struct TestBroker {
    /// Its client.
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), xenchan_broker::BrokerError>>>,
}

impl TestBroker {
    /// Starts a broker with `config` and waits until its API answers.
    pub async fn start(config: Config) -> TestBroker {
        let client = Client::new(&config.control_socket).with_timeout(Duration::from_secs(10));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(xenchan_broker::run(config, async move {
            let _ = rx.await;
        }));
        let b = TestBroker {
            client,
            stop: Some(tx),
            task: Some(task),
        };
        let c = b.client.clone();
        wait_until("the broker's API", DEADLINE, || {
            let c = c.clone();
            async move { c.health().await.ok() }
        })
        .await;
        b
    }

    /// Stops it gracefully and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), xenchan_broker::BrokerError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let t = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("the broker stops in time")
            .expect("the broker task does not panic")
    }

    /// Waits until the API shows `name` satisfying `cond`.
    pub async fn wait_domain(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&xenchan_broker::api::types::DomainView) -> bool,
    ) -> xenchan_broker::api::types::DomainView {
        let c = self.client.clone();
        let cond = &cond;
        wait_until(&format!("{name}: {what}"), DEADLINE, || {
            let c = c.clone();
            async move { c.get_domain(name).await.ok().filter(|v| cond(v)) }
        })
        .await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Reads `VmRSS` and `VmHWM` (KiB) of a process from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Writes `config` as TOML for a child broker.
pub fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let p = dir.join("broker.toml");
    std::fs::write(&p, config.to_toml()).unwrap();
    p
}
