//! The agent's tolerant decode of a pushed document (schema filter, then strict parse)
//! on arbitrary JSON. Invariants: no panic; the report is bounded and every entry names
//! a path; what is kept re-filters to itself with nothing dropped; an accepted document's
//! canonical form passes the strict parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenchan_protocol::GuestConfig;
use xenchan_protocol::config::schema::{self, Capabilities, MAX_REPORTED};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for caps in [Capabilities::ours(), Capabilities::v1().with("users", 0)] {
        let f = schema::filter(&doc, &caps, schema::TABLE, "fuzz");
        assert!(f.dropped.len() <= MAX_REPORTED + 1);
        assert!(f.dropped.iter().all(|e| !e.path.is_empty()));
        let again = schema::filter(&f.document, &caps, schema::TABLE, "fuzz");
        assert!(again.dropped.is_empty(), "{:?}", again.dropped);
        assert_eq!(again.document, f.document);
    }
    match GuestConfig::decode_tolerant(&doc, "fuzz") {
        Ok(t) => {
            let strict = GuestConfig::from_json(&t.config.canonical_json())
                .expect("what the tolerant decode keeps passes the strict parse");
            assert_eq!(strict, t.config);
        }
        Err(e) => assert!(!e.errors.is_empty()),
    }
});
