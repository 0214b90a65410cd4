//! xenchan-basics: the few things every xenchan binary and daemon needs the same way.
//!
//! - [`exit::Exit`]: the one exit-code enum (sysexits(3)) every binary maps its errors to;
//! - [`error::chain`]: an error and its causes on one line, for logs and stderr;
//! - [`signal::shutdown`] (feature `signal`): the SIGTERM/SIGINT future daemons stop on;
//! - [`backoff::Backoff`]: capped exponential backoff with jitter, for every reconnect loop;
//! - [`atomic::write_atomic`]: temp file, fsync, rename, fsync the folder;
//! - [`commit::Batch`]: many files made durable together, renamed, each folder synced once;
//! - [`tempname`]: the temporary files beside a replaced file, and the sweep of leftovers.
//!
//! Kept small on purpose: no async runtime unless asked for, no logging set-up.

pub mod atomic;
pub mod backoff;
pub mod commit;
pub mod error;
pub mod exit;
#[cfg(feature = "signal")]
pub mod signal;
pub mod sync_many;
pub mod tempname;

pub use backoff::Backoff;
pub use error::chain;
pub use exit::Exit;
