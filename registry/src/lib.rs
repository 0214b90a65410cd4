//! The xen-pv-channel(7) channel name registry.
//!
//! xen-pv-channel(7) asks channel authors to pick globally unique names and to
//! list them in a registry of `N:` (name), `C:` (contact) and `D:` (description)
//! entries. This crate:
//!
//! * parses and writes that format exactly ([`parse`], [`parse_bytes`], [`write`]);
//! * validates names: [`validate_device_name`] (cheap, for the udev helper),
//!   [`validate_name`] (also xl-safe), [`poor_reasons`] and [`check`] (convention
//!   and clashes against a [`Registry`]);
//! * ships the man page's entries, names seen in the wild and xenchan's own
//!   ([`XENCHAN_CHANNEL`]) as [`Registry::builtin`], and merges local entries from
//!   `/etc/xenchan/registry.d` ([`Registry::load`]);
//! * gives brokers and agents [`startup_check`], and the `xenchan registry`
//!   subcommand in [`cli`].
//!
//! The format, the name rules and the CLI are described in docs/REGISTRY.md.

mod check;
pub mod cli;
mod format;
mod name;
mod registry;
mod store;

pub use check::{Check, Conflict, ConflictKind, Verdict, check, startup_check};
pub use format::{
    Entry, EntryError, MAX_LINE_BYTES, MAX_VALUE_LINE_BYTES, ParseError, ParseErrorKind, Tag,
    parse, parse_bytes, write,
};
pub use name::{
    MAX_NAME_BYTES, NameError, PoorReason, XL_FORBIDDEN, poor_reasons, split_version,
    validate_device_name, validate_device_name_bytes, validate_name,
};
pub use registry::{
    BUILTIN_TEXT, LoadError, MAX_LOCAL_FILE_BYTES, MAX_LOCAL_FILES, Origin, Registered, Registry,
    Warning, is_ignored_file_name,
};
pub use store::{LOCAL_FILE_HEADER, StoreError, store_local_entry};

/// xenchan's own channel name: reverse-DNS `org.xenchan`, application `agent`,
/// protocol version `1`.
pub const XENCHAN_CHANNEL: &str = "org.xenchan.agent.1";

/// The default folder of local registry entries.
pub const DEFAULT_REGISTRY_DIR: &str = "/etc/xenchan/registry.d";

/// An error and its causes joined by `: `, for one-line messages (the shared printer).
pub use xenchan_basics::chain as error_chain;
