//! 100 MB of random bytes with valid messages interleaved, read through tokio's
//! `FramedRead` as the broker and agent read a channel: exactly the valid messages come
//! out, in order, and the read buffer stays bounded by the frame limit the whole time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::FramedRead;
use xenchan_protocol::message::{Body, Envelope, Role};
use xenchan_protocol::{FrameCodec, Nonce};

const TOTAL: usize = 100 * 1024 * 1024;
const MAX_FRAME: usize = 64 * 1024;

/// Generates the stream on the fly (so the test itself does not hold 100 MB): random
/// bytes, now and then a run of up to 1 MiB with no newline at all (a flooding guest),
/// and between them the messages of `sent`, each on its own line.
struct Soup {
    rng: SmallRng,
    produced: usize,
    pending: Vec<u8>,
    next_id: u64,
    sent: Vec<Envelope>,
}

impl Soup {
    fn new(seed: u64) -> Self {
        Soup {
            rng: SmallRng::seed_from_u64(seed),
            produced: 0,
            pending: Vec::new(),
            next_id: 0,
            sent: Vec::new(),
        }
    }

    fn refill(&mut self) {
        let codec = FrameCodec::default();
        match self.rng.gen_range(0..100) {
            // A message, preceded by a newline so noise before it ends its own line.
            0..=9 => {
                let msg = Envelope::new(
                    Role::Broker,
                    Some(Nonce::from_bytes([3; 16])),
                    Body::Ping { id: self.next_id },
                );
                self.next_id += 1;
                self.pending.push(b'\n');
                self.pending.extend(codec.encode_line(&msg).unwrap());
                self.sent.push(msg);
            }
            // A flood without newline.
            10 => {
                let n = self.rng.gen_range(MAX_FRAME..1024 * 1024);
                self.pending.resize(n, 0);
                self.rng.fill_bytes(&mut self.pending);
                for b in &mut self.pending {
                    if *b == b'\n' {
                        *b = b'x';
                    }
                }
            }
            // Plain random bytes (about one newline in 256).
            _ => {
                let n = self.rng.gen_range(1..64 * 1024);
                self.pending.resize(n, 0);
                self.rng.fill_bytes(&mut self.pending);
            }
        }
    }
}

impl AsyncRead for Soup {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.produced >= TOTAL {
            return Poll::Ready(Ok(()));
        }
        if self.pending.is_empty() {
            self.refill();
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.produced += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn hundred_megabytes_of_noise_yield_exactly_the_messages_with_bounded_memory() {
    let mut framed = FramedRead::new(Soup::new(0x5eed), FrameCodec::new(MAX_FRAME));
    let mut got = Vec::new();
    let mut max_capacity = 0;
    while let Some(item) = framed.next().await {
        got.push(item.expect("decoding never fails on content"));
        max_capacity = max_capacity.max(framed.read_buffer().capacity());
    }
    max_capacity = max_capacity.max(framed.read_buffer().capacity());
    let stats = framed.decoder().stats();
    let soup = framed.into_inner();
    assert!(soup.produced >= TOTAL);
    assert!(
        soup.sent.len() > 100,
        "the stream carried {} messages",
        soup.sent.len()
    );
    assert_eq!(got.len(), soup.sent.len(), "stats: {stats:?}");
    assert!(got == soup.sent, "messages differ from what was sent");
    assert!(
        stats.oversize > 0,
        "the floods were skipped as oversize lines"
    );
    // FramedRead grows its buffer in steps; what our decoder keeps is at most one frame,
    // so the buffer can never need more than twice the bound plus one read.
    let bound = 2 * (MAX_FRAME + 8 * 1024);
    assert!(
        max_capacity <= bound,
        "read buffer reached {max_capacity} bytes (bound {bound})"
    );
    eprintln!(
        "100 MB: {} messages, {} lines skipped ({} oversize), max buffer {} KiB",
        got.len(),
        stats.skipped(),
        stats.oversize,
        max_capacity / 1024
    );
}
