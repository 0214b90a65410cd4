//! Guest-side actors that write into the hvc device next to the agent: a modem prober and
//! console noise (a noisy guest), and floods of junk, giant lines and fake beacons (a
//! hostile guest). They write only: what the host sends stays for the agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xenchan_protocol::message::{Body, Hello};
use xenchan_protocol::{Envelope, FrameCodec, Role};

use crate::guest_tty::GuestTty;

/// What an actor writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ModemManager-style AT probes and console lines, every `interval`, until stopped.
    Noisy {
        /// Time between writes.
        interval: Duration,
    },
    /// As fast as the tty takes it, `budget` bytes in all: a giant line without newline,
    /// fake agent beacons, invalid UTF-8 and NULs, deep JSON, marker soup.
    Hostile {
        /// Bytes to write in all.
        budget: u64,
    },
}

/// A running actor; stop it with [`Actor::stop`] (it also stops when the budget is spent).
#[derive(Debug)]
pub struct Actor {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Actor {
    /// Starts writing into `device` (the guest's hvc path).
    pub fn start(device: PathBuf, kind: Kind) -> Actor {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&written));
        let thread = std::thread::spawn(move || {
            let mut tty = GuestTty::open(&device)?;
            match kind {
                Kind::Noisy { interval } => noisy(&mut tty, interval, &s, &w),
                Kind::Hostile { budget } => hostile(&mut tty, budget, &s, &w),
            }
        });
        Actor {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Whether it finished (budget spent, stopped, or failed).
    pub fn finished(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Stops it and returns how it ended.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(std::io::Error::other)?
                .unwrap_or_else(|_| Err(std::io::Error::other("noise thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Lines a noisy guest writes, in turn.
const NOISE: &[&[u8]] = &[
    b"AT\r",
    b"ATZ\r\n",
    b"AT+GCAP\r\n",
    b"ATE0\r",
    b"AT+CGMI\r\n",
    b"[   12.345678] random: crng init done\r\n",
    b"\r\nDebian GNU/Linux 12 guest hvc1\r\n\r\nguest login: ",
    b"+++",
    b"\x1b[2J\x1b[H",
    b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"pong\",\"id\":1,\"crc\":\"00000000\"}\n",
];

fn noisy(
    tty: &mut GuestTty,
    interval: Duration,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let line = NOISE[i % NOISE.len()];
        tty.write_all(line)?;
        written.fetch_add(line.len() as u64, Ordering::Relaxed);
        i += 1;
        std::thread::sleep(interval);
    }
    Ok(())
}

fn hostile(
    tty: &mut GuestTty,
    budget: u64,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let codec = FrameCodec::default();
    let beacon = |n: u64| {
        let hello = Hello {
            versions: Some(vec![1, 2, 99]),
            channel: "org.xenchan.agent.1".into(),
            uuid: Some(format!("00000000-0000-4000-8000-{n:012x}")),
            software: "hostile".into(),
            ..Hello::default()
        };
        codec
            .encode_line(&Envelope::new(Role::Agent, None, Body::Hello(hello)))
            .unwrap_or_default()
    };
    let mut giant = Vec::with_capacity(64 * 1024);
    while giant.len() < 64 * 1024 {
        giant.extend_from_slice(
            b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"hello\",\"channel\":\"",
        );
        giant.extend_from_slice(&[b'A'; 200]);
    }
    let deep: Vec<u8> = [&b"{\"xenchan\":1,\"x\":"[..], &[b'['; 4000], b"\n"].concat();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let start = Instant::now();
    let mut n = 0u64;
    let mut total = 0u64;
    while total < budget && !stop.load(Ordering::Relaxed) {
        let chunk: Vec<u8> = match n % 8 {
            // A line far past any frame bound: 64 KiB pieces with no newline, 1 MiB each time.
            0 => {
                for _ in 0..16 {
                    tty.write_all(&giant)?;
                    total += giant.len() as u64;
                }
                b"\n".to_vec()
            }
            1..=3 => (0..50).flat_map(|k| beacon(n * 50 + k)).collect(),
            4 => deep.clone(),
            5 => junk.clone(),
            6 => b"\0\0\0\xff\xfe\xfd AT\r\nATZ\r\n{\"xenchan\":{\"xenchan\":{\"xenchan\":\n"
                .to_vec(),
            _ => [&beacon(n)[..beacon(n).len() - 12], b"\n"].concat(),
        };
        tty.write_all(&chunk)?;
        total += chunk.len() as u64;
        written.store(total, Ordering::Relaxed);
        n += 1;
    }
    tracing::info!(
        bytes = total,
        secs = start.elapsed().as_secs_f64(),
        "hostile flood done"
    );
    Ok(())
}
