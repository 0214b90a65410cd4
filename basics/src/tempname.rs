//! The temporary files xenchan writes beside a file it replaces, and the sweep that removes
//! the ones a killed process left behind.
//!
//! Every replacement goes through a temporary file in the same folder (so the rename is
//! atomic). A process killed between creating it and renaming it (kill -9, power loss)
//! leaves it there for good: in `/etc`, in a user's `~/.ssh`. So the first time a process
//! reads or writes a file it manages in a folder, it removes the leftovers of processes that
//! are gone there. Reading counts too: a push that finds a file already as it should be
//! writes nothing into its folder, and a leftover beside it must not wait for a change. The rule is
//! pure ([`is_stale`]) and only ever matches our own naming scheme, `.<name>.xenchan-tmp-
//! <pid>-<n>`: a file is stale when it is older than this boot, or when the process that
//! made it (another pid) no longer runs. A pid is reused once its process is gone, so a
//! process with that pid that started after the file was last written is not its maker.
//! A live process's files, and this process's own files from this boot, are never touched.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use nix::unistd::{Pid, UnlinkatFlags, unlinkat};

/// What sits between the file's name and the owner's pid.
const MARK: &[u8] = b".xenchan-tmp-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Folders (device, inode) this process has swept already.
static SWEPT: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);

/// A fresh temporary name for replacing `name`: `.<name>.xenchan-tmp-<pid>-<n>`, unique
/// within this process (hidden, so shell globs and most tools skip it).
pub fn temp_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(
        ".xenchan-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    s
}

/// The pid a temporary name of ours carries; `None` for any other name.
pub fn owner_pid(entry: &OsStr) -> Option<u32> {
    let b = entry.as_bytes();
    if b.first() != Some(&b'.') {
        return None;
    }
    // The last mark: a file name may itself contain the mark.
    let at = b.windows(MARK.len()).rposition(|w| w == MARK)?;
    if at < 2 {
        // ".<name>" must have a name.
        return None;
    }
    let tail = std::str::from_utf8(&b[at + MARK.len()..]).ok()?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `entry` (last modified at `mtime`) is a leftover to remove: one of our
/// temporary names, and either older than this boot (`boot`) or made by another process
/// (not `self_pid`) that is not `alive`.
///
/// `running(pid)` says whether a process runs as `pid`, and since when.
pub fn is_stale(
    entry: &OsStr,
    mtime: SystemTime,
    boot: SystemTime,
    self_pid: u32,
    running: impl Fn(u32) -> Running,
) -> bool {
    let Some(pid) = owner_pid(entry) else {
        return false;
    };
    mtime < boot || (pid != self_pid && !may_have_made(running(pid), mtime))
}

/// Whether a process runs as a pid, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// No process runs as the pid.
    No,
    /// One runs, started then.
    Since(SystemTime),
    /// One runs; its start cannot be read (then it counts as the maker).
    SinceUnknown,
}

/// How far a process's start, as read from /proc (10 ms ticks after a boot instant read
/// from /proc/uptime, itself in 10 ms), may lie after the real one.
const START_SLACK: Duration = Duration::from_millis(100);

/// Whether the process now running as the file's pid may be the one that wrote it last
/// at `mtime`: it runs, and did not start after that write (a reused pid did).
fn may_have_made(running: Running, mtime: SystemTime) -> bool {
    match running {
        Running::No => false,
        Running::SinceUnknown => true,
        Running::Since(at) => at <= mtime + START_SLACK,
    }
}

/// When this machine booted, from `/proc/stat`'s `btime`; the epoch when unknown (then
/// only the liveness rule applies).
fn boot_time() -> SystemTime {
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    btime.map_or(SystemTime::UNIX_EPOCH, |s| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    })
}

/// Whether a process runs as `pid`, and since when (see [`is_stale`]).
fn running(pid: u32) -> Running {
    let Ok(raw) = i32::try_from(pid) else {
        return Running::No;
    };
    // Signal 0 checks existence; EPERM means it exists but is not ours to signal.
    match nix::sys::signal::kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return Running::No,
    }
    start_time(pid).map_or(Running::SinceUnknown, Running::Since)
}

/// `/proc/<pid>/stat`'s start time (field 22, clock ticks after boot) as a wall-clock
/// time, with the boot instant from `/proc/uptime`; `None` when either cannot be read.
fn start_time(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses: count after the last ')'.
    let ticks: u64 = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // USER_HZ: 100 on every Linux architecture this runs on (what /proc counts in).
    let boot = SystemTime::now().checked_sub(Duration::from_secs_f64(uptime))?;
    boot.checked_add(Duration::from_millis(ticks.checked_mul(10)?))
}

/// Removes the stale temporary files in the folder open as `dir`, the first time this
/// process calls it for that folder (later calls return at once); the names removed.
/// Best effort: a folder that cannot be read or an entry that cannot be removed is left,
/// since the write that follows does not depend on it.
pub fn sweep_once(dir: &File) -> Vec<OsString> {
    let Ok(meta) = dir.metadata() else {
        return Vec::new();
    };
    {
        use std::os::unix::fs::MetadataExt;
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !swept
            .get_or_insert_with(HashSet::new)
            .insert((meta.dev(), meta.ino()))
        {
            return Vec::new();
        }
    }
    sweep(dir)
}

/// [`sweep_once`] for the folder that holds `path` (looked up by path, as the caller's
/// own lookup of `path` is); nothing when it cannot be opened. Once the folder is swept
/// a call costs one `stat`, not an open.
pub fn sweep_once_beside(path: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let folder = crate::atomic::folder_of(path);
    let Ok(meta) = std::fs::metadata(folder) else {
        return;
    };
    let swept = SWEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.contains(&(meta.dev(), meta.ino())));
    if swept {
        return;
    }
    if let Ok(dir) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(folder)
    {
        sweep_once(&dir);
    }
}

/// [`sweep_once`] without the once: every call reads the folder.
pub fn sweep(dir: &File) -> Vec<OsString> {
    // The folder is listed through its descriptor (no path lookup again), and every
    // entry is looked at and removed relative to it, never following a symlink.
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return Vec::new();
    };
    let boot = boot_time();
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_os_str();
        if owner_pid(name).is_none() {
            continue;
        }
        let Ok(st) = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let mtime = u64::try_from(st.st_mtime).map_or(SystemTime::UNIX_EPOCH, |s| {
            let ns = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::new(s, ns)
        });
        // A folder is never ours (unlinkat without AT_REMOVEDIR refuses it anyway).
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir
            && is_stale(name, mtime, boot, me, running)
            && unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir).is_ok()
        {
            removed.push(name.to_os_string());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn only_our_scheme_names_an_owner() {
        let cases: &[(&str, Option<u32>)] = &[
            (".hostname.xenchan-tmp-412-0", Some(412)),
            (".authorized_keys.xenchan-tmp-1-77", Some(1)),
            // The name itself may hold the mark: the last one counts.
            (".a.xenchan-tmp-9.xenchan-tmp-12-3", Some(12)),
            ("hostname", None),
            ("hostname.xenchan-tmp-412-0", None), // not hidden
            (".xenchan-tmp-412-0", None),         // no name
            (".hostname.xenchan-tmp-412", None),  // no counter
            (".hostname.xenchan-tmp-41x-0", None),
            (".hostname.xenchan-tmp--0", None),
            (".hostname.xenchan-tmp-412-0~", None),
            (".hostname.xenchan-tmp-99999999999-0", None), // not a pid
        ];
        for (name, want) in cases {
            assert_eq!(owner_pid(os(name)), *want, "{name}");
        }
    }

    #[test]
    fn stale_when_older_than_the_boot_or_its_maker_is_gone() {
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let before = boot - Duration::from_secs(60);
        let after = boot + Duration::from_secs(60);
        let me = 500;
        // 500 and 600 run since before every write below; 800 started after them (a
        // reused pid); 900 runs, its start unknown.
        let running = |pid: u32| match pid {
            500 | 600 => Running::Since(boot),
            800 => Running::Since(after + Duration::from_secs(1)),
            900 => Running::SinceUnknown,
            _ => Running::No,
        };
        let cases: &[(&str, SystemTime, bool)] = &[
            // Another process, gone: stale whenever it was written.
            (".f.xenchan-tmp-700-0", after, true),
            (".f.xenchan-tmp-700-0", before, true),
            // Another process, running: its write may be in flight.
            (".f.xenchan-tmp-600-0", after, false),
            // ... unless the file is older than this boot (the pid was reused).
            (".f.xenchan-tmp-600-0", before, true),
            // This process, this boot: ours, in flight.
            (".f.xenchan-tmp-500-3", after, false),
            // This pid in an earlier boot (services often get the same pid every boot).
            (".f.xenchan-tmp-500-3", before, true),
            // A process with the pid runs, but started after the write: the pid was reused.
            (".f.xenchan-tmp-800-0", after, true),
            // ... within the slack of reading start times: it may be the maker.
            (
                ".f.xenchan-tmp-800-0",
                after + Duration::from_millis(950),
                false,
            ),
            // Running, start unknown: may be the maker.
            (".f.xenchan-tmp-900-0", after, false),
            // Not ours at all, however old.
            ("f", before, false),
            (".f.swp", before, false),
        ];
        for (name, mtime, want) in cases {
            assert_eq!(
                is_stale(os(name), *mtime, boot, me, running),
                *want,
                "{name} at {mtime:?}"
            );
        }
    }

    #[test]
    fn the_sweep_removes_a_dead_writers_leftover_and_keeps_everything_else() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot be running: above the kernel's pid_max limit (4194304).
        let dead = ".hostname.xenchan-tmp-4194305-0";
        let mine = temp_name(os("hosts"));
        let alive_other = ".hosts.xenchan-tmp-1-5"; // pid 1 runs
        for n in [
            dead,
            mine.to_str().unwrap(),
            alive_other,
            "hostname",
            ".hidden",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join(".dir.xenchan-tmp-4194305-1")).unwrap();
        let dir = File::open(d.path()).unwrap();
        let removed = sweep(&dir);
        assert_eq!(removed, vec![OsString::from(dead)]);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            ".dir.xenchan-tmp-4194305-1".to_string(),
            ".hidden".to_string(),
            alive_other.to_string(),
            mine.into_string().unwrap(),
            "hostname".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
        // Once per folder: after the first call (which may find the folder swept already
        // when another test's deleted folder had its inode), nothing is looked for again.
        std::fs::write(d.path().join(dead), b"x").unwrap();
        let _ = sweep_once(&dir);
        std::fs::write(d.path().join(dead), b"x").unwrap();
        assert!(sweep_once(&dir).is_empty());
        assert!(d.path().join(dead).exists());
    }

    #[test]
    fn a_leftover_whose_pid_now_runs_a_later_process_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let written = d.path().join("written");
        std::fs::write(&written, b"x").unwrap();
        // A process that starts after the write takes "its" pid, as a reused pid would.
        std::thread::sleep(Duration::from_millis(300));
        let mut later = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let reused = format!(".hostname.xenchan-tmp-{}-0", later.id());
        std::fs::rename(&written, d.path().join(&reused)).unwrap();
        // The same process's file written after it started is kept (it may be in flight).
        let in_flight = format!(".hosts.xenchan-tmp-{}-1", later.id());
        std::fs::write(d.path().join(&in_flight), b"x").unwrap();
        let removed = sweep(&File::open(d.path()).unwrap());
        let _ = later.kill();
        let _ = later.wait();
        assert_eq!(removed, vec![OsString::from(reused)]);
        assert!(d.path().join(in_flight).exists());
    }
}
