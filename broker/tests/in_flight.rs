//! A push in flight and the agent's repeated answers: on a slow channel the agent reads
//! the broker's hellos late (one per beacon the broker saw) and answers each, every
//! answer saying "nothing applied yet" while the push is already on its way. The agent's
//! instance (random per process start) tells those answers apart from an agent that
//! restarted and lost the push.

mod support;

use support::{Dirs, PeerOptions, Record, TestBroker, TestPeer, sample_config};
use xenchan_broker::api::types::DomainState;

/// `xenchan_pushes_total` from the broker's metrics.
async fn pushes(broker: &TestBroker) -> u64 {
    let m = broker.client.metrics().await.unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("xenchan_pushes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no xenchan_pushes_total in\n{m}"))
}

/// Configures `web1` through a peer that holds its answers until it has two broker
/// hellos, and returns the number of pushes and what the peer saw.
///
/// Why the count is exact once the domain is configured: the agent's second answer
/// precedes its result on the channel, so any push it causes is counted before the
/// result turns the domain `configured`.
async fn configure_over_a_slow_channel(opts: PeerOptions) -> (u64, Record) {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    broker.client.put_config("web1", &cfg, None).await.unwrap();
    let peer = TestPeer::start(
        &dirs.sockets(),
        "web1",
        PeerOptions {
            answer_after_hellos: 2,
            ..opts
        },
    );
    let v = broker
        .wait_domain("web1", "configured", |v| {
            v.state == DomainState::Configured && v.applied_generation == Some(1)
        })
        .await;
    assert_eq!(v.applied_digest, v.desired_digest);
    let n = pushes(&broker).await;
    let rec = peer
        .wait("every push delivered", |r| r.configs.len() as u64 >= n)
        .await;
    assert!(
        rec.hellos.len() >= 2,
        "the broker said hello twice: {rec:?}"
    );
    assert_eq!(rec.connections, 1, "all in one session");
    broker.stop().await.unwrap();
    (n, rec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_answers_of_one_agent_run_get_exactly_one_push() {
    let (pushes, rec) = configure_over_a_slow_channel(PeerOptions {
        instance: Some("5e1fa9c033d27b14".into()),
        ..PeerOptions::default()
    })
    .await;
    assert_eq!(pushes, 1, "one push per generation");
    assert_eq!(rec.configs.len(), 1, "one config frame on the wire");
    assert_eq!(rec.configs[0].generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_between_its_answers_gets_the_push_again() {
    // The first answer's run got the push and died with it; the second run says
    // "nothing applied" and must get it again.
    let (pushes, rec) = configure_over_a_slow_channel(PeerOptions {
        answer_instances: vec!["0000000000000001".into(), "0000000000000002".into()],
        ..PeerOptions::default()
    })
    .await;
    assert_eq!(pushes, 2);
    assert_eq!(rec.configs.len(), 2);
    assert!(rec.configs.iter().all(|c| c.generation == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_an_instance_keeps_the_old_behaviour() {
    // An agent that predates the field may have restarted between its answers: each
    // answer that reports nothing applied gets the push (the agent answers `unchanged`
    // to the extra one).
    let (pushes, rec) = configure_over_a_slow_channel(PeerOptions::default()).await;
    assert!(pushes >= 2, "{pushes} push(es)");
    assert_eq!(rec.configs.len() as u64, pushes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_instance_counts_as_none() {
    // Not 1-64 letters, digits, `-` or `_`: ignored, so the broker errs on the side of
    // pushing again rather than trusting it.
    let (pushes, _) = configure_over_a_slow_channel(PeerOptions {
        instance: Some("x".repeat(65)),
        ..PeerOptions::default()
    })
    .await;
    assert!(pushes >= 2, "{pushes} push(es)");
}
