//! fsync of several files at once: all of them handed to the kernel in one `io_uring`
//! submission, so that their writes and cache flushes overlap, instead of one fsync
//! after the other.
//!
//! Why: on a virtio disk each fsync is a few synchronous writes and a cache flush, and
//! each of those waits out the device's round trip; when the disk was idle before (one
//! push every few seconds or minutes) that round trip includes the host waking up. Five
//! files one after another pay it five times. On the bench's disk the push's sequence (5
//! files, then 3 folders) took 1.7 ms one by one and 1.2 ms submitted together
//! (docs/PERFORMANCE.md).
//!
//! The guarantee is the same: [`sync_all`] returns only once every fsync completed,
//! and an fsync that failed is reported for its file. Where `io_uring` is missing (before
//! Linux 5.1, `kernel.io_uring_disabled`, a seccomp filter such as a container runtime's)
//! or fsync costs nothing (tmpfs: a round trip to a kernel worker would be all the
//! cost), the files are synced one after another, as before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, TryLockError};

use io_uring::{IoUring, opcode, types};

/// Submission queue entries: a push syncs 5 files; more are submitted in rounds.
const RING_ENTRIES: u32 = 16;

/// The process's ring, made on first use.
enum Ring {
    Untried,
    /// `io_uring` is not available here (tried once), or the ring failed.
    Unavailable,
    Ready(Box<IoUring>),
}

static RING: Mutex<Ring> = Mutex::new(Ring::Untried);

/// fsyncs every file of `files`; on failure, the index of the first file (in order)
/// whose fsync failed and its error.
pub fn sync_all(files: &[&File]) -> Result<(), (usize, io::Error)> {
    if files.len() > 1 && !fsync_is_free(files[0]) {
        // Another commit waiting on the ring (the agent's push beside a hotplug's): this
        // one does not queue behind it, it syncs its files itself.
        let mut ring = match RING.try_lock() {
            Ok(r) => r,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return one_by_one(files),
        };
        if matches!(*ring, Ring::Untried) {
            *ring =
                IoUring::new(RING_ENTRIES).map_or(Ring::Unavailable, |r| Ring::Ready(Box::new(r)));
        }
        if let Ring::Ready(r) = &mut *ring {
            match sync_on_ring(r, files) {
                Ok(results) => return first_failure(results),
                // A ring that fails a submit is not trusted again; the files are synced
                // one by one below (a second fsync of a file is harmless).
                Err(_) => *ring = Ring::Unavailable,
            }
        }
    }
    one_by_one(files)
}

fn one_by_one(files: &[&File]) -> Result<(), (usize, io::Error)> {
    for (i, f) in files.iter().enumerate() {
        f.sync_all().map_err(|e| (i, e))?;
    }
    Ok(())
}

fn first_failure(results: Vec<io::Result<()>>) -> Result<(), (usize, io::Error)> {
    match results.into_iter().enumerate().find(|(_, r)| r.is_err()) {
        Some((i, Err(e))) => Err((i, e)),
        _ => Ok(()),
    }
}

/// Whether fsync on this file's file system has nothing to wait for.
fn fsync_is_free(file: &File) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
    // tmpfs has no device: its fsync returns at once.
    fstatfs(file).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// Submits one fsync per file and waits for all of them: each file's own outcome. An
/// error of the ring itself (not of an fsync) is returned as such; the caller then drops
/// the ring (requests in flight still complete: the kernel holds their files) and syncs
/// the files itself.
fn sync_on_ring(ring: &mut IoUring, files: &[&File]) -> io::Result<Vec<io::Result<()>>> {
    let mut results: Vec<Option<io::Result<()>>> = files.iter().map(|_| None).collect();
    let per_round = ring.params().sq_entries() as usize;
    for (round, chunk) in files.chunks(per_round).enumerate() {
        let base = round * per_round;
        for (i, f) in chunk.iter().enumerate() {
            let entry = opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                .build()
                .user_data((base + i) as u64);
            // SAFETY: the entry refers to no memory, only to a descriptor that stays open
            // (borrowed from `files`) until its completion is reaped below.
            #[allow(unsafe_code)]
            let pushed = unsafe { ring.submission().push(&entry) };
            pushed.map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let mut left = chunk.len();
        while left > 0 {
            // Submits what is queued (nothing after the first pass) and waits for the
            // rest: one system call when nothing interrupts it.
            match ring.submit_and_wait(left) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                let i = usize::try_from(cqe.user_data()).unwrap_or(usize::MAX);
                let res = cqe.result();
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(())
                    });
                    left -= 1;
                }
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("no completion"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    /// A folder on the disk the tests run from (the target folder), not tmpfs.
    fn on_disk() -> tempfile::TempDir {
        let exe = std::env::current_exe().unwrap();
        tempfile::tempdir_in(exe.parent().unwrap()).unwrap()
    }

    fn files_in(dir: &std::path::Path, n: usize) -> Vec<File> {
        (0..n)
            .map(|i| {
                let mut f = File::create(dir.join(format!("f{i}"))).unwrap();
                f.write_all(format!("file {i}").as_bytes()).unwrap();
                f
            })
            .collect()
    }

    #[test]
    fn every_file_is_synced_in_one_call_and_more_than_a_ring_holds_too() {
        let d = on_disk();
        for n in [0, 1, 5, RING_ENTRIES as usize + 3] {
            let files = files_in(d.path(), n);
            let refs: Vec<&File> = files.iter().collect();
            sync_all(&refs).unwrap();
        }
    }

    #[test]
    fn a_failed_fsync_names_its_file() {
        // fsync of a read-only descriptor of a FIFO fails with EINVAL on Linux; between
        // two regular files it is the second one reported.
        let d = on_disk();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let files = files_in(d.path(), 2);
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let refs = [&files[0], &pipe, &files[1]];
        let (i, e) = sync_all(&refs).unwrap_err();
        assert_eq!(i, 1, "{e}");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }

    #[test]
    fn tmpfs_is_told_apart_from_a_disk() {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            let f = tempfile::tempfile_in(shm).unwrap();
            assert!(fsync_is_free(&f));
        }
        // Anything else is taken to have a device to wait for (procfs here: any file
        // system that is not tmpfs).
        let proc = File::open("/proc/self/status").unwrap();
        assert!(!fsync_is_free(&proc));
    }

    /// A commit that finds the ring busy with another syncs its files itself instead of
    /// waiting for the other's fsyncs.
    #[test]
    fn a_busy_ring_is_not_waited_for() {
        let d = on_disk();
        let _busy = RING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = d.path().to_path_buf();
        std::thread::spawn(move || {
            let files = files_in(&path, 3);
            let refs: Vec<&File> = files.iter().collect();
            let _ = tx.send(sync_all(&refs).map_err(|(i, e)| format!("{i}: {e}")));
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(done, Ok(Ok(())), "sync_all waited for the busy ring");
    }

    /// The ring itself, where the kernel offers one: each file's outcome, in order.
    #[test]
    fn the_ring_reports_each_files_outcome() {
        let Ok(mut ring) = IoUring::new(4) else {
            eprintln!("skipped: io_uring is not available here");
            return;
        };
        let d = on_disk();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let files = files_in(d.path(), 6);
        let mut refs: Vec<&File> = files.iter().collect();
        refs.insert(2, &pipe);
        // 7 requests on a ring of 4: two rounds.
        let results = sync_on_ring(&mut ring, &refs).unwrap();
        let failed: Vec<Option<i32>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.raw_os_error().unwrap()))
            .collect();
        assert_eq!(
            failed,
            [None, None, Some(libc::EINVAL), None, None, None, None]
        );
    }
}
