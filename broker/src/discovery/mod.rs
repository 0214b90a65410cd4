//! Discovery: how the broker learns which domains run and where their channel sockets
//! are (connect mode). Two sources, chosen by `discovery` in the configuration:
//!
//! - [`socket_dir`]: `<socket_dir>/<vm>.sock` files, watched with inotify;
//! - [`xenstore`]: the console backends in xenstore, with the domain's name and UUID.
//!
//! Both turn what they see into [`Shared::attach`] and [`Shared::vanished`] calls;
//! [`policy`] says, per source, what attach, prepare, release and resume do.

pub mod asked;
mod bindings;
pub mod policy;
pub mod socket_dir;
pub mod xenstore;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Discovery;
use crate::domains::Shared;

/// Discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the socket folder {path}")]
pub struct DiscoveryError {
    /// The folder.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Starts the discovery the configuration asks for; it runs until `stop`.
pub fn start(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, DiscoveryError> {
    match shared.config.discovery {
        Discovery::SocketDir => socket_dir::start(shared, stop),
        Discovery::Xenstore => Ok(xenstore::start(shared, stop)),
    }
}
