//! Writing local registry entries, atomically.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::format::{Entry, write};
use crate::registry::is_ignored_file_name;

/// Why a local entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The loader would skip a file with this name, so the entry would be lost.
    #[error(
        "cannot store `{0}` as a file: registry folders ignore hidden, backup and package-manager file names"
    )]
    IgnoredFileName(String),
    /// Creating, writing, syncing or renaming failed.
    #[error("cannot write {}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The header written above an entry by [`store_local_entry`].
pub const LOCAL_FILE_HEADER: &str = "# Local channel name registration (xen-pv-channel(7) registry format).\n\
     # Written by `xenchan registry add`; see docs/REGISTRY.md.\n";

/// Writes `entry` as `<dir>/<name>`, replacing any file of that name, atomically:
/// a temporary file in the same folder, fsync, rename, fsync of the folder. The
/// folder is created when missing. The file is made world-readable (0644) because
/// brokers and agents may read the registry as other users.
///
/// Checks nothing about clashes: the caller decides (see `xenchan registry add`).
pub fn store_local_entry(dir: &Path, entry: &Entry) -> Result<PathBuf, StoreError> {
    let name = entry.name();
    if is_ignored_file_name(name) {
        return Err(StoreError::IgnoredFileName(name.escape_debug().to_string()));
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(io_err(parent))?;
        }
    }
    // Entry names are valid device names: one path component, never `.` or `..`.
    let target = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(".xenchan-registry-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let mut text = String::from(LOCAL_FILE_HEADER);
    text.push_str(&write(std::slice::from_ref(entry)));
    tmp.write_all(text.as_bytes())
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err(tmp.path()))?;
    tmp.persist(&target).map_err(|e| io_err(&target)(e.error))?;
    sync_dir(dir).map_err(io_err(dir))?;
    Ok(target)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
