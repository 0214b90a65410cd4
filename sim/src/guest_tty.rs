//! The guest's side of an hvc device, for the simulator's own guest-side actors (noise,
//! floods) and for tests: open the device like a guest process would, read with a
//! deadline, write.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, SetArg};

/// An open guest tty (blocking I/O; use from a blocking thread).
#[derive(Debug)]
pub struct GuestTty {
    file: File,
}

impl GuestTty {
    /// Opens the device like a daemon would (no controlling tty).
    pub fn open(path: &Path) -> io::Result<GuestTty> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(GuestTty { file })
    }

    /// Makes the tty raw (what the agent does first) and drops unread input.
    pub fn make_raw(&self) -> io::Result<()> {
        let mut t = termios::tcgetattr(&self.file)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&self.file, SetArg::TCSANOW, &t)?;
        termios::tcflush(&self.file, termios::FlushArg::TCIFLUSH)?;
        Ok(())
    }

    /// Bytes received and not read yet (`TIOCINQ`).
    pub fn unread(&self) -> io::Result<usize> {
        crate::sys::unread_input(self.file.as_fd())
    }

    /// Writes all of `data`.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Reads what arrives until `done(&bytes so far)` holds or `timeout` passes; returns
    /// everything read.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = u16::try_from(left.as_millis().clamp(1, 10_000)).unwrap_or(10_000);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(ms))? == 0 {
                continue;
            }
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }
}
