//! Every scenario the simulator plays, over the real broker, agent and hotplug helper.
//! Each test fails if the behaviour it names regresses: the scenario's own checks (see
//! `xenchan_sim::scenario`) plus the assertions here.

use std::time::Duration;

use xenchan_api::types::DomainState;
use xenchan_e2e::{params, play};
use xenchan_sim::checks;
use xenchan_sim::scenario::{Scenario, TARGET};
use xenchan_sim::tap::Dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_domains_are_configured_in_one_run() {
    let p = params(50);
    let (sim, report) = play(Scenario::Plain, &p).await;
    assert_eq!(report.views.len(), 50);
    assert_eq!(report.configs.len(), 50);
    for d in sim.domains() {
        let c = &report.configs[d.name()];
        assert!(checks::guest_files(d, c).is_empty(), "{}", d.name());
        assert_eq!(checks::pushes_of(d, 1), 1, "{}: pushed once", d.name());
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_reboot_keeps_what_was_applied_and_gets_changes_made_while_down() {
    let (sim, report) = play(Scenario::Reboot, &params(2)).await;
    let d = sim.domain(TARGET).unwrap();
    // Created, rebooted, shut down and booted again.
    assert_eq!(d.boots(), 3);
    let c = &report.configs[TARGET];
    assert!(c.hostname.as_ref().unwrap().as_str().starts_with("vm01-v2"));
    assert!(checks::guest_files(d, c).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_destroy_gives_eof_removes_the_socket_and_keeps_leases_until_delete() {
    let (sim, report) = play(Scenario::Destroy, &params(2)).await;
    assert!(!sim.domain(TARGET).unwrap().is_running());
    assert!(report.views.iter().all(|v| v.name != TARGET));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_push_loses_nothing_and_pushes_nothing_twice() {
    let (mut sim, _report) = play(Scenario::BrokerRestart, &params(3)).await;
    assert_eq!(sim.broker().unwrap().starts(), 2);
    let d = sim.domain(TARGET).unwrap();
    assert!(d.with_channel(|c| c.stale_delivered) > 0);
    assert_eq!(checks::needless_pushes(d), Vec::<String>::new());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_mid_apply_ends_configured_without_applying_twice() {
    let (sim, _report) = play(Scenario::AgentRestart, &params(2)).await;
    let d = sim.domain(TARGET).unwrap();
    assert_eq!(d.agent_exits().len(), 3);
    assert!(d.agent_exits().iter().all(|e| e.requested));
    assert_eq!(checks::double_applies(d), Vec::<String>::new());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_guest_with_a_modem_prober_is_configured() {
    let (sim, _report) = play(Scenario::Noisy, &params(2)).await;
    let stats = sim
        .domain(TARGET)
        .unwrap()
        .with_channel(|c| c.tap.stats(Dir::ToHost));
    assert!(stats.at_commands > 0, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guest_flooding_its_channel_does_not_hurt_the_others() {
    let (sim, _report) = play(Scenario::Hostile, &params(3)).await;
    let d = sim.domain(TARGET).unwrap();
    let (oversize, held_dropped) =
        d.with_channel(|c| (c.tap.stats(Dir::ToHost).oversize, c.held_dropped));
    assert!(oversize > 0, "the flood had giant lines");
    println!("held bytes dropped from the middle: {held_dropped}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_guest_is_configured_without_holding_up_the_others() {
    let (sim, _report) = play(Scenario::Slow, &params(3)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_uuid_guest_is_flagged_and_never_pushed_to() {
    let (sim, report) = play(Scenario::WrongUuid, &params(2)).await;
    let v = report.views.iter().find(|v| v.name == TARGET).unwrap();
    assert_eq!(v.state, DomainState::IdentityMismatch);
    assert_eq!(v.applied_generation, None);
    let d = sim.domain(TARGET).unwrap();
    assert_eq!(checks::pushes_of(d, 1), 0);
    // Still flagged a while later: the broker does not give in to a persistent agent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = sim.client().unwrap();
    let v = client.get_domain(TARGET).await.unwrap();
    assert_eq!(v.state, DomainState::IdentityMismatch);
    assert_eq!(checks::pushes_of(d, 1), 0);
    sim.shutdown().await;
}
