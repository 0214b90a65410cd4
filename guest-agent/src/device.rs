//! The channel device: an hvc tty (Xen) or a virtio-serial port, opened non-blocking and
//! driven by tokio through [`AsyncFd`].
//!
//! Why not `tokio-serial`: see docs/AGENT.md ("tty handling"). In short, a virtio port is
//! not a tty and needs this code path anyway, and a serial library's baud/parity/flow
//! set-up and its error mapping hide the errno the retry logic depends on.

// `AsyncFd::register` is `unsafe` since tokio made `AsyncFd::new` deprecated: the caller
// vouches that the descriptor stays open and the same while registered. A `File` moved
// into the `AsyncFd` and never taken out again does; that is the one unsafe call here.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, FlushArg, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Identity of an opened device, to tell whether a link still points at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceId {
    dev: u64,
    ino: u64,
    rdev: u64,
}

impl DeviceId {
    /// The identity of what `path` resolves to now (following links).
    pub(crate) fn of_path(path: &Path) -> io::Result<DeviceId> {
        let m = std::fs::metadata(path)?;
        Ok(DeviceId {
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
        })
    }
}

/// An open channel device.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<File>,
    tty: bool,
    id: DeviceId,
    path: PathBuf,
    /// While a virtio port has no host, when to try a pending write again.
    no_host_retry: Option<Pin<Box<Sleep>>>,
}

/// How often a pending write is tried while a virtio port has no host. The port gives no
/// readiness event a writer could wait for when the host connects (see `poll_write`); a
/// quarter second is a negligible cost and a small delay next to the broker's handshake.
const NO_HOST_WRITE_RETRY: Duration = Duration::from_millis(250);

impl Channel {
    /// Opens `path` (a link to the device is followed) non-blocking. A tty is made raw
    /// on this descriptor (hvc resets its termios when its last user closes it, so a
    /// setting made by anyone else would not stick) and its stale input is discarded:
    /// bytes that arrived before the agent was listening belong to no session. A device
    /// that is not a tty (a virtio-serial port) is used as it is.
    pub(crate) fn open(path: &Path) -> io::Result<Channel> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        let ft = meta.file_type();
        if !(ft.is_char_device() || ft.is_fifo() || ft.is_socket()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is not a character device",
            ));
        }
        let tty = termios::tcgetattr(file.as_fd()).is_ok();
        if tty {
            make_raw(&file)?;
        }
        let id = DeviceId {
            dev: meta.dev(),
            ino: meta.ino(),
            rdev: meta.rdev(),
        };
        // SAFETY: the File owns its descriptor, is moved into the AsyncFd and never taken
        // out, so the descriptor stays open and the same until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(Channel {
            fd,
            tty,
            id,
            path: path.to_path_buf(),
            no_host_retry: None,
        })
    }

    /// Whether the device is a tty (hvc) rather than a stream port (virtio).
    pub(crate) fn is_tty(&self) -> bool {
        self.tty
    }

    /// The identity of the device.
    pub(crate) fn id(&self) -> DeviceId {
        self.id
    }

    /// The path it was opened by.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn make_raw(file: &File) -> io::Result<()> {
    let mut t = termios::tcgetattr(file.as_fd())?;
    termios::cfmakeraw(&mut t);
    // Ignore modem control lines: hvc and ptys have none, and a HUPCL hang-up on close
    // would only disturb the next opener.
    t.control_flags |= termios::ControlFlags::CLOCAL | termios::ControlFlags::CREAD;
    t.control_flags &= !termios::ControlFlags::HUPCL;
    termios::tcsetattr(file.as_fd(), SetArg::TCSANOW, &t)?;
    termios::tcflush(file.as_fd(), FlushArg::TCIFLUSH)?;
    Ok(())
}

// Tokio keeps a descriptor's "closed" readiness (EPOLLHUP) for good once it has seen it:
// it is final for sockets and pipes. A virtio-serial port reports POLLHUP while no host is
// connected and stops when one connects, so after the first boot without a broker every
// readiness check would say "ready" for ever and each read or write that would block
// would be retried at once: the agent spun at 100% CPU and, the read side eating tokio's
// cooperative budget, never got its answer written (found by the real-guest tier). The
// fix: a read that would block while "closed" proves the host is back (with no host a
// read gives EOF), so the descriptor is registered afresh; a write that would block while
// "closed" asks the port whether a host is there (poll(2) at once) and either registers
// afresh or tries again later.
impl Channel {
    /// Registers the device with the reactor again (through a duplicate descriptor of the
    /// same open file, so the device is not closed), which forgets a stale hang-up.
    fn reregister(&mut self) -> io::Result<()> {
        let dup = self.fd.get_ref().try_clone()?;
        // SAFETY: as in `open`: the duplicate is owned by the new AsyncFd and stays open
        // and the same while registered.
        self.fd = unsafe { AsyncFd::register(dup) }.map_err(|e| e.into_parts().1)?;
        Ok(())
    }

    /// Whether the device reports a hang-up now (a virtio port: no host connected).
    fn hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.fd.get_ref().as_fd(), PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
        Ok(fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)))
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let stale_hangup = guard.ready().is_read_closed();
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {
                    if stale_hangup {
                        this.reregister()?;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(retry) = this.no_host_retry.as_mut() {
                ready!(retry.as_mut().poll(cx));
                this.no_host_retry = None;
            }
            let mut guard = ready!(this.fd.poll_write_ready(cx))?;
            let closed = guard.ready().is_write_closed();
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) if !closed => {}
                Err(_would_block) => {
                    if this.hung_up()? {
                        this.no_host_retry =
                            Some(Box::pin(tokio::time::sleep(NO_HOST_WRITE_RETRY)));
                    } else {
                        this.reregister()?;
                    }
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether an error opening the device is worth retrying. Right after hotplug the link
/// can exist before the device opens (ENODEV, ENXIO); a dangling link (ENOENT) may be
/// completed; EBUSY/EIO can clear. Permission and type errors will not go away by
/// themselves but are retried too (slowly): a daemon waits for its device.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENODEV
                | libc::ENXIO
                | libc::ENOENT
                | libc::EBUSY
                | libc::EIO
                | libc::EAGAIN
                | libc::EINTR
        )
    )
}
