//! The configuration document parser and validator on arbitrary bytes.
//! Invariants: no panic; an accepted document's canonical form parses back to the same
//! document with the same digest; a refusal always names at least one field path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenchan_protocol::GuestConfig;

fuzz_target!(|data: &[u8]| {
    match GuestConfig::from_json(data) {
        Ok(cfg) => {
            let canonical = cfg.canonical_json();
            let again = GuestConfig::from_json(&canonical).expect("canonical form parses");
            assert_eq!(again, cfg);
            assert_eq!(again.digest(), cfg.digest());
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.errors.iter().all(|f| !f.path.is_empty()));
        }
    }
});
