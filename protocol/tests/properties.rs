//! Property tests: the decoder never panics, never invents a message, and every message
//! that was sent survives any noise between messages and any split into reads.

mod support;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use xenchan_protocol::{Envelope, FrameCodec};

/// Feeds `bytes` to a decoder in reads of the given sizes, as a reader would.
fn decode_in_chunks(codec: &mut FrameCodec, bytes: &[u8], chunks: &[usize]) -> Vec<Envelope> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < bytes.len() {
        let n = (*sizes.next().unwrap()).min(bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    while let Some(m) = codec.decode_eof(&mut buf).unwrap() {
        out.push(m);
    }
    out
}

/// Bytes that look like frames more than random bytes do: JSON punctuation, the marker's
/// letters, digits, newlines, NUL, high bytes.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: Vec<u8> = b"{}[]\":,\\\n\r\0 xenchaftrombkgpisdyv01 ATZ+\xff\xc3".to_vec();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        proptest::collection::vec(proptest::sample::select(alphabet), 0..4096),
        // Fragments of real frames glued together.
        proptest::collection::vec(
            (
                support::envelope(),
                any::<proptest::sample::Index>(),
                any::<proptest::sample::Index>()
            ),
            0..6
        )
        .prop_map(|frags| {
            let mut out = Vec::new();
            for (m, a, b) in frags {
                let line = FrameCodec::default().encode_line(&m).unwrap();
                let (a, b) = (a.index(line.len()), b.index(line.len()));
                // A strict sub-slice that never ends with the frame's own newline.
                let (lo, hi) = (a.min(b), a.max(b).min(line.len() - 1));
                if hi > lo + 1 {
                    out.extend_from_slice(&line[lo..hi - 1]);
                }
            }
            out
        }),
    ]
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..3000, 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_soup_yields_only_whole_sent_messages(s in soup(), chunks in chunk_sizes()) {
        // The fragment soup may contain whole frames' starts; only complete ones that
        // were actually encoded may come out, and no fragment is a complete frame here
        // (each lost at least its last byte and its newline).
        let mut codec = FrameCodec::new(4096);
        let out = decode_in_chunks(&mut codec, &s, &chunks);
        prop_assert!(out.is_empty(), "decoded {:?} from soup", out);
    }

    #[test]
    fn messages_survive_interleaved_noise(
        items in proptest::collection::vec((soup(), support::envelope()), 1..12),
        chunks in chunk_sizes(),
    ) {
        let codec = FrameCodec::default();
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (noise, msg) in items {
            stream.extend_from_slice(&noise);
            stream.push(b'\n');
            stream.extend(codec.encode_line(&msg).unwrap());
            sent.push(msg);
        }
        let mut codec = FrameCodec::default();
        let got = decode_in_chunks(&mut codec, &stream, &chunks);
        prop_assert_eq!(got, sent);
    }

    #[test]
    fn every_message_round_trips(msg in support::envelope(), chunks in chunk_sizes()) {
        let line = FrameCodec::default().encode_line(&msg).unwrap();
        prop_assert!(line.starts_with(xenchan_protocol::message::FRAME_MARKER));
        prop_assert_eq!(memchr::memchr(b'\n', &line), Some(line.len() - 1));
        let got = decode_in_chunks(&mut FrameCodec::default(), &line, &chunks);
        prop_assert_eq!(got, vec![msg]);
    }

    #[test]
    fn buffer_never_exceeds_the_bound(len in 0usize..200_000, chunk in 1usize..9000) {
        // A peer that never sends a newline.
        let limit = 1024;
        let mut codec = FrameCodec::new(limit);
        let mut buf = BytesMut::new();
        let data = vec![b'z'; chunk];
        let mut fed = 0;
        while fed < len {
            buf.extend_from_slice(&data);
            fed += chunk;
            prop_assert!(codec.decode(&mut buf).unwrap().is_none());
            prop_assert!(buf.len() <= limit + chunk);
        }
    }
}
