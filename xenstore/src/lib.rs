//! A pure-Rust xenstore client and a small xenstore server.
//!
//! The [`Client`] speaks the xenstore wire protocol (`xs_wire.h`) over
//! xenstored's unix socket (dom0) or the `/dev/xen/xenbus` character device
//! (a guest): blocking, std-only, every request bounded by a deadline and by
//! the 4096-byte payload limit. Watch events are queued while waiting for
//! replies and handed out by [`Client::wait_event`].
//!
//! The [`server`] module is an in-process xenstore used by tests and the
//! simulator: it serves unix sockets as chosen domains, enforces xenstore's
//! permission model, and has toolstack helpers that write the node layout
//! described in [`layout`] — the contract between the toolstack, the guest's
//! udev helper and the broker.
//!
//! ```no_run
//! use std::time::Duration;
//! use xenchan_xenstore::{Client, layout};
//!
//! # fn main() -> Result<(), xenchan_xenstore::Error> {
//! // In a guest: /dev/xen/xenbus (or whatever XENSTORED_PATH names).
//! let mut xs = Client::open_default()?.with_timeout(Duration::from_secs(2));
//! let name = layout::read_channel_name(&mut xs, "device/console/1")?;
//! println!("channel {name}");
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod error;
pub mod layout;
pub mod path;
pub mod perms;
pub mod server;
mod transport;
pub mod wire;

pub use client::{Client, Transaction, WatchEvent, default_paths};
pub use error::{Errno, Error, Result};
pub use perms::{Access, Perm, Perms};
