//! The frame decoder on arbitrary bytes, split into reads at fuzzer-chosen points.
//! Invariants: no panic; the buffer never holds more than one frame bound plus one read;
//! whatever decodes re-encodes to a frame that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use xenchan_protocol::FrameCodec;

const LIMIT: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1) * 17;
    let mut codec = FrameCodec::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(msg) = codec
            .decode(&mut buf)
            .expect("decoding never fails on content")
        {
            let line = codec
                .encode_line(&msg)
                .expect("a decoded message re-encodes");
            let mut again = FrameCodec::new(LIMIT * 4);
            let mut b = BytesMut::from(&line[..]);
            assert_eq!(again.decode(&mut b).unwrap().as_ref(), Some(&msg));
        }
        assert!(buf.len() <= LIMIT + chunk, "buffer grew to {}", buf.len());
    }
    let _ = codec.decode_eof(&mut buf);
});
