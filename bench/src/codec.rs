//! Decoder throughput: megabytes per second of valid frames, of console noise and
//! binary garbage, and of a flood without newlines, fed to `FrameCodec` in 16 KiB reads
//! as a channel would deliver them.

use std::time::Instant;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use xenchan_protocol::message::{ApplyResult, Body, ConfigPush, Hello};
use xenchan_protocol::{
    DEFAULT_CHANNEL, Envelope, FrameCodec, ItemResult, ItemStatus, MAX_FRAME_DEFAULT, Nonce, Role,
};

use crate::stats::Summary;

/// Bytes per read, as a channel socket hands them over.
pub const READ_SIZE: usize = 16 * 1024;

/// A stream of real protocol lines: the session's mix (hello both ways, a config push of
/// the simulator demo's document, a result, pings and pongs), repeated to `size` bytes.
/// Returns the bytes and the number of frames in them.
pub fn valid_stream(size: usize) -> (Vec<u8>, u64) {
    let codec = FrameCodec::new(MAX_FRAME_DEFAULT);
    let nonce = Nonce::from_bytes([7; 16]);
    let key = xenchan_sim::configs::FALLBACK_KEY.trim();
    let config = crate::configs::scale_config(1, "vm01", key);
    let push = ConfigPush::new(3, config.clone());
    let result = ApplyResult {
        generation: 3,
        digest: config.digest(),
        items: config
            .items()
            .into_iter()
            .map(|i| ItemResult::new(i, ItemStatus::Applied))
            .collect(),
    };
    let hello = Hello {
        versions: Some(vec![1]),
        channel: DEFAULT_CHANNEL.into(),
        domain: Some("vm01".into()),
        software: "xenchan-broker 0.1.0".into(),
        ..Hello::default()
    };
    let msgs = [
        Envelope::new(
            Role::Broker,
            Some(nonce.clone()),
            Body::Hello(hello.clone()),
        ),
        Envelope::new(Role::Agent, Some(nonce.clone()), Body::Hello(hello)),
        Envelope::new(Role::Broker, Some(nonce.clone()), Body::Config(push)),
        Envelope::new(Role::Agent, Some(nonce.clone()), Body::Result(result)),
        Envelope::new(Role::Broker, Some(nonce.clone()), Body::Ping { id: 41 }),
        Envelope::new(Role::Agent, Some(nonce), Body::Pong { id: 41 }),
    ];
    let lines: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| codec.encode_line(m).expect("a bench message encodes"))
        .collect();
    let mut out = Vec::with_capacity(size + 4096);
    let mut frames = 0u64;
    while out.len() < size {
        for l in &lines {
            out.extend_from_slice(l);
            frames += 1;
        }
    }
    (out, frames)
}

/// Console output, modem probes, a truncated frame and binary garbage, in lines.
pub fn noise_stream(size: usize) -> Vec<u8> {
    let text: &[&[u8]] = &[
        b"[    1.234567] xen:console: hvc1 registered\r\n",
        b"Debian GNU/Linux 12 guest hvc1\r\n",
        b"guest login: ",
        b"AT\r\nATZ\r\nAT+GCAP\r\nAT+CGMI\r\n",
        b"{\"xenchan\":1,\"from\":\"broker\",\"type\":\"ping\",\"id\":5,\"crc\":\"00000000\"}\n",
        b"{\"xenchan\":1,\"from\":\"agent\",\"type\":\"hel\n",
    ];
    let mut out = Vec::with_capacity(size + 4096);
    let mut x: u32 = 0x1234_5678;
    while out.len() < size {
        for t in text {
            out.extend_from_slice(t);
        }
        // 512 bytes of xorshift garbage with a newline now and then.
        for i in 0..512 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(if i % 97 == 96 { b'\n' } else { x as u8 });
        }
        out.push(b'\n');
    }
    out
}

/// Megabytes (10^6 bytes) per second of `data` through a fresh decoder; returns the
/// rate and the frames decoded.
pub fn decode_rate(data: &[u8]) -> (f64, u64) {
    let mut codec = FrameCodec::new(MAX_FRAME_DEFAULT);
    let mut buf = BytesMut::with_capacity(MAX_FRAME_DEFAULT + READ_SIZE);
    let mut frames = 0u64;
    let t = Instant::now();
    for chunk in data.chunks(READ_SIZE) {
        buf.extend_from_slice(chunk);
        while let Ok(Some(env)) = codec.decode(&mut buf) {
            std::hint::black_box(&env);
            frames += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    (data.len() as f64 / 1e6 / secs, frames)
}

/// Runs each stream `runs` times over `size` bytes: (valid, noise, flood) rates.
pub fn measure(size: usize, runs: usize) -> anyhow::Result<[Summary; 3]> {
    let (valid, expected) = valid_stream(size);
    let noise = noise_stream(size);
    // A peer that never sends a newline: the decoder must drop it as it streams in.
    let flood = vec![b'x'; size];
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..runs {
        let (r, frames) = decode_rate(&valid);
        anyhow::ensure!(
            frames == expected,
            "the decoder returned {frames} of {expected} valid frames"
        );
        rates[0].push(r);
        let (r, frames) = decode_rate(&noise);
        anyhow::ensure!(frames == 0, "noise decoded into {frames} frames");
        rates[1].push(r);
        rates[2].push(decode_rate(&flood).0);
    }
    let s = |v: &[f64]| Summary::of(v).ok_or_else(|| anyhow::anyhow!("no samples"));
    Ok([s(&rates[0])?, s(&rates[1])?, s(&rates[2])?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_decode_as_expected() {
        let (valid, frames) = valid_stream(100_000);
        assert_eq!(decode_rate(&valid).1, frames);
        assert_eq!(decode_rate(&noise_stream(100_000)).1, 0);
        let [v, n, f] = measure(50_000, 2).unwrap();
        assert!(v.median > 0.0 && n.median > 0.0 && f.median > 0.0);
    }
}
