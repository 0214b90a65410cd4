//! Atomic file replacement: readers see the old file or the new one, never a mix, and
//! after a crash (power loss included) one of the two.
//!
//! The guest agent writes under a guest root through `openat` (it refuses symlinks on
//! the way); that is its own helper. This one is for plain paths the process owns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What failed, on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct AtomicWriteError {
    /// The step ("create the folder", "create", "write", "sync", "rename into place",
    /// "sync the folder").
    pub what: &'static str,
    /// The path it failed on.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The folder that holds `path`, where its temporary files go (`.` for a bare name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `content` to `path` with `mode`: a temporary file in the same folder (created
/// 0755 if missing), fsync, rename over, fsync the folder. The temporary file is removed
/// when a step fails. Symlinks are not followed for the temporary file.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err("create the folder", dir))?;
    }
    let name = path.file_name().unwrap_or_default();
    // Best effort: a folder we cannot open for the sweep fails below, naming the step.
    if let Ok(d) = File::open(dir) {
        crate::tempname::sweep_once(&d);
    }
    let tmp = dir.join(crate::tempname::temp_name(name));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(content).map_err(err("write", &tmp))?;
        // The umask may have cleared bits the mode asks for.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("set the mode of", &tmp))?;
        f.sync_all().map_err(err("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(err("rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a folder, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync the folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/file");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failure_names_the_step_and_path() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should go: the rename fails.
        let p = dir.path().join("taken");
        fs::create_dir_all(p.join("inside")).unwrap();
        let e = write_atomic(&p, b"x", 0o644).unwrap_err();
        assert_eq!(e.what, "rename into place");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
