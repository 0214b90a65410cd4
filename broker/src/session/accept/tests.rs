//! The acceptance rules on plain values.

use std::time::Duration;

use tokio::time::Instant;
use xenchan_protocol::ItemStatus;
use xenchan_protocol::message::{ApplyResult, GuestFacts, InterfaceFacts, ItemResult};

use super::*;

const A: Offer<'static> = Offer {
    generation: 2,
    digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
};
const B: Offer<'static> = Offer {
    generation: 3,
    digest: "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
};

fn result(o: Offer<'_>, items: &[(&str, ItemStatus)]) -> ApplyResult {
    ApplyResult {
        generation: o.generation,
        digest: xenchan_protocol::Digest::try_from(o.digest.to_string()).unwrap(),
        items: items.iter().map(|(i, s)| ItemResult::new(*i, *s)).collect(),
    }
}

fn stored(generation: u64, items: &[(&str, ItemStatus)]) -> Vec<ItemView> {
    items
        .iter()
        .map(|(i, s)| ItemView {
            item: (*i).to_string(),
            status: *s,
            reason: None,
            generation,
        })
        .collect()
}

/// Why, the result, in flight, applied, desired, stored items, the verdict.
type Case<'a> = (
    &'a str,
    ApplyResult,
    Option<Offer<'a>>,
    Option<Offer<'a>>,
    Option<Offer<'a>>,
    &'a [ItemView],
    ResultVerdict,
);

#[test]
fn results() {
    use ItemStatus::{Applied, Failed, Unchanged, Unsupported};
    let failed_net = stored(
        2,
        &[
            ("hostname", Applied),
            ("network:eth0", Failed),
            ("dns", Unsupported),
        ],
    );
    let old = stored(1, &[("hostname", Applied)]);
    #[rustfmt::skip]
    let table: Vec<Case<'_>> = vec![
        ("the answer to the push in flight",
            result(A, &[("hostname", Applied)]), Some(A), None, Some(A), &[], ResultVerdict::Answer),
        ("the answer even when it repeats the stored items",
            result(A, &[("hostname", Applied), ("network:eth0", Failed)]), Some(A), Some(A), Some(A),
            &failed_net, ResultVerdict::Answer),
        ("a retry that fixed an item of the applied generation",
            result(A, &[("hostname", Unchanged), ("network:eth0", Applied)]), None, Some(A), Some(A),
            &failed_net, ResultVerdict::Change),
        ("a retry that changed nothing",
            result(A, &[("hostname", Applied), ("network:eth0", Failed)]), None, Some(A), Some(A),
            &failed_net, ResultVerdict::Drop(DropReason::ResultUnchanged)),
        ("the stored items are of another generation: a change",
            result(A, &[("hostname", Applied)]), None, Some(A), Some(A), &old, ResultVerdict::Change),
        ("a result of the desired config the agent was not known to have (a lost answer)",
            result(B, &[("hostname", Applied)]), None, Some(A), Some(B), &old, ResultVerdict::Change),
        ("a result of a generation nobody asked about",
            result(B, &[("hostname", Applied)]), None, Some(A), Some(A), &old,
            ResultVerdict::Drop(DropReason::ResultNotAsked)),
        ("the right generation with another digest",
            result(Offer { generation: 2, digest: "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" }, &[("hostname", Applied)]),
            None, Some(A), Some(A), &old, ResultVerdict::Drop(DropReason::ResultNotAsked)),
        ("while another push is in flight, a retry of the applied one still counts",
            result(A, &[("network:eth0", Applied)]), Some(B), Some(A), Some(B), &failed_net,
            ResultVerdict::Change),
        ("nothing applied, nothing in flight, nothing desired",
            result(A, &[]), None, None, None, &[], ResultVerdict::Drop(DropReason::ResultNotAsked)),
    ];
    for (why, r, in_flight, applied, desired, stored, expected) in table {
        assert_eq!(
            judge_result(&r, in_flight, applied, desired, stored),
            expected,
            "{why}"
        );
    }
}

#[test]
fn merged_items_keep_the_agents_and_add_what_was_left_out() {
    let agent = vec![
        ItemResult::new("hostname", ItemStatus::Applied),
        ItemResult::new("users[0].sudo", ItemStatus::Unsupported),
    ];
    let left_out = vec![
        ItemResult::new("time", ItemStatus::Unsupported),
        ItemResult::new("users[0].sudo", ItemStatus::Unsupported),
    ];
    let merged = merge_items(&agent, &left_out);
    let items: Vec<&str> = merged.iter().map(|i| i.item.as_str()).collect();
    assert_eq!(items, ["hostname", "users[0].sudo", "time"]);
}

#[test]
fn degraded_reason_names_failed_items() {
    let items = vec![
        ItemResult::new("hostname", ItemStatus::Applied),
        ItemResult::failed("network:eth0", "no such interface"),
    ];
    assert_eq!(
        degraded_reason(4, &items).unwrap(),
        "degraded: generation 4 has 1 failed item(s): network:eth0 (no such interface); the agent retries them"
    );
    assert_eq!(degraded_reason(4, &items[..1]), None);
    let many: Vec<ItemResult> = (0..6)
        .map(|i| ItemResult::failed(format!("user:u{i}"), "x"))
        .collect();
    assert!(degraded_reason(1, &many).unwrap().contains("and 2 more"));
}

fn facts(hostname: &str) -> GuestFacts {
    GuestFacts {
        agent: "xenchan-agent test".into(),
        hostname: hostname.into(),
        ..GuestFacts::default()
    }
}

#[test]
fn facts_are_written_at_most_once_per_interval_and_the_latest_wins() {
    let second = Duration::from_secs(1);
    let t0 = Instant::now();
    let mut g = FactsGate::new(5 * second, Some(facts("stored")));
    // Equal to the stored facts: nothing to write.
    assert_eq!(
        g.offer(facts("stored"), t0),
        FactsStep::Drop(DropReason::FactsUnchanged)
    );
    assert_eq!(g.due(), None);
    // The first change is written at once.
    assert_eq!(g.offer(facts("a"), t0), FactsStep::Write(facts("a")));
    // Within the interval: held, the latest replacing the earlier.
    assert_eq!(
        g.offer(facts("b"), t0 + second),
        FactsStep::Held { replaced: false }
    );
    assert_eq!(
        g.offer(facts("c"), t0 + 2 * second),
        FactsStep::Held { replaced: true }
    );
    assert_eq!(g.due(), Some(t0 + 5 * second));
    assert_eq!(g.take_due(t0 + 4 * second), None);
    assert_eq!(g.take_due(t0 + 5 * second), Some(facts("c")));
    assert_eq!(g.due(), None);
    // A flood of the written facts: nothing.
    for i in 0..100 {
        assert_eq!(
            g.offer(facts("c"), t0 + 5 * second + i * Duration::from_millis(1)),
            FactsStep::Drop(DropReason::FactsUnchanged)
        );
    }
    // Changed and back within the interval: the held one is dropped, nothing written.
    assert_eq!(
        g.offer(facts("d"), t0 + 6 * second),
        FactsStep::Held { replaced: false }
    );
    assert_eq!(
        g.offer(facts("c"), t0 + 7 * second),
        FactsStep::Drop(DropReason::FactsCoalesced)
    );
    assert_eq!(g.due(), None);
    // After the interval a change is written at once again.
    assert_eq!(
        g.offer(facts("e"), t0 + 11 * second),
        FactsStep::Write(facts("e"))
    );
}

#[test]
fn facts_are_bounded() {
    let mut f = facts(&"h".repeat(10_000));
    f.interfaces = (0..1000)
        .map(|i| InterfaceFacts {
            name: format!("eth{i}"),
            addresses: vec!["192.0.2.1/24".into(); 1000],
            ..InterfaceFacts::default()
        })
        .collect();
    let b = bound_facts(f);
    assert_eq!(b.hostname.len(), 256);
    assert_eq!(b.interfaces.len(), 64);
    assert!(b.interfaces.iter().all(|i| i.addresses.len() == 32));
    // Within the bounds, facts are kept as they are.
    assert_eq!(bound_facts(facts("web1")), facts("web1"));
}
