//! Finding (and, from a source tree, building) the real binaries the simulator runs.
//!
//! Order: an explicit folder (`--bin-dir` or `XENCHAN_BIN_DIR`) is used as is. Otherwise
//! the binaries are looked for next to the running executable (for test executables,
//! which live in `target/<profile>/deps`, one folder up). When the simulator was built
//! from this workspace and was started by cargo (`cargo run`, `cargo test`), or when a
//! binary is missing, it first runs `cargo build --bins -p xenchan-broker -p
//! xenchan-agent` for the same profile and target folder: `cargo` only builds the
//! binaries of the package it runs, and an older broker or agent would be tested
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The broker binary's name.
pub const BROKER: &str = "xenchan-broker";
/// The agent binary's name.
pub const AGENT: &str = "xenchan-agent";
/// The hotplug helper's name.
pub const CONSOLE_SETUP: &str = "xen-console-setup";
/// The simulator's own binary.
pub const SIM: &str = "xenchan-sim";
/// The operator CLI (`xenchan-cli`): not run by the simulator, only by the end-to-end
/// tests of the CLI, so [`Binaries::in_dir`] does not require it (see [`Binaries::cli`]).
pub const CLI: &str = "xenchan";
/// Environment variable naming a folder holding all the binaries (no build then).
pub const ENV_BIN_DIR: &str = "XENCHAN_BIN_DIR";

/// The packages whose binaries the simulator runs.
pub const PACKAGES: &[&str] = &["xenchan-broker", "xenchan-agent"];

/// Why the binaries are not available.
#[derive(Debug, Error)]
pub enum BinariesError {
    /// Some binaries are not in the folder.
    #[error(
        "{} not found in {}; build them with `cargo build --bins -p {}` \
         (same profile as the simulator) or point {ENV_BIN_DIR} / --bin-dir at a folder holding them",
        missing.join(", "),
        dir.display(),
        packages_of(missing).join(" -p ")
    )]
    Missing {
        /// The folder searched.
        dir: PathBuf,
        /// The missing names.
        missing: Vec<&'static str>,
    },
    /// The running executable's location is unknown.
    #[error("cannot find the running executable's folder")]
    NoExe(#[source] std::io::Error),
    /// `cargo build` could not run or failed.
    #[error("`{command}` failed")]
    Build {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Paths of the binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `xenchan-broker`.
    pub broker: PathBuf,
    /// `xenchan-agent`.
    pub agent: PathBuf,
    /// `xen-console-setup`.
    pub console_setup: PathBuf,
    /// The folder they are in.
    pub dir: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, all of which must exist.
    pub fn in_dir(dir: &Path) -> Result<Binaries, BinariesError> {
        let missing: Vec<&'static str> = [BROKER, AGENT, CONSOLE_SETUP]
            .into_iter()
            .filter(|n| !dir.join(n).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(BinariesError::Missing {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        Ok(Binaries {
            broker: dir.join(BROKER),
            agent: dir.join(AGENT),
            console_setup: dir.join(CONSOLE_SETUP),
            dir: dir.to_path_buf(),
        })
    }

    /// Finds the binaries as the module documentation says; `explicit` is `--bin-dir`.
    /// Build progress goes to stderr.
    pub fn locate(explicit: Option<&Path>) -> Result<Binaries, BinariesError> {
        if let Some(dir) = explicit {
            return Binaries::in_dir(dir);
        }
        if let Some(dir) = std::env::var_os(ENV_BIN_DIR).filter(|d| !d.is_empty()) {
            return Binaries::in_dir(Path::new(&dir));
        }
        let dir = profile_dir()?;
        let started_by_cargo = std::env::var_os("CARGO").is_some();
        let missing = Binaries::in_dir(&dir).is_err();
        if let Some(ws) = workspace_dir()
            && (started_by_cargo || missing)
        {
            build(&ws, &dir, PACKAGES)?;
        }
        Binaries::in_dir(&dir)
    }

    /// The `xenchan` CLI in the same folder, if it is there. Separate from the fields:
    /// the simulator and the benchmarks never run it, and a `--bin-dir` for them need not
    /// hold it. [`build`] in a debug profile builds it with the rest of the workspace.
    pub fn cli(&self) -> Result<PathBuf, BinariesError> {
        let path = self.dir.join(CLI);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BinariesError::Missing {
                dir: self.dir.clone(),
                missing: vec![CLI],
            })
        }
    }
}

/// The packages building `binaries` (for the hint in [`BinariesError::Missing`]), each
/// once, in order.
fn packages_of(binaries: &[&'static str]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for b in binaries {
        let p = match *b {
            BROKER => "xenchan-broker",
            AGENT | CONSOLE_SETUP => "xenchan-agent",
            CLI => "xenchan-cli",
            SIM => "xenchan-sim",
            other => other,
        };
        if !packages.contains(&p) {
            packages.push(p);
        }
    }
    packages
}

/// `target/<profile>` of the running executable.
pub fn profile_dir() -> Result<PathBuf, BinariesError> {
    let exe = std::env::current_exe().map_err(BinariesError::NoExe)?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| BinariesError::NoExe(std::io::Error::other("executable has no folder")))?
        .to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    Ok(dir)
}

/// The workspace this simulator was built from, if its sources are still there.
pub fn workspace_dir() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).ok()?;
    (manifest.contains("[workspace]")
        && ws.join("broker").is_dir()
        && ws.join("guest-agent").is_dir())
    .then_some(ws)
}

/// Builds the binaries so they land in `profile_dir` (`target/<profile>`).
///
/// A debug build is `cargo build --workspace --bins --tests`: the same units, with the
/// same features, as `make test` (`cargo test --workspace`) and `make demo`, so after
/// either it is a no-op. `--bins -p <packages>` alone resolves features without the
/// dev-dependencies (proptest turns on more of getrandom and regex-syntax, the bench
/// more of nix): every crate above those would be compiled a second time, which cost a
/// cold CI run about ten minutes. Other profiles (the bench's release build) build only
/// `packages`.
pub fn build(workspace: &Path, profile_dir: &Path, packages: &[&str]) -> Result<(), BinariesError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // The cargo that started us has already brought Cargo.lock up to date.
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--locked")
        .arg("--bins");
    let debug = matches!(
        profile_dir.file_name().and_then(|n| n.to_str()),
        Some("debug") | None
    );
    if debug {
        cmd.arg("--workspace").arg("--tests");
    } else {
        for p in packages {
            cmd.arg("-p").arg(p);
        }
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let line = format!("{cmd:?}");
    eprintln!("xenchan-sim: building the binaries it runs: {line}");
    let status = cmd.status().map_err(|source| BinariesError::Build {
        command: line.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BinariesError::Build {
            command: line,
            source: std::io::Error::other(format!("cargo exited with {status}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint names the packages that build what is missing, and the CLI is only
    /// asked for by [`Binaries::cli`].
    #[test]
    fn a_missing_binary_is_named_with_the_package_that_builds_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Binaries::in_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("xenchan-broker, xenchan-agent, xen-console-setup not found in "),
            "{e}"
        );
        assert!(
            e.contains("`cargo build --bins -p xenchan-broker -p xenchan-agent`"),
            "{e}"
        );

        for name in [BROKER, AGENT, CONSOLE_SETUP] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let bins = Binaries::in_dir(dir.path()).unwrap();
        let e = bins.cli().unwrap_err().to_string();
        assert!(e.starts_with("xenchan not found in "), "{e}");
        assert!(e.contains("`cargo build --bins -p xenchan-cli`"), "{e}");

        std::fs::write(dir.path().join(CLI), b"").unwrap();
        assert_eq!(bins.cli().unwrap(), dir.path().join("xenchan"));
    }
}
