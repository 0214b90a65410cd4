//! `xenchan-sim`: plays what a Xen host and its guests provide (QEMU's channel sockets,
//! the guests' hvc ttys, xenstore, udev hotplug, the agents' processes) so the real broker,
//! `xen-console-setup` and agent run together without Xen.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xenchan_basics::Exit;
use xenchan_sim::demo::{self, DemoEnd, DemoOptions};
use xenchan_sim::domain::DomainSpec;
use xenchan_sim::scenario::{self, Scenario};
use xenchan_sim::world::{Sim, SimError, SimOptions};

#[derive(Debug, Parser)]
#[command(
    name = "xenchan-sim",
    version,
    about = "Play Xen hosts and guests so the real xenchan broker and agents run without Xen",
    long_about = "Play what a Xen host and its guests provide, so that the real xenchan-broker, \
the real xen-console-setup udev helper and the real xenchan-agent run together on a machine \
without Xen. Per simulated domain: a unix socket in the broker's socket folder (like QEMU's \
channel backend: backlog 1, 1 KiB host-to-guest window, guest output held while no broker is \
connected and replayed stale), bridged to a pty that is the guest's /dev/hvc1 (echoing until \
the agent makes it raw); a xenstore with the nodes a toolstack writes; the hotplug helper run \
like udev would; and an agent process in a temporary guest root.\n\n\
Needs no root. The broker, agent and helper binaries are taken from the same cargo target \
folder as this program (built there first when started through cargo), or from --bin-dir / \
XENCHAN_BIN_DIR.\n\n\
Examples:\n  cargo run -p xenchan-sim -- demo\n  xenchan-sim demo --domains 20\n  \
xenchan-sim demo --scenario reboot --keep\n  xenchan-sim demo --hosts 2 --scenario migrate\n  \
xenchan-sim demo --hosts 2 --scenario host-loss\n  xenchan-sim run --domains 5 --dir /tmp/vms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a broker and N domains with their agents, configure each through the control
    /// API, show progress, then a table per domain and where to look.
    ///
    /// Exits 0 when every domain ends as the scenario expects and every check held, 69
    /// otherwise (or when a binary is missing), 74 when the folder cannot be used, 130 on
    /// Ctrl-C. Ctrl-C stops everything and removes the folder (unless --keep).
    Demo {
        /// Number of simulated domains (vm01, vm02, ...).
        #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=500))]
        domains: u16,
        /// Number of simulated dom0 hosts. 1 (the default): one broker on its embedded
        /// store. N >= 2: a local etcd (the `etcd` binary, installed by scripts/setup.sh)
        /// and N brokers in cluster mode on it, hosts sim-h1..sim-hN, each with its own
        /// socket folder, state and control socket under <dir>/h<i>/; domains are spread
        /// over them round robin and each PUT goes through another host's broker.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        hosts: u16,
        /// What to play on vm01 after (or while) the domains come up. One of: plain, reboot,
        /// destroy, broker-restart, agent-restart, noisy, hostile, slow, wrong-uuid; with
        /// --hosts 2 or more: plain, migrate, host-loss (see `xenchan-sim scenarios`).
        #[arg(long, short = 's', default_value = "plain", value_parser = parse_scenario)]
        scenario: Scenario,
        /// Folder for everything (sockets, guest roots, broker state, logs). Default: a new
        /// folder under $TMPDIR (e.g. /tmp/xcs-XXXXXX), removed at the end unless --keep.
        /// Keep it short: unix socket paths are limited to 107 bytes.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the folder at the end, to inspect guest roots, logs and the broker's store.
        #[arg(long)]
        keep: bool,
        /// Folder holding xenchan-broker, xenchan-agent and xen-console-setup. Default: next
        /// to this program.
        #[arg(long, env = "XENCHAN_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Seconds each wait may take (all domains configured, a state reached...).
        /// Default: 60 + 2 per domain.
        #[arg(long)]
        timeout: Option<u64>,
        /// Do not wait for Enter after the table (the default waits only when stdin is a
        /// terminal, leaving everything running for inspection).
        #[arg(long)]
        no_pause: bool,
    },
    /// Start N simulated domains and their agents, without a broker, and keep them until
    /// Ctrl-C: point your own broker's socket_dir at <dir>/sockets.
    Run {
        /// Number of simulated domains.
        #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=2000))]
        domains: u16,
        /// Folder for sockets, guest roots and logs (kept). Default: a new folder under
        /// $TMPDIR, removed at the end.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Domain name prefix (names are <prefix>01, <prefix>02, ...).
        #[arg(long, default_value = "vm")]
        prefix: String,
        /// Folder holding the binaries (see `demo --bin-dir`).
        #[arg(long, env = "XENCHAN_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// List the scenarios `demo --scenario` plays.
    Scenarios,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario {s:?}; one of: {}", names.join(", "))
    })
}

fn exit_for(e: &SimError) -> Exit {
    match e {
        SimError::Dir { .. } | SimError::PathTooLong { .. } => Exit::IoErr,
        _ => Exit::Unavailable,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Scenarios => {
            for s in Scenario::ALL {
                println!("{:<15} {}", s.name(), s.about());
            }
            ExitCode::SUCCESS
        }
        Command::Demo {
            domains,
            hosts,
            scenario,
            dir,
            keep,
            bin_dir,
            timeout,
            no_pause,
        } => {
            let domains = usize::from(domains);
            if domains < scenario.min_domains() {
                eprintln!(
                    "error: scenario {scenario} needs --domains {} or more",
                    scenario.min_domains()
                );
                return Exit::Usage.into();
            }
            let hosts = usize::from(hosts);
            if let Some(why) = scenario.refuse_hosts(hosts) {
                eprintln!("error: {why}");
                return Exit::Usage.into();
            }
            if hosts > 1
                && let Err(e) = xenchan_sim::cluster::require_etcd(hosts)
            {
                eprintln!("error: {e}");
                return Exit::Unavailable.into();
            }
            let opts = DemoOptions {
                domains,
                hosts,
                scenario,
                deadline: Duration::from_secs(timeout.unwrap_or(60 + 2 * domains as u64)),
                pause: !no_pause,
                keep,
            };
            let mut sim = match Sim::new(SimOptions { dir, keep, bin_dir }).await {
                Ok(s) => s,
                Err(e) => {
                    let code = exit_for(&e);
                    eprintln!(
                        "error: {:#}",
                        anyhow::Error::new(e).context("cannot start the simulation")
                    );
                    return code.into();
                }
            };
            let end = tokio::select! {
                end = demo::run(&mut sim, &opts) => end,
                () = demo::interrupted() => DemoEnd::Interrupted,
            };
            if end == DemoEnd::Interrupted {
                eprintln!("\ninterrupted: stopping agents, domains and the broker");
            }
            let kept = keep.then(|| sim.dir().to_path_buf());
            sim.shutdown().await;
            if let Some(k) = kept {
                println!("kept {}", k.display());
            }
            match end {
                DemoEnd::Ok => ExitCode::SUCCESS,
                DemoEnd::Failed => Exit::Unavailable.into(),
                DemoEnd::Interrupted => Exit::Interrupted.into(),
            }
        }
        Command::Run {
            domains,
            dir,
            prefix,
            bin_dir,
        } => match run_domains(usize::from(domains), dir, &prefix, bin_dir).await {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("error: {e:#}");
                code.into()
            }
        },
    }
}

async fn run_domains(
    n: usize,
    dir: Option<PathBuf>,
    prefix: &str,
    bin_dir: Option<PathBuf>,
) -> Result<(), (Exit, anyhow::Error)> {
    let mut sim = Sim::new(SimOptions {
        dir,
        keep: false,
        bin_dir,
    })
    .await
    .map_err(|e| {
        (
            exit_for(&e),
            anyhow::Error::new(e).context("cannot start the simulation"),
        )
    })?;
    let specs: Vec<DomainSpec> = (0..n)
        .map(|_| {
            let mut s = sim.next_spec(prefix);
            s.agent_args = scenario::agent_args();
            s
        })
        .collect();
    let started = sim
        .add_domains(specs)
        .await
        .context("cannot start the domains");
    if let Err(e) = started {
        sim.shutdown().await;
        return Err((Exit::Unavailable, e));
    }
    let env = sim.env();
    println!(
        "{n} domain(s) running; socket folder {}",
        env.socket_dir.display()
    );
    println!(
        "point a broker at it (socket_dir = \"{}\"); UUIDs for PUT ...?uuid=:",
        env.socket_dir.display()
    );
    for d in sim.domains() {
        println!(
            "  {:<12} uuid {}  mac {}  root {}",
            d.name(),
            d.spec().uuid,
            d.spec().mac,
            d.root().path().display()
        );
    }
    println!(
        "xenstore (dom0) {}; logs {}",
        env.xenstore.dom0_socket().display(),
        env.logs_dir.display()
    );
    println!("Ctrl-C stops them.");
    demo::interrupted().await;
    eprintln!("stopping");
    sim.shutdown().await;
    Ok(())
}
