//! Files we own: written atomically and only when their content changes, recognised by
//! [`MARKER`], removed only when they carry it. Writes and removals are staged in the
//! push's [`Batch`] (one durable commit for every file of the push); what an earlier step
//! of the same push staged counts as the file's content.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use xenchan_basics::atomic;
use xenchan_basics::commit::{Batch, Pending};

/// The text of the header comment in every file we write (after `# `).
pub const MARKER: &str = "Managed by xenchan-agent; do not edit (changes are overwritten)";

/// Network configuration files are small; anything bigger is not one of ours.
pub(crate) const MAX_FILE: u64 = 1024 * 1024;

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Content and mode were already right: nothing was touched.
    Unchanged,
    /// The file was (re)written, or its mode fixed.
    Written,
}

/// A file operation that failed.
#[derive(Debug, Error)]
pub(crate) enum FileError {
    #[error("{} exists and is not ours (no xenchan marker): left alone", .0.display())]
    NotOurs(PathBuf),
    #[error("{} is not a regular file: left alone", .0.display())]
    NotRegular(PathBuf),
    #[error("{} is larger than {MAX_FILE} bytes: left alone", .0.display())]
    TooLarge(PathBuf),
    #[error(transparent)]
    Atomic(#[from] atomic::AtomicWriteError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + use<'a> {
    move |source| FileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether the header of `content` carries our marker.
pub(crate) fn has_marker(content: &[u8]) -> bool {
    let head = &content[..content.len().min(1024)];
    let needle = MARKER.as_bytes();
    head.windows(needle.len()).any(|w| w == needle)
}

/// The header comment line we put on top of every file.
pub(crate) fn header() -> String {
    format!("# {MARKER}\n")
}

/// Reads a regular file without following a symlink in the last component; `None` if
/// there is nothing there. The first read in a folder removes the temporary files killed
/// processes left there (an unchanged file is not written, so nothing else would).
pub(crate) fn read_regular(path: &Path) -> Result<Option<(Vec<u8>, u32)>, FileError> {
    xenchan_basics::tempname::sweep_once_beside(path);
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(path.to_path_buf()));
    }
    if meta.len() > MAX_FILE {
        return Err(FileError::TooLarge(path.to_path_buf()));
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("open", path))?;
    // Sized up front: one read (and one that finds the end), not reads of 32, 64, ...
    let mut buf = Vec::with_capacity(usize::try_from(meta.len() + 1).unwrap_or(0));
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(FileError::TooLarge(path.to_path_buf()));
    }
    Ok(Some((buf, meta.permissions().mode() & 0o7777)))
}

/// Stages `content` for `path` with `mode` in `batch`, unless it already holds exactly
/// that (or an earlier step of the push staged exactly that). An existing file without
/// our marker is refused.
pub(crate) fn write_ours(
    path: &Path,
    content: &[u8],
    mode: u32,
    batch: &Batch,
) -> Result<Outcome, FileError> {
    match batch.pending_path(path) {
        Some(Pending::Content(staged)) if staged == content => return Ok(Outcome::Unchanged),
        Some(_) => {
            batch.stage_path(path, content, mode)?;
            return Ok(Outcome::Written);
        }
        None => {}
    }
    if let Some((old, old_mode)) = read_regular(path)? {
        if !has_marker(&old) {
            return Err(FileError::NotOurs(path.to_path_buf()));
        }
        if old == content {
            if old_mode == mode {
                return Ok(Outcome::Unchanged);
            }
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", path))?;
            return Ok(Outcome::Written);
        }
    }
    batch.stage_path(path, content, mode)?;
    Ok(Outcome::Written)
}

fn sync_dir(dir: &Path) -> Result<(), FileError> {
    atomic::sync_dir(dir).map_err(FileError::from)
}

/// Stages the removal of `path` in `batch` if it carries our marker. `Ok(false)`: there
/// was nothing to remove.
pub(crate) fn remove_ours(path: &Path, batch: &Batch) -> Result<bool, FileError> {
    if batch.pending_path(path) == Some(Pending::Removed) {
        return Ok(false);
    }
    let Some((content, _)) = read_regular(path)? else {
        return Ok(false);
    };
    if !has_marker(&content) {
        return Err(FileError::NotOurs(path.to_path_buf()));
    }
    batch.stage_remove_path(path)?;
    Ok(true)
}

/// Renames `from` to `to` and syncs the folder (both in one folder).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    fs::rename(from, to).map_err(io_err("rename", from))?;
    sync_dir(to.parent().unwrap_or(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn writes_once_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.conf");
        let body = format!("{}a=1\n", header());
        let batch = Batch::new();
        assert_eq!(
            write_ours(&p, body.as_bytes(), 0o600, &batch).unwrap(),
            Outcome::Written
        );
        // Staged, not yet in place; a second write of the same bytes sees the staged ones.
        assert!(!p.exists());
        assert_eq!(
            write_ours(&p, body.as_bytes(), 0o600, &batch).unwrap(),
            Outcome::Unchanged
        );
        batch.commit().unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let ino = fs::metadata(&p).unwrap().ino();
        assert_eq!(
            write_ours(&p, body.as_bytes(), 0o600, &batch).unwrap(),
            Outcome::Unchanged
        );
        assert!(batch.is_empty());
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino, "not rewritten");
        // Same content, wrong mode: fixed in place.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            write_ours(&p, body.as_bytes(), 0o600, &batch).unwrap(),
            Outcome::Written
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);

        let foreign = dir.path().join("theirs.conf");
        fs::write(&foreign, "a=2\n").unwrap();
        assert!(matches!(
            write_ours(&foreign, body.as_bytes(), 0o644, &batch),
            Err(FileError::NotOurs(_))
        ));
        assert!(matches!(
            remove_ours(&foreign, &batch),
            Err(FileError::NotOurs(_))
        ));
        assert_eq!(fs::read_to_string(&foreign).unwrap(), "a=2\n");
        assert!(remove_ours(&p, &batch).unwrap());
        assert!(p.exists(), "removed before the commit");
        assert!(!remove_ours(&p, &batch).unwrap());
        batch.commit().unwrap();
        assert!(!p.exists());
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, format!("{}x\n", header())).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            remove_ours(&link, &Batch::new()),
            Err(FileError::NotRegular(_))
        ));
        assert!(target.exists());
    }
}
