//! Binding listening unix sockets: a stale socket is replaced, any other file refused.

use std::path::Path;

use tokio::net::UnixListener;

use crate::paths::{MAX_SOCKET_PATH, check_socket_path};

/// Binds a listening socket, replacing a stale socket file but never another file.
pub fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    check_socket_path(path)?;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// Binds a listening socket that appears at `path` only with `mode`: it is bound under a
/// temporary name in the same folder, chmod'ed, then renamed over `path` (a bound unix
/// socket can be renamed), so there is no moment when `path` exists with the
/// permissions the umask gave. Like [`bind_socket`], a stale socket at `path` is
/// replaced and any other file refused.
pub fn bind_socket_with_mode(path: &Path, mode: u32) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    check_socket_path(path)?;
    if let Ok(m) = std::fs::symlink_metadata(path)
        && !m.file_type().is_socket()
    {
        return Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    // A hidden name no longer than the limit allows; 8 random hex digits make a clash
    // with another file unlikely, and bind refuses an existing name anyway.
    let room = MAX_SOCKET_PATH.saturating_sub(dir.as_os_str().len() + 1);
    if room < 6 {
        return Err(format!(
            "the folder of {} leaves no room for a temporary socket name",
            path.display()
        ));
    }
    let mut last = String::new();
    for _ in 0..4 {
        let mut tmp = format!(".{:08x}.tmp", rand::random::<u32>());
        tmp.truncate(room);
        let tmp = dir.join(tmp);
        let listener = match UnixListener::bind(&tmp) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = format!("{} is in use", tmp.display());
                continue;
            }
            Err(e) => return Err(format!("cannot listen on {}: {e}", tmp.display())),
        };
        let finish = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(|e| {
                    format!("cannot move {} to {}: {e}", tmp.display(), path.display())
                })
            });
        return match finish {
            Ok(()) => Ok(listener),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        };
    }
    Err(format!("cannot find a free temporary socket name: {last}"))
}
