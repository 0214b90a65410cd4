//! Errors of the client and the server's toolstack API.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::path::PathError;
use crate::perms::PermsError;
use crate::wire::{DecodeError, Op};

/// An errno name as xenstore sends it in an `ERROR` reply (`"ENOENT"`).
///
/// The names are the errno spellings on purpose: they are what goes on the
/// wire and what operators grep for.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Invalid argument (bad path, bad payload).
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists (e.g. the same watch twice).
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node, watch or transaction.
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// Quota exhausted.
    ENOSPC,
    /// I/O error.
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Operation not supported.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy (e.g. TRANSACTION_START inside a transaction).
    EBUSY,
    /// Transaction conflict: retry it.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Too big (payload, directory listing, watch quota).
    E2BIG,
    /// Operation not permitted.
    EPERM,
    /// Any other name the server sent.
    Other(String),
}

impl Errno {
    /// The errno name.
    pub fn name(&self) -> &str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
            Errno::Other(name) => name,
        }
    }

    /// Parses the name from an `ERROR` payload.
    pub fn from_name(name: &str) -> Errno {
        match name {
            "EINVAL" => Errno::EINVAL,
            "EACCES" => Errno::EACCES,
            "EEXIST" => Errno::EEXIST,
            "EISDIR" => Errno::EISDIR,
            "ENOENT" => Errno::ENOENT,
            "ENOMEM" => Errno::ENOMEM,
            "ENOSPC" => Errno::ENOSPC,
            "EIO" => Errno::EIO,
            "ENOTEMPTY" => Errno::ENOTEMPTY,
            "ENOSYS" => Errno::ENOSYS,
            "EROFS" => Errno::EROFS,
            "EBUSY" => Errno::EBUSY,
            "EAGAIN" => Errno::EAGAIN,
            "EISCONN" => Errno::EISCONN,
            "E2BIG" => Errno::E2BIG,
            "EPERM" => Errno::EPERM,
            other => Errno::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong talking to xenstore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket or device could not be opened.
    #[error("cannot open xenstore at {}", path.display())]
    Open {
        /// What we tried to open.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A unix socket path longer than `sun_path` allows.
    #[error("unix socket path {} is {len} bytes, the limit is 107", path.display())]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// No xenstore found at any default location.
    #[error("no xenstore found (tried {tried}); set XENSTORED_PATH to its socket or device")]
    NotFound {
        /// The locations tried, comma separated.
        tried: String,
    },
    /// Reading or writing the connection failed.
    #[error("xenstore connection i/o failed during {op}")]
    Io {
        /// The request under way.
        op: Op,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No reply before the deadline.
    #[error("xenstore {op} {target} got no reply within {timeout:?}")]
    Timeout {
        /// The request.
        op: Op,
        /// Its path or argument.
        target: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The server closed the connection.
    #[error("xenstore closed the connection during {op}")]
    Closed {
        /// The request under way.
        op: Op,
    },
    /// The server sent something that is not valid xenstore protocol.
    #[error("xenstore protocol violation: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The server sent a message that cannot be decoded.
    #[error("undecodable message from xenstore")]
    Decode(#[source] DecodeError),
    /// The connection was left in an unknown state by an earlier failure.
    #[error("xenstore connection unusable after an earlier failure; reconnect")]
    Broken,
    /// The server answered `ERROR` with an errno name.
    #[error("xenstore {op} {target}: {errno}")]
    Server {
        /// The request.
        op: Op,
        /// Its path or argument.
        target: String,
        /// The errno name the server sent.
        errno: Errno,
    },
    /// A path failed client-side validation.
    #[error("invalid xenstore path {path:?}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        #[source]
        reason: PathError,
    },
    /// Permissions that do not parse.
    #[error("invalid xenstore permissions")]
    InvalidPerms(#[source] PermsError),
    /// A request that cannot be encoded (too big, nul inside a string).
    #[error("invalid {op} request: {detail}")]
    InvalidRequest {
        /// The request.
        op: Op,
        /// What is wrong with it.
        detail: String,
    },
    /// A value that is not UTF-8 where text was asked for.
    #[error("value of {path} is not UTF-8 text")]
    NotUtf8 {
        /// The node.
        path: String,
    },
}

impl Error {
    /// The errno name, if the server answered with an error.
    pub fn errno(&self) -> Option<&Errno> {
        match self {
            Error::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }

    /// True if the server said the node (or watch, or transaction) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(&Errno::ENOENT)
    }

    /// True if the server refused for lack of permission.
    pub fn is_access_denied(&self) -> bool {
        self.errno() == Some(&Errno::EACCES)
    }

    /// True if a transaction conflicted and should be retried.
    pub fn is_again(&self) -> bool {
        self.errno() == Some(&Errno::EAGAIN)
    }

    /// True if the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_round_trip() {
        for name in [
            "ENOENT", "EACCES", "EINVAL", "EAGAIN", "E2BIG", "EEXIST", "EPERM",
        ] {
            assert_eq!(Errno::from_name(name).name(), name);
        }
        assert_eq!(
            Errno::from_name("EWHATEVER"),
            Errno::Other("EWHATEVER".into())
        );
    }

    #[test]
    fn helpers_classify() {
        let e = Error::Server {
            op: Op::Read,
            target: "/x".into(),
            errno: Errno::ENOENT,
        };
        assert!(e.is_not_found());
        assert!(!e.is_again());
        assert_eq!(e.to_string(), "xenstore READ /x: ENOENT");
    }
}
