//! A wiretap on a channel, from the guest's side of the ring: every byte the guest
//! receives and every byte it writes is decoded with the protocol's own codec, so tests
//! can say what crossed the channel (a config pushed twice, an echo, a stale result)
//! without trusting either end's logs.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use xenchan_protocol::message::Body;
use xenchan_protocol::{DecodeStats, Envelope, FrameCodec, ItemStatus, Role};

/// Events kept per channel; older ones are dropped (counters keep counting).
pub const MAX_EVENTS: usize = 20_000;

/// Bytes of a line the tap looks into for a message type before the line is complete.
const TYPE_PROBE: usize = 512;

/// Which way bytes crossed the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Host (broker) to guest: what the guest received.
    ToGuest,
    /// Guest to host: what the guest wrote (including the tty's echo of host bytes).
    ToHost,
}

/// One decoded message.
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// When the tap saw its last byte.
    pub at: Instant,
    /// Which way.
    pub dir: Dir,
    /// The boot of the domain (counts reboots) the message crossed in.
    pub boot: u32,
    /// The message.
    pub msg: Envelope,
}

impl TapEvent {
    /// `(generation, digest)` of a config push, if this is one.
    pub fn config_generation(&self) -> Option<(u64, &str)> {
        match &self.msg.body {
            Body::Config(c) => Some((c.generation, c.digest.as_str())),
            _ => None,
        }
    }

    /// The applied generation an agent's hello reports, if this is one.
    pub fn hello_applied(&self) -> Option<(u64, &str)> {
        match &self.msg.body {
            Body::Hello(h) => h
                .applied
                .as_ref()
                .map(|a| (a.generation, a.digest.as_str())),
            _ => None,
        }
    }

    /// Items a result reports as `applied`, with its generation.
    pub fn applied_items(&self) -> Option<(u64, Vec<&str>)> {
        match &self.msg.body {
            Body::Result(r) => Some((
                r.generation,
                r.items
                    .iter()
                    .filter(|i| i.status == ItemStatus::Applied)
                    .map(|i| i.item.as_str())
                    .collect(),
            )),
            _ => None,
        }
    }
}

/// One direction's decoder and the state of its current line.
#[derive(Debug)]
struct Stream {
    codec: FrameCodec,
    buf: BytesMut,
    /// Bytes of the line in progress (since the last newline).
    line_len: usize,
    /// The first bytes of the line in progress.
    line_probe: Vec<u8>,
    bytes: u64,
}

impl Stream {
    fn new() -> Self {
        Stream {
            codec: FrameCodec::default(),
            buf: BytesMut::new(),
            line_len: 0,
            line_probe: Vec::new(),
            bytes: 0,
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<Envelope>) {
        self.bytes += data.len() as u64;
        if let Some(i) = memchr_last_newline(data) {
            self.line_len = data.len() - i - 1;
            self.line_probe.clear();
            let rest = &data[i + 1..];
            self.line_probe
                .extend_from_slice(&rest[..rest.len().min(TYPE_PROBE)]);
        } else {
            self.line_len += data.len();
            let room = TYPE_PROBE.saturating_sub(self.line_probe.len());
            self.line_probe
                .extend_from_slice(&data[..data.len().min(room)]);
        }
        self.buf.extend_from_slice(data);
        // The codec never fails on content; it only bounds and skips.
        while let Ok(Some(env)) = self.codec.decode(&mut self.buf) {
            out.push(env);
        }
    }

    fn partial_of_type(&self, kind: &str) -> usize {
        let needle = format!("\"type\":\"{kind}\"");
        let found = self
            .line_probe
            .windows(needle.len())
            .any(|w| w == needle.as_bytes());
        if found { self.line_len } else { 0 }
    }
}

fn memchr_last_newline(data: &[u8]) -> Option<usize> {
    data.iter().rposition(|&b| b == b'\n')
}

/// The tap of one domain's channel, across its boots.
#[derive(Debug)]
pub struct Tap {
    to_guest: Stream,
    to_host: Stream,
    boot: u32,
    events: VecDeque<TapEvent>,
    dropped_events: u64,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            to_guest: Stream::new(),
            to_host: Stream::new(),
            boot: 0,
            events: VecDeque::new(),
            dropped_events: 0,
        }
    }
}

impl Tap {
    /// Events recorded from now on belong to boot `boot`. The decoders keep their state:
    /// like the broker's, they must cope with a line cut by the reboot.
    pub fn new_boot(&mut self, boot: u32) {
        self.boot = boot;
    }

    /// Records bytes that crossed the ring.
    pub fn record(&mut self, dir: Dir, data: &[u8]) {
        let stream = match dir {
            Dir::ToGuest => &mut self.to_guest,
            Dir::ToHost => &mut self.to_host,
        };
        let mut msgs = Vec::new();
        stream.feed(data, &mut msgs);
        let at = Instant::now();
        for msg in msgs {
            if self.events.len() == MAX_EVENTS {
                self.events.pop_front();
                self.dropped_events += 1;
            }
            self.events.push_back(TapEvent {
                at,
                dir,
                boot: self.boot,
                msg,
            });
        }
    }

    /// The decoded messages, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &TapEvent> {
        self.events.iter()
    }

    /// Bytes so far of a `kind` message (`"config"`) the guest is receiving right now
    /// (0 when the line in progress is not one).
    pub fn partial_to_guest(&self, kind: &str) -> usize {
        self.to_guest.partial_of_type(kind)
    }

    /// Decoder counters per direction: noise, AT commands, oversize lines...
    pub fn stats(&self, dir: Dir) -> DecodeStats {
        match dir {
            Dir::ToGuest => self.to_guest.codec.stats(),
            Dir::ToHost => self.to_host.codec.stats(),
        }
    }

    /// Total bytes seen per direction.
    pub fn bytes(&self, dir: Dir) -> u64 {
        match dir {
            Dir::ToGuest => self.to_guest.bytes,
            Dir::ToHost => self.to_host.bytes,
        }
    }

    /// Messages dropped from the event log because it was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Count of messages matching `pred`.
    pub fn count(&self, pred: impl Fn(&TapEvent) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }

    /// Broker messages the guest echoed back (the tty was not raw yet).
    pub fn echoes(&self) -> usize {
        self.count(|e| e.dir == Dir::ToHost && e.msg.from == Role::Broker)
    }
}

impl Tap {
    /// The decoded messages as text, one per line (`+12.345s boot 1 to-guest broker config
    /// session=... generation=1`), times relative to `since`.
    pub fn transcript(&self, since: Instant) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for e in &self.events {
            let t = e.at.saturating_duration_since(since).as_secs_f64();
            let dir = match e.dir {
                Dir::ToGuest => "to-guest",
                Dir::ToHost => "to-host ",
            };
            let session = e.msg.session.as_ref().map_or_else(
                || "-".to_string(),
                |s| s.as_str()[..8.min(s.as_str().len())].to_string(),
            );
            let detail = match &e.msg.body {
                Body::Hello(h) => format!(
                    "applied={}",
                    h.applied
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |a| a.generation.to_string())
                ),
                Body::Config(c) => format!("generation={}", c.generation),
                Body::Result(r) => format!(
                    "generation={} items={}",
                    r.generation,
                    r.items
                        .iter()
                        .map(|i| format!("{}:{}", i.item, i.status.as_str()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Body::Ping { id } | Body::Pong { id } => format!("id={id}"),
                Body::Bye { reason } => reason.clone(),
                Body::Error(r) => format!("{:?} {}", r.code, r.message),
                Body::Facts(_) => String::new(),
            };
            let _ = writeln!(
                out,
                "+{t:.3}s boot {} {dir} {:<6} {:<6} session={session} {detail}",
                e.boot,
                e.msg.from.to_string(),
                e.msg.kind()
            );
        }
        out
    }
}
