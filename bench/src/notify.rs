//! A `NOTIFY_SOCKET` for a child: the agent and the broker tell systemd `READY=1` with
//! sd_notify; a datagram socket of our own stands in for systemd and timestamps it.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bound datagram socket a child is pointed at with `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `path` (removed first if it exists).
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        Ok(NotifySocket {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops any message already queued (from an earlier child).
    pub fn drain(&self) {
        let _ = self.sock.set_nonblocking(true);
        let mut buf = [0u8; 512];
        while self.sock.recv(&mut buf).is_ok() {}
        let _ = self.sock.set_nonblocking(false);
    }

    /// Waits for a datagram holding `READY=1`; returns when it arrived.
    pub fn wait_ready(&self, timeout: Duration) -> io::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no READY=1 on the notify socket",
                ));
            }
            self.sock.set_read_timeout(Some(left))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let at = Instant::now();
                    if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
                        return Ok(at);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_seen_and_other_states_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let n = NotifySocket::bind(&dir.path().join("n")).unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(b"STATUS=starting", n.path()).unwrap();
        assert!(n.wait_ready(Duration::from_millis(50)).is_err());
        tx.send_to(b"STATUS=x\nREADY=1", n.path()).unwrap();
        n.wait_ready(Duration::from_secs(2)).unwrap();
    }
}
