//! Line framing that resynchronises by itself.
//!
//! One JSON object per line. The channel is a raw byte stream with stale bytes, dropped
//! bytes, console noise and AT commands from modem probers, so the decoder never fails on
//! input: it skips what is not a message, counts it, and goes on at the next line. Every
//! frame is bounded; a line longer than the bound is dropped as it streams in, so a peer
//! that never sends a newline cannot make the buffer grow past the bound.
//!
//! Inside one line the decoder starts at the last [`FRAME_MARKER`]: a message that lost
//! its tail (and its newline) followed by a whole message still yields the whole message,
//! and noise glued to the front of a message is cut off. The marker cannot appear inside a
//! JSON string of a valid message because the quote would be escaped.
//!
//! Every frame ends with a CRC-32 of everything before it: `...,"crc":"1a2b3c4d"}`. Without
//! it, a message that lost bytes in the middle of a number (`"id":57` to `"id":5`) and met
//! a stray `}` would parse as a message that was never sent. With it, fragments glued
//! together pass only by a 1 in 2^32 accident.

use bytes::{Buf, BytesMut};
use memchr::memmem;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use crate::message::{Envelope, FRAME_MARKER};

/// Default bound on one frame, newline excluded.
pub const MAX_FRAME_DEFAULT: usize = 64 * 1024;

/// Default bound on JSON nesting (a full v1 message nests 7 deep).
pub const MAX_DEPTH_DEFAULT: usize = 16;

/// What the decoder skipped, by reason. Monotonic counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Messages decoded.
    pub frames: u64,
    /// Lines that looked like modem AT commands.
    pub at_commands: u64,
    /// Lines with NUL bytes.
    pub nul: u64,
    /// Lines that were not UTF-8.
    pub invalid_utf8: u64,
    /// Other lines with no frame marker (console noise, shell prompts...).
    pub noise: u64,
    /// Lines with a frame marker and no valid checksum (truncated, corrupted, glued).
    pub bad_checksum: u64,
    /// Lines with a valid checksum that are not a v1 message (unknown type, bad field).
    pub invalid: u64,
    /// Lines nested deeper than the bound.
    pub too_deep: u64,
    /// Lines longer than the frame bound (skipped to the next newline).
    pub oversize: u64,
    /// Bytes of noise cut from around a frame on its line.
    pub noise_bytes: u64,
}

impl DecodeStats {
    /// Lines skipped for any reason.
    pub fn skipped(&self) -> u64 {
        self.at_commands
            + self.nul
            + self.invalid_utf8
            + self.noise
            + self.bad_checksum
            + self.invalid
            + self.too_deep
            + self.oversize
    }
}

/// Errors of [`FrameCodec`]. Decoding never fails on content, only on I/O.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The underlying stream failed.
    #[error("channel I/O")]
    Io(#[from] std::io::Error),
    /// A message we were about to send is over the frame bound.
    #[error("message of {size} bytes exceeds the {limit}-byte frame limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// A message could not be serialised.
    #[error("cannot encode message")]
    Json(#[from] serde_json::Error),
}

/// Frames [`Envelope`]s as JSON lines.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
    max_depth: usize,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
    /// Dropping the rest of an oversize line.
    discarding: bool,
    stats: DecodeStats,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(MAX_FRAME_DEFAULT)
    }
}

impl FrameCodec {
    /// A codec bounding each frame to `max_frame` bytes (at least 256).
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame: max_frame.max(256),
            max_depth: MAX_DEPTH_DEFAULT,
            scanned: 0,
            discarding: false,
            stats: DecodeStats::default(),
        }
    }

    /// Sets the nesting bound.
    #[must_use]
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth.max(2);
        self
    }

    /// The frame bound.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// What was decoded and skipped so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Encodes one message into a line (for callers that do not use [`Encoder`]).
    pub fn encode_line(&self, msg: &Envelope) -> Result<Vec<u8>, CodecError> {
        let json = serde_json::to_vec(msg)?;
        let line = seal(&json);
        if line.len() - 1 > self.max_frame {
            return Err(CodecError::TooLarge {
                size: line.len() - 1,
                limit: self.max_frame,
            });
        }
        Ok(line)
    }

    /// Decodes one line (without its newline); `None` if it holds no message.
    fn decode_line(&mut self, line: &[u8]) -> Option<Envelope> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let Some(start) = memmem::rfind(line, FRAME_MARKER) else {
            self.count_noise(line);
            return None;
        };
        let candidate = &line[start..];
        // Junk after a sealed frame is tolerated: noise can land between a message and
        // its newline, and the message itself is intact.
        let Some(frame) = unseal(candidate) else {
            self.stats.bad_checksum += 1;
            return None;
        };
        self.stats.noise_bytes += (line.len() - frame.len()) as u64;
        if exceeds_depth(frame, self.max_depth) {
            self.stats.too_deep += 1;
            return None;
        }
        if let Ok(msg) = serde_json::from_slice::<Envelope>(frame) {
            self.stats.frames += 1;
            Some(msg)
        } else {
            self.stats.invalid += 1;
            None
        }
    }

    fn count_noise(&mut self, line: &[u8]) {
        let trimmed = trim_ascii_start(line);
        if line.contains(&0) {
            self.stats.nul += 1;
        } else if std::str::from_utf8(line).is_err() {
            self.stats.invalid_utf8 += 1;
        } else if trimmed.len() >= 2 && trimmed[..2].eq_ignore_ascii_case(b"AT") {
            self.stats.at_commands += 1;
        } else {
            self.stats.noise += 1;
        }
    }
}

const CRC_FIELD: &[u8] = b",\"crc\":\"";

/// Turns one JSON object (as serde_json writes it) into a frame line: the object with a
/// `crc` field appended last, holding the CRC-32 of every byte before that field, and a
/// newline. Public so that tools can hand-craft frames (e.g. to talk to an agent with
/// socat while debugging).
///
/// # Panics
/// If `json` does not end with `}`.
pub fn seal(json: &[u8]) -> Vec<u8> {
    let body = json.strip_suffix(b"}").expect("seal takes a JSON object");
    let crc = crc32fast::hash(body);
    let mut line = Vec::with_capacity(json.len() + CRC_FIELD.len() + 12);
    line.extend_from_slice(body);
    line.extend_from_slice(CRC_FIELD);
    line.extend_from_slice(format!("{crc:08x}\"}}\n").as_bytes());
    line
}

/// The sealed frame at the start of `candidate`, if its checksum holds; what follows the
/// frame's closing brace is ignored.
fn unseal(candidate: &[u8]) -> Option<&[u8]> {
    let at = memmem::rfind(candidate, CRC_FIELD)?;
    let hex = candidate.get(at + CRC_FIELD.len()..at + CRC_FIELD.len() + 8)?;
    let tail = candidate.get(at + CRC_FIELD.len() + 8..at + CRC_FIELD.len() + 10)?;
    if tail != b"\"}"
        || !hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let want = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    if crc32fast::hash(&candidate[..at]) != want {
        return None;
    }
    Some(&candidate[..at + CRC_FIELD.len() + 10])
}

fn trim_ascii_start(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Whether `json` nests objects/arrays deeper than `max`, counting only brackets outside
/// strings. serde_json has its own recursion limit (128); ours is far lower and is checked
/// before any allocation.
fn exceeds_depth(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Decoder for FrameCodec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        loop {
            if self.discarding {
                if let Some(nl) = memchr::memchr(b'\n', buf) {
                    buf.advance(nl + 1);
                    self.discarding = false;
                    self.scanned = 0;
                } else {
                    buf.clear();
                    return Ok(None);
                }
            }
            let Some(rel) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
                if buf.len() > self.max_frame {
                    // Drop what we have now rather than when the newline comes: this is
                    // what keeps memory bounded against a peer that never sends one.
                    self.stats.oversize += 1;
                    buf.clear();
                    self.discarding = true;
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                return Ok(None);
            };
            let nl = self.scanned + rel;
            self.scanned = 0;
            let line = buf.split_to(nl + 1);
            let body = &line[..nl];
            if body.len() > self.max_frame {
                self.stats.oversize += 1;
                continue;
            }
            if let Some(msg) = self.decode_line(body) {
                return Ok(Some(msg));
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        // A last line without a newline is still a line: the peer may have gone away
        // right after writing it.
        if let Some(msg) = self.decode(buf)? {
            return Ok(Some(msg));
        }
        if !buf.is_empty() && !self.discarding {
            let rest = buf.split();
            self.scanned = 0;
            return Ok(self.decode_line(&rest));
        }
        buf.clear();
        self.discarding = false;
        self.scanned = 0;
        Ok(None)
    }
}

impl Encoder<&Envelope> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        let line = self.encode_line(msg)?;
        dst.extend_from_slice(&line);
        Ok(())
    }
}

impl Encoder<Envelope> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Envelope>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Hello, Role};
    use crate::session::Nonce;

    fn ping(id: u64) -> Envelope {
        Envelope::new(
            Role::Broker,
            Some(Nonce::from_bytes([7; 16])),
            Body::Ping { id },
        )
    }

    fn line(msg: &Envelope) -> Vec<u8> {
        FrameCodec::default().encode_line(msg).unwrap()
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Vec<Envelope> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn encoded_frames_start_with_the_marker_and_end_with_newline() {
        let l = line(&ping(1));
        assert!(l.starts_with(FRAME_MARKER));
        assert_eq!(l.last(), Some(&b'\n'));
        assert_eq!(memchr::memchr_iter(b'\n', &l).count(), 1);
    }

    #[test]
    fn wire_shape_is_stable() {
        // The checksum was computed independently: python3 -c "import zlib; print(hex(zlib.crc32(b'...')))".
        let l = line(&ping(5));
        assert_eq!(
            std::str::from_utf8(&l).unwrap(),
            "{\"xenchan\":1,\"from\":\"broker\",\"session\":\"07070707070707070707070707070707\",\"type\":\"ping\",\"id\":5,\"crc\":\"6b14fb9f\"}\n"
        );
    }

    #[test]
    fn round_trip_in_pieces() {
        let mut c = FrameCodec::default();
        let mut bytes = line(&ping(1));
        bytes.extend(line(&ping(2)));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(m) = c.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, vec![ping(1), ping(2)]);
        assert_eq!(c.stats().frames, 2);
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let mut c = FrameCodec::default();
        let mut bytes = line(&ping(1));
        bytes.pop();
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(1)]);
    }

    #[test]
    fn noise_is_skipped_and_counted_by_kind() {
        let mut c = FrameCodec::default();
        let mut bytes = b"AT+CGMI\r\nATZ\r\n\0\0\0\n\xff\xfe\n login: \n{}\n[1,2]\n\n".to_vec();
        bytes.extend(line(&ping(3)));
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(3)]);
        let s = c.stats();
        assert_eq!(s.at_commands, 2);
        assert_eq!(s.nul, 1);
        assert_eq!(s.invalid_utf8, 1);
        assert_eq!(s.noise, 3, "login prompt, {{}}, [1,2]");
        assert_eq!(s.frames, 1);
    }

    #[test]
    fn noise_glued_in_front_of_a_message_is_cut() {
        let mut c = FrameCodec::default();
        let mut bytes = b"\x1b[0mgarbage".to_vec();
        bytes.extend(line(&ping(4)));
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(4)]);
        assert_eq!(c.stats().noise_bytes, 11);
    }

    #[test]
    fn truncated_message_followed_by_a_whole_one_yields_the_whole_one() {
        let mut c = FrameCodec::default();
        let first = line(&ping(1));
        let mut bytes = first[..first.len() / 2].to_vec(); // lost its tail and newline
        bytes.extend(line(&ping(2)));
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(2)]);
    }

    #[test]
    fn junk_between_message_and_newline_is_tolerated() {
        let mut c = FrameCodec::default();
        let mut bytes = line(&ping(1));
        bytes.pop();
        bytes.extend_from_slice(b"AT\r\n");
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(1)]);
    }

    #[test]
    fn marker_with_bad_content_counts_as_invalid() {
        let mut c = FrameCodec::default();
        let mut bytes = Vec::new();
        for json in [
            &br#"{"xenchan":1,"from":"broker","type":"launch_missiles"}"#[..],
            br#"{"xenchan":1,"from":"mallory","type":"ping","id":1}"#,
            br#"{"xenchan":1,"from":"broker","type":"ping","id":-1}"#,
            br#"{"xenchan":1,"from":"broker","session":"XYZ","type":"ping","id":1}"#,
        ] {
            bytes.extend(seal(json));
        }
        assert!(decode_all(&mut c, &bytes).is_empty());
        assert_eq!(c.stats().invalid, 4);
        assert_eq!(c.stats().bad_checksum, 0);
    }

    #[test]
    fn unsealed_or_corrupted_frames_are_refused() {
        let mut c = FrameCodec::default();
        // Valid JSON, no checksum.
        let mut bytes = br#"{"xenchan":1,"from":"broker","type":"ping","id":1}"#.to_vec();
        bytes.push(b'\n');
        // One digit changed after sealing.
        let sealed = line(&ping(57));
        let text = String::from_utf8(sealed)
            .unwrap()
            .replace("\"id\":57", "\"id\":58");
        bytes.extend(text.as_bytes());
        // Truncated in the middle of a number, then a stray closing brace: valid JSON for
        // a message that was never sent, but its checksum is gone.
        let sealed = line(&ping(57));
        let cut = memmem::find(&sealed, b"57").unwrap() + 1;
        bytes.extend_from_slice(&sealed[..cut]);
        bytes.extend_from_slice(b"}\n");
        assert!(decode_all(&mut c, &bytes).is_empty());
        assert_eq!(c.stats().bad_checksum, 3);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let mut c = FrameCodec::default();
        let mut json = b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"bye\",\"x\":".to_vec();
        json.extend(std::iter::repeat_n(b'[', 100));
        json.extend(std::iter::repeat_n(b']', 100));
        json.push(b'}');
        assert!(decode_all(&mut c, &seal(&json)).is_empty());
        assert_eq!(c.stats().too_deep, 1);
        // Brackets inside strings do not count.
        let s = format!(
            "{{\"xenchan\":1,\"from\":\"agent\",\"type\":\"bye\",\"reason\":\"{}\"}}",
            "[".repeat(100)
        );
        assert_eq!(decode_all(&mut c, &seal(s.as_bytes())).len(), 1);
    }

    #[test]
    fn oversize_line_is_skipped_to_the_next_newline_with_bounded_buffer() {
        let mut c = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        // 1 MiB without a newline, fed in 4 KiB chunks as a reader would.
        let chunk = vec![b'x'; 4096];
        for _ in 0..256 {
            buf.extend_from_slice(&chunk);
            assert!(c.decode(&mut buf).unwrap().is_none());
            assert!(buf.len() <= 1024 + 4096, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"tail of the giant line\n");
        buf.extend_from_slice(&line(&ping(9)));
        assert_eq!(c.decode(&mut buf).unwrap(), Some(ping(9)));
        assert_eq!(c.stats().oversize, 1);
    }

    #[test]
    fn oversize_line_that_arrives_whole_is_skipped() {
        let mut c = FrameCodec::new(256);
        let mut bytes = vec![b'y'; 10_000];
        bytes.push(b'\n');
        bytes.extend(line(&ping(1)));
        assert_eq!(decode_all(&mut c, &bytes), vec![ping(1)]);
        assert_eq!(c.stats().oversize, 1);
    }

    #[test]
    fn a_message_exactly_at_the_bound_passes_and_one_byte_more_does_not() {
        let hello = |pad: usize| {
            Envelope::new(
                Role::Agent,
                None,
                Body::Hello(Hello {
                    channel: "c".repeat(pad),
                    ..Hello::default()
                }),
            )
        };
        let base = FrameCodec::new(1 << 20)
            .encode_line(&hello(0))
            .unwrap()
            .len()
            - 1;
        let limit = 512;
        let fits = hello(limit - base);
        let c = FrameCodec::new(limit);
        let fits_line = c.encode_line(&fits).unwrap();
        assert_eq!(fits_line.len(), limit + 1);
        let too_big = hello(limit - base + 1);
        assert!(matches!(
            c.encode_line(&too_big),
            Err(CodecError::TooLarge { .. })
        ));
        let raw = FrameCodec::new(1 << 20).encode_line(&too_big).unwrap();
        let mut c = FrameCodec::new(limit);
        assert!(decode_all(&mut c, &raw).is_empty());
        assert_eq!(c.stats().oversize, 1);
        assert_eq!(decode_all(&mut c, &fits_line), vec![fits]);
    }

    #[test]
    fn eof_flushes_a_last_line_without_newline() {
        let mut c = FrameCodec::default();
        let mut l = line(&ping(1));
        l.pop();
        let mut buf = BytesMut::from(&l[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(ping(1)));
        assert!(buf.is_empty());
    }

    #[test]
    fn hellos_with_and_without_an_agent_instance_decode() {
        // Written by an agent that predates `instance` (the transcript's first beacon).
        let old = br#"{"xenchan":1,"from":"agent","type":"hello","versions":[1],"channel":"org.xenchan.agent.1","uuid":"6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a","software":"xenchan-agent 0.1.0","crc":"b0fb787f"}
"#;
        let mut c = FrameCodec::default();
        let got = decode_all(&mut c, old);
        let [msg] = &got[..] else {
            panic!("{got:?} {:?}", c.stats())
        };
        let Body::Hello(h) = &msg.body else {
            panic!("{msg:?}")
        };
        assert_eq!((h.instance.as_deref(), h.instance()), (None, None));
        let with = Envelope::new(
            Role::Agent,
            None,
            Body::Hello(Hello {
                instance: Some(Hello::new_instance(0x5e1f_a9c0_33d2_7b14)),
                ..h.clone()
            }),
        );
        let l = line(&with);
        let text = std::str::from_utf8(&l).unwrap();
        assert!(
            text.contains(r#","instance":"5e1fa9c033d27b14","crc":"#),
            "{text}"
        );
        let got = decode_all(&mut c, &l);
        assert_eq!(got, vec![with]);
        let Body::Hello(h) = &got[0].body else {
            unreachable!()
        };
        assert_eq!(h.instance(), Some("5e1fa9c033d27b14"));
    }

    #[test]
    fn an_unusable_instance_is_decoded_but_not_used() {
        for bad in [String::new(), "a b".into(), "é".into(), "x".repeat(65)] {
            let h = Hello {
                instance: Some(bad.clone()),
                ..Hello::default()
            };
            let msg = Envelope::new(Role::Agent, None, Body::Hello(h));
            let got = decode_all(&mut FrameCodec::default(), &line(&msg));
            assert_eq!(got, vec![msg], "{bad:?}");
            let Body::Hello(h) = &got[0].body else {
                unreachable!()
            };
            assert_eq!(h.instance(), None, "{bad:?}");
        }
        let longest = Hello {
            instance: Some("A-_9".repeat(16)),
            ..Hello::default()
        };
        assert_eq!(longest.instance().map(str::len), Some(64));
    }

    #[test]
    fn rescanning_is_incremental() {
        // A partial line is not searched again from the start on every call.
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(c.scanned, 3);
        buf.extend_from_slice(b"def\n");
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(c.scanned, 0);
        assert!(buf.is_empty());
    }
}
