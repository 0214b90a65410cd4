//! The byte pipe under the client: a unix socket or the xenbus character
//! device, both non-blocking, with every wait bounded by a deadline.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno as NixErrno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::error::Error;

/// Longest path that fits `sun_path` with its terminating nul.
pub(crate) const SUN_PATH_MAX: usize = 107;

#[derive(Debug)]
pub(crate) enum Transport {
    Socket(UnixStream),
    Device(File),
}

impl Transport {
    /// Connects to a unix socket, giving up at `deadline` (a unix connect
    /// blocks while the listener's backlog is full).
    pub(crate) fn connect_unix(path: &Path, deadline: Instant) -> Result<Transport, Error> {
        let len = path.as_os_str().len();
        if len > SUN_PATH_MAX {
            return Err(Error::SocketPathTooLong {
                path: path.to_owned(),
                len,
            });
        }
        let open_err = |source: io::Error| Error::Open {
            path: path.to_owned(),
            source,
        };
        let addr = UnixAddr::new(path).map_err(|e| open_err(e.into()))?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| open_err(e.into()))?;
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => break,
                Err(NixErrno::EINTR) => {}
                // A full backlog: the listener is alive but slow. Retry until the deadline.
                Err(NixErrno::EAGAIN) => {
                    if Instant::now() >= deadline {
                        return Err(open_err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connect timed out (listener backlog full)",
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(open_err(e.into())),
            }
        }
        Ok(Transport::Socket(UnixStream::from(fd)))
    }

    /// Opens the xenbus character device (or anything that speaks the same
    /// framing through read/write).
    pub(crate) fn open_device(path: &Path) -> Result<Transport, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // Non-blocking so every wait goes through poll with a deadline;
            // NOCTTY in case the "device" is a tty (tests use a pty).
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Transport::Device(file))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Transport::Socket(s) => s.as_fd(),
            Transport::Device(f) => f.as_fd(),
        }
    }

    /// One non-blocking read.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Socket(s) => s.read(buf),
            Transport::Device(f) => f.read(buf),
        }
    }

    /// One non-blocking write.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Socket(s) => s.write(buf),
            Transport::Device(f) => f.write(buf),
        }
    }

    /// Waits until readable (or writable) or the deadline passes; `false` on timeout.
    pub(crate) fn wait(&self, writable: bool, deadline: Instant) -> io::Result<bool> {
        let flags = if writable {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Round up so a sub-millisecond remainder still waits.
            let ms = (deadline - now).as_micros().div_ceil(1000);
            let ms = i32::try_from(ms).unwrap_or(i32::MAX);
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.fd(), flags)];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(NixErrno::EINTR) => {}
                // Readable, writable, hung up or in error: the next read or
                // write tells which.
                Ok(_) => return Ok(true),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
