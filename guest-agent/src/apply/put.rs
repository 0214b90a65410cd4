//! "Make this file hold these bytes with this owner and mode", touching nothing when it
//! already does: the one write step the new appliers share.

use std::ffi::OsStr;
use std::fs::File;

use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;
use xenchan_basics::commit::{Batch, Pending};

use crate::fsat::{self, Owner};

/// Makes `dir/name` a regular file holding `bytes` owned and moded as `owner` (a new
/// content staged in `batch`, for the push's commit); returns whether anything changed. A symlink, folder, device or hard-linked file in its place
/// is refused (never followed, never replaced); `shown` names it in messages.
pub(crate) fn put_file(
    batch: &Batch,
    dir: &File,
    name: &OsStr,
    bytes: &[u8],
    owner: Owner,
    shown: &str,
) -> Result<bool, String> {
    match batch.pending(dir, name) {
        Some(Pending::Content(c)) if c == bytes => return Ok(false),
        Some(_) => {
            fsat::stage_at(batch, dir, name, bytes, owner, shown)
                .map_err(|e| format!("cannot write {shown}: {e}"))?;
            return Ok(true);
        }
        None => {}
    }
    let st = fsat::lstat_at(dir, name).map_err(|e| format!("{shown}: {}", fsat::describe(&e)))?;
    if let Some(st) = &st {
        match fsat::kind(st) {
            SFlag::S_IFREG => {}
            SFlag::S_IFLNK => return Err(format!("{shown} is a symbolic link; refused")),
            _ => return Err(format!("{shown} is not a regular file; refused")),
        }
        if st.st_nlink > 1 {
            return Err(format!("{shown} has {} hard links; refused", st.st_nlink));
        }
        let limit = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let same = fsat::read_file_at(dir, name, limit)
            .ok()
            .flatten()
            .is_some_and(|old| old == bytes);
        if same {
            let f = fsat::open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
                .map_err(|e| format!("{shown}: {}", fsat::describe(&e)))?;
            return fsat::set_owner_mode(&f, owner).map_err(|e| format!("{shown}: {e}"));
        }
    }
    fsat::stage_at(batch, dir, name, bytes, owner, shown)
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(true)
}

/// Removes `dir/name` if it is there; returns whether it was.
pub(crate) fn remove_file(dir: &File, name: &OsStr, shown: &str) -> Result<bool, String> {
    match fsat::unlink_at(dir, name) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(format!("cannot remove {shown}: {e}")),
    }
}
