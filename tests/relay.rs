//! A channel backend for end-to-end tests in which the test decides when the guest gets
//! the broker's bytes: what QEMU does for a channel (listen on `<vm>.sock`, move bytes
//! between the broker and the guest's tty, a pty here), with a gate on the host-to-guest
//! direction. A closed gate is a slow channel taken to the extreme: the broker's frames
//! pile up, whole, in order, until the test opens it. Guest-to-host bytes always flow.
//!
//! Every frame is decoded with the protocol's own codec (through the simulator's
//! [`Tap`]) as it is sent by the broker, as it reaches the guest, and as the guest writes
//! it, so a test can count config frames and read the agent's hellos.

// tokio's `AsyncFd::register` is unsafe (the caller vouches that the descriptor stays
// open and the same while registered): the pty master `File` is moved into the
// `AsyncFd` and never taken out. That is the one unsafe call.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use xenchan_protocol::message::{ConfigPush, Hello};
use xenchan_protocol::{Body, Envelope, Role};
use xenchan_sim::tap::{Dir, Tap};

/// What the gate lets through to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every line, as it comes.
    Open,
    /// Nothing: lines wait, in order.
    Closed,
    /// Lines until the next config frame; that one and everything after waits (the gate
    /// is closed from then on).
    CloseAtConfig,
}

/// What the relay has seen. [`Dir::ToGuest`] events of [`State::sent`] are the broker's
/// frames as it sent them; [`Dir::ToHost`] ones are what the guest wrote.
#[derive(Debug)]
pub struct State {
    gate: Gate,
    /// Whole lines from the broker not given to the guest yet, with the message type of
    /// the frame each holds (if any).
    held: VecDeque<(Vec<u8>, Option<&'static str>)>,
    /// The broker's bytes of a line not complete yet.
    partial: Vec<u8>,
    /// Decodes each whole line on its own, to know what it is.
    probe: Tap,
    /// The broker's frames as sent, and the guest's as written.
    pub sent: Tap,
    /// The broker's frames as given to the guest.
    pub delivered: Tap,
    /// Broker connections accepted.
    pub connections: u32,
}

fn kind_of(body: &Body) -> &'static str {
    body.kind()
}

impl State {
    /// The broker's frames, as sent, that `pred` accepts.
    pub fn sent_by_broker(&self, pred: impl Fn(&Envelope) -> bool) -> usize {
        self.sent
            .count(|e| e.dir == Dir::ToGuest && e.msg.from == Role::Broker && pred(&e.msg))
    }

    /// Broker hellos sent so far.
    pub fn broker_hellos(&self) -> usize {
        self.sent_by_broker(|m| matches!(m.body, Body::Hello(_)))
    }

    /// Config frames the broker sent.
    pub fn configs_sent(&self) -> Vec<ConfigPush> {
        self.sent
            .events()
            .filter(|e| e.dir == Dir::ToGuest && e.msg.from == Role::Broker)
            .filter_map(|e| match &e.msg.body {
                Body::Config(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Config frames given to the guest.
    pub fn configs_delivered(&self) -> usize {
        self.delivered
            .count(|e| e.msg.from == Role::Broker && e.config_generation().is_some())
    }

    /// The agent's answers to broker hellos (hellos with a session), in order.
    pub fn agent_answers(&self) -> Vec<Hello> {
        self.sent
            .events()
            .filter(|e| {
                e.dir == Dir::ToHost && e.msg.from == Role::Agent && e.msg.session.is_some()
            })
            .filter_map(|e| match &e.msg.body {
                Body::Hello(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// Lines waiting at the gate.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether a config frame waits at the gate.
    pub fn holds_a_config(&self) -> bool {
        self.held.iter().any(|(_, k)| *k == Some("config"))
    }

    fn broker_wrote(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let before = self.probe.count(|_| true);
            self.probe.record(Dir::ToGuest, &line);
            let kind = if self.probe.count(|_| true) > before {
                self.probe.events().last().map(|e| kind_of(&e.msg.body))
            } else {
                None
            };
            self.sent.record(Dir::ToGuest, &line);
            self.held.push_back((line, kind));
        }
    }

    /// The next line the gate lets through, recorded as delivered.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let (_, kind) = self.held.front()?;
        match self.gate {
            Gate::Closed => return None,
            Gate::CloseAtConfig if *kind == Some("config") => {
                self.gate = Gate::Closed;
                return None;
            }
            Gate::Open | Gate::CloseAtConfig => {}
        }
        let (line, _) = self.held.pop_front()?;
        self.delivered.record(Dir::ToGuest, &line);
        Some(line)
    }
}

struct Shared {
    state: Mutex<State>,
    /// Something was recorded (for waits).
    changed: Notify,
    /// The gate or the held lines changed (for the relay's loop).
    kick: Notify,
}

/// A running relay: a unix socket the broker connects to, a pty whose slave the agent
/// opens as its channel device.
pub struct Relay {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    socket: PathBuf,
    device: PathBuf,
    /// Kept open so the pty outlives the agent's opens and closes (a master whose slave
    /// nobody has open reads EIO).
    _slave: OwnedFd,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("socket", &self.socket)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The deadline of every wait on a relay (generous for a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(30);

impl Relay {
    /// Listens on `socket` and opens the pty, with the gate as given. Must run inside a
    /// tokio runtime.
    pub fn start(socket: &Path, gate: Gate) -> io::Result<Relay> {
        let pty = nix::pty::openpty(None, None)?;
        let device = nix::unistd::ttyname(&pty.slave)?;
        let fd = pty.master.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the File owns the master descriptor and is moved into the AsyncFd, never
        // to be taken out, so the descriptor stays open and the same while registered.
        let master =
            unsafe { AsyncFd::register(File::from(pty.master)) }.map_err(|e| e.into_parts().1)?;
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                gate,
                held: VecDeque::new(),
                partial: Vec::new(),
                probe: Tap::default(),
                sent: Tap::default(),
                delivered: Tap::default(),
                connections: 0,
            }),
            changed: Notify::new(),
            kick: Notify::new(),
        });
        let task = tokio::spawn(run(listener, master, Arc::clone(&shared)));
        Ok(Relay {
            shared,
            task,
            socket: socket.to_path_buf(),
            device,
            _slave: pty.slave,
        })
    }

    /// The pty slave: the agent's `--device`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Looks at what the relay has seen.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.state.lock().unwrap())
    }

    /// Sets the gate.
    pub fn set_gate(&self, gate: Gate) {
        self.shared.state.lock().unwrap().gate = gate;
        self.shared.kick.notify_one();
    }

    /// Throws away the lines waiting at the gate (the guest never gets them); returns how
    /// many there were.
    pub fn drop_held(&self) -> usize {
        let mut st = self.shared.state.lock().unwrap();
        let n = st.held.len();
        st.held.clear();
        n
    }

    /// Waits until `cond` holds, or panics naming `what` after [`WAIT`].
    pub async fn wait(&self, what: &str, cond: impl Fn(&State) -> bool) {
        let end = Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            if self.with(&cond) {
                return;
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {WAIT:?} waiting for {what}"
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn read_opt(r: &mut Option<OwnedReadHalf>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(listener: UnixListener, master: AsyncFd<File>, shared: Arc<Shared>) {
    let mut client_r: Option<OwnedReadHalf> = None;
    let mut client_w: Option<OwnedWriteHalf> = None;
    // Guest output while no broker is connected, handed to the next one (QEMU does so).
    let mut for_host: Vec<u8> = Vec::new();
    // The line being written into the tty.
    let mut out: Vec<u8> = Vec::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut mbuf = vec![0u8; 16 * 1024];
    loop {
        if out.is_empty()
            && let Some(line) = shared.state.lock().unwrap().next_line()
        {
            out = line;
            shared.changed.notify_waiters();
        }
        let kicked = shared.kick.notified();
        tokio::select! {
            accepted = listener.accept(), if client_r.is_none() => {
                let Ok((stream, _)) = accepted else { continue };
                let (r, mut w) = stream.into_split();
                if !for_host.is_empty() && w.write_all(&for_host).await.is_ok() {
                    for_host.clear();
                }
                client_r = Some(r);
                client_w = Some(w);
                shared.state.lock().unwrap().connections += 1;
                shared.changed.notify_waiters();
            }
            n = read_opt(&mut client_r, &mut cbuf) => match n {
                Ok(0) | Err(_) => {
                    client_r = None;
                    client_w = None;
                }
                Ok(n) => {
                    shared.state.lock().unwrap().broker_wrote(&cbuf[..n]);
                    shared.changed.notify_waiters();
                }
            },
            ready = master.readable() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|f| f.get_ref().read(&mut mbuf)) {
                    Ok(Ok(n)) if n > 0 => {
                        let bytes = &mbuf[..n];
                        shared.state.lock().unwrap().sent.record(Dir::ToHost, bytes);
                        shared.changed.notify_waiters();
                        let sent = match client_w.as_mut() {
                            Some(w) => w.write_all(bytes).await.is_ok(),
                            None => false,
                        };
                        if !sent {
                            for_host.extend_from_slice(bytes);
                        }
                    }
                    // EIO (no slave open) cannot happen while the relay holds one; EOF
                    // neither. Anything else: the pty is gone.
                    Ok(_) => return,
                    Err(_would_block) => {}
                }
            }
            ready = master.writable(), if !out.is_empty() => {
                let Ok(mut guard) = ready else { return };
                match guard.try_io(|f| f.get_ref().write(&out)) {
                    Ok(Ok(n)) => {
                        out.drain(..n);
                    }
                    Ok(Err(_)) => return,
                    Err(_would_block) => {}
                }
            }
            () = kicked => {}
        }
    }
}
