//! The two system facilities nix has no safe wrapper for.
//!
//! Unsafe is allowed in this module only: `ioctl(TIOCINQ)` to measure what the guest has
//! not read yet (the host-to-guest window), and a `pre_exec` hook that makes each child a
//! session leader killed with the simulator, the way systemd runs guest services.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes waiting in a tty's input queue (`TIOCINQ`): received by the guest side, not read yet.
/// In canonical mode Linux counts only complete lines, like a reader would see them.
pub fn unread_input(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCINQ writes one c_int through the pointer, which points at a live local;
    // the fd is borrowed, so it stays open for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCINQ, &raw mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Makes the child started by `cmd` a session leader (no controlling tty, like a systemd
/// service; a terminal's Ctrl-C reaches only the simulator, which then stops children in
/// order) and has the kernel kill it if the thread that started it dies, so a crashed
/// simulator or test leaves no stray broker or agent behind.
pub fn detach_and_tie_to_parent(cmd: &mut tokio::process::Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe
    // functions (setsid, prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            Ok(())
        });
    }
}

/// Registers a pty master with the tokio reactor.
pub fn register_pty(
    master: nix::pty::PtyMaster,
) -> io::Result<tokio::io::unix::AsyncFd<nix::pty::PtyMaster>> {
    // SAFETY: a PtyMaster owns its fd: it stays open, and `as_raw_fd` returns the same
    // number, until the PtyMaster (moved into the AsyncFd here) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(master) }.map_err(io::Error::from)
}
