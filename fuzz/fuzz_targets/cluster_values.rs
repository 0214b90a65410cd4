//! What the cluster crate reads back from etcd (values and keys under its prefix) on
//! arbitrary bytes: another writer under the prefix must never panic a broker.
//! Invariants: no panic; an accepted desired value re-encodes to the same bytes; an
//! accepted applied value round-trips; a key accepted as ours is rebuilt byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenchan_cluster::{Key, Keyspace, decode_applied, decode_desired, encode_applied, encode_desired};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decode_desired(data) {
        assert_eq!(encode_desired(&d), data);
    }
    if let Ok(a) = decode_applied(data) {
        assert_eq!(decode_applied(&encode_applied(&a)).unwrap(), a);
    }
    let ks = Keyspace::new("/xenchan/").unwrap();
    let mut key = b"/xenchan/".to_vec();
    key.extend_from_slice(data);
    let rebuilt = match ks.parse(&key) {
        Some(Key::Domain(uuid, what)) => Some(ks.domain(&uuid, &what)),
        Some(Key::Lease(l)) => Some(ks.lease(&l)),
        Some(Key::Host(h)) => Some(ks.host(&h)),
        None => None,
    };
    if let Some(rebuilt) = rebuilt {
        assert_eq!(rebuilt.as_bytes(), key.as_slice());
    }
});
