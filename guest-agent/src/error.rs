//! Errors that stop the agent (everything else is logged and retried).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// sysexits(3) codes the binaries use.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Command line usage error (clap's own code).
    pub const USAGE: i32 = 2;
    /// Input data was incorrect.
    pub const DATAERR: i32 = 65;
    /// A service or device is unavailable.
    pub const UNAVAILABLE: i32 = 69;
    /// An I/O error.
    pub const IOERR: i32 = 74;
    /// Configuration error.
    pub const CONFIG: i32 = 78;
}

/// Why [`crate::run`] gave up.
#[derive(Debug, Error)]
pub enum AgentError {
    /// An option is unusable (bad channel name, root that is not a folder...).
    #[error("{0}")]
    Config(String),
    /// The state folder cannot be created or written.
    #[error("state folder {}", path.display())]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl AgentError {
    /// The sysexits code a binary exits with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => exit::CONFIG,
            AgentError::StateDir { .. } => exit::IOERR,
        }
    }
}
