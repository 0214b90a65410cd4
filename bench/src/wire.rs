//! Blocking protocol ends for the measurements: frames over any readable, writable fd
//! (a unix socket to a channel backend, a pty slave) with deadlines, and the broker's
//! side of one session (hello, the agent's hello, config, result) as the latency figures
//! time it.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio_util::codec::Decoder;
use xenchan_protocol::message::{ApplyResult, Body, ConfigPush, Hello};
use xenchan_protocol::session::SessionRules;
use xenchan_protocol::{
    DEFAULT_CHANNEL, Envelope, FrameCodec, GuestConfig, MAX_FRAME_DEFAULT, Nonce, Role,
    SUPPORTED_VERSIONS, Verdict,
};

/// Frames in both directions over `S`, reads bounded by deadlines.
#[derive(Debug)]
pub struct FrameStream<S> {
    io: S,
    codec: FrameCodec,
    buf: BytesMut,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed"))
}

impl<S: Read + Write + AsFd> FrameStream<S> {
    /// Wraps `io` (blocking).
    pub fn new(io: S) -> Self {
        FrameStream {
            io,
            codec: FrameCodec::new(MAX_FRAME_DEFAULT),
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Writes one message.
    pub fn send(&mut self, env: &Envelope) -> io::Result<()> {
        let line = self.codec.encode_line(env).map_err(io::Error::other)?;
        self.io.write_all(&line)
    }

    /// The next message, waiting until `deadline`. EOF is `UnexpectedEof`.
    pub fn next(&mut self, deadline: Instant) -> io::Result<Envelope> {
        loop {
            if let Some(env) = self.codec.decode(&mut self.buf).map_err(io::Error::other)? {
                return Ok(env);
            }
            self.fill(deadline)?;
        }
    }

    fn fill(&mut self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("waiting for a frame"));
        }
        let ms = u16::try_from(left.as_millis().clamp(1, 60_000)).unwrap_or(60_000);
        let mut fds = [PollFd::new(self.io.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match self.io.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Where the time of one session went, from the connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionTimes {
    /// Connect to the agent's hello answer.
    pub handshake: Duration,
    /// Connect to the result.
    pub total: Duration,
}

/// The broker's side of one session over a channel socket: connect, say hello with a
/// fresh nonce, wait for the agent's answer, push `config` as `generation`, wait for the
/// result, say bye. Beacons and stale bytes on the way are skipped as the broker would.
pub fn push_once(
    socket: &Path,
    config: &GuestConfig,
    generation: u64,
    timeout: Duration,
) -> io::Result<(ApplyResult, SessionTimes)> {
    let start = Instant::now();
    let stream = UnixStream::connect(socket)?;
    push_on(stream, start, config, generation, timeout)
}

/// [`push_once`] over a stream that is already there (a pty master: the guest's tty with
/// nothing between); times are counted from `start`.
pub fn push_on<S: Read + Write + AsFd>(
    io: S,
    start: Instant,
    config: &GuestConfig,
    generation: u64,
    timeout: Duration,
) -> io::Result<(ApplyResult, SessionTimes)> {
    let deadline = start + timeout;
    let mut s = FrameStream::new(io);
    let nonce = Nonce::from_bytes(rand::random());
    let mut rules = SessionRules::new(Role::Broker);
    rules.set_session(nonce.clone());
    let hello = Hello {
        versions: Some(SUPPORTED_VERSIONS.to_vec()),
        channel: DEFAULT_CHANNEL.to_string(),
        domain: Some("bench".into()),
        software: "xenchan-bench".into(),
        ..Hello::default()
    };
    let hello = Envelope::new(Role::Broker, Some(nonce.clone()), Body::Hello(hello));
    s.send(&hello)?;
    let mut hello_sent = Instant::now();
    loop {
        let env = s.next(deadline)?;
        match rules.classify(&env) {
            Verdict::Accept if matches!(env.body, Body::Hello(_)) => break,
            // An agent that opened its device after our hello arrived flushed it: it
            // beacons, and gets the hello again (as the broker does, rate-limited).
            Verdict::Beacon if hello_sent.elapsed() >= Duration::from_millis(100) => {
                s.send(&hello)?;
                hello_sent = Instant::now();
            }
            _ => {}
        }
    }
    let handshake = start.elapsed();
    let push = ConfigPush::new(generation, config.clone());
    s.send(&Envelope::new(
        Role::Broker,
        Some(nonce.clone()),
        Body::Config(push),
    ))?;
    let result = loop {
        let env = s.next(deadline)?;
        if rules.classify(&env) != Verdict::Accept {
            continue;
        }
        match env.body {
            Body::Result(r) if r.generation == generation => break r,
            Body::Error(e) => {
                return Err(io::Error::other(format!(
                    "the agent refused the push: {:?} {}",
                    e.code, e.message
                )));
            }
            _ => {}
        }
    };
    let total = start.elapsed();
    let _ = s.send(&Envelope::new(
        Role::Broker,
        Some(nonce),
        Body::Bye {
            reason: "bench iteration done".into(),
        },
    ));
    Ok((result, SessionTimes { handshake, total }))
}

/// A guest that answers at once and applies nothing: the transport's and the protocol's
/// own cost, with no agent work. Serves `io` (a raw pty slave) until `stop` is set.
pub fn null_guest<S: Read + Write + AsFd>(io: S, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut s = FrameStream::new(io);
    let mut rules = SessionRules::new(Role::Agent);
    while !stop.load(Ordering::Relaxed) {
        let env = match s.next(Instant::now() + Duration::from_millis(100)) {
            Ok(env) => env,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        };
        match rules.classify(&env) {
            Verdict::NewSession => {
                let Some(nonce) = env.session.clone() else {
                    continue;
                };
                rules.set_session(nonce.clone());
                let hello = Hello {
                    versions: Some(SUPPORTED_VERSIONS.to_vec()),
                    channel: DEFAULT_CHANNEL.to_string(),
                    software: "null-guest".into(),
                    ..Hello::default()
                };
                let _ = s.send(&Envelope::new(Role::Agent, Some(nonce), Body::Hello(hello)));
            }
            Verdict::Accept => {
                if let Body::Config(push) = env.body {
                    let _ = s.send(&Envelope::new(
                        Role::Agent,
                        env.session,
                        Body::Result(crate::swarm::applied_result(&push)),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// A new pty: its master (this process keeps it) and the slave's path (the guest's tty).
pub fn open_pty() -> io::Result<(std::fs::File, std::path::PathBuf)> {
    use nix::fcntl::OFlag;
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&m)?;
    nix::pty::unlockpt(&m)?;
    let slave = nix::pty::ptsname_r(&m)?;
    let master = std::fs::File::from(m.as_fd().try_clone_to_owned()?);
    Ok((master, slave.into()))
}
