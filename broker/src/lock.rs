//! The state folder lock: a second broker on the same state folder must not start,
//! because its connections would reach the guests too (QEMU accepts into its backlog and
//! delivers the second broker's bytes later).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another xenchan-broker{} already uses this state folder (lock {path} is held)", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid written in it, if readable.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Holds the lock until dropped (the kernel also releases it if the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
}

impl StateLock {
    /// Takes the lock at `path` without waiting, and writes our pid in it.
    pub fn acquire(path: &Path) -> Result<StateLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut f, Errno::EWOULDBLOCK)) => {
                let mut s = String::new();
                let _ = f.read_to_string(&mut s);
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: s.trim().parse().ok(),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("broker.lock");
        let first = StateLock::acquire(&p).unwrap();
        let e = StateLock::acquire(&p).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(matches!(e, LockError::Held { .. }));
        drop(first);
        StateLock::acquire(&p).unwrap();
    }
}
