//! The xenchan wire protocol, version 1, without any I/O.
//!
//! - [`message`]: what the broker (dom0) and the agent (guest) say to each other.
//! - [`codec`]: a [`tokio_util::codec`] line codec that survives the channel's traps
//!   (stale bytes, dropped bytes, console noise, modem probers) and bounds every frame.
//! - [`session`]: version negotiation and the rules that drop echoes and stale sessions.
//! - [`config`]: the guest configuration document, its validation and its digest;
//!   [`config::schema`]: the table of item kinds and versions (capabilities, tolerance).
//! - [`lineage`]: no rollback (which generation an agent accepts).
//!
//! The protocol is specified in `docs/PROTOCOL.md`.

pub mod codec;
pub mod config;
pub mod lineage;
pub mod message;
pub mod session;

pub use codec::{DecodeStats, FrameCodec, MAX_DEPTH_DEFAULT, MAX_FRAME_DEFAULT};
pub use config::{Capabilities, ConfigError, Digest, GuestConfig};
pub use lineage::{Admission, Lineage, admit};
pub use message::{Body, Envelope, ItemResult, ItemStatus, Role};
pub use session::{Nonce, SUPPORTED_VERSIONS, Verdict};

/// The default channel name xenchan uses (registered in xenchan-registry).
pub const DEFAULT_CHANNEL: &str = "org.xenchan.agent.1";
