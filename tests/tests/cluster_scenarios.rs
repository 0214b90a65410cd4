//! The simulator's cluster mode (`--hosts 2`: two real brokers on one real local etcd):
//! a live migration and a host loss, over the real broker, agent and hotplug helper.
//! Each test fails if the behaviour it names regresses: the scenario's own checks (see
//! `xenchan_sim::scenario`, module `hosts`) plus the assertions here. Skipped, saying
//! why, when the `etcd` binary is missing (`scripts/setup.sh` installs it).

use xenchan_e2e::{params, play};
use xenchan_sim::checks;
use xenchan_sim::scenario::{Scenario, TARGET};

fn etcd_missing() -> bool {
    match xenchan_sim::cluster::require_etcd(2) {
        Ok(()) => false,
        Err(e) => {
            eprintln!("skipped: {e}");
            true
        }
    }
}

fn two_hosts(domains: usize) -> xenchan_sim::scenario::Params {
    let mut p = params(domains);
    p.hosts = 2;
    p
}

/// Names of the checks that must be in the report (so a scenario that silently skips
/// a step cannot pass).
fn assert_checked(report: &xenchan_sim::scenario::Report, prefixes: &[&str]) {
    for p in prefixes {
        assert!(
            report.checks.iter().any(|c| c.name.starts_with(p) && c.ok),
            "no passing check named {p:?} in {:#?}",
            report.checks
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_hosts_keeps_the_guest_and_its_leases_and_pushes_nothing_again() {
    if etcd_missing() {
        return;
    }
    let (sim, report) = play(Scenario::Migrate, &two_hosts(2)).await;
    let d = sim.domain(TARGET).unwrap();
    // It runs on the second host now, never rebooted, its agent never restarted.
    assert_eq!(sim.host_of(TARGET), Some(1));
    assert_eq!(d.boots(), 1);
    assert!(d.agent_exits().is_empty(), "{:?}", d.agent_exits());
    // Generation 1 before the migration and 2 (through the old source) after: each once.
    assert_eq!(checks::pushes_of(d, 1), 1);
    assert_eq!(checks::pushes_of(d, 2), 1);
    assert_eq!(checks::repeated_pushes(d), Vec::<String>::new());
    assert_eq!(checks::double_applies(d), Vec::<String>::new());
    assert_checked(
        &report,
        &[
            "migrate: prepared on the destination",
            "migrate: the source's socket is gone",
            "migrate: the same guest moved",
            "leases: vm01's address stays its own during the hand-off (PUT through sim-h1)",
            "leases: vm01's address stays its own during the hand-off (PUT through sim-h2)",
            "migrate: complete moved ownership",
            "migrate: nothing pushed to the guest by the hand-off",
            "pushes: the brokers' push counters equal",
        ],
    );
    let owner = sim.cluster().unwrap().owner(&d.spec().uuid).await.unwrap();
    assert_eq!(owner.as_deref(), Some("sim-h2"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_domains_restarted_elsewhere_are_claimed_and_nothing_is_pushed_again() {
    if etcd_missing() {
        return;
    }
    let (sim, report) = play(Scenario::HostLoss, &two_hosts(3)).await;
    assert!(sim.hosts()[0].lost);
    // vm01 and vm03 ran on sim-h1: both restarted on sim-h2 (a second boot, new domid).
    for name in [TARGET, "vm03"] {
        let d = sim.domain(name).unwrap();
        assert_eq!(sim.host_of(name), Some(1), "{name}");
        assert_eq!(d.boots(), 2, "{name}");
        assert_eq!(
            checks::pushes_in_boot(d, 2) as u64,
            u64::from(name == TARGET),
            "{name}: only vm01's later change is pushed after the restart"
        );
        assert_eq!(checks::double_applies(d), Vec::<String>::new());
        let owner = sim.cluster().unwrap().owner(&d.spec().uuid).await.unwrap();
        assert_eq!(owner.as_deref(), Some("sim-h2"), "{name}");
    }
    assert_checked(
        &report,
        &[
            "host-loss: the survivor claimed the domain",
            "host-loss: vm01 restarted on sim-h2 (new domid) got nothing pushed",
            "host-loss: vm03 restarted on sim-h2 (new domid) got nothing pushed",
            "leases: vm01's address stays its own after its host was lost (PUT through sim-h2)",
            "host-loss: the next change reached the restarted guest exactly once",
            "pushes: the brokers' push counters equal",
            "sim-h1: its killed broker stayed dead",
        ],
    );
    sim.shutdown().await;
}
