//! The xenstore wire decoder on arbitrary bytes (what a hostile xenstore peer could send).
//! Invariants: no panic; a decoded message consumes exactly header + payload bytes and
//! re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenchan_xenstore::wire;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = wire::decode(rest) {
        assert!(used <= rest.len());
        assert_eq!(msg.encode(), &rest[..used]);
        let _ = msg.fields();
        rest = &rest[used..];
        if used == 0 {
            break;
        }
    }
});
