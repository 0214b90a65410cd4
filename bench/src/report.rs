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
            "Machine: {} ({} cores), {} MiB RAM, {}, kernel {}; load average {} at start, {} at end; \
             temporary folders on {} (fsync of 4 KiB: median {} ms).",
            m.cpu,
            m.cores,
            m.mem_mib,
            m.os,
            m.kernel,
            m.load_start,
            m.load_end,
            m.tmp_fs,
            m.fsync_ms.map_or_else(|| "?".into(), fmt_num),
        );
        let _ = writeln!(
            o,
            "Run: {} mode, {} s, {}.\n",
            if m.quick { "quick" } else { "full" },
            m.duration_s.round(),
            m.started
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
    /// Whether we ran as root (namespaces, qemu-guest-agent).
    pub root: bool,
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
            root: nix::unistd::geteuid().is_root(),
        }
    }
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
