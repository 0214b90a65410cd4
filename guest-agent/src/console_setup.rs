//! `xen-console-setup`: what the udev rule runs when a Xen console device comes or goes
//! (`SUBSYSTEM=="xen"`, `KERNEL=="console-[0-9]*"`).
//!
//! On `add` it reads the console's xenstore node from sysfs (`nodename`, else
//! `device/console/N`), the channel name from `<nodename>/name` (read-only to the guest,
//! so trustworthy), checks the name, and makes `<channel-dir>/<name>` a link to the
//! console's hvc tty. On `remove` it removes links that lead to that console's hvc tty,
//! whatever their name (xenstore may already have forgotten the console).
//!
//! Short-lived and synchronous: no async runtime, one xenstore connection with a short
//! deadline. console-N is taken to be hvcN, as xen-pv-channel(7) says and as real Xen
//! does; the kernel does not promise it, so the agent confirms the device by the channel
//! name in the broker's hello.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use xenchan_registry::NameError;

use crate::error::exit;

/// Default deadline for the xenstore read.
pub const XENSTORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What udev asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The console device appeared.
    Add,
    /// The console device went away.
    Remove,
}

/// Where everything is. Every path is an option so that tests and the simulator can use
/// a fake sysfs, /dev and xenstore.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Add or remove.
    pub action: Action,
    /// udev's `DEVPATH` (`/devices/console-1`).
    pub devpath: String,
    /// Where sysfs is mounted.
    pub sysfs: PathBuf,
    /// Where the device nodes are (`<dev>/hvcN`).
    pub dev: PathBuf,
    /// Where the channel links go (usually `<dev>/xen-channel`).
    pub channel_dir: PathBuf,
    /// The xenstore socket or xenbus device.
    pub xenstore: PathBuf,
    /// Deadline for each xenstore request.
    pub timeout: Duration,
}

/// What was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The link was made (or re-pointed).
    Linked {
        /// The channel name.
        name: String,
        /// The link.
        link: PathBuf,
        /// What it points at.
        target: PathBuf,
    },
    /// The link was already right; nothing changed.
    AlreadyLinked {
        /// The link.
        link: PathBuf,
    },
    /// The console has no `name` node: a plain console, not a channel.
    NotAChannel {
        /// The console number.
        console: u32,
    },
    /// These links to the console's hvc were removed (possibly none).
    Removed {
        /// The links removed.
        links: Vec<PathBuf>,
    },
}

/// Why nothing could be done.
#[derive(Debug, Error)]
pub enum SetupError {
    /// DEVPATH does not name a Xen console device.
    #[error("DEVPATH `{0}` is not a Xen console device (expected /devices/console-N)")]
    BadDevpath(String),
    /// sysfs `nodename` is not a console frontend path.
    #[error("{path}: `{value}` is not a device/console/N xenstore path")]
    BadNodename {
        /// The sysfs file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// xenstore could not be reached or read.
    #[error("reading the channel name from xenstore")]
    Xenstore {
        /// The socket or device.
        path: PathBuf,
        /// Why.
        #[source]
        source: xenchan_xenstore::Error,
    },
    /// The channel name in xenstore is not a safe device name.
    #[error("channel name {name:?} of console-{console} refused")]
    BadName {
        /// The name as read.
        name: String,
        /// The console number.
        console: u32,
        /// Why.
        #[source]
        source: NameError,
    },
    /// Something is at the link's place that is not a link.
    #[error("{} exists and is not a symbolic link; leaving it alone", .0.display())]
    Occupied(PathBuf),
    /// A filesystem operation failed.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl SetupError {
    /// The sysexits code the helper exits with.
    pub fn exit_code(&self) -> i32 {
        match self {
            SetupError::BadDevpath(_)
            | SetupError::BadNodename { .. }
            | SetupError::BadName { .. } => exit::DATAERR,
            SetupError::Xenstore { .. } => exit::UNAVAILABLE,
            SetupError::Occupied(_) | SetupError::Io { .. } => exit::IOERR,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The console number of a DEVPATH (`/devices/console-3` -> 3).
pub fn console_number(devpath: &str) -> Option<u32> {
    let last = devpath.trim_end_matches('/').rsplit('/').next()?;
    let n = last.strip_prefix("console-")?;
    if n.is_empty() || n.len() > 9 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Does what `opts.action` says.
pub fn run(opts: &SetupOptions) -> Result<Outcome, SetupError> {
    let n = console_number(&opts.devpath)
        .ok_or_else(|| SetupError::BadDevpath(opts.devpath.clone()))?;
    match opts.action {
        Action::Add => add(opts, n),
        Action::Remove => remove(opts, n),
    }
}

/// The xenstore node of console `n`: sysfs `nodename`, else `device/console/N`.
fn nodename(opts: &SetupOptions, n: u32) -> Result<String, SetupError> {
    let path = opts
        .sysfs
        .join(opts.devpath.trim_start_matches('/'))
        .join("nodename");
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Ok(f) => {
            f.take(256)
                .read_to_string(&mut text)
                .map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(xenchan_xenstore::layout::frontend_rel(n));
        }
        Err(e) => return Err(io_err(&path)(e)),
    }
    let value = text.trim().to_string();
    // Only a console frontend path is accepted: the helper must not be steered into
    // reading some other node.
    let rel = value.starts_with("device/console/")
        || (value.starts_with("/local/domain/") && value.contains("/device/console/"));
    if !rel || xenchan_xenstore::layout::parse_console_devid(&value).is_none() {
        return Err(SetupError::BadNodename { path, value });
    }
    Ok(value)
}

/// The link target for console `n`: `../hvcN` when the channel folder is
/// `<dev>/xen-channel` (the link survives /dev being seen from elsewhere, e.g. a
/// chroot), else the absolute `<dev>/hvcN`.
pub fn link_target(opts: &SetupOptions, n: u32) -> PathBuf {
    if opts.channel_dir == opts.dev.join("xen-channel") {
        PathBuf::from(format!("../hvc{n}"))
    } else {
        opts.dev.join(format!("hvc{n}"))
    }
}

fn points_at_console(opts: &SetupOptions, link: &Path, n: u32) -> bool {
    let Ok(target) = std::fs::read_link(link) else {
        return false;
    };
    target == Path::new(&format!("../hvc{n}")) || target == opts.dev.join(format!("hvc{n}"))
}

fn add(opts: &SetupOptions, n: u32) -> Result<Outcome, SetupError> {
    let node = nodename(opts, n)?;
    let xs_err = |source| SetupError::Xenstore {
        path: opts.xenstore.clone(),
        source,
    };
    let mut xs = xenchan_xenstore::Client::open(&opts.xenstore)
        .map_err(xs_err)?
        .with_timeout(opts.timeout);
    let name = match xenchan_xenstore::layout::read_channel_name(&mut xs, &node) {
        Ok(name) => name,
        Err(e) if e.is_not_found() => return Ok(Outcome::NotAChannel { console: n }),
        Err(e) => return Err(xs_err(e)),
    };
    xenchan_registry::validate_device_name(&name).map_err(|source| SetupError::BadName {
        name: name.clone(),
        console: n,
        source,
    })?;
    let dir = &opts.channel_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let link = dir.join(&name);
    let target = link_target(opts, n);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
                return Ok(Outcome::AlreadyLinked { link });
            }
        }
        Ok(_) => return Err(SetupError::Occupied(link)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&link)(e)),
    }
    // A temporary link renamed over the name: the agent never sees a half-made link,
    // and a link to an old console is replaced in one step.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".xcs-{}", std::process::id()));
    let tmp = dir.join(&tmp_name);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&link)(e));
    }
    Ok(Outcome::Linked { name, link, target })
}

fn remove(opts: &SetupOptions, n: u32) -> Result<Outcome, SetupError> {
    let dir = &opts.channel_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Outcome::Removed { links: Vec::new() });
        }
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut removed = Vec::new();
    // hvc_xen has at most 8 consoles; a folder of thousands of entries is not ours.
    for entry in entries.take(4096) {
        let entry = entry.map_err(io_err(dir))?;
        // Names starting with a dot are valid channel names; a leftover temporary link of
        // an interrupted add also leads to this hvc and goes too.
        let link = entry.path();
        if points_at_console(opts, &link, n) {
            match std::fs::remove_file(&link) {
                Ok(()) => removed.push(link),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&link)(e)),
            }
        }
    }
    Ok(Outcome::Removed { links: removed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_numbers() {
        assert_eq!(console_number("/devices/console-1"), Some(1));
        assert_eq!(console_number("/devices/console-12/"), Some(12));
        assert_eq!(console_number("/devices/vbd-51712"), None);
        assert_eq!(console_number("/devices/console-"), None);
        assert_eq!(console_number("/devices/console-1x"), None);
        assert_eq!(console_number("/devices/console-99999999999"), None);
    }
}
