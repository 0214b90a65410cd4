//! One durable commit for many files: every new file is written to a temporary file
//! beside it first ([`Batch::stage`]), and [`Batch::commit`] then makes them durable
//! together, renames them into place, and syncs each folder touched once.
//!
//! Why not [`crate::atomic::write_atomic`] per file: each of its two fsyncs is a journal
//! commit of its own on ext4 and XFS, one after the other; ten per push on a guest's disk
//! cost more than everything else the agent does. Here the data of every temporary file
//! is handed to the disk first (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which starts the
//! write-back and so allocates the blocks in the running journal transaction), then each
//! temporary file is fsynced: the first fsync commits that transaction, which already
//! holds every file's blocks, and the others find their inode committed and return
//! (nothing left to write). The renames, then one fsync per folder, make the second
//! commit. Each file still gets its own fsync, so the guarantee does not depend on the
//! file system batching them: that is only what makes it cheap. The fsyncs of each step
//! are submitted together ([`crate::sync_many`]): without a journal (each fsync its own
//! writes and cache flush) they overlap instead of waiting out the disk one by one.
//!
//! Crash safety is that of `write_atomic`: a name only ever points at a complete old or a
//! complete new file (a temporary file is renamed only once its data is durable), after a
//! kill as after a power loss. [`Batch::barrier`] orders durability: nothing staged after
//! it is renamed before everything staged before it is renamed and its folders synced
//! (the agent's record of what it applied goes after the files it describes).
//!
//! Removals are staged the same way ([`Batch::stage_remove`]) and happen in order with
//! the renames. A batch dropped without commit removes its temporary files.
//!
//! What need not hold up the caller's answer is handed out by [`Batch::take_after`] as an
//! [`AfterCommit`], done once the caller has answered:
//! - the files a commit replaced or removed, held open: freeing them is no part of making
//!   the new files durable, and it is not free. On ext4 mounted `discard` without a
//!   journal each freed file is a synchronous discard inside the `rename` (0.06 ms per
//!   file on the bench's disk, against 0.004 ms with the old file still open);
//! - with [`Batch::defer_final_syncs`], the folder syncs of what was staged after the last
//!   barrier: a record that may lag behind its files after a power loss (the agent's
//!   `applied.json`: the broker then pushes again, and nothing changes).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::atomic::AtomicWriteError;

/// A folder the batch renames in, shared by the operations in it.
#[derive(Debug)]
struct Dir {
    file: File,
    /// Device and inode: two opens of one folder are one folder to sync.
    id: (u64, u64),
    shown: PathBuf,
}

/// A temporary file written and waiting to be renamed over its name.
#[derive(Debug)]
struct Put {
    dir: Arc<Dir>,
    tmp: OsString,
    name: OsString,
    file: File,
    content: Vec<u8>,
    shown: PathBuf,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

impl Drop for Put {
    fn drop(&mut self) {
        if !self.done {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.file.as_raw_fd()),
                self.tmp.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[derive(Debug)]
enum Op {
    Put(Put),
    Remove {
        dir: Arc<Dir>,
        name: OsString,
        shown: PathBuf,
    },
    Barrier,
}

/// What is staged for `name` in a folder: its new content, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// It will hold these bytes.
    Content(Vec<u8>),
    /// It will be removed.
    Removed,
}

/// What one commit did (for logs and for the tests that count the work).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Files renamed into place.
    pub files: usize,
    /// Files removed.
    pub removed: usize,
    /// fsyncs of folders.
    pub dir_syncs: usize,
}

/// Files staged for one durable commit. Shared by reference between the steps of a
/// push (interior mutability): each stages what it changes, one commit at the end.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Mutex<Vec<Op>>,
    after: Mutex<AfterCommit>,
    defer_final_syncs: AtomicBool,
}

/// What commits left to do once their caller has answered (see the module): the files
/// they replaced or removed, still open (freed, and on a file system mounted `discard`
/// trimmed, when let go), and the folders whose sync was deferred. [`AfterCommit::finish`]
/// does it; dropped unfinished, it syncs the folders all the same (errors unseen).
#[derive(Debug, Default)]
pub struct AfterCommit {
    old: Vec<OwnedFd>,
    folders: Vec<Arc<Dir>>,
}

impl AfterCommit {
    /// Whether there is nothing left to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.old.is_empty() && self.folders.is_empty()
    }

    /// How many old files are held.
    #[must_use]
    pub fn old_files(&self) -> usize {
        self.old.len()
    }

    /// How many folders wait for their sync.
    #[must_use]
    pub fn folders(&self) -> usize {
        self.folders.len()
    }

    /// Syncs the deferred folders (the first failure names its folder), then lets the
    /// old files go. Blocking: run it where nobody waits.
    pub fn finish(mut self) -> Result<(), AtomicWriteError> {
        let folders = std::mem::take(&mut self.folders);
        let files: Vec<&File> = folders.iter().map(|d| &d.file).collect();
        crate::sync_many::sync_all(&files)
            .map_err(|(i, e)| err("sync the folder", &folders[i].shown)(e))
    }

    /// Holds the file `name` in `dir` (not following a symlink) if there is one: a
    /// path-only open, which reads nothing and needs no permission on the file.
    #[allow(unsafe_code)]
    fn hold(&mut self, dir: &File, name: &OsStr) {
        let held = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        if let Ok(fd) = held {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            self.old
                .push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    }
}

impl Drop for AfterCommit {
    fn drop(&mut self) {
        let files: Vec<&File> = self.folders.iter().map(|d| &d.file).collect();
        let _ = crate::sync_many::sync_all(&files);
    }
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn dir_id(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Batch {
        Batch::default()
    }

    fn ops(&self) -> MutexGuard<'_, Vec<Op>> {
        // A panic while staging leaves a consistent list (pushes are whole): keep going.
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops().iter().all(|o| matches!(o, Op::Barrier))
    }

    /// The folder entry for `dir`, shared with the operations already staged in it.
    fn dir(ops: &[Op], dir: &File, shown: &Path) -> io::Result<Arc<Dir>> {
        let id = dir_id(dir)?;
        for op in ops.iter().rev() {
            let d = match op {
                Op::Put(p) => &p.dir,
                Op::Remove { dir, .. } => dir,
                Op::Barrier => continue,
            };
            if d.id == id {
                return Ok(Arc::clone(d));
            }
        }
        Ok(Arc::new(Dir {
            file: dir.try_clone()?,
            id,
            shown: shown.to_path_buf(),
        }))
    }

    /// Stages `tmp` (already written, owned and moded, open as `file`, in the folder open
    /// as `dir`) to replace `name` there at commit. `content` is what it holds, for
    /// [`Batch::pending`]; `shown` names the final file in errors. If the batch is
    /// dropped uncommitted, `tmp` is removed.
    pub fn stage(
        &self,
        dir: &File,
        name: &OsStr,
        tmp: &OsStr,
        file: File,
        content: Vec<u8>,
        shown: &Path,
    ) -> Result<(), AtomicWriteError> {
        let mut ops = self.ops();
        let folder = shown.parent().unwrap_or(Path::new("/"));
        let dir = match Batch::dir(&ops, dir, folder) {
            Ok(d) => d,
            Err(e) => {
                let _ = nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    tmp,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                return Err(err("open the folder of", shown)(e));
            }
        };
        ops.push(Op::Put(Put {
            dir,
            tmp: tmp.to_os_string(),
            name: name.to_os_string(),
            file,
            content,
            shown: shown.to_path_buf(),
            done: false,
        }));
        Ok(())
    }

    /// Writes `content` to a temporary file beside `path` (its folder made 0755 if
    /// missing) with `mode`, and stages it to replace `path` at commit. Symlinks are not
    /// followed for the temporary file.
    pub fn stage_path(
        &self,
        path: &Path,
        content: &[u8],
        mode: u32,
    ) -> Result<(), AtomicWriteError> {
        let folder = crate::atomic::folder_of(path);
        if !folder.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(folder)
                .map_err(err("create the folder", folder))?;
        }
        let dir = open_dir(folder).map_err(err("open the folder", folder))?;
        let name = path.file_name().unwrap_or_default();
        crate::tempname::sweep_once(&dir);
        let tmp = crate::tempname::temp_name(name);
        let tmp_path = folder.join(&tmp);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp_path)
                .map_err(err("create", &tmp_path))?;
            f.write_all(content).map_err(err("write", &tmp_path))?;
            // The umask may have cleared bits the mode asks for.
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(err("set the mode of", &tmp_path))?;
            Ok(f)
        })();
        match written {
            Ok(f) => self.stage(&dir, name, &tmp, f, content.to_vec(), path),
            Err(e) => {
                let _ = fs::remove_file(&tmp_path);
                Err(e)
            }
        }
    }

    /// Stages the removal of `name` in the folder open as `dir` (nothing there at commit
    /// time is not an error).
    pub fn stage_remove(
        &self,
        dir: &File,
        name: &OsStr,
        shown: &Path,
    ) -> Result<(), AtomicWriteError> {
        let mut ops = self.ops();
        let folder = shown.parent().unwrap_or(Path::new("/"));
        let dir = Batch::dir(&ops, dir, folder).map_err(err("open the folder of", shown))?;
        ops.push(Op::Remove {
            dir,
            name: name.to_os_string(),
            shown: shown.to_path_buf(),
        });
        Ok(())
    }

    /// [`Batch::stage_remove`] by path.
    pub fn stage_remove_path(&self, path: &Path) -> Result<(), AtomicWriteError> {
        let folder = path.parent().unwrap_or(Path::new("/"));
        let dir = open_dir(folder).map_err(err("open the folder", folder))?;
        self.stage_remove(&dir, path.file_name().unwrap_or_default(), path)
    }

    /// What the batch will make of `name` in the folder open as `dir`, if it stages
    /// anything for it (the last staged operation wins). A step that compares a file
    /// with what it wants asks this first: the file on disk is not yet what an earlier
    /// step of the same push staged.
    pub fn pending(&self, dir: &File, name: &OsStr) -> Option<Pending> {
        let ops = self.ops();
        // Nothing staged (the usual case for the first steps of a push): no fstat.
        if ops.iter().all(|o| matches!(o, Op::Barrier)) {
            return None;
        }
        let id = dir_id(dir).ok()?;
        ops.iter().rev().find_map(|op| match op {
            Op::Put(p) if p.dir.id == id && p.name == name => {
                Some(Pending::Content(p.content.clone()))
            }
            Op::Remove { dir, name: n, .. } if dir.id == id && n == name => Some(Pending::Removed),
            _ => None,
        })
    }

    /// [`Batch::pending`] by path.
    pub fn pending_path(&self, path: &Path) -> Option<Pending> {
        if self.is_empty() {
            return None;
        }
        let folder = path.parent()?;
        let dir = open_dir(folder).ok()?;
        self.pending(&dir, path.file_name()?)
    }

    /// What the commits so far left to do once the caller has answered (see
    /// [`AfterCommit`]). Not taken, it is done when the batch is dropped.
    pub fn take_after(&self) -> AfterCommit {
        std::mem::take(&mut *self.after())
    }

    fn after(&self) -> MutexGuard<'_, AfterCommit> {
        self.after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From now on, a commit leaves the folder syncs of what was staged after its last
    /// barrier to [`AfterCommit::finish`]: those files are in place when it returns, and
    /// durable once finished. Nothing changes for a batch without a barrier (everything
    /// is synced before commit returns): only a record that follows the files it
    /// describes, and may lag behind them after a power loss, belongs after the barrier.
    pub fn defer_final_syncs(&self) {
        self.defer_final_syncs.store(true, Ordering::Relaxed);
    }

    /// Everything staged from here on is renamed only once everything staged before is
    /// renamed and its folders synced.
    pub fn barrier(&self) {
        self.ops().push(Op::Barrier);
    }

    /// Makes everything staged durable and in place, in the order staged, and empties
    /// the batch (it may be used again: a step that needs the files in place before it
    /// goes on, such as reloading a service that reads them, commits early).
    ///
    /// On an error, what was renamed before it stays; the temporary files not yet
    /// renamed are removed. The error names the step and the file.
    pub fn commit(&self) -> Result<Committed, AtomicWriteError> {
        let mut ops = std::mem::take(&mut *self.ops());
        let mut done = Committed::default();
        let mut after = self.after();
        // 1. Every file's data on its way to the disk, then each one durable, the fsyncs
        //    submitted together (`sync_many`). On a journalled file system the first
        //    journal commit carries the blocks of all of them (see the module).
        for op in &ops {
            if let Op::Put(p) = op {
                start_writeback(&p.file);
            }
        }
        let puts: Vec<&Put> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(p) => Some(p),
                _ => None,
            })
            .collect();
        let files: Vec<&File> = puts.iter().map(|p| &p.file).collect();
        crate::sync_many::sync_all(&files)
            .map_err(|(i, e)| err("sync", &puts[i].dir.shown.join(&puts[i].tmp))(e))?;
        drop(puts);
        // 2. Per segment between barriers: renames and removals in order, then each
        //    folder touched synced once (the last segment's maybe after the answer).
        let segments = ops.split(|o| matches!(o, Op::Barrier)).count();
        let defer_last = segments > 1 && self.defer_final_syncs.load(Ordering::Relaxed);
        for (n, segment) in ops.split_mut(|o| matches!(o, Op::Barrier)).enumerate() {
            let mut dirs: Vec<Arc<Dir>> = Vec::new();
            let mut seen = BTreeSet::new();
            for op in segment.iter_mut() {
                let dir = match op {
                    Op::Put(p) => {
                        after.hold(&p.dir.file, &p.name);
                        nix::fcntl::renameat(
                            Some(p.dir.file.as_raw_fd()),
                            p.tmp.as_os_str(),
                            Some(p.dir.file.as_raw_fd()),
                            p.name.as_os_str(),
                        )
                        .map_err(|e| err("rename into place", &p.shown)(e.into()))?;
                        p.done = true;
                        done.files += 1;
                        &p.dir
                    }
                    Op::Remove { dir, name, shown } => {
                        after.hold(&dir.file, name);
                        match nix::unistd::unlinkat(
                            Some(dir.file.as_raw_fd()),
                            name.as_os_str(),
                            nix::unistd::UnlinkatFlags::NoRemoveDir,
                        ) {
                            Ok(()) => done.removed += 1,
                            Err(nix::errno::Errno::ENOENT) => continue,
                            Err(e) => return Err(err("remove", shown)(e.into())),
                        }
                        dir
                    }
                    Op::Barrier => continue,
                };
                if seen.insert(dir.id) {
                    dirs.push(Arc::clone(dir));
                }
            }
            if defer_last && n + 1 == segments {
                after.folders.extend(dirs);
                continue;
            }
            let folders: Vec<&File> = dirs.iter().map(|d| &d.file).collect();
            crate::sync_many::sync_all(&folders)
                .map_err(|(i, e)| err("sync the folder", &dirs[i].shown)(e))?;
            done.dir_syncs += dirs.len();
        }
        ops.clear();
        Ok(done)
    }
}

/// Opens a folder (following symlinks: for paths the caller trusts).
fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// Starts the write-back of `file`'s dirty pages without waiting for it. Only a hint
/// (the fsync that follows is the guarantee): an error is ignored.
#[allow(unsafe_code)]
fn start_writeback(file: &File) {
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_in_place_before_the_commit_and_everything_after() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("sub/b");
        fs::write(&a, "old a").unwrap();
        let batch = Batch::new();
        batch.stage_path(&a, b"new a", 0o640).unwrap();
        batch.stage_path(&b, b"new b", 0o600).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"old a");
        assert!(!b.exists());
        assert_eq!(
            batch.pending_path(&a),
            Some(Pending::Content(b"new a".to_vec()))
        );
        let done = batch.commit().unwrap();
        assert_eq!(
            done,
            Committed {
                files: 2,
                removed: 0,
                dir_syncs: 2
            }
        );
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert_eq!(fs::read(&b).unwrap(), b"new b");
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o777, 0o640);
        assert_eq!(names(d.path()), ["a", "sub"]);
        assert!(batch.is_empty());
        assert_eq!(batch.pending_path(&a), None);
    }

    #[test]
    fn the_files_a_commit_replaced_or_removed_are_held_until_taken_and_dropped() {
        let d = tempfile::tempdir().unwrap();
        let (a, gone, fresh) = (
            d.path().join("a"),
            d.path().join("gone"),
            d.path().join("new"),
        );
        fs::write(&a, "old a").unwrap();
        fs::write(&gone, "x").unwrap();
        let olds = [&a, &gone].map(|p| fs::metadata(p).unwrap().ino());
        let batch = Batch::new();
        batch.stage_path(&a, b"new a", 0o644).unwrap();
        batch
            .stage_path(&fresh, b"nothing replaced", 0o644)
            .unwrap();
        batch.stage_remove_path(&gone).unwrap();
        batch.commit().unwrap();
        let after = batch.take_after();
        // The two old files, no longer named anywhere, and nothing for the new name.
        let held: Vec<(u64, u64)> = after
            .old
            .iter()
            .map(|fd| {
                let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
                (st.st_ino, st.st_nlink)
            })
            .collect();
        assert_eq!(held, [(olds[0], 0), (olds[1], 0)]);
        assert_eq!(fs::read(&a).unwrap(), b"new a");
        assert!(batch.take_after().is_empty());
        // No barrier: nothing was deferred, whatever was asked.
        assert_eq!(after.folders(), 0);
    }

    #[test]
    fn deferred_final_syncs_leave_only_what_follows_the_last_barrier_to_finish() {
        let d = tempfile::tempdir().unwrap();
        let (files, record) = (d.path().join("files"), d.path().join("record"));
        let (a, r) = (files.join("a"), record.join("applied"));
        let batch = Batch::new();
        batch.defer_final_syncs();
        // Without a barrier, every folder is synced by the commit.
        batch.stage_path(&a, b"1", 0o644).unwrap();
        assert_eq!(batch.commit().unwrap().dir_syncs, 1);
        assert_eq!(batch.take_after().folders(), 0);
        // With one, the record's folder waits; everything is in place already.
        batch.stage_path(&a, b"2", 0o644).unwrap();
        batch.barrier();
        batch.stage_path(&r, b"2", 0o600).unwrap();
        let done = batch.commit().unwrap();
        assert_eq!((done.files, done.dir_syncs), (2, 1));
        assert_eq!(fs::read(&a).unwrap(), b"2");
        assert_eq!(fs::read(&r).unwrap(), b"2");
        let after = batch.take_after();
        assert_eq!((after.folders(), after.old_files()), (1, 1));
        after.finish().unwrap();
    }

    #[test]
    fn a_dropped_batch_leaves_the_old_files_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        fs::write(&a, "old").unwrap();
        {
            let batch = Batch::new();
            batch.stage_path(&a, b"new", 0o644).unwrap();
            assert_eq!(names(d.path()).len(), 2);
        }
        assert_eq!(fs::read(&a).unwrap(), b"old");
        assert_eq!(names(d.path()), ["a"]);
    }

    #[test]
    fn removals_and_renames_go_in_order_and_one_folder_is_synced_once() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let gone = d.path().join("gone");
        fs::write(&gone, "x").unwrap();
        let batch = Batch::new();
        batch.stage_path(&a, b"1", 0o644).unwrap();
        batch.stage_remove_path(&gone).unwrap();
        batch
            .stage_remove_path(&d.path().join("never-was"))
            .unwrap();
        batch.stage_path(&a, b"2", 0o644).unwrap();
        assert_eq!(batch.pending_path(&gone), Some(Pending::Removed));
        assert_eq!(
            batch.pending_path(&a),
            Some(Pending::Content(b"2".to_vec()))
        );
        let done = batch.commit().unwrap();
        assert_eq!((done.files, done.removed, done.dir_syncs), (2, 1, 1));
        assert_eq!(fs::read(&a).unwrap(), b"2");
        assert_eq!(names(d.path()), ["a"]);
    }

    #[test]
    fn a_failed_rename_names_the_file_and_cleans_up_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let first = d.path().join("first");
        let taken = d.path().join("taken");
        let last = d.path().join("last");
        let batch = Batch::new();
        batch.stage_path(&first, b"1", 0o644).unwrap();
        batch.stage_path(&taken, b"2", 0o644).unwrap();
        batch.barrier();
        batch.stage_path(&last, b"3", 0o644).unwrap();
        // A non-empty folder where the file should go: its rename fails.
        fs::create_dir_all(taken.join("inside")).unwrap();
        let e = batch.commit().unwrap_err();
        assert_eq!(
            (e.what, e.path.as_path()),
            ("rename into place", taken.as_path())
        );
        // What came before stays; what was not renamed is gone, temporaries included;
        // nothing after the barrier went in.
        assert_eq!(fs::read(&first).unwrap(), b"1");
        assert_eq!(names(d.path()), ["first", "taken"]);
    }
}
