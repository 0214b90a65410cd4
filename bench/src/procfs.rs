//! What the kernel says about a process: resident memory (`/proc/<pid>/status` VmRSS and
//! VmHWM) and CPU time (`/proc/<pid>/stat` utime + stime), and the open-file limit.

use std::io;

/// Memory of a process in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kib: u64,
    /// The anonymous part of VmRSS (heap, stacks, relocated data: `RssAnon`).
    pub anon_kib: u64,
    /// The file-backed part of VmRSS (the binary's and the libraries' pages: `RssFile`),
    /// shared with every process mapping the same files.
    pub file_kib: u64,
}

/// Reads VmRSS, VmHWM, RssAnon and RssFile of `pid`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Proportional set size of `pid` in KiB (`Pss` of `/proc/<pid>/smaps_rollup`): each
/// shared page divided by the number of processes mapping it.
pub fn pss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    kib_field(&text, "Pss:")
        .ok_or_else(|| io::Error::other(format!("no Pss in /proc/{pid}/smaps_rollup")))
}

/// Page-cache data not yet on its disk, in KiB: `Dirty` + `Writeback` of /proc/meminfo.
pub fn unwritten_kib() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    unwritten_of(&text).ok_or_else(|| io::Error::other("no Dirty in /proc/meminfo"))
}

fn unwritten_of(meminfo: &str) -> Option<u64> {
    Some(kib_field(meminfo, "Dirty:")? + kib_field(meminfo, "Writeback:").unwrap_or(0))
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
}

fn parse_status(text: &str) -> Option<Memory> {
    Some(Memory {
        rss_kib: kib_field(text, "VmRSS:")?,
        hwm_kib: kib_field(text, "VmHWM:")?,
        anon_kib: kib_field(text, "RssAnon:").unwrap_or(0),
        file_kib: kib_field(text, "RssFile:").unwrap_or(0),
    })
}

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&text)
        .ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))?;
    Ok(ticks as f64 / clock_ticks())
}

/// User + system CPU seconds used so far by the threads of `pid` named `name` (their
/// `comm`); `None` when it has no such thread.
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut found = false;
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        ticks += parse_stat_ticks(&stat)?;
        found = true;
    }
    found.then(|| ticks as f64 / clock_ticks())
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Raises this process's RLIMIT_NOFILE (soft and, when allowed, hard) to at least `want`;
/// children inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    // Root may raise the hard limit (up to fs.nr_open); others only up to it.
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let target = want.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    }
}

/// This process's hard RLIMIT_NOFILE.
pub fn nofile_hard() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(_, hard)| hard)
}

/// `fs.nr_open`: the most descriptors any process may be allowed.
pub fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let t = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 24 kB\nRssFile:\t 1000 kB\n";
        assert_eq!(
            parse_status(t),
            Some(Memory {
                rss_kib: 1024,
                hwm_kib: 2048,
                anon_kib: 24,
                file_kib: 1000,
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn stat_with_a_name_holding_spaces_and_parens() {
        let t = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(t), Some(500));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn threads_are_found_by_name() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("xcb-probe".into())
            .spawn(move || {
                // The new thread names itself before it runs this.
                started_tx.send(()).unwrap();
                let _ = rx.recv();
            })
            .unwrap();
        started.recv().unwrap();
        let me = std::process::id();
        assert!(thread_cpu_seconds(me, "xcb-probe").is_some_and(|s| s >= 0.0));
        assert_eq!(thread_cpu_seconds(me, "no-such-thread"), None);
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        let m = memory(me).unwrap();
        assert!(m.rss_kib > 0);
        assert!(m.anon_kib + m.file_kib > 0 && m.anon_kib + m.file_kib <= m.rss_kib);
        assert!(pss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }

    #[test]
    fn unwritten_data_is_dirty_plus_under_write_back() {
        let meminfo = "MemTotal:       24683540 kB\nDirty:             1234 kB\nWriteback:          16 kB\nAnonPages: 1 kB\n";
        assert_eq!(unwritten_of(meminfo), Some(1250));
        assert_eq!(unwritten_of("MemTotal: 1 kB\n"), None);
    }
}
