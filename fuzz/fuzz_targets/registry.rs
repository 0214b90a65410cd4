//! The channel-name registry parser on arbitrary text (local registry.d files are
//! operator input). Invariants: no panic; what parses, written back, parses to the same
//! entries; every refusal names a line within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match xenchan_registry::parse_bytes(data) {
        Ok(entries) => {
            let text = xenchan_registry::write(&entries);
            let again = xenchan_registry::parse(&text).expect("written registry parses");
            assert_eq!(again, entries);
        }
        Err(e) => {
            let lines = data.split(|&b| b == b'\n').count().max(1);
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "line {} of {lines}",
                e.line
            );
        }
    }
});
