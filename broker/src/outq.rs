//! Whether the peer of a unix socket has read what was written to it (`SIOCOUTQ`).
//!
//! A finished `write` only says the kernel took the bytes: a unix socket buffers some
//! 200 KiB, more than a whole frame, so a push to a guest that reads slowly (QEMU moves
//! bytes into the guest's 1 KiB console ring as the guest drains it) is "written" at once
//! and then crawls. `SIOCOUTQ` gives what the peer has not read yet; once it is zero the
//! backend has taken the whole frame and at most a ring's worth is still on its way to
//! the agent.

// One ioctl that writes an int through a pointer: nix's ioctl wrappers are unsafe fns.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

// SIOCOUTQ is TIOCOUTQ on Linux (include/uapi/linux/sockios.h).
nix::ioctl_read_bad!(siocoutq, libc::TIOCOUTQ, libc::c_int);

/// The longest pause between two looks at the queue.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Bytes written to the socket `fd` that its peer has not read yet (kernel accounting,
/// so a little more than the payload; only zero is meaningful).
pub fn unread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n` and is
    // valid for the call; `fd` is an open descriptor for the call's duration.
    unsafe { siocoutq(fd.as_raw_fd(), &raw mut n) }.map_err(io::Error::from)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Waits until the peer of `fd` has read everything written to it. There is no
/// readiness event for an empty send queue, so this looks every few milliseconds (1 ms
/// doubling to 50 ms); a fast reader is seen at once. If the kernel cannot tell
/// (`SIOCOUTQ` unsupported), it returns at once, as if drained.
pub async fn drained(fd: BorrowedFd<'_>) {
    let mut pause = Duration::from_millis(1);
    loop {
        match unread(fd) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("cannot see the socket's send queue ({e}); not waiting for it");
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn counts_what_the_peer_has_not_read() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(unread(a.as_fd()).unwrap(), 0);
        a.write_all(&[7u8; 3000]).unwrap();
        assert!(unread(a.as_fd()).unwrap() >= 3000);
        let mut buf = [0u8; 1000];
        b.read_exact(&mut buf).unwrap();
        assert!(
            unread(a.as_fd()).unwrap() > 0,
            "two thirds are still unread"
        );
        let mut rest = [0u8; 2000];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(unread(a.as_fd()).unwrap(), 0);
    }
}
