//! QEMU's guest-output buffer: bounded, and past the bound the middle is discarded.
//!
//! Xen's console backends keep what the guest wrote until a client reads it, up to the
//! frontend's `limit` (1 MiB); past it they keep the oldest half and the newest bytes and
//! drop what lies between. While no broker is connected everything the guest writes waits
//! here and reaches the next broker stale.

use std::collections::VecDeque;

/// QEMU's default `limit` for a channel.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// Bytes the guest wrote that no client has read yet.
#[derive(Debug)]
pub struct HoldBuffer {
    /// The oldest bytes, kept whole up to half the limit.
    head: VecDeque<u8>,
    /// The newest bytes; its front is dropped when the total passes the limit.
    tail: VecDeque<u8>,
    limit: usize,
    dropped: u64,
}

impl HoldBuffer {
    /// An empty buffer holding at most `limit` bytes (at least 2).
    pub fn new(limit: usize) -> Self {
        HoldBuffer {
            head: VecDeque::new(),
            tail: VecDeque::new(),
            limit: limit.max(2),
            dropped: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes discarded from the middle so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends what the guest wrote, discarding the middle if the bound is passed.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.tail.is_empty() {
            let room = (self.limit / 2).saturating_sub(self.head.len());
            let take = room.min(data.len());
            self.head.extend(&data[..take]);
            data = &data[take..];
        }
        // Only the last `limit` bytes of a huge write can survive anyway.
        let keep = self.limit.saturating_sub(self.head.len());
        if data.len() > keep {
            self.dropped += (data.len() - keep) as u64;
            data = &data[data.len() - keep..];
        }
        self.tail.extend(data);
        let excess = self.len().saturating_sub(self.limit);
        if excess > 0 {
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The next contiguous bytes to send (empty when nothing is held).
    pub fn chunk(&self) -> &[u8] {
        if self.head.is_empty() {
            self.tail.as_slices().0
        } else {
            self.head.as_slices().0
        }
    }

    /// Forgets the first `n` bytes of [`chunk`](Self::chunk) (they were sent).
    pub fn consume(&mut self, n: usize) {
        if self.head.is_empty() {
            self.tail.drain(..n);
        } else {
            self.head.drain(..n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(h: &mut HoldBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while !h.is_empty() {
            let c = h.chunk().to_vec();
            h.consume(c.len());
            out.extend(c);
        }
        out
    }

    #[test]
    fn keeps_everything_under_the_limit_in_order() {
        let mut h = HoldBuffer::new(16);
        h.push(b"hello ");
        h.push(b"world");
        assert_eq!(drain(&mut h), b"hello world");
        assert_eq!(h.dropped(), 0);
    }

    #[test]
    fn discards_the_middle_past_the_limit() {
        let mut h = HoldBuffer::new(10);
        h.push(b"AAAAA");
        h.push(b"bbbbbbbbbb");
        h.push(b"ZZZZZ");
        assert_eq!(h.len(), 10);
        assert_eq!(drain(&mut h), b"AAAAAZZZZZ");
        assert_eq!(h.dropped(), 10);
    }

    #[test]
    fn a_huge_write_keeps_head_and_newest_bytes() {
        let mut h = HoldBuffer::new(8);
        let data: Vec<u8> = (0..100u8).collect();
        h.push(&data);
        assert_eq!(drain(&mut h), [0, 1, 2, 3, 96, 97, 98, 99]);
        assert_eq!(h.dropped(), 92);
    }

    #[test]
    fn partial_consumption_then_more_data() {
        let mut h = HoldBuffer::new(8);
        h.push(b"abcd");
        h.consume(2);
        h.push(b"efgh");
        h.push(b"ij");
        assert_eq!(drain(&mut h), b"cdefghij");
    }
}
