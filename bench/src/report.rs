//! The figures of one run: printed as a table (Markdown, so it can be pasted into
//! docs/PERFORMANCE.md as is) and written as JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::stats::Summary;

/// A target and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// As the issue states it (`< 2 ms`).
    pub text: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
}

impl Target {
    /// Met when the median is below `limit`.
    pub fn below(text: &str, limit: f64, s: Option<&Summary>) -> Target {
        Target {
            text: text.into(),
            met: s.map(|s| s.median < limit),
        }
    }

    /// Met when the median is at least `limit`.
    pub fn at_least(text: &str, limit: f64, s: Option<&Summary>) -> Target {
        Target {
            text: text.into(),
            met: s.map(|s| s.median >= limit),
        }
    }
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Which measurement (`broker scale`, `end-to-end`...).
    pub section: String,
    /// What this figure is.
    pub name: String,
    /// Unit of the values.
    pub unit: String,
    /// The samples summarised; `None` when it was not measured (see `note`).
    pub value: Option<Summary>,
    /// The target, if it sets one.
    pub target: Option<Target>,
    /// How it was measured, or why it was skipped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Collects figures as sections produce them.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The machine and the run.
    pub machine: Machine,
    /// Every figure, in order.
    pub figures: Vec<Figure>,
    /// Lines said about the run (skips, reasons).
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a figure and echoes it to stderr as it comes.
    pub fn add(
        &mut self,
        section: &str,
        name: impl Into<String>,
        unit: &str,
        value: Option<Summary>,
        target: Option<Target>,
        note: impl Into<String>,
    ) {
        let f = Figure {
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            value,
            target,
            note: note.into(),
        };
        eprintln!(
            "  {} / {}: {} {}",
            f.section,
            f.name,
            f.value.map_or_else(|| "-".into(), |v| fmt_num(v.median)),
            f.unit
        );
        self.figures.push(f);
    }

    /// A note for the end of the table (a skipped measurement and why).
    pub fn note(&mut self, text: impl Into<String>) {
        let t = text.into();
        eprintln!("  note: {t}");
        self.notes.push(t);
    }

    /// The table, Markdown.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "Machine: {} ({} cores), {} MiB RAM, {}, kernel {}; temporary folders on {} \
             (fsync of 4 KiB: median {} ms).\n",
            m.cpu,
            m.cores,
            m.mem_mib,
            m.os,
            m.kernel,
            m.tmp_fs,
            m.fsync_ms.map_or_else(|| "?".into(), fmt_num),
        );
        let during = m.load_during.map_or_else(
            || "not sampled".into(),
            |l| {
                format!(
                    "median {} (min {}, max {}, {} samples)",
                    fmt_num(l.median),
                    fmt_num(l.min),
                    fmt_num(l.max),
                    l.n
                )
            },
        );
        let others = if m.others_seen.is_empty() {
            "none".to_string()
        } else {
            group_by_name(&m.others_seen)
        };
        let _ = writeln!(
            o,
            "Load: 1-minute load average during the run {during}; load averages (1, 5, 15 min) \
             {} at start, {} at end; other heavy programs seen during the run: {others}.\n",
            m.load_start, m.load_end,
        );
        let tree = match (&m.commit, m.uncommitted.len()) {
            (None, _) => "commit unknown".to_string(),
            (Some(c), 0) => format!("commit {c}"),
            (Some(c), n) => format!(
                "commit {c} with {n} uncommitted file(s) in the measured crates ({})",
                m.uncommitted.join(", ")
            ),
        };
        let _ = writeln!(
            o,
            "Run: {} mode, {} s, started {}, {tree}{}.\n",
            if m.quick { "quick" } else { "full" },
            m.duration_s.round(),
            m.started,
            if m.root { "" } else { ", not root" },
        );
        let _ = writeln!(
            o,
            "| section | figure | median | min - max | n | target | |"
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---|---|");
        for f in &self.figures {
            let (med, range, n) = match &f.value {
                Some(v) if v.n > 1 => (
                    format!("{} {}", fmt_num(v.median), f.unit),
                    format!("{} - {}", fmt_num(v.min), fmt_num(v.max)),
                    v.n.to_string(),
                ),
                Some(v) => (
                    format!("{} {}", fmt_num(v.median), f.unit),
                    String::new(),
                    "1".into(),
                ),
                None => ("skipped".into(), String::new(), String::new()),
            };
            let (target, mark) = match &f.target {
                Some(t) => (
                    t.text.clone(),
                    match t.met {
                        Some(true) => "met",
                        Some(false) => "**missed**",
                        None => "not measured",
                    },
                ),
                None => (String::new(), ""),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {med} | {range} | {n} | {target} | {mark} |",
                f.section, f.name
            );
        }
        if !self.notes.is_empty() {
            o.push('\n');
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
        }
        o
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(path)?;
        f.write_all(&text)?;
        f.write_all(b"\n")
    }
}

/// `rustc (12), rustc (14), cargo (9)` as `rustc (2 processes), cargo (pid 9)`.
fn group_by_name(procs: &[String]) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for p in procs {
        let (name, pid) = p
            .rsplit_once(" (")
            .map_or((p.as_str(), ""), |(n, pid)| (n, pid.trim_end_matches(')')));
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, pids)) => pids.push(pid),
            None => groups.push((name, vec![pid])),
        }
    }
    groups
        .iter()
        .map(|(name, pids)| match pids.as_slice() {
            [one] => format!("{name} (pid {one})"),
            many => format!("{name} ({} processes)", many.len()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Numbers with as many decimals as their size deserves.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 0.1 {
        format!("{v:.3}")
    } else if a < 10.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The machine the figures come from.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores online.
    pub cores: usize,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Operating system.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started.
    pub load_start: String,
    /// ... and when it ended.
    pub load_end: String,
    /// File system of the temporary folder.
    pub tmp_fs: String,
    /// Median time of a 4 KiB write + fdatasync in the temporary folder.
    pub fsync_ms: Option<f64>,
    /// Quick mode.
    pub quick: bool,
    /// Wall-clock start (RFC 3339 UTC).
    pub started: String,
    /// Run time in seconds.
    pub duration_s: f64,
    /// The workspace's git commit, if known.
    pub commit: Option<String>,
    /// Files of the crates measured that differ from `commit` (the binaries were built
    /// from the working tree, so these changes are in the figures).
    pub uncommitted: Vec<String>,
    /// Whether we ran as root (namespaces, qemu-guest-agent).
    pub root: bool,
    /// The 1-minute load average sampled every few seconds during the run.
    pub load_during: Option<Summary>,
    /// Other heavy programs seen running during the run (QEMU virtual machines, compilers),
    /// as `name (pid)`: their load is in the figures.
    pub others_seen: Vec<String>,
}

/// The three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// What /proc and uname say, and the file system and fsync cost of `tmp`.
    pub fn probe(tmp: &Path, quick: bool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|r| r.split_once(':'))
            .map_or_else(|| "unknown CPU".into(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |k| k / 1024);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            mem_mib,
            os,
            kernel,
            load_start: loadavg(),
            load_end: String::new(),
            tmp_fs: fs_type(tmp),
            fsync_ms: fsync_cost(tmp),
            quick,
            started: xenchan_sim_now(),
            duration_s: 0.0,
            commit: git_commit(),
            uncommitted: git_uncommitted(),
            root: nix::unistd::geteuid().is_root(),
            load_during: None,
            others_seen: Vec::new(),
        }
    }

    /// Records what a [`LoadSampler`] saw.
    pub fn take_load(&mut self, sampler: LoadSampler) {
        let (loads, others) = sampler.finish();
        self.load_during = Summary::of(&loads);
        self.others_seen = others;
    }
}

/// Programs whose load would distort the figures when they run next to the bench
/// (matched on the start of `/proc/<pid>/comm`).
pub const HEAVY: &[&str] = &["qemu-system", "rustc", "cc1", "cargo", "ld"];

/// Samples the 1-minute load average and looks for [`HEAVY`] programs every
/// [`LoadSampler::EVERY`] on a thread, until [`LoadSampler::finish`].
#[derive(Debug)]
pub struct LoadSampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<(Vec<f64>, Vec<String>)>,
}

impl LoadSampler {
    /// Interval between samples.
    pub const EVERY: Duration = Duration::from_secs(2);

    /// Starts sampling (one sample at once).
    pub fn start() -> LoadSampler {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut loads = Vec::new();
            let mut others: Vec<String> = Vec::new();
            loop {
                if let Some(l) = load1() {
                    loads.push(l);
                }
                for o in heavy_processes() {
                    if !others.contains(&o) {
                        others.push(o);
                    }
                }
                if !matches!(
                    rx.recv_timeout(Self::EVERY),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ) {
                    return (loads, others);
                }
            }
        });
        LoadSampler { stop, thread }
    }

    /// Stops sampling: the 1-minute load averages seen and the heavy programs seen.
    pub fn finish(self) -> (Vec<f64>, Vec<String>) {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Running [`HEAVY`] programs that are not ours (not this process, its children or its
/// ancestors, such as the `cargo run` that started it), as `name (pid)`.
pub fn heavy_processes() -> Vec<String> {
    let me = std::process::id();
    let mut ancestors = Vec::new();
    let mut p = parent_of(me);
    while let Some(pid) = p.filter(|p| *p > 1 && !ancestors.contains(p)) {
        ancestors.push(pid);
        p = parent_of(pid);
    }
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || ancestors.contains(&pid) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        let heavy = HEAVY
            .iter()
            .any(|h| comm == *h || (h.len() > 3 && comm.starts_with(h)));
        if heavy && parent_of(pid) != Some(me) {
            out.push(format!("{comm} ({pid})"));
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn xenchan_sim_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => format!("unix {secs}"),
    }
}

/// The crates whose code the measured binaries are built from.
const MEASURED_CRATES: &[&str] = &[
    "Cargo.lock",
    "bench",
    "broker",
    "guest-agent",
    "netconf",
    "protocol",
    "registry",
    "sim",
    "xenstore",
];

fn git_uncommitted() -> Vec<String> {
    let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        return Vec::new();
    };
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(ws)
        .args(["status", "--porcelain", "--untracked-files=no", "--"])
        .args(MEASURED_CRATES)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.get(3..))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn git_commit() -> Option<String> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(ws)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The file system type of the mount holding `path` (longest matching mount point).
pub fn fs_type(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = f[1].replace("\\040", " ");
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(n, _, _)| mp.len() > *n) {
            best = Some((mp.len(), mp, f[2].to_string()));
        }
    }
    best.map_or_else(|| "?".into(), |(_, mp, t)| format!("{t} ({mp})"))
}

/// Median of 30 times (4 KiB written over the same block, then fdatasync) in `dir`.
pub fn fsync_cost(dir: &Path) -> Option<f64> {
    use std::os::unix::fs::FileExt;
    let f = tempfile::tempfile_in(dir).ok()?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::new();
    for _ in 0..30 {
        let t = std::time::Instant::now();
        f.write_all_at(&block, 0).ok()?;
        f.sync_data().ok()?;
        samples.push(ms(t.elapsed()));
    }
    Summary::of(&samples).map(|s| s.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_rounded_to_their_size() {
        assert_eq!(fmt_num(0.01234), "0.012");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1234.5), "1234");
    }

    #[test]
    fn heavy_programs_are_grouped_by_name() {
        let seen = [
            "rustc (12)".to_string(),
            "qemu-system-x86 (7)".to_string(),
            "rustc (14)".to_string(),
        ];
        assert_eq!(
            group_by_name(&seen),
            "rustc (2 processes), qemu-system-x86 (pid 7)"
        );
    }

    #[test]
    fn table_marks_targets_and_skips() {
        let mut report = Report::default();
        let summary = Summary::of(&[1.0, 2.0, 3.0]);
        report.add(
            "e2e",
            "latency",
            "ms",
            summary,
            Some(Target::below("< 2 ms", 2.0, summary.as_ref())),
            "",
        );
        report.add("e2e", "qga", "ms", None, None, "not installed");
        report.note("qemu-guest-agent is not installed");
        let t = report.table();
        assert!(t.contains("| e2e | latency | 2.00 ms | 1.00 - 3.00 | 3 | < 2 ms | **missed** |"));
        assert!(t.contains("| e2e | qga | skipped |"));
        assert!(t.contains("- qemu-guest-agent is not installed"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        report.write_json(&p).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["figures"][0]["value"]["median"], 2.0);
        assert_eq!(v["figures"][0]["target"]["met"], false);
    }
}
