//! Every branch of [`decide`], on plain values.

use super::*;

const A: Offer<'static> = Offer {
    generation: 2,
    digest: "sha256:aa",
};
const B: Offer<'static> = Offer {
    generation: 3,
    digest: "sha256:bb",
};
/// Same generation as `A`, another digest (the config was replaced in place).
const A2: Offer<'static> = Offer {
    generation: 2,
    digest: "sha256:a2",
};
const U: &str = "00000000-0000-0000-0000-00000000000a";
const U_UPPER: &str = "00000000-0000-0000-0000-00000000000A";
const V: &str = "00000000-0000-0000-0000-00000000000b";

fn ok(generation: u64) -> LastResult {
    LastResult {
        generation,
        digest: String::new(),
        ok: true,
    }
}

fn failed(generation: u64) -> LastResult {
    LastResult {
        ok: false,
        ..ok(generation)
    }
}

fn ready() -> Agent<'static> {
    Agent {
        ready: true,
        ..Agent::default()
    }
}

fn want(offer: Offer<'static>) -> Want<'static> {
    Want {
        offer: Some(offer),
        ..Want::default()
    }
}

#[test]
fn decisions() {
    let good = ok(2);
    let bad = failed(2);
    let bad_old = failed(1);
    #[rustfmt::skip]
    let table: Vec<(&str, Agent<'_>, Want<'_>, Progress<'_>, Decision)> = vec![
        ("no answer to hello yet",
            Agent::default(), want(A), Progress::default(), Decision::NotReady),
        ("not ready wins over a block",
            Agent { block: Some(Block::Version), ..Agent::default() }, want(A), Progress::default(),
            Decision::NotReady),
        ("no common version",
            Agent { block: Some(Block::Version), ..ready() }, want(A), Progress::default(),
            Decision::Blocked(DomainState::VersionMismatch)),
        ("the agent refused our channel",
            Agent { block: Some(Block::Refused(DomainState::Error)), ..ready() }, want(A),
            Progress::default(), Decision::Blocked(DomainState::Error)),
        ("a block wins over an identity mismatch",
            Agent { block: Some(Block::Version), uuid: Some(V), ..ready() },
            Want { recorded_uuid: Some(U), ..want(A) }, Progress::default(),
            Decision::Blocked(DomainState::VersionMismatch)),
        ("another VM's agent: flagged once",
            Agent { uuid: Some(V), ..ready() }, Want { recorded_uuid: Some(U), ..want(A) },
            Progress::default(), Decision::RefuseIdentity { first: true }),
        ("another VM's agent, already flagged",
            Agent { uuid: Some(V), ..ready() }, Want { recorded_uuid: Some(U), ..want(A) },
            Progress { identity_flagged: true, ..Progress::default() },
            Decision::RefuseIdentity { first: false }),
        ("identity mismatch even without a config: nothing goes to that VM",
            Agent { uuid: Some(V), ..ready() }, Want { recorded_uuid: Some(U), ..Want::default() },
            Progress::default(), Decision::RefuseIdentity { first: true }),
        ("UUIDs compare without case",
            Agent { uuid: Some(U_UPPER), ..ready() }, Want { recorded_uuid: Some(U), ..want(A) },
            Progress::default(), Decision::Push { forced: false }),
        ("a recorded UUID fails closed: an agent reporting none gets nothing",
            ready(), Want { recorded_uuid: Some(U), ..want(A) }, Progress::default(),
            Decision::RefuseIdentity { first: true }),
        ("a recorded UUID wins over the discovered one",
            Agent { uuid: Some(V), ..ready() },
            Want { recorded_uuid: Some(U), discovered_uuid: Some(V), ..want(A) },
            Progress::default(), Decision::RefuseIdentity { first: true }),
        ("a discovered UUID refuses another VM's agent",
            Agent { uuid: Some(V), ..ready() }, Want { discovered_uuid: Some(U), ..want(A) },
            Progress::default(), Decision::RefuseIdentity { first: true }),
        ("a discovered UUID matches",
            Agent { uuid: Some(U_UPPER), ..ready() }, Want { discovered_uuid: Some(U), ..want(A) },
            Progress::default(), Decision::Push { forced: false }),
        ("only a discovered UUID: an agent reporting none is accepted",
            ready(), Want { discovered_uuid: Some(U), ..want(A) }, Progress::default(),
            Decision::Push { forced: false }),
        ("no UUID recorded: any agent",
            Agent { uuid: Some(V), ..ready() }, want(A), Progress::default(),
            Decision::Push { forced: false }),
        ("nothing desired",
            ready(), Want::default(), Progress::default(), Decision::Idle),
        ("nothing desired, though the agent has something",
            Agent { applied: Some(A), ..ready() }, Want::default(), Progress::default(),
            Decision::Idle),
        ("the agent has nothing: push",
            ready(), want(A), Progress::default(), Decision::Push { forced: false }),
        ("the agent has an older generation: push",
            Agent { applied: Some(A), ..ready() }, want(B), Progress::default(),
            Decision::Push { forced: false }),
        ("same generation, another digest: push",
            Agent { applied: Some(A), ..ready() }, want(A2), Progress::default(),
            Decision::Push { forced: false }),
        ("the desired config is in flight: wait",
            ready(), want(A), Progress { in_flight: Some(A), ..Progress::default() },
            Decision::AwaitResult),
        ("in flight wins over a force (one push at a time)",
            ready(), Want { force: 1, ..want(A) },
            Progress { in_flight: Some(A), ..Progress::default() }, Decision::AwaitResult),
        ("an older config is in flight: push the new one",
            ready(), want(B), Progress { in_flight: Some(A), ..Progress::default() },
            Decision::Push { forced: false }),
        ("applied, no result known: configured",
            Agent { applied: Some(A), ..ready() }, want(A), Progress::default(),
            Decision::Configured),
        ("applied, its result had no failure",
            Agent { applied: Some(A), ..ready() }, want(A),
            Progress { last_result: Some(&good), ..Progress::default() }, Decision::Configured),
        ("applied, an item of its result failed: degraded, not pushed again",
            Agent { applied: Some(A), ..ready() }, want(A),
            Progress { last_result: Some(&bad), ..Progress::default() }, Decision::Degraded),
        ("answered with another digest than offered: never pushed again for a result",
            Agent { applied: Some(A2), ..ready() }, want(A),
            Progress { answered: Some(A), last_result: Some(&good), ..Progress::default() },
            Decision::Configured),
        ("answered with a failed item: degraded, not pushed again",
            Agent { applied: Some(A2), ..ready() }, want(A),
            Progress { answered: Some(A), last_result: Some(&bad), ..Progress::default() },
            Decision::Degraded),
        ("answered an older config: push the new one",
            Agent { applied: Some(A), ..ready() }, want(B),
            Progress { answered: Some(A), ..Progress::default() }, Decision::Push { forced: false }),
        ("answered, but the operator forced a push",
            Agent { applied: Some(A), ..ready() }, Want { force: 1, ..want(A) },
            Progress { answered: Some(A), ..Progress::default() }, Decision::Push { forced: true }),
        ("a failed result of another generation does not count",
            Agent { applied: Some(A), ..ready() }, want(A),
            Progress { last_result: Some(&bad_old), ..Progress::default() },
            Decision::Configured),
        ("applied, but the operator forced a push",
            Agent { applied: Some(A), ..ready() }, Want { force: 1, ..want(A) },
            Progress::default(), Decision::Push { forced: true }),
        ("a force already acted on does not push again",
            Agent { applied: Some(A), ..ready() }, Want { force: 1, ..want(A) },
            Progress { force_seen: 1, ..Progress::default() }, Decision::Configured),
        ("the agent refused this config: not pushed again",
            ready(), want(A), Progress { refused: Some((A, Refusal::Bad)), ..Progress::default() },
            Decision::Refused(Refusal::Bad)),
        ("the agent refused this generation as stale: not pushed again",
            Agent { applied: Some(B), ..ready() }, want(A),
            Progress { refused: Some((A, Refusal::Stale)), ..Progress::default() },
            Decision::Refused(Refusal::Stale)),
        ("the agent refused an older config: push the new one",
            ready(), want(B), Progress { refused: Some((A, Refusal::Bad)), ..Progress::default() },
            Decision::Push { forced: false }),
        ("refused, but the operator forced a push",
            ready(), Want { force: 2, ..want(A) },
            Progress { refused: Some((A, Refusal::Bad)), force_seen: 1, ..Progress::default() },
            Decision::Push { forced: true }),
        ("refused as stale, but the operator forced a push",
            Agent { applied: Some(B), ..ready() }, Want { force: 1, ..want(A) },
            Progress { refused: Some((A, Refusal::Stale)), ..Progress::default() },
            Decision::Push { forced: true }),
    ];
    for (why, agent, want, progress, expected) in table {
        assert_eq!(decide(&agent, &want, &progress), expected, "{why}");
    }
}

#[test]
fn states_of_decisions() {
    use DomainState as S;
    let table = [
        (Decision::NotReady, None),
        (
            Decision::Blocked(S::VersionMismatch),
            Some(S::VersionMismatch),
        ),
        (
            Decision::RefuseIdentity { first: false },
            Some(S::IdentityMismatch),
        ),
        (Decision::Idle, Some(S::Idle)),
        (Decision::AwaitResult, Some(S::Pushing)),
        (Decision::Push { forced: true }, Some(S::Pushing)),
        (Decision::Configured, Some(S::Configured)),
        (Decision::Degraded, Some(S::Degraded)),
        (Decision::Refused(Refusal::Bad), Some(S::Error)),
        (Decision::Refused(Refusal::Stale), Some(S::StaleGeneration)),
    ];
    for (d, s) in table {
        assert_eq!(d.state(), s, "{d:?}");
    }
    assert!(!Decision::NotReady.identity_passed());
    assert!(!Decision::Blocked(S::Error).identity_passed());
    assert!(!Decision::RefuseIdentity { first: true }.identity_passed());
    assert!(Decision::Idle.identity_passed());
    assert!(Decision::Push { forced: false }.identity_passed());
}
