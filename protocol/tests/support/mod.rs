//! Message generators shared by the integration tests.

use proptest::prelude::*;
use xenchan_protocol::message::{
    Applied, ApplyResult, Body, Envelope, Hello, ItemResult, ItemStatus, Role,
};
use xenchan_protocol::{Capabilities, Digest, Lineage, Nonce};

pub fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Broker), Just(Role::Agent)]
}

pub fn nonce() -> impl Strategy<Value = Nonce> {
    any::<[u8; 16]>().prop_map(Nonce::from_bytes)
}

pub fn lineage() -> impl Strategy<Value = Lineage> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| Lineage::try_from(s).unwrap())
}

pub fn digest() -> impl Strategy<Value = Digest> {
    "[0-9a-f]{64}".prop_map(|h| Digest::try_from(format!("sha256:{h}")).unwrap())
}

fn status() -> impl Strategy<Value = ItemStatus> {
    prop_oneof![
        Just(ItemStatus::Applied),
        Just(ItemStatus::Unchanged),
        Just(ItemStatus::Failed),
        Just(ItemStatus::Unsupported),
    ]
}

pub fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<String>(),
            proptest::option::of(proptest::collection::vec(1u32..5, 0..4)),
            proptest::option::of((any::<u64>(), digest(), proptest::option::of(lineage()))),
            proptest::option::of(any::<String>()),
            proptest::option::of(proptest::collection::btree_map(
                "[a-z_]{1,12}",
                any::<u32>(),
                0..6
            )),
        )
            .prop_map(
                |(channel, versions, applied, instance, caps)| Body::Hello(Hello {
                    versions,
                    channel,
                    applied: applied.map(|(generation, digest, lineage)| Applied {
                        generation,
                        digest,
                        lineage
                    }),
                    instance,
                    capabilities: caps.map(Capabilities),
                    ..Hello::default()
                })
            ),
        any::<u64>().prop_map(|id| Body::Ping { id }),
        any::<u64>().prop_map(|id| Body::Pong { id }),
        any::<String>().prop_map(|reason| Body::Bye { reason }),
        (
            any::<u64>(),
            digest(),
            proptest::collection::vec(
                (
                    any::<String>(),
                    status(),
                    proptest::option::of(any::<String>())
                ),
                0..5
            )
        )
            .prop_map(|(generation, digest, items)| Body::Result(ApplyResult {
                generation,
                digest,
                items: items
                    .into_iter()
                    .map(|(item, status, reason)| ItemResult {
                        item,
                        status,
                        reason
                    })
                    .collect(),
            })),
    ]
}

pub fn envelope() -> impl Strategy<Value = Envelope> {
    (role(), proptest::option::of(nonce()), body())
        .prop_map(|(from, session, body)| Envelope::new(from, session, body))
}
