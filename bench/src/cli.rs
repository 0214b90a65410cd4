//! The command line of `xenchan-bench` (also what `cargo bench -p xenchan-bench` runs):
//! measures what users care about and prints it as one table (Markdown) on stdout, with
//! the JSON written to `--json FILE`. Progress goes to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Instant;
use xenchan_basics::Exit;

use crate::bins::Bins;
use crate::report::{self, LoadSampler, Machine, Report, Target, loadavg};
use crate::stats::Summary;
use crate::{cluster, codec, compare, footprint, hotplug, latency, procfs, scale, xs_discovery};
use anyhow::Context;
use clap::{Parser, ValueEnum};
use std::collections::BTreeMap;

const ABOUT: &str = "Measures xenchan: broker scale, end-to-end latency against qemu-guest-agent, \
hotplug to configured, the agent's footprint and the decoder's throughput.";

const LONG_ABOUT: &str =
    "Measures xenchan on this machine with the real binaries (release builds) \
and prints every figure as one Markdown table on stdout (median, min - max, samples, the \
issue's target and whether it was met); progress goes to stderr. docs/PERFORMANCE.md \
explains each figure and shows the latest table.

Sections (all but cluster by default, in this order):
  codec      FrameCodec throughput, MB/s of valid frames, noise, and a flood without newlines
  footprint  the agent's start to READY=1, idle RSS, stripped binary size; qemu-ga's idle RSS
  latency    connect + handshake + push (hostname, one address over netlink in a network
             namespace, three ssh keys, all fsynced) + result over the simulator's pty bridge,
             against qemu-guest-agent through the same bridge and a null guest (the floor);
             plus a second agent on a bare pty (no bridge) to tell the agent's own time
  hotplug    from the /dev/xen-channel link appearing to the result recorded by the broker
  scale      the broker against N socket-served guests (another process): handshakes, RSS per
             idle session, time from the first PUT to N results recorded, CPU (and the share
             of the broker's store thread); then N updates through the bulk PUT, timed the
             same way; with --idle-n, more N for the idle phase only (connect + handshake:
             RSS and CPU per idle session, e.g. 100,000)
  cluster    (opt-in: --only cluster, or --cluster-n) two brokers in cluster mode on one
             local etcd (data on --tmp's disk), N domains (default 10,000) split across
             their socket folders, prepared with their UUIDs: first PUT (alternately through
             either broker) to every result recorded, next to the embedded SQLite store's
             figure for the same N; broker and etcd CPU; etcd write transactions, keys
             written and WAL fsyncs per domain (counted, exact)
  xenstore   xenstore discovery at N = 100, 1,000 domains (the simulator's xenstore): xenstore
             requests per domain created and destroyed, per watch event, and of one full
             rescan (counted by the broker, not timed)

Latency and hotplug run twice: with their temporary folders in --tmp (a disk, where fsync \
costs what the disk makes it cost) and in --tmpfs (fsync is free: the software's own cost).

The machine line of the table says what else loaded the machine: the 1-minute load \
average sampled every 2 s during the run and the heavy programs seen (QEMU, compilers). \
Run it on a quiet machine: on 2 shared cores a QEMU TCG guest next door doubles figures.

Needs root for the network namespaces (latency's netlink part and qemu-guest-agent are \
skipped with a printed reason otherwise). qemu-guest-agent is compared when installed \
(Debian: apt-get install qemu-guest-agent) and reported as skipped when it is not.

Binaries are taken from the folder of this executable; when started by cargo they are \
built first (`cargo build --release --bins -p xenchan-broker -p xenchan-agent -p \
xenchan-bench`), since cargo only builds the binary it runs.";

const AFTER: &str = "Examples:
  cargo bench -p xenchan-bench
  cargo run --release -p xenchan-bench
      Everything (about 2 minutes once built); N = 100, 1,000, 10,000.
  cargo bench -p xenchan-bench -- --quick --json bench.json
      The smaller set CI runs (under a minute once built); N = 100, 1,000.
  cargo run --release -p xenchan-bench -- --only latency --iterations 200
  cargo run --release -p xenchan-bench -- --only scale --scale-n 10000
  cargo run --release -p xenchan-bench -- --only scale --idle-n 100000
      100,000 idle sessions (the broker needs RLIMIT_NOFILE above 100,512).
  cargo run --release -p xenchan-bench -- --only cluster --cluster-n 10000

Exit status: 0 every section ran (targets missed or not), 2 bad command line, 69 a \
section failed (its figures are shown as skipped, the reason on stderr and in the notes), \
74 the JSON file could not be written.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Codec,
    Footprint,
    Latency,
    Hotplug,
    Scale,
    Cluster,
    Xenstore,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "xenchan-bench", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER)]
struct Args {
    /// Smaller sample counts and N = 100, 1,000 only (a CI smoke run).
    #[arg(long)]
    quick: bool,

    /// Also write every figure, the machine and the notes as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Run only these sections (repeat or comma-separate) [default: all but cluster].
    #[arg(long, value_name = "SECTION", value_delimiter = ',')]
    only: Vec<Section>,

    /// Domain counts for the scale section [default: 100,1000,10000; quick: 100,1000].
    #[arg(long, value_name = "N", value_delimiter = ',')]
    scale_n: Vec<usize>,

    /// More domain counts for the scale section's idle phase only (connect and
    /// handshake, no configuration: broker RSS and CPU per idle session), e.g. 100000;
    /// skipped, naming the limit, when RLIMIT_NOFILE cannot be raised enough [default:
    /// none].
    #[arg(long, value_name = "N", value_delimiter = ',')]
    idle_n: Vec<usize>,

    /// Domain counts for the cluster section, which also turns it on in a run of every
    /// section [default: 10000; quick: 1000].
    #[arg(long, value_name = "N", value_delimiter = ',')]
    cluster_n: Vec<usize>,

    /// Measured end-to-end iterations per guest and folder [default: 100; quick: 30].
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,

    /// Domain counts for the xenstore section [default: 100,1000].
    #[arg(long, value_name = "N", value_delimiter = ',')]
    xenstore_n: Vec<usize>,

    /// Hotplugs per folder [default: 15; quick: 5].
    #[arg(long, value_name = "N")]
    hotplugs: Option<usize>,

    /// Folder for temporary files on a disk. Keep it short: unix socket paths hold 107
    /// bytes.
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    tmp: PathBuf,

    /// A tmpfs folder for the fsync-free runs of latency and hotplug, and for the scale
    /// and cluster sections' sockets (as QEMU's are under /run); `none` skips those runs
    /// and puts the sockets in --tmp.
    #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
    tmpfs: PathBuf,

    /// Take the binaries from DIR instead of this executable's folder (nothing is built).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Before and after in one run: also run every section that runs binaries
    /// (footprint, latency, hotplug, scale) with the binaries in DIR (a baseline build,
    /// e.g. another commit's, see `make bench-compare BASE=<rev>`), right before the
    /// current binaries' run of the same section, and print a second table with both
    /// medians and their ratio. The codec section runs in this process: current only.
    #[arg(long, value_name = "DIR")]
    baseline_bin_dir: Option<PathBuf>,

    /// What the baseline is, for the comparison table's heading [default: its folder].
    #[arg(long, value_name = "TEXT", requires = "baseline_bin_dir")]
    baseline_label: Option<String>,

    /// Passed by `cargo bench` to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Where the scale and cluster sections put their sockets: --tmpfs when it is usable,
/// else --tmp.
fn run_dir(args: &Args) -> &Path {
    tmpfs(args).unwrap_or(&args.tmp)
}

/// --tmpfs, unless it is `none` or not a folder.
fn tmpfs(args: &Args) -> Option<&Path> {
    (args.tmpfs != Path::new("none") && args.tmpfs.is_dir()).then_some(args.tmpfs.as_path())
}

/// The whole program: parses the command line, runs the sections, prints the table.
/// Shared by the `xenchan-bench` binary and the `cargo bench` target.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    // 10,000 domains: a socket each, plus the store, inotify and the API.
    procfs::raise_nofile(65_536);
    let started = Instant::now();
    let bins = match Bins::locate(args.bin_dir.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenchan-bench: {e:#}");
            return Exit::Unavailable.into();
        }
    };
    let base_bins = match args
        .baseline_bin_dir
        .as_deref()
        .map(Bins::in_dir)
        .transpose()
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenchan-bench: baseline: {e:#}");
            return Exit::Unavailable.into();
        }
    };
    let mut report = Report {
        machine: Machine::probe(&args.tmp, args.quick),
        ..Report::default()
    };
    let mut base_report = Report::default();
    let load = LoadSampler::start();
    if let Some(others) = Some(report::heavy_processes()).filter(|o| !o.is_empty()) {
        eprintln!(
            "xenchan-bench: other heavy programs are running ({}): the figures will carry their load",
            others.join(", ")
        );
    }
    if !bins.is_release() {
        report.note(format!(
            "binaries in {} are not a release build: figures are not representative",
            bins.dir.display()
        ));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xenchan-bench: cannot start the async runtime: {e}");
            return Exit::Unavailable.into();
        }
    };
    let want = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let mut failed = false;
    let mut section = |name: &str, r: anyhow::Result<()>, report: &mut Report| {
        if let Err(e) = r {
            failed = true;
            eprintln!("xenchan-bench: {name} failed: {e:#}");
            report.note(format!("{name} failed: {e:#}"));
        }
    };
    let folders = folders(&args);
    if want(Section::Codec) {
        eprintln!("== codec");
        let r = codec_section(&args, &mut report);
        section("codec", r, &mut report);
    }
    // With a baseline, each section runs for it first, then for the current binaries:
    // both sides of a figure are taken minutes apart at most, under the same load.
    let sides: Vec<(&str, &Bins)> = base_bins
        .iter()
        .map(|b| ("baseline", b))
        .chain(std::iter::once(("current", &bins)))
        .collect();
    for &(side, b) in &sides {
        let rep = if side == "baseline" {
            &mut base_report
        } else {
            &mut report
        };
        if want(Section::Footprint) {
            eprintln!("== footprint ({side})");
            let r = footprint_section(&args, b, rep);
            section("footprint", r, rep);
        }
    }
    if want(Section::Latency) {
        for (label, dir) in &folders {
            eprintln!("== latency ({label})");
            let baseline = base_bins.as_ref().map(|b| (b, &mut base_report));
            let r = latency_section(&args, &bins, baseline, rt.handle(), dir, label, &mut report);
            section(&format!("latency ({label})"), r, &mut report);
        }
    }
    if want(Section::Hotplug) {
        for (label, dir) in &folders {
            for &(side, b) in &sides {
                let rep = if side == "baseline" {
                    &mut base_report
                } else {
                    &mut report
                };
                eprintln!("== hotplug ({label}, {side})");
                let r = hotplug_section(&args, b, rt.handle(), dir, label, rep);
                section(&format!("hotplug ({label}, {side})"), r, rep);
            }
        }
    }
    // The SQLite figure per side and N, for the cluster section's comparison.
    let mut sqlite: BTreeMap<(&str, usize), f64> = BTreeMap::new();
    if want(Section::Scale) {
        for &(side, b) in &sides {
            let rep = if side == "baseline" {
                &mut base_report
            } else {
                &mut report
            };
            eprintln!("== scale ({side})");
            let r = scale_section(&args, b, rt.handle(), rep).map(|medians| {
                for (n, m) in medians {
                    sqlite.insert((side, n), m);
                }
            });
            section(&format!("scale ({side})"), r, rep);
        }
    }
    // Opt-in: at N = 10,000 it takes minutes (see docs/PERFORMANCE.md).
    let want_cluster = args.only.contains(&Section::Cluster)
        || (args.only.is_empty() && !args.cluster_n.is_empty());
    if want_cluster {
        for &(side, b) in &sides {
            let rep = if side == "baseline" {
                &mut base_report
            } else {
                &mut report
            };
            eprintln!("== cluster ({side})");
            let known = |n: usize| sqlite.get(&(side, n)).copied();
            // The swarm plays the guests, it is not measured: the current one on both
            // sides (a baseline's may predate `--uuids`).
            let b = Bins {
                swarm: bins.swarm.clone(),
                ..b.clone()
            };
            let r = cluster_section(&args, &b, rt.handle(), &known, rep);
            section(&format!("cluster ({side})"), r, rep);
        }
    }
    if want(Section::Xenstore) {
        for &(side, b) in &sides {
            let rep = if side == "baseline" {
                &mut base_report
            } else {
                &mut report
            };
            eprintln!("== xenstore discovery ({side})");
            let r = xenstore_section(&args, b, rt.handle(), rep);
            section(&format!("xenstore discovery ({side})"), r, rep);
        }
    }
    report.machine.load_end = loadavg();
    report.machine.take_load(load);
    report.machine.duration_s = started.elapsed().as_secs_f64();
    println!("{}", report.table());
    if let Some(b) = &base_bins {
        let label = args
            .baseline_label
            .clone()
            .unwrap_or_else(|| b.dir.display().to_string());
        println!("\n{}", compare::table(&base_report, &report, &label));
    }
    if let Some(path) = &args.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("xenchan-bench: cannot write {}: {e}", path.display());
            return Exit::IoErr.into();
        }
        eprintln!("xenchan-bench: JSON written to {}", path.display());
    }
    if failed {
        Exit::Unavailable.into()
    } else {
        ExitCode::SUCCESS
    }
}

/// The folders latency and hotplug run in, with a label naming their file system.
fn folders(args: &Args) -> Vec<(String, PathBuf)> {
    let mut v = vec![(fs_label(&args.tmp), args.tmp.clone())];
    if let Some(t) = tmpfs(args) {
        v.push((fs_label(t), t.to_path_buf()));
    }
    v
}

fn fs_label(p: &Path) -> String {
    let t = crate::report::fs_type(p);
    let kind = t.split_whitespace().next().unwrap_or("?").to_string();
    format!("{kind} {}", p.display())
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn median_str(s: Option<Summary>) -> String {
    s.map_or_else(|| "?".into(), |s| report::fmt_num(s.median))
}

fn codec_section(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (size, runs) = if args.quick {
        (16 << 20, 5)
    } else {
        (64 << 20, 9)
    };
    let [valid, noise, flood] = codec::measure(size, runs)?;
    let s = "codec";
    let how = format!("{} MiB per run, 16 KiB reads", size >> 20);
    report.add(
        s,
        "valid frames (session mix)",
        "MB/s",
        Some(valid),
        None,
        how.clone(),
    );
    report.add(
        s,
        "noise (console text, AT, bad frames, binary)",
        "MB/s",
        Some(noise),
        None,
        how.clone(),
    );
    report.add(s, "flood without newlines", "MB/s", Some(flood), None, how);
    Ok(())
}

fn footprint_section(args: &Args, bins: &Bins, report: &mut Report) -> anyhow::Result<()> {
    let runs = if args.quick { 5 } else { 10 };
    let f = footprint::run(bins, &args.tmp, runs)?;
    let s = "agent footprint";
    let ready = Summary::of(&f.start_to_ready);
    report.add(
        s,
        "start to READY=1 (watching for its device)",
        "ms",
        ready,
        Some(Target::below("< 20 ms", 20.0, ready.as_ref())),
        "",
    );
    let mib_of = |v: &[f64]| Summary::of(&v.iter().map(|k| mib(*k)).collect::<Vec<f64>>());
    let rss = mib_of(&f.idle.rss);
    report.add(
        s,
        "idle RSS (waiting for its device)",
        "MiB",
        rss,
        None,
        "VmRSS of the release build (glibc, dynamic); the package ships the static build below",
    );
    // The < 3 MiB target is for what guests run: the package's static musl build.
    let packaged = footprint::packaged_agent(bins);
    let p = match &packaged {
        Some(bin) => Some(footprint::run_agent(bin, &args.tmp, runs, false)?),
        None => None,
    };
    let p_rss = p.as_ref().and_then(|p| mib_of(&p.idle.rss));
    report.add(
        s,
        "packaged agent: idle RSS (musl static, agent profile)",
        "MiB",
        p_rss,
        Some(Target::below("< 3 MiB", 3.0, p_rss.as_ref())),
        packaged.as_ref().map_or_else(
            || "not built: make agent-static (or cargo xtask deb)".to_string(),
            |b| format!("VmRSS of {}", b.display()),
        ),
    );
    if let Some(p) = &p {
        report.add(
            s,
            "packaged agent: idle PSS",
            "MiB",
            mib_of(&p.idle.pss),
            None,
            "",
        );
        report.add(
            s,
            "packaged agent: start to READY=1",
            "ms",
            Summary::of(&p.start_to_ready),
            None,
            "",
        );
    } else {
        report.note(
            "the packaged agent's idle RSS (the < 3 MiB target) was not measured: its static \
             build is missing (make agent-static; needs rustup target add \
             x86_64-unknown-linux-musl)"
                .to_string(),
        );
    }
    report.add(
        s,
        "idle RSS: anonymous (heap, stacks, relocations)",
        "MiB",
        mib_of(&f.idle.anon),
        None,
        "RssAnon",
    );
    report.add(
        s,
        "idle RSS: file-backed (binary and library pages)",
        "MiB",
        mib_of(&f.idle.file),
        None,
        "RssFile, shared with other processes mapping the same files",
    );
    report.add(
        s,
        "idle PSS",
        "MiB",
        mib_of(&f.idle.pss),
        None,
        "shared pages divided among their users",
    );
    match &f.qga {
        Ok(q) => {
            report.add(
                s,
                "qemu-guest-agent idle RSS (for comparison)",
                "MiB",
                mib_of(&q.rss),
                None,
                format!(
                    "anonymous {} MiB, file-backed {} MiB, PSS {} MiB (medians)",
                    median_str(mib_of(&q.anon)),
                    median_str(mib_of(&q.file)),
                    median_str(mib_of(&q.pss)),
                ),
            );
        }
        Err(why) => {
            report.add(
                s,
                "qemu-guest-agent idle RSS (for comparison)",
                "MiB",
                None,
                None,
                why.clone(),
            );
            report.note(format!("qemu-guest-agent idle RSS not measured: {why}"));
        }
    }
    let size = f.stripped_bytes.unwrap_or(f.binary_bytes) as f64 / 1_048_576.0;
    let size = Summary::single(size);
    report.add(
        s,
        "release binary, stripped",
        "MiB",
        Some(size),
        Some(Target::below("< 6 MiB", 6.0, Some(&size))),
        format!("{} bytes as built", f.binary_bytes),
    );
    Ok(())
}

/// Writes back what other programs left dirty in the page cache before a section that
/// times fsyncs: the build `cargo bench` runs first, and the sections before, leave
/// dirty pages whose write-back (due 30 s after they were written) would otherwise land
/// inside the timed pushes, in the disk queue their fsyncs wait on. The amount goes in
/// the report's notes (6.9 MiB before the first latency section of a full run).
fn write_back_first(report: &mut Report) {
    let before = procfs::unwritten_kib().unwrap_or(0);
    let t = Instant::now();
    nix::unistd::sync();
    let text = format!(
        "before timing fsyncs: wrote back {:.1} MiB left dirty by other programs ({:.0} ms)",
        before as f64 / 1024.0,
        t.elapsed().as_secs_f64() * 1e3
    );
    eprintln!("   {text}");
    report.note(text);
}

/// The latency section; with a baseline, its agents run in the same loop as the current
/// ones (per iteration, taking turns at going first) and its figures go to `base_report`.
fn latency_section(
    args: &Args,
    bins: &Bins,
    baseline: Option<(&Bins, &mut Report)>,
    rt: &tokio::runtime::Handle,
    dir: &Path,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let iterations = args.iterations.unwrap_or(if args.quick { 30 } else { 100 });
    write_back_first(report);
    let (base_bins, base_report) = baseline.unzip();
    let (lat, base_lat) = latency::run(rt, bins, base_bins, dir, iterations)?;
    if let (Some(r), Some(l)) = (base_report, base_lat) {
        latency_figures(&l, label, r);
    }
    latency_figures(&lat, label, report);
    Ok(())
}

/// The target for qemu-guest-agent's time over xenchan's in a folder labelled `label`
/// (see [`fs_label`]): on tmpfs, where neither pays for the disk, the software alone is
/// compared and xenchan must be 5 times faster; on a disk 3 times (issue 16).
fn ratio_target(label: &str) -> (f64, String) {
    let x = if label.split_whitespace().next() == Some("tmpfs") {
        5.0
    } else {
        3.0
    };
    (x, format!(">= {x}x"))
}

fn latency_figures(lat: &latency::Samples, label: &str, report: &mut Report) {
    let sec = format!("end-to-end ({label})");
    let (ratio_min, ratio_text) = ratio_target(label);
    if !lat.live_network {
        report.note(format!(
            "{sec}: the network item was written as files only (no namespace: {})",
            crate::netns::unavailable().unwrap_or_default()
        ));
    }
    let xen = Summary::of(&lat.xenchan);
    report.add(
        &sec,
        "xenchan: connect to result",
        "ms",
        xen,
        Some(Target::below("< 2 ms", 2.0, xen.as_ref())),
        latency::describe(),
    );
    report.add(
        &sec,
        "xenchan: connect to the agent's hello",
        "ms",
        Summary::of(&lat.handshake),
        None,
        "",
    );
    match &lat.qga {
        Ok(q) => {
            report.add(
                &sec,
                "qemu-guest-agent: same job",
                "ms",
                Summary::of(q),
                None,
                "sync, ssh-add, exec hostname, exec ip",
            );
            let r = Summary::of(&lat.ratio);
            report.add(
                &sec,
                "qemu-guest-agent / xenchan (per iteration)",
                "x",
                r,
                Some(Target::at_least(&ratio_text, ratio_min, r.as_ref())),
                "",
            );
        }
        Err(why) => {
            report.add(
                &sec,
                "qemu-guest-agent: same job",
                "ms",
                None,
                None,
                why.clone(),
            );
            report.add(
                &sec,
                "qemu-guest-agent / xenchan (per iteration)",
                "x",
                None,
                Some(Target {
                    text: ratio_text.clone(),
                    met: None,
                }),
                why.clone(),
            );
            report.note(format!("{sec}: qemu-guest-agent comparison skipped: {why}"));
        }
    }
    report.add(
        &sec,
        "diagnostic: xenchan on a bare pty (no bridge), hello to result",
        "ms",
        Summary::of(&lat.bare),
        None,
        "a second agent; the broker's side writes the pty master itself",
    );
    report.add(
        &sec,
        "diagnostic: xenchan on a bare pty, hello to the agent's hello",
        "ms",
        Summary::of(&lat.bare_handshake),
        None,
        "",
    );
    let floor = Summary::of(&lat.floor);
    report.add(
        &sec,
        "floor: null guest over the same bridge",
        "ms",
        floor,
        None,
        "answers at once, applies nothing",
    );
    report.add(
        &sec,
        "floor: connect to the null guest's hello",
        "ms",
        Summary::of(&lat.floor_handshake),
        None,
        "",
    );
    if let (Some(x), Some(f)) = (xen, floor) {
        report.add(
            &sec,
            "xenchan above the floor (difference of medians)",
            "ms",
            Some(Summary::single(x.median - f.median)),
            None,
            "the agent's own work: apply, fsync, netlink, state",
        );
    }
}

fn hotplug_section(
    args: &Args,
    bins: &Bins,
    rt: &tokio::runtime::Handle,
    dir: &Path,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = args.hotplugs.unwrap_or(if args.quick { 5 } else { 15 });
    write_back_first(report);
    let h = hotplug::run(rt, bins, dir, n)?;
    let s = format!("hotplug ({label})");
    let l = Summary::of(&h.link_to_recorded);
    report.add(
        &s,
        "link appears to result recorded (broker API)",
        "ms",
        l,
        Some(Target::below("< 10 ms", 10.0, l.as_ref())),
        "",
    );
    report.add(
        &s,
        "xen-console-setup run (spawn to exit)",
        "ms",
        Summary::of(&h.helper),
        None,
        "",
    );
    Ok(())
}

fn xenstore_section(
    args: &Args,
    bins: &Bins,
    rt: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let ns: Vec<usize> = if args.xenstore_n.is_empty() {
        vec![100, 1000]
    } else {
        args.xenstore_n.clone()
    };
    let rounds = if args.quick { 10 } else { 20 };
    let mut points = Vec::new();
    for &n in &ns {
        eprintln!("   N = {n}");
        let p = xs_discovery::run(rt, bins, &args.tmp, n, rounds)
            .with_context(|| format!("N = {n}"))?;
        let s = format!("xenstore discovery N={n}");
        report.add(
            &s,
            "xenstore requests per domain created beside N",
            "",
            Summary::of(&p.create),
            None,
            "introduce + channel backend, one at a time, until the API shows its domid",
        );
        report.add(
            &s,
            "xenstore requests per domain destroyed beside N",
            "",
            Summary::of(&p.destroy),
            None,
            "release, until the API forgets it",
        );
        report.add(
            &s,
            format!("xenstore requests per watch event, creating {n} domains"),
            "",
            Some(Summary::single(p.fill_per_event)),
            None,
            format!("{} events", p.fill_events),
        );
        report.add(
            &s,
            format!("xenstore requests per watch event, destroying {n} domains"),
            "",
            Some(Summary::single(p.drain_per_event)),
            None,
            "",
        );
        report.add(
            &s,
            "xenstore requests of one full rescan (what every event cost before)",
            "",
            p.rescan.map(Summary::single),
            None,
            "the periodic safety net; also on connecting and after dropped events",
        );
        points.push(p);
    }
    if let [.., a, b] = points.as_slice() {
        // Per watch event over the N domains created and destroyed (a domain created
        // beside N is read once or twice, as the toolstack's writes reach the broker in
        // one batch or two: its rows show 8 or 15 at any N).
        let per_event = |p: &xs_discovery::Point| {
            (p.fill_per_event * p.fill_events as f64 + p.drain_per_event * p.drain_events as f64)
                / (p.fill_events + p.drain_events).max(1) as f64
        };
        let g = per_event(b) / per_event(a);
        let gs = (!g.is_nan()).then(|| Summary::single(g));
        report.add(
            "xenstore discovery growth",
            format!("requests per watch event, N={} over N={}", b.n, a.n),
            "x",
            gs,
            Some(Target::below("flat (< 1.5x)", 1.5, gs.as_ref())),
            "1.0: an event costs the same whatever N",
        );
        let r = b.rescan.unwrap_or(f64::NAN) / a.rescan.unwrap_or(f64::NAN);
        report.add(
            "xenstore discovery growth",
            format!("one full rescan, N={} over N={} (for comparison)", b.n, a.n),
            "x",
            (!r.is_nan()).then(|| Summary::single(r)),
            None,
            "what every event cost before issue 16: linear in N",
        );
    }
    Ok(())
}

/// The scale section; returns the median configure time (first PUT to every result
/// recorded) per N, for the cluster section's comparison.
fn scale_section(
    args: &Args,
    bins: &Bins,
    rt: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let ns: Vec<usize> = if args.scale_n.is_empty() {
        if args.quick {
            vec![100, 1000]
        } else {
            vec![100, 1000, 10_000]
        }
    } else {
        args.scale_n.clone()
    };
    let max_n = ns.iter().copied().max().unwrap_or(0);
    let mut points: Vec<(usize, Vec<scale::Point>)> = Vec::new();
    for &n in &ns {
        // Small N are cheap and noisy: repeat them.
        let reps = if n <= 1000 { 3 } else { 1 };
        let mut v = Vec::new();
        for r in 0..reps {
            eprintln!("   N = {n} ({}/{reps})", r + 1);
            v.push(
                scale::run(rt, bins, &args.tmp, run_dir(args), n, false)
                    .with_context(|| format!("N = {n}"))?,
            );
        }
        let sum =
            |f: &dyn Fn(&scale::Point) -> f64| Summary::of(&v.iter().map(f).collect::<Vec<f64>>());
        let s = format!("broker scale N={n}");
        let last = n == max_n;
        let conf = sum(&|p| p.configure_s);
        report.add(
            &s,
            "first PUT to every result recorded",
            "s",
            conf,
            (n >= 10_000).then(|| Target::below("< 3 s", 3.0, conf.as_ref())),
            format!("{} PUTs at a time", scale::PUT_CONCURRENCY),
        );
        report.add(
            &s,
            "pushes per second (results recorded / s)",
            "1/s",
            sum(&|p| p.pushes_per_s()),
            None,
            "",
        );
        report.add(
            &s,
            "PUTs answered per second",
            "1/s",
            sum(&|p| p.n as f64 / p.put_s),
            None,
            "",
        );
        let bulk = sum(&|p| p.bulk_configure_s);
        report.add(
            &s,
            "bulk PUT: first request to every result recorded",
            "s",
            bulk,
            (n >= 10_000).then(|| Target::below("< 3 s", 3.0, bulk.as_ref())),
            format!(
                "a second configuration per domain (updates), {} per request, {} requests at a time",
                scale::BULK_CHUNK,
                scale::BULK_CONCURRENCY
            ),
        );
        report.add(
            &s,
            "bulk PUT: configurations answered per second",
            "1/s",
            sum(&|p| p.n as f64 / p.bulk_put_s),
            None,
            "",
        );
        report.add(
            &s,
            "bulk PUT: CPU",
            "s",
            sum(&|p| p.cpu_bulk_s),
            None,
            "user + system, until every result recorded",
        );
        report.add(
            &s,
            "sockets appear to every session handshook",
            "s",
            sum(&|p| p.discover_s),
            None,
            "",
        );
        let per = sum(&|p| p.per_session_kib());
        report.add(
            &s,
            "RSS per idle session",
            "KiB",
            per,
            last.then(|| Target::below("< 16 KiB", 16.0, per.as_ref())),
            "(RSS with N idle sessions - RSS with none) / N",
        );
        report.add(
            &s,
            "RSS, no session",
            "MiB",
            sum(&|p| mib(p.rss_base_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "RSS, no session: anonymous (heap, stacks)",
            "MiB",
            sum(&|p| mib(p.rss_base_anon_kib as f64)),
            None,
            "RssAnon; the rest of the RSS is the binary's and libraries' clean file pages",
        );
        report.add(
            &s,
            "RSS, N idle sessions",
            "MiB",
            sum(&|p| mib(p.rss_idle_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "RSS after configuring",
            "MiB",
            sum(&|p| mib(p.rss_after_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "peak RSS (VmHWM)",
            "MiB",
            sum(&|p| mib(p.hwm_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "CPU, handshakes",
            "s",
            sum(&|p| p.cpu_discover_s),
            None,
            "",
        );
        report.add(
            &s,
            "CPU, configuring",
            "s",
            sum(&|p| p.cpu_configure_s),
            None,
            "user + system",
        );
        let store: Vec<f64> = v.iter().filter_map(|p| p.cpu_store_configure_s).collect();
        report.add(
            &s,
            "CPU, configuring: the store thread's share",
            "s",
            Summary::of(&store),
            None,
            "SQLite statements, WAL writes, fsync (thread xenchan-store)",
        );
        report.add(
            &s,
            "CPU per domain (handshake + configure)",
            "ms",
            sum(&|p| (p.cpu_discover_s + p.cpu_configure_s) * 1000.0 / p.n as f64),
            None,
            "",
        );
        points.push((n, v));
    }
    // Growth: per-domain cost at the largest N over the same at the next smaller N.
    if points.len() >= 2 {
        let median = |v: &[scale::Point], f: &dyn Fn(&scale::Point) -> f64| {
            Summary::of(&v.iter().map(f).collect::<Vec<f64>>()).map_or(f64::NAN, |s| s.median)
        };
        let (n1, v1) = &points[points.len() - 2];
        let (n2, v2) = &points[points.len() - 1];
        let per_domain = |v: &[scale::Point]| median(v, &|p| p.configure_s / p.n as f64);
        let g = per_domain(v2) / per_domain(v1);
        let gs = (!g.is_nan()).then(|| Summary::single(g));
        report.add(
            "broker scale growth",
            format!("configure time per domain, N={n2} over N={n1}"),
            "x",
            gs,
            Some(Target::below("linear (< 1.5x)", 1.5, gs.as_ref())),
            "1.0 is exactly linear",
        );
        let mem = |v: &[scale::Point]| median(v, &scale::Point::per_session_kib);
        let gm = mem(v2) / mem(v1);
        let gms = (!gm.is_nan()).then(|| Summary::single(gm));
        report.add(
            "broker scale growth",
            format!("memory per idle session, N={n2} over N={n1}"),
            "x",
            gms,
            Some(Target::below("linear (< 1.5x)", 1.5, gms.as_ref())),
            "",
        );
        let cpu = |v: &[scale::Point]| {
            median(v, &|p| (p.cpu_discover_s + p.cpu_configure_s) / p.n as f64)
        };
        let gc = cpu(v2) / cpu(v1);
        let gcs = (!gc.is_nan()).then(|| Summary::single(gc));
        report.add(
            "broker scale growth",
            format!("CPU per domain, N={n2} over N={n1}"),
            "x",
            gcs,
            Some(Target::below("linear (< 1.5x)", 1.5, gcs.as_ref())),
            "",
        );
    }
    idle_points(args, bins, rt, &points, report)?;
    Ok(points
        .iter()
        .filter_map(|(n, v)| {
            let c: Vec<f64> = v.iter().map(|p| p.configure_s).collect();
            Some((*n, Summary::of(&c)?.median))
        })
        .collect())
}

/// `--idle-n`: the idle phase only at more N (issue 16: 100,000 idle sessions), and the
/// growth of memory per idle session from the smallest N measured to the largest.
fn idle_points(
    args: &Args,
    bins: &Bins,
    rt: &tokio::runtime::Handle,
    full: &[(usize, Vec<scale::Point>)],
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.idle_n.is_empty() {
        return Ok(());
    }
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    // (N, KiB per idle session) of every N measured, full runs included.
    let mut per: Vec<(usize, f64)> = full
        .iter()
        .map(|(n, v)| {
            let k: Vec<f64> = v.iter().map(scale::Point::per_session_kib).collect();
            (*n, median(&k))
        })
        .collect();
    for &n in &args.idle_n {
        if full.iter().any(|(m, _)| *m == n) {
            continue;
        }
        let s = format!("broker idle N={n}");
        if let Err(e) = scale::broker_fds(n) {
            let why = format!("{e:#}");
            report.add(&s, "RSS per idle session", "KiB", None, None, why.clone());
            report.note(format!("broker idle N={n} skipped: {why}"));
            continue;
        }
        eprintln!("   N = {n}, idle only");
        let p = scale::run(rt, bins, &args.tmp, run_dir(args), n, true)
            .with_context(|| format!("idle N = {n}"))?;
        let one = |v: f64| Some(Summary::single(v));
        report.add(
            &s,
            "sockets appear to every session handshook",
            "s",
            one(p.discover_s),
            None,
            format!("{} swarm processes", n.div_ceil(scale::SHARD)),
        );
        report.add(
            &s,
            "RSS per idle session",
            "KiB",
            one(p.per_session_kib()),
            None,
            "(RSS with N idle sessions - RSS with none) / N",
        );
        report.add(
            &s,
            "RSS, no session",
            "MiB",
            one(mib(p.rss_base_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "RSS, no session: anonymous (heap, stacks)",
            "MiB",
            one(mib(p.rss_base_anon_kib as f64)),
            None,
            "RssAnon; the rest of the RSS is the binary's and libraries' clean file pages",
        );
        report.add(
            &s,
            "RSS, N idle sessions",
            "MiB",
            one(mib(p.rss_idle_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "peak RSS (VmHWM)",
            "MiB",
            one(mib(p.hwm_kib as f64)),
            None,
            "",
        );
        report.add(
            &s,
            "CPU, handshakes",
            "s",
            one(p.cpu_discover_s),
            None,
            "user + system",
        );
        report.add(
            &s,
            "CPU per session, handshake",
            "ms",
            one(p.cpu_discover_s * 1000.0 / n as f64),
            None,
            "",
        );
        per.push((n, p.per_session_kib()));
    }
    if let Some((lo, hi, g)) = scale::per_session_growth(&per) {
        let gs = Some(Summary::single(g));
        report.add(
            "broker scale growth",
            format!("memory per idle session, N={hi} over N={lo}"),
            "x",
            gs,
            Some(Target::below("linear (< 1.5x)", 1.5, gs.as_ref())),
            "1.0: each session costs the same whatever N",
        );
    }
    Ok(())
}

/// The cluster section; `sqlite(n)` is the scale section's figure for N when it ran.
fn cluster_section(
    args: &Args,
    bins: &Bins,
    rt: &tokio::runtime::Handle,
    sqlite: &dyn Fn(usize) -> Option<f64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let ns: Vec<usize> = if args.cluster_n.is_empty() {
        vec![if args.quick { 1000 } else { 10_000 }]
    } else {
        args.cluster_n.clone()
    };
    for &n in &ns {
        eprintln!("   N = {n}, 2 brokers on etcd");
        let p = cluster::run(rt, bins, &args.tmp, run_dir(args), n)
            .with_context(|| format!("N = {n}"))?;
        let (base, how) = if let Some(v) = sqlite(n) {
            (v, "the scale section's figure (median) in this run")
        } else {
            eprintln!("   N = {n}, one broker on SQLite (for comparison)");
            let q = scale::run(rt, bins, &args.tmp, run_dir(args), n, false)
                .with_context(|| format!("SQLite N = {n}"))?;
            (
                q.configure_s,
                "one run in this section (the scale section did not run N)",
            )
        };
        let one = |v: f64| (!v.is_nan()).then(|| Summary::single(v));
        let s = format!("broker cluster N={n}");
        let conf = one(p.configure_s);
        report.add(
            &s,
            "2 brokers on etcd: first PUT to every result recorded",
            "s",
            conf,
            (n >= 10_000).then(|| Target::below("< 10 s", 10.0, conf.as_ref())),
            format!(
                "PUTs alternately through either broker, {} at a time; half the domains in each broker's folder",
                scale::PUT_CONCURRENCY
            ),
        );
        report.add(
            &s,
            "1 broker on SQLite: first PUT to every result recorded",
            "s",
            one(base),
            None,
            how,
        );
        report.add(
            &s,
            "etcd / SQLite",
            "x",
            one(p.configure_s / base),
            None,
            "",
        );
        report.add(
            &s,
            "first PUT to every applied record in etcd",
            "s",
            one(p.applied_s),
            None,
            "the owners publish results in the background",
        );
        report.add(
            &s,
            "PUTs answered per second",
            "1/s",
            one(n as f64 / p.put_s),
            None,
            "",
        );
        report.add(
            &s,
            "prepare with UUID (ownership claimed in etcd), first to last answered",
            "s",
            one(p.prepare_s),
            None,
            format!(
                "{} at a time, each on the broker running the domain",
                scale::PUT_CONCURRENCY
            ),
        );
        report.add(
            &s,
            "sockets appear to every session handshook",
            "s",
            one(p.discover_s),
            None,
            "both brokers",
        );
        report.add(
            &s,
            "CPU, configuring: both brokers",
            "s",
            one(p.cpu_brokers_configure_s),
            None,
            "user + system, first PUT to every result recorded",
        );
        report.add(
            &s,
            "CPU, configuring: etcd",
            "s",
            one(p.cpu_etcd_configure_s),
            None,
            "same span",
        );
        let (rev, puts, fsyncs) = p.configure_writes.per_domain(n);
        let opt = |v: Option<f64>| v.map(Summary::single);
        report.add(
            &s,
            "etcd write transactions per domain, configuring",
            "",
            Some(Summary::single(rev)),
            None,
            "revisions from the first PUT until every applied record is in etcd, / N",
        );
        report.add(
            &s,
            "etcd keys written per domain, configuring",
            "",
            opt(puts),
            None,
            "etcd_mvcc_put_total, same span, / N",
        );
        report.add(
            &s,
            "etcd WAL fsyncs per domain, configuring",
            "",
            opt(fsyncs),
            None,
            "etcd_disk_wal_fsync_duration_seconds_count, same span, / N (etcd batches)",
        );
        report.add(
            &s,
            "etcd KV requests per domain, configuring",
            "",
            opt(p
                .configure_writes
                .requests
                .map(|r| r as f64 / n.max(1) as f64)),
            None,
            "round trips of the brokers to etcd (ranges, transactions; grpc_server_handled_total of etcdserverpb.KV), same span, / N",
        );
        let (rev, puts, _) = p.prepare_writes.per_domain(n);
        report.add(
            &s,
            "etcd write transactions per domain, prepare",
            "",
            Some(Summary::single(rev)),
            None,
            match puts {
                Some(k) => format!("{k:.2} keys written per domain"),
                None => String::new(),
            },
        );
        report.add(
            &s,
            "etcd RSS at the end",
            "MiB",
            one(mib(p.etcd_rss_kib as f64)),
            None,
            "",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ratio_target;

    #[test]
    fn the_qemu_ga_ratio_target_is_5x_on_tmpfs_and_3x_on_a_disk() {
        assert_eq!(ratio_target("tmpfs /dev/shm"), (5.0, ">= 5x".into()));
        assert_eq!(ratio_target("ext4 /tmp"), (3.0, ">= 3x".into()));
        assert_eq!(ratio_target("xfs /var/tmp"), (3.0, ">= 3x".into()));
        assert_eq!(ratio_target("? /nowhere"), (3.0, ">= 3x".into()));
    }
}
