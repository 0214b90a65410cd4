//! What QEMU does for one channel of one domain: listen on `<socket_dir>/<vm>.sock`
//! (backlog 1, one client at a time) and move bytes between that client and the guest's
//! console ring, with the channel's traits reproduced on purpose:
//!
//! - host to guest goes through a 1 KiB window: the bridge reads from the client only what
//!   fits in its ring and moves it into the tty only while the guest has less than the
//!   window unread, so a guest that does not read pushes back on the broker;
//! - guest to host is always drained (a guest never blocks) into a [`HoldBuffer`]: while
//!   no client is connected it is held, bounded, and handed stale to the next client;
//! - a second client's connect is accepted by the kernel's backlog but not served until
//!   the first goes away; what it wrote meanwhile reaches the guest later;
//! - stopping the backend (domain destroyed or rebooting) gives the client EOF and
//!   removes the socket file.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::hold::{self, HoldBuffer};
use crate::pty::Pty;
use crate::tap::{Dir, Tap};

/// The PV console ring's size host-to-guest (`XENCONS_RING_SIZE` in); also the most the
/// guest may hold unread before the bridge stops feeding it.
pub const RING_WINDOW: usize = 1024;

/// The longest unix socket path (sun_path is 108 bytes, NUL included).
pub const MAX_SOCKET_PATH: usize = 107;

/// How one channel's backend behaves.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Where to listen (`<socket_dir>/<vm>.sock`).
    pub socket_path: PathBuf,
    /// Host-to-guest window in bytes.
    pub window: usize,
    /// Guest-to-host buffer bound (QEMU's `limit`).
    pub hold_limit: usize,
    /// Host-to-guest bytes per second, to play a slow guest; `None` is as fast as it reads.
    pub rate: Option<u32>,
}

impl BackendConfig {
    /// The defaults of a real channel, listening on `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        BackendConfig {
            socket_path: socket_path.into(),
            window: RING_WINDOW,
            hold_limit: hold::DEFAULT_LIMIT,
            rate: None,
        }
    }
}

/// What can be observed of a channel; shared between its backend task and the domain.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// The wiretap (messages seen from the guest's side).
    pub tap: Tap,
    /// A client (broker) is being served.
    pub connected: bool,
    /// Clients served so far.
    pub connects: u64,
    /// The socket file exists and is listening.
    pub listening: bool,
    /// Guest bytes that waited for a client and were delivered to one, stale.
    pub stale_delivered: u64,
    /// Guest bytes dropped from the middle of the hold buffer (QEMU's `limit`).
    pub held_dropped: u64,
    /// Guest bytes held right now.
    pub held: usize,
}

/// Shared handle on a channel's observable state.
pub type SharedState = Arc<Mutex<ChannelState>>;

enum Command {
    SetRate(Option<u32>),
    GuestClosed,
    /// Serve on another socket from now on (a live migration's switchover).
    Relocate(UnixListener, PathBuf, tokio::sync::oneshot::Sender<()>),
    Stop,
}

/// A running backend (one per boot of a domain).
#[derive(Debug)]
pub struct Backend {
    ctrl: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
    socket_path: PathBuf,
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Dropped without stop(): end the task and leave no socket behind.
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = std::fs::remove_file(&self.socket_path);
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::SetRate(_) => "SetRate",
            Command::GuestClosed => "GuestClosed",
            Command::Relocate(..) => "Relocate",
            Command::Stop => "Stop",
        })
    }
}

/// Tells a backend that the guest's last user of the device closed it.
#[derive(Debug, Clone)]
pub struct GuestCloser(mpsc::UnboundedSender<Command>);

impl GuestCloser {
    /// hvc resets termios on the last close; the backend does the same to its pty.
    pub fn guest_closed(&self) {
        let _ = self.0.send(Command::GuestClosed);
    }
}

/// Creates a listening unix socket with a backlog of one, like QEMU's `server=on`.
pub fn bind_backlog_one(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is {len} bytes; unix sockets allow at most {MAX_SOCKET_PATH}: use a shorter folder",
                path.display()
            ),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &addr)?;
    nix::sys::socket::listen(&fd, Backlog::new(1)?)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

impl Backend {
    /// Starts serving `pty` on `cfg.socket_path`. The socket exists when this returns.
    pub fn spawn(pty: Pty, cfg: BackendConfig, state: SharedState) -> io::Result<Backend> {
        let listener = UnixListener::from_std(bind_backlog_one(&cfg.socket_path)?)?;
        state.lock().unwrap().listening = true;
        let (ctrl, rx) = mpsc::unbounded_channel();
        let socket_path = cfg.socket_path.clone();
        let task = tokio::spawn(run(pty, listener, cfg, state, rx));
        Ok(Backend {
            ctrl,
            task: Some(task),
            socket_path,
        })
    }

    /// Plays a slow guest (bytes per second host to guest), or a normal one with `None`.
    pub fn set_rate(&self, rate: Option<u32>) {
        let _ = self.ctrl.send(Command::SetRate(rate));
    }

    /// The guest's last user of the device closed it (hvc resets its termios).
    pub fn guest_closed(&self) {
        let _ = self.ctrl.send(Command::GuestClosed);
    }

    /// A handle that tells this backend the guest closed its device.
    pub fn closer(&self) -> GuestCloser {
        GuestCloser(self.ctrl.clone())
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// A live migration's switchover: the same guest tty (its ring and unread bytes
    /// included: they are guest memory) is served from now on on `path`, bound before
    /// this returns, while the old socket's client reads EOF and its file goes away, as
    /// when the source's QEMU exits and the destination's takes over. Guest output held
    /// for the old socket's client goes to the new one, stale.
    pub async fn relocate(&mut self, path: &Path) -> io::Result<()> {
        let listener = UnixListener::from_std(bind_backlog_one(path)?)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .ctrl
            .send(Command::Relocate(listener, path.to_path_buf(), tx))
            .is_err()
            || rx.await.is_err()
        {
            let _ = std::fs::remove_file(path);
            return Err(io::Error::other("the channel backend has stopped"));
        }
        self.socket_path = path.to_path_buf();
        Ok(())
    }

    /// Stops like an exiting QEMU: the client reads EOF and the socket file goes away.
    pub async fn stop(mut self) {
        let _ = self.ctrl.send(Command::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// The client being served.
struct Client {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
}

/// Paces host-to-guest bytes into the tty: at most `window` unread by the guest.
///
/// The tty counts new input (`FIONREAD`) only once its flip-buffer worker has run, so
/// bytes just written may not show yet. Rather than pausing after every write, the feeder
/// counts what it wrote in the last `SETTLE` as still in flight on top of what the guest
/// has unread: a write that fits the window beside them goes at once, and only a writer
/// that would overrun the window waits (at most `SETTLE`) for its bytes to show.
struct Feeder {
    window: usize,
    rate: Option<u32>,
    tokens: f64,
    refilled: Instant,
    backoff: Duration,
    /// Bytes written since `last_write`'s settle period began, maybe not counted yet.
    in_flight: usize,
    last_write: Instant,
}

impl Feeder {
    const BACKOFF_MIN: Duration = Duration::from_millis(1);
    const BACKOFF_MAX: Duration = Duration::from_millis(40);
    /// Longer than the tty's worker takes to count written bytes on a loaded machine.
    const SETTLE: Duration = Duration::from_millis(1);

    fn new(window: usize, rate: Option<u32>, now: Instant) -> Feeder {
        Feeder {
            window,
            rate,
            tokens: 0.0,
            refilled: now,
            backoff: Self::BACKOFF_MIN,
            in_flight: 0,
            last_write: now,
        }
    }

    fn in_flight(&self, now: Instant) -> usize {
        if now.duration_since(self.last_write) < Self::SETTLE {
            self.in_flight
        } else {
            0
        }
    }

    /// How many bytes may go into the tty now (0: wait), with `unread` bytes unread by
    /// the guest and `queued` waiting in the ring.
    fn allowance(&mut self, unread: usize, queued: usize, now: Instant) -> usize {
        let mut allow = self
            .window
            .saturating_sub(unread + self.in_flight(now))
            .min(queued);
        if let Some(rate) = self.rate {
            let burst = f64::from(rate.clamp(16, u32::try_from(self.window).unwrap_or(1024)));
            self.tokens = (self.tokens
                + now.duration_since(self.refilled).as_secs_f64() * f64::from(rate))
            .min(burst);
            self.refilled = now;
            allow = allow.min(self.tokens as usize);
        }
        allow
    }

    fn spent(&mut self, n: usize, now: Instant) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
        self.in_flight = self.in_flight(now) + n;
        self.last_write = now;
        self.backoff = Self::BACKOFF_MIN;
    }

    /// How long to wait when the allowance is 0: until the bytes in flight have settled
    /// if that is what blocks, else a growing poll for the guest to read.
    fn blocked(&mut self, now: Instant) -> Duration {
        if self.in_flight(now) > 0 {
            return Self::SETTLE.saturating_sub(now.duration_since(self.last_write));
        }
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(Self::BACKOFF_MAX);
        d
    }
}

async fn run(
    pty: Pty,
    mut listener: UnixListener,
    mut cfg: BackendConfig,
    state: SharedState,
    mut ctrl: mpsc::UnboundedReceiver<Command>,
) {
    let mut client: Option<Client> = None;
    let mut ring: VecDeque<u8> = VecDeque::with_capacity(cfg.window);
    let mut out = HoldBuffer::new(cfg.hold_limit);
    // Bytes at the front of `out` that were written while no client was connected.
    let mut stale = 0usize;
    let mut feeder = Feeder::new(cfg.window, cfg.rate, Instant::now());
    let mut feed_wait: Option<tokio::time::Instant> = None;
    let mut master_pause: Option<tokio::time::Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];

    loop {
        let want_client_read = client.is_some() && ring.len() < cfg.window;
        let want_client_write = client.is_some() && !out.is_empty();
        let want_feed = !ring.is_empty() && feed_wait.is_none();
        tokio::select! {
            cmd = ctrl.recv() => match cmd {
                None | Some(Command::Stop) => break,
                Some(Command::SetRate(rate)) => {
                    feeder.rate = rate;
                    feeder.tokens = 0.0;
                    feeder.refilled = Instant::now();
                }
                Some(Command::GuestClosed) => {
                    if let Err(e) = pty.reset_like_hvc() {
                        tracing::warn!(error = %e, "cannot reset the tty after the guest closed it");
                    }
                }
                Some(Command::Relocate(new, path, done)) => {
                    // The source's QEMU exits: its client reads EOF, its socket goes.
                    disconnect(&mut client, &state);
                    let old = std::mem::replace(&mut listener, new);
                    drop(old);
                    let _ = std::fs::remove_file(&cfg.socket_path);
                    cfg.socket_path = path;
                    let _ = done.send(());
                }
            },
            accepted = listener.accept(), if client.is_none() => match accepted {
                Ok((stream, _)) => {
                    let (r, w) = stream.into_split();
                    client = Some(Client { r, w });
                    stale = out.len();
                    let mut st = state.lock().unwrap();
                    st.connected = true;
                    st.connects += 1;
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            ready = async { client.as_ref().unwrap().r.readable().await }, if want_client_read => {
                let room = cfg.window - ring.len();
                let c = client.as_ref().unwrap();
                let gone = match ready.and_then(|()| c.r.try_read(&mut buf[..room])) {
                    Ok(0) => true,
                    Ok(n) => {
                        ring.extend(&buf[..n]);
                        false
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(_) => true,
                };
                if gone {
                    disconnect(&mut client, &state);
                }
            },
            ready = async { client.as_ref().unwrap().w.writable().await }, if want_client_write => {
                let c = client.as_ref().unwrap();
                match ready.and_then(|()| c.w.try_write(out.chunk())) {
                    Ok(n) => {
                        out.consume(n);
                        let old = n.min(stale);
                        stale -= old;
                        let mut st = state.lock().unwrap();
                        st.stale_delivered += old as u64;
                        st.held = out.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => disconnect(&mut client, &state),
                }
            },
            guard = pty.master().readable(), if master_pause.is_none() => {
                let Ok(mut guard) = guard else { break };
                match guard.try_io(|m| m.get_ref().read(&mut buf)) {
                    Ok(Ok(n)) if n > 0 => {
                        let data = &buf[..n];
                        if client.is_none() {
                            stale += n;
                        }
                        let before = out.dropped();
                        out.push(data);
                        stale = stale.min(out.len());
                        let mut st = state.lock().unwrap();
                        st.tap.record(Dir::ToHost, data);
                        st.held_dropped += out.dropped() - before;
                        st.held = out.len();
                    }
                    Ok(Ok(_) | Err(_)) => {
                        // EIO: no slave open; cannot happen while we hold one, but never spin.
                        master_pause = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                    }
                    Err(_would_block) => {}
                }
            },
            () = sleep_opt(master_pause), if master_pause.is_some() => master_pause = None,
            guard = pty.master().writable(), if want_feed => {
                let Ok(mut guard) = guard else { break };
                let now = Instant::now();
                let unread = pty.guest_unread().unwrap_or(0);
                let allow = feeder.allowance(unread, ring.len(), now);
                if allow == 0 {
                    feed_wait = Some(tokio::time::Instant::now() + feeder.blocked(now));
                    continue;
                }
                let (a, b) = ring.as_slices();
                let chunk: Vec<u8> = a.iter().chain(b).take(allow).copied().collect();
                match guard.try_io(|m| m.get_ref().write(&chunk)) {
                    Ok(Ok(n)) => {
                        ring.drain(..n);
                        // No pause: the feeder counts these bytes as in flight until
                        // the tty shows them (see `Feeder`).
                        feeder.spent(n, Instant::now());
                        state.lock().unwrap().tap.record(Dir::ToGuest, &chunk[..n]);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "write to the guest tty failed");
                        feed_wait = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                    }
                    Err(_would_block) => {}
                }
            },
            () = sleep_opt(feed_wait), if feed_wait.is_some() => feed_wait = None,
        }
    }

    // Like QEMU exiting: the client reads EOF and the socket file goes away.
    drop(client);
    drop(listener);
    let _ = std::fs::remove_file(&cfg.socket_path);
    let mut st = state.lock().unwrap();
    st.connected = false;
    st.listening = false;
    st.held = 0;
}

fn disconnect(client: &mut Option<Client>, state: &SharedState) {
    *client = None;
    state.lock().unwrap().connected = false;
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    if let Some(t) = until {
        tokio::time::sleep_until(t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn feeder_writes_at_once_while_the_window_has_room() {
        let t0 = Instant::now();
        let mut f = Feeder::new(1024, None, t0);
        // (unread by the guest, queued, microseconds since t0) -> allowance, then spent.
        let steps: &[(usize, usize, u64, usize)] = &[
            (0, 731, 0, 731),       // a config frame: goes in one piece, no pause
            (0, 600, 10, 293),      // just written bytes may not show yet: counted in flight
            (0, 307, 20, 0),        // window full with bytes in flight: wait for them to settle
            (0, 307, 1_100, 307),   // settled (and the guest read them): room again
            (900, 500, 3_000, 124), // the guest holds 900 unread: only the rest of the window
        ];
        for &(unread, queued, us, want) in steps {
            let now = t0 + Duration::from_micros(us);
            let got = f.allowance(unread, queued, now);
            assert_eq!(got, want, "unread {unread}, queued {queued}, at {us} us");
            if got > 0 {
                f.spent(got, now);
            }
        }
    }

    #[test]
    fn feeder_waits_only_for_what_blocks_it() {
        let t0 = Instant::now();
        let mut f = Feeder::new(1024, None, t0);
        f.spent(1024, t0);
        let now = t0 + Duration::from_micros(300);
        assert_eq!(f.allowance(0, 10, now), 0);
        // In flight: until the settle period ends, not a fixed back-off.
        assert_eq!(f.blocked(now), Duration::from_micros(700));
        // The guest does not read: back-off grows from 1 ms, capped.
        let later = t0 + 5 * MS;
        assert_eq!(f.allowance(1024, 10, later), 0);
        assert_eq!(f.blocked(later), MS);
        assert_eq!(f.blocked(later), 2 * MS);
        f.spent(1, later);
        assert_eq!(f.backoff, Feeder::BACKOFF_MIN);
    }

    #[test]
    fn feeder_rate_limits_on_top_of_the_window() {
        let t0 = Instant::now();
        let mut f = Feeder::new(1024, Some(1000), t0);
        // 1,000 B/s: 100 ms earn 100 bytes.
        assert_eq!(f.allowance(0, 500, t0 + 100 * MS), 100);
    }
}
