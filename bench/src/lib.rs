//! xenchan's benchmarks: the figures users care about, measured on the real binaries and
//! printed as one table (and JSON) by `cargo bench -p xenchan-bench` (or `cargo run
//! --release -p xenchan-bench`). See docs/PERFORMANCE.md for what each figure means and
//! the latest table.
//!
//! - [`scale`]: the broker against 100 / 1,000 / 10,000 domains ([`swarm`] plays them);
//! - [`cluster`]: two brokers on one etcd (cluster mode) against N domains;
//! - [`latency`]: one push end to end over the simulator's pty channel, against
//!   qemu-guest-agent doing the same job through the same bridge ([`qga`]);
//! - [`hotplug`]: from the channel's `/dev/xen-channel` link appearing to the result
//!   recorded by the broker;
//! - [`footprint`]: the agent's start-up time, idle memory and binary size;
//! - [`codec`]: decoder throughput;
//! - [`xs_discovery`]: xenstore discovery's requests per event at N domains.

pub mod bins;
pub mod child;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod compare;
pub mod configs;
pub mod footprint;
pub mod hotplug;
pub mod latency;
pub mod netns;
pub mod notify;
pub mod procfs;
pub mod qga;
pub mod report;
pub mod scale;
pub mod stats;
pub mod swarm;
pub mod wire;
pub mod xs_discovery;

/// Keeps a temporary folder (and says where) when a measurement failed or
/// `XENCHAN_BENCH_KEEP` is set, so that its logs can be read; removes it otherwise.
pub fn keep_if(tmp: tempfile::TempDir, failed: bool) {
    if failed || std::env::var_os("XENCHAN_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("xenchan-bench: logs and files kept in {}", kept.display());
    }
}

/// `RUST_LOG` for the agents the measurements start: `XENCHAN_BENCH_AGENT_LOG`, else
/// `info` (the agent's default, so its logging cost is in the figures).
pub fn agent_log() -> String {
    std::env::var("XENCHAN_BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into())
}
