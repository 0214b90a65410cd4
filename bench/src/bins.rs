//! The binaries the measurements run: the real broker, agent and hotplug helper, and
//! this crate's swarm and agent wrapper. Found next to the running executable; when it
//! was started by cargo (`cargo run`), they are built first for the same profile, since
//! cargo only builds the binary it runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Paths of every binary used.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `xenchan-broker`.
    pub broker: PathBuf,
    /// `xenchan-agent`.
    pub agent: PathBuf,
    /// `xen-console-setup`.
    pub console_setup: PathBuf,
    /// `xenchan-bench-agent`.
    pub bench_agent: PathBuf,
    /// `xenchan-bench-swarm`.
    pub swarm: PathBuf,
    /// The folder.
    pub dir: PathBuf,
}

/// The packages whose binaries are needed.
pub const PACKAGES: &[&str] = &["xenchan-broker", "xenchan-agent", "xenchan-bench"];

impl Bins {
    /// Every binary in `dir`, or an error naming the missing ones.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Bins> {
        let b = Bins {
            broker: dir.join("xenchan-broker"),
            agent: dir.join("xenchan-agent"),
            console_setup: dir.join("xen-console-setup"),
            bench_agent: dir.join("xenchan-bench-agent"),
            swarm: dir.join("xenchan-bench-swarm"),
            dir: dir.to_path_buf(),
        };
        let missing: Vec<String> = [
            &b.broker,
            &b.agent,
            &b.console_setup,
            &b.bench_agent,
            &b.swarm,
        ]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
        if !missing.is_empty() {
            bail!(
                "{} not found in {}; build them with `cargo build --release --bins -p {}` or point --bin-dir at them",
                missing.join(", "),
                dir.display(),
                PACKAGES.join(" -p ")
            );
        }
        Ok(b)
    }

    /// `explicit` (`--bin-dir`) as is; otherwise the running executable's folder, built
    /// first when cargo started us or something is missing.
    pub fn locate(explicit: Option<&Path>) -> anyhow::Result<Bins> {
        if let Some(d) = explicit {
            return Bins::in_dir(d);
        }
        let dir = xenchan_sim::binaries::profile_dir().context("locating the binaries")?;
        let by_cargo = std::env::var_os("CARGO").is_some();
        if (by_cargo || Bins::in_dir(&dir).is_err())
            && let Some(ws) = xenchan_sim::binaries::workspace_dir()
        {
            xenchan_sim::binaries::build(&ws, &dir, PACKAGES).context("building the binaries")?;
        }
        Bins::in_dir(&dir)
    }

    /// Whether these are optimised builds (figures from a debug build mean little).
    pub fn is_release(&self) -> bool {
        self.dir.file_name().is_some_and(|n| n != "debug")
    }
}
