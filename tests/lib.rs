//! End-to-end test support: the real `xenchan-broker`, `xenchan-agent`,
//! `xen-console-setup` and `xenchan-sim` binaries, run together by the simulator, and the
//! `xenchan` CLI, run against a broker in the test's process (`cli`, `hook`,
//! `hook_migrate`, `roles`: here rather than in the CLI's package so that its
//! dependencies, dev ones included, have no broker, hence no rusqlite or axum).
//!
//! The tests live in `tests/tests/`. Cargo builds only the binaries of the package under
//! test, so [`binaries`] runs `cargo build --bins -p xenchan-broker -p xenchan-agent -p
//! xenchan-sim -p xenchan-cli` once per test process (same profile and target folder),
//! which is a no-op when they are fresh. Set `XENCHAN_BIN_DIR` to use prebuilt binaries
//! instead.
//!
//! [`relay`] is a channel backend with a gate on the host-to-guest direction, for tests
//! that need a slow channel's ordering without timing.

pub mod relay;

use std::path::PathBuf;
use std::sync::OnceLock;

use xenchan_sim::binaries::{self, Binaries};
use xenchan_sim::scenario::{self, Params, Report, Scenario};
use xenchan_sim::world::{Sim, SimOptions};

/// The binaries, built once per test process.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let found = if std::env::var_os(binaries::ENV_BIN_DIR).is_none()
            && let Some(ws) = binaries::workspace_dir()
        {
            let dir = binaries::profile_dir().expect("the test executable's folder");
            binaries::build(
                &ws,
                &dir,
                &[
                    "xenchan-broker",
                    "xenchan-agent",
                    "xenchan-sim",
                    "xenchan-cli",
                ],
            )
            .unwrap_or_else(|e| panic!("cannot build the binaries under test: {e}"));
            Binaries::in_dir(&dir)
        } else {
            Binaries::locate(None)
        };
        found.unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The `xenchan-sim` binary.
pub fn sim_binary() -> PathBuf {
    binaries().dir.join(binaries::SIM)
}

/// The `xenchan` CLI binary, from the same folder as [`binaries`]. A test that starts a
/// broker calls it first: the first call in a test process may build the workspace, which
/// takes longer than the broker's and the test's deadlines.
pub fn cli_binary() -> PathBuf {
    binaries().cli().unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh simulation in a new folder under `$TMPDIR`.
pub fn new_sim() -> Sim {
    Sim::with_binaries(&SimOptions::default(), binaries().clone())
        .unwrap_or_else(|e| panic!("cannot start the simulation: {e}"))
}

/// Step lines go to the test's output (shown when it fails).
pub fn params(domains: usize) -> Params {
    let mut p = Params::new(domains);
    p.log = std::sync::Arc::new(|s| println!("  == {s}"));
    p
}

/// Plays `s` with `p` in a new simulation; fails the test (keeping the folder, with the
/// channel transcripts, for a post-mortem) if it cannot finish or a check fails. Returns
/// the simulation, still running, for further assertions.
pub async fn play(s: Scenario, p: &Params) -> (Sim, Report) {
    let mut sim = new_sim();
    let result = scenario::run(s, &mut sim, p).await;
    let report = match result {
        Ok(r) if r.ok() => r,
        Ok(r) => {
            let failures = r.failures();
            let dir = post_mortem(&mut sim);
            panic!(
                "scenario {s}: checks failed:\n{failures}\nfolder kept: {}",
                dir.display()
            );
        }
        Err(e) => {
            let dir = post_mortem(&mut sim);
            panic!(
                "scenario {s} could not finish: {}\nfolder kept: {}",
                chain(&e),
                dir.display()
            );
        }
    };
    (sim, report)
}

/// Keeps the folder of a failed run, with the transcripts written.
pub fn post_mortem(sim: &mut Sim) -> PathBuf {
    sim.write_transcripts();
    sim.keep()
}

/// An error with its causes, `a: b: c` (the shared printer).
pub use xenchan_basics::chain;
