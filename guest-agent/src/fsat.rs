//! Folder-relative file operations (`openat(2)` and friends) that never follow a symlink
//! in the last component, and atomic replacement of a file inside an open folder.
//!
//! Paths inside a user's home are under that user's control: checking a path and then
//! opening it by name would let the user swap in a symlink between the two steps. Every
//! step here works on an already opened folder descriptor instead.

// nix 0.29 returns bare `RawFd`s from openat(2); taking ownership of a descriptor the
// kernel just handed us, and filling a `struct flock` for fcntl(2), need `unsafe`. Those are
// the only two unsafe blocks of the crate.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use xenchan_basics::commit::{Batch, Pending};

/// Owner and permission bits a file or folder must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Opens a folder by path, following symlinks: only for trusted paths (the guest root,
/// `<root>/etc`, the state folder).
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a single file name", name.to_string_lossy()),
        ));
    }
    Ok(())
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub(crate) fn open_at(dir: &File, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
    check_name(name)?;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    // SAFETY: openat(2) just returned this descriptor and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

/// Opens the folder `name` inside `dir`; a symlink is refused (ELOOP or ENOTDIR).
pub(crate) fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: &File, name: &OsStr) -> io::Result<Option<FileStat>> {
    check_name(name)?;
    match nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of a stat.
pub(crate) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdir_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    check_name(name)?;
    nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode))?;
    Ok(())
}

/// `unlinkat(dir, name, 0)`.
pub(crate) fn unlink_at(dir: &File, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
    Ok(())
}

/// Gives an open file or folder its owner and mode; returns whether anything changed.
pub(crate) fn set_owner_mode(file: &File, want: Owner) -> io::Result<bool> {
    let meta = file.metadata()?;
    let mut changed = false;
    if meta.uid() != want.uid || meta.gid() != want.gid {
        nix::unistd::fchown(
            file.as_raw_fd(),
            Some(Uid::from_raw(want.uid)),
            Some(Gid::from_raw(want.gid)),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot give it to uid {} gid {} ({e}{})",
                    want.uid,
                    want.gid,
                    if nix::unistd::geteuid().is_root() {
                        ""
                    } else {
                        "; the agent is not running as root"
                    }
                ),
            )
        })?;
        changed = true;
    }
    // chown may clear set-id bits, so the mode is checked after it.
    if file.metadata()?.mode() & 0o7777 != want.mode {
        nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(want.mode))?;
        changed = true;
    }
    Ok(changed)
}

/// Reads an open file whose size was just read as `size`, refusing more than `limit`
/// bytes. The buffer is made that large up front, so the file comes in one read (and one
/// that finds its end) instead of reads of 32, 64, 128... bytes; a file that grew
/// meanwhile is still read to its end or past `limit`.
fn read_bounded(file: &mut File, limit: u64, size: u64) -> io::Result<Vec<u8>> {
    let hint = usize::try_from(size.min(limit).saturating_add(1)).unwrap_or(0);
    let mut buf = Vec::with_capacity(hint);
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

/// Reads the regular file `name` in `dir` (symlinks, FIFOs and devices refused);
/// `None` when it does not exist. The first read in a folder removes the temporary files
/// killed processes left there (a file found unchanged is not written, so its folder
/// would otherwise not be swept until it changes).
pub(crate) fn read_file_at(dir: &File, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
    xenchan_basics::tempname::sweep_once(dir);
    // O_NONBLOCK: a FIFO planted under the name must not block the agent.
    let mut f = match open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "is not a regular file",
        ));
    }
    read_bounded(&mut f, limit, meta.len()).map(Some)
}

/// Replaces `name` in `dir` atomically: a temporary file in the same folder, written,
/// owned and fsynced, then renamed over `name`, then the folder fsynced.
pub(crate) fn write_atomic_at(
    dir: &File,
    name: &OsStr,
    contents: &[u8],
    owner: Owner,
) -> io::Result<()> {
    let (tmp, f) = write_temp_at(dir, name, contents, owner)?;
    let tmp = OsStr::new(&tmp);
    let moved = f.sync_all().and_then(|()| {
        nix::fcntl::renameat(Some(dir.as_raw_fd()), tmp, Some(dir.as_raw_fd()), name)
            .map_err(io::Error::from)
    });
    if let Err(e) = moved {
        let _ = unlink_at(dir, tmp);
        return Err(e);
    }
    dir.sync_all()
}

/// A new temporary file beside `name` in `dir` holding `contents`, owned and moded as
/// `owner`, not yet synced; its name and handle. Removed again if writing fails.
fn write_temp_at(
    dir: &File,
    name: &OsStr,
    contents: &[u8],
    owner: Owner,
) -> io::Result<(String, File)> {
    check_name(name)?;
    // A push killed half-way (kill -9, power loss) left its temporary files: the first
    // write into a folder removes those of processes that are gone.
    xenchan_basics::tempname::sweep_once(dir);
    let tmp = xenchan_basics::tempname::temp_name(name);
    let tmp = tmp.as_os_str();
    let mut f = open_at(
        dir,
        tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        0o600,
    )?;
    let written = f
        .write_all(contents)
        .and_then(|()| set_owner_mode(&f, owner));
    if let Err(e) = written {
        let _ = unlink_at(dir, tmp);
        return Err(e);
    }
    Ok((tmp.to_string_lossy().into_owned(), f))
}

/// Writes `contents` to a temporary file in `dir` (owned and moded as `owner`) and stages
/// it in `batch` to replace `name` at the push's commit; `shown` names the file in
/// errors. Nothing is fsynced or renamed here: [`Batch::commit`] does that for every file
/// of the push at once.
pub(crate) fn stage_at(
    batch: &Batch,
    dir: &File,
    name: &OsStr,
    contents: &[u8],
    owner: Owner,
    shown: &str,
) -> io::Result<()> {
    let (tmp, f) = write_temp_at(dir, name, contents, owner)?;
    batch
        .stage(
            dir,
            name,
            OsStr::new(&tmp),
            f,
            contents.to_vec(),
            Path::new(shown),
        )
        .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))
}

/// The content `name` in `dir` will have once `batch` is committed, if an earlier step
/// of the push staged something for it (`Some(None)`: its removal), else what is on
/// disk now (`None` when it does not exist).
pub(crate) fn current_at(
    batch: &Batch,
    dir: &File,
    name: &OsStr,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    match batch.pending(dir, name) {
        Some(Pending::Content(c)) => Ok(Some(c)),
        Some(Pending::Removed) => Ok(None),
        None => read_file_at(dir, name, limit),
    }
}

/// How a path walk failed.
#[derive(Debug)]
pub(crate) struct WalkError {
    /// The path up to and including the component that failed.
    pub at: String,
    pub source: io::Error,
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, describe(&self.source))
    }
}

/// Opens the folder `rel` below `base` one component at a time, refusing symlinks and
/// `..` anywhere. With `create`, missing folders are made with `create` as their mode
/// (owned by whoever runs the agent).
pub(crate) fn walk_dirs(base: &File, rel: &Path, create: Option<u32>) -> Result<File, WalkError> {
    let mut cur = base.try_clone().map_err(|source| WalkError {
        at: "/".into(),
        source,
    })?;
    let mut at = String::new();
    for comp in rel.components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(WalkError {
                    at: rel.display().to_string(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "contains `..`"),
                });
            }
        };
        at.push('/');
        at.push_str(&name.to_string_lossy());
        let next = match open_dir_at(&cur, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create.is_some() => {
                match mkdir_at(&cur, name, create.unwrap_or(0o755)) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(source) => {
                        return Err(WalkError {
                            at: at.clone(),
                            source,
                        });
                    }
                }
                open_dir_at(&cur, name)
            }
            other => other,
        };
        cur = next.map_err(|source| WalkError {
            at: at.clone(),
            source,
        })?;
    }
    Ok(cur)
}

/// An I/O error in words, naming symlink refusals plainly.
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "is a symbolic link (refused: never followed here)".into(),
        Some(libc::ENOTDIR) => "is not a folder (or is a symbolic link: refused)".into(),
        Some(libc::ENOENT) => "does not exist".into(),
        _ => e.to_string(),
    }
}

/// An exclusive `fcntl` lock on `<etc>/.pwd.lock`, the lock `lckpwdf(3)` (and so
/// useradd, passwd, vipw) takes before touching passwd/shadow/group.
#[derive(Debug)]
pub(crate) struct PwdLock {
    _file: File,
}

impl PwdLock {
    /// Takes the lock, retrying until `wait` has passed.
    pub(crate) fn acquire(etc: &File, wait: Duration) -> io::Result<PwdLock> {
        let file = open_at(
            etc,
            OsStr::new(".pwd.lock"),
            OFlag::O_WRONLY | OFlag::O_CREAT,
            0o600,
        )?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: `flock` is a plain C struct for which all-zero bytes are valid.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = libc::F_WRLCK as libc::c_short;
            lock.l_whence = libc::SEEK_SET as libc::c_short;
            match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&lock)) {
                Ok(_) => return Ok(PwdLock { _file: file }),
                Err(Errno::EAGAIN | Errno::EACCES | Errno::EINTR) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("/etc/.pwd.lock is held by another program ({e})"),
                    ));
                }
            }
        }
    }
}
