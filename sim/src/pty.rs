//! The guest's "hvc" device: a pseudo-terminal whose slave the guest opens.
//!
//! A real pty gives the traits of a Xen console for free: the slave starts cooked with
//! echo (bytes the host writes come back until the agent makes the tty raw) and it is a
//! real tty (termios, line discipline, canonical-mode line limit). What a pty does not do
//! by itself is what hvc does on the last close: reset termios. [`Pty::reset_like_hvc`]
//! does that when the simulator sees the agent exit.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{self, FlushArg, LocalFlags, SetArg, Termios};
use tokio::io::unix::AsyncFd;

use crate::sys;

/// A pty pair: the master (the host end, non-blocking, for the bridge) and a slave fd the
/// simulator keeps open so the pair outlives the guest's own opens and closes.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<PtyMaster>,
    slave: File,
    slave_path: PathBuf,
    fresh: Termios,
}

impl Pty {
    /// Opens a new pty pair. Must run inside a tokio runtime (the master is registered
    /// with its reactor).
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let slave_path = PathBuf::from(ptsname_r(&master)?);
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&slave_path)?;
        let fresh = termios::tcgetattr(&slave)?;
        Ok(Pty {
            master: sys::register_pty(master)?,
            slave,
            slave_path,
            fresh,
        })
    }

    /// The slave's path (`/dev/pts/K`): the guest's `/dev/hvc1` points here.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The master, for the bridge.
    pub(crate) fn master(&self) -> &AsyncFd<PtyMaster> {
        &self.master
    }

    /// Bytes the guest has received and not read yet (complete lines only while cooked).
    pub fn guest_unread(&self) -> io::Result<usize> {
        sys::unread_input(self.slave.as_fd())
    }

    /// Whether the line discipline currently echoes (the tty is not raw yet).
    pub fn echoes(&self) -> io::Result<bool> {
        let t = termios::tcgetattr(&self.slave)?;
        Ok(t.local_flags.contains(LocalFlags::ECHO))
    }

    /// What hvc does when its last user closes it: termios back to the driver's initial
    /// cooked-with-echo settings, and unread input gone with the old tty state.
    pub fn reset_like_hvc(&self) -> io::Result<()> {
        termios::tcsetattr(&self.slave, SetArg::TCSANOW, &self.fresh)?;
        termios::tcflush(&self.slave, FlushArg::TCIFLUSH)?;
        Ok(())
    }
}
