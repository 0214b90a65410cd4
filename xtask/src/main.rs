//! `cargo xtask`: build tasks of the xenchan workspace that cargo alone does not do.
//!
//! - `cargo xtask man`: roff man pages from the binaries' clap definitions
//!   (`xenchan_cli::Cli`, `xenchan_broker::cli::Args`, `xenchan_agent::cli::{AgentArgs,
//!   ConsoleSetupArgs}`), one page per subcommand;
//! - `cargo xtask completions`: bash, zsh and fish completions of `xenchan` and
//!   `xenchan-broker`;
//! - `cargo xtask deb`: both of the above, a release build, then `cargo deb` for the
//!   `xenchan-broker` (dom0) and `xenchan-agent` (guest) packages.
//!
//! Generated files go to `<target dir>/release/xtask/`, where the packages'
//! `[package.metadata.deb]` assets find them (cargo-deb maps `target/release/` to the real
//! target folder, `CARGO_TARGET_DIR` included).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// xenchan build tasks: man pages, shell completions and Debian packages.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    after_help = "\
Generated files go to <target dir>/release/xtask/{man,completions} unless --out says
otherwise; packages to <target dir>/debian/.

Examples:
  cargo xtask man && man -l target/release/xtask/man/man1/xenchan.1
  cargo xtask completions --out /tmp/completions
  cargo xtask deb                  # needs cargo-deb: cargo install cargo-deb --locked
  CARGO_TARGET_DIR=/work/target-pkg cargo xtask deb"
)]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write man pages: xenchan(1) and one page per subcommand (xenchan-hook(1), ...),
    /// xenchan-broker(8), xenchan-agent(8), xen-console-setup(8). Into <OUT>/man1, <OUT>/man8.
    Man {
        /// Folder to write into [default: <target dir>/release/xtask/man].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Write shell completions of xenchan and xenchan-broker into <OUT>/bash (file named
    /// like the command), <OUT>/zsh (_command) and <OUT>/fish (command.fish).
    Completions {
        /// Folder to write into [default: <target dir>/release/xtask/completions].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build the xenchan-broker and xenchan-agent Debian packages: man pages and
    /// completions, `cargo build --release --locked` of the three binaries' crates, then
    /// `cargo deb --no-build` for each package.
    Deb {
        /// Folder for the .deb files [default: <target dir>/debian].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Use the release binaries already built.
        #[arg(long)]
        no_build: bool,
    },
}

/// A man page source: the command and its section.
fn man_sources() -> Vec<(clap::Command, &'static str)> {
    vec![
        (xenchan_cli::Cli::command(), "1"),
        (xenchan_broker::cli::Args::command(), "8"),
        (xenchan_agent::cli::AgentArgs::command(), "8"),
        (xenchan_agent::cli::ConsoleSetupArgs::command(), "8"),
    ]
}

/// Commands that get completions, and their names.
fn completion_sources() -> Vec<(clap::Command, &'static str)> {
    vec![
        (xenchan_cli::Cli::command(), "xenchan"),
        (xenchan_broker::cli::Args::command(), "xenchan-broker"),
    ]
}

/// Writes `bytes` to `path` (parents made).
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes `dir` if it exists, so that pages of removed subcommands do not linger.
fn clear(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Renders the page of `cmd` and of each of its subcommands (recursively).
fn man_pages(
    cmd: &clap::Command,
    section: &str,
    out: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    // After build(), subcommands are named for man (`xenchan-domain-set`) and usage
    // (`xenchan domain set`).
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("xenchan")
        .source(format!("xenchan {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    man.render(&mut buf)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let path = out
        .join(format!("man{section}"))
        .join(format!("{name}.{section}"));
    write(&path, &buf)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        man_pages(sub, section, out, written)?;
    }
    Ok(())
}

/// `cargo xtask man`.
fn man(out: &Path) -> Result<Vec<PathBuf>> {
    clear(&out.join("man1"))?;
    clear(&out.join("man8"))?;
    let mut written = Vec::new();
    for (mut cmd, section) in man_sources() {
        cmd.build();
        man_pages(&cmd, section, out, &mut written)?;
    }
    Ok(written)
}

/// `cargo xtask completions`.
fn completions(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        clear(&out.join(dir))?;
        for (mut cmd, name) in completion_sources() {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut buf);
            // Where Debian's bash-completion, zsh and fish look for them.
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.to_string(),
            };
            let path = out.join(dir).join(file);
            write(&path, &buf)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Debian policy wants man pages compressed with `gzip -9n` (no name, no time stamp, so
/// that builds are reproducible); cargo-deb only compresses pages it does not take from
/// the target folder. Writes `<dst>/manN/page.N.gz` for each page under `src`.
fn gzip_pages(src: &Path, dst: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for section in ["man1", "man8"] {
        clear(&dst.join(section))?;
        let dir = src.join(section);
        let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        pages.sort();
        for page in pages {
            let out = Command::new("gzip")
                .args(["-9", "-n", "-c"])
                .arg(&page)
                .output()
                .context("cannot run gzip")?;
            if !out.status.success() {
                bail!(
                    "gzip {} failed: {}",
                    page.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let name = page
                .file_name()
                .context("a page has a name")?
                .to_string_lossy();
            let path = dst.join(section).join(format!("{name}.gz"));
            write(&path, &out.stdout)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The cargo that runs us (or `cargo`).
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace's target folder, as cargo sees it (`CARGO_TARGET_DIR`, config).
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed no JSON")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// The default folder of generated files.
fn xtask_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("release").join("xtask"))
}

fn run(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: running {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, stdout.trim());
    }
    Ok(stdout)
}

/// The packaged daemon: `xenchan-agent` built with the `agent` profile for musl, statically
/// linked and without the `consoles` feature (the one user of libudev, a binary of its
/// own), copied to `<dir>/xenchan-agent` where the package's asset list takes it. It idles
/// in every guest: static linking leaves no shared-library pages and no dynamic
/// relocations, which is what brings its idle RSS under 3 MiB (docs/PERFORMANCE.md,
/// "Agent idle RSS").
fn static_agent(dir: &Path, no_build: bool) -> Result<()> {
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let built = target_dir()?
        .join(&target)
        .join("agent")
        .join("xenchan-agent");
    let sysroot = run(Command::new("rustc").args(["--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(&target);
    let built = if lib.is_dir() {
        built
    } else {
        // A package that works beats none: the dynamic release build, said loudly (its
        // idle RSS is about 2 MiB more; packaging/test-install.sh says it skips its check).
        eprintln!(
            "xtask: WARNING: the standard library for {target} is not installed ({} is \
             missing), so the package gets the dynamically linked release build of \
             xenchan-agent, not the static one: rustup target add {target} \
             (scripts/setup.sh does this when it can reach the Rust servers)",
            lib.display()
        );
        target_dir()?.join("release").join("xenchan-agent")
    };
    if !no_build && lib.is_dir() {
        run(cargo().args([
            "build",
            "--profile",
            "agent",
            "--locked",
            "-p",
            "xenchan-agent",
            "--no-default-features",
            "--bin",
            "xenchan-agent",
            "--target",
            &target,
        ]))?;
    }
    if !built.is_file() {
        bail!(
            "{} is missing: run cargo xtask deb without --no-build once",
            built.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let to = dir.join("xenchan-agent");
    std::fs::copy(&built, &to)
        .with_context(|| format!("cannot copy {} to {}", built.display(), to.display()))?;
    Ok(())
}

/// `cargo xtask deb`.
fn deb(out: Option<PathBuf>, no_build: bool) -> Result<Vec<PathBuf>> {
    let has_deb = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        bail!("cargo-deb is not installed: cargo install cargo-deb --locked");
    }
    let gen_dir = xtask_dir()?;
    man(&gen_dir.join("man"))?;
    gzip_pages(&gen_dir.join("man"), &gen_dir.join("man-gz"))?;
    completions(&gen_dir.join("completions"))?;
    if !no_build {
        run(cargo().args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "-p",
            "xenchan-broker",
            "-p",
            "xenchan-cli",
            "-p",
            "xenchan-agent",
        ]))?;
    }
    static_agent(&gen_dir.join("agent"), no_build)?;
    let out = match out {
        Some(o) => o,
        None => target_dir()?.join("debian"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut debs = Vec::new();
    for package in ["xenchan-broker", "xenchan-agent"] {
        let printed = run(cargo()
            .args(["deb", "--no-build", "--locked", "-p", package, "-o"])
            .arg(&out))?;
        // cargo-deb prints the path of the package it wrote.
        let path = printed
            .lines()
            .map(str::trim)
            .rfind(|l| Path::new(l).extension().is_some_and(|e| e == "deb"))
            .map(PathBuf::from)
            .with_context(|| format!("cargo deb -p {package} named no .deb: {printed}"))?;
        debs.push(path);
    }
    Ok(debs)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.task {
        Task::Man { out } => out
            .map_or_else(|| xtask_dir().map(|d| d.join("man")), Ok)
            .and_then(|o| man(&o)),
        Task::Completions { out } => out
            .map_or_else(|| xtask_dir().map(|d| d.join("completions")), Ok)
            .and_then(|o| completions(&o)),
        Task::Deb { out, no_build } => deb(out, no_build),
    };
    match result {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_for_every_binary_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = man(dir.path()).unwrap();
        for page in [
            "man1/xenchan.1",
            "man1/xenchan-hook.1",
            "man1/xenchan-xl-channel.1",
            "man1/xenchan-domain-set.1",
            "man1/xenchan-status.1",
            "man8/xenchan-broker.8",
            "man8/xenchan-agent.8",
            "man8/xenchan-agent-consoles.8",
            "man8/xen-console-setup.8",
        ] {
            let p = dir.path().join(page);
            assert!(written.contains(&p), "{page} not written: {written:?}");
        }
        let hook = std::fs::read_to_string(dir.path().join("man1/xenchan-hook.1")).unwrap();
        assert!(hook.contains(".TH xenchan-hook 1"), "{hook}");
        assert!(
            hook.contains("reconnect begin"),
            "the long help is in the page"
        );
        assert!(
            !written
                .iter()
                .any(|p| p.to_string_lossy().contains("-help."))
        );
        // Regenerating replaces, and does not keep pages of removed commands.
        std::fs::write(dir.path().join("man1/xenchan-gone.1"), "stale").unwrap();
        man(dir.path()).unwrap();
        assert!(!dir.path().join("man1/xenchan-gone.1").exists());
    }

    #[test]
    fn packaged_pages_are_gzipped_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        man(&dir.path().join("man")).unwrap();
        let a = gzip_pages(&dir.path().join("man"), &dir.path().join("gz")).unwrap();
        assert!(
            a.contains(&dir.path().join("gz/man1/xenchan.1.gz")),
            "{a:?}"
        );
        let first = std::fs::read(dir.path().join("gz/man8/xenchan-broker.8.gz")).unwrap();
        assert_eq!(&first[..2], b"\x1f\x8b", "gzip magic");
        gzip_pages(&dir.path().join("man"), &dir.path().join("gz")).unwrap();
        let second = std::fs::read(dir.path().join("gz/man8/xenchan-broker.8.gz")).unwrap();
        assert_eq!(first, second, "same bytes every time (gzip -n)");
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let written = completions(dir.path()).unwrap();
        assert_eq!(written.len(), 6);
        let bash = std::fs::read_to_string(dir.path().join("bash/xenchan")).unwrap();
        assert!(
            bash.contains("xl-channel") && bash.contains("hook"),
            "{bash}"
        );
        assert!(dir.path().join("zsh/_xenchan-broker").is_file());
        assert!(dir.path().join("fish/xenchan.fish").is_file());
    }
}
