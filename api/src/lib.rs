//! xenchan-api: the vocabulary of the broker's control API (docs/API.md), shared by the
//! broker (server side), the `xenchan` CLI, the simulator, the benchmarks and the
//! end-to-end tests, none of which need the daemon's store or HTTP server for it.
//!
//! - [`types`]: the JSON request and response documents;
//! - [`client::Client`]: an async client over the control unix socket;
//! - [`names`]: [`DomainName`], [`VmUuid`] and [`SocketPath`], validated on parse;
//! - [`paths`]: the same checks as plain functions, for code that keeps a `&str`;
//! - [`query`]: the query strings of the list endpoints (filters and paging);
//! - [`defaults`]: the default locations (control socket, socket folder, state...);
//! - [`config`]: the broker's configuration-file schema, the contract between the broker
//!   that reads `broker.toml` and the tools that write one;
//! - [`hook_config`]: the libvirt hook's `/etc/xenchan/hook.toml`.

pub mod client;
pub mod config;
pub mod defaults;
pub mod hook_config;
pub mod names;
pub mod paths;
pub mod query;
pub mod types;

pub use client::{Client, ClientError};
pub use names::{DomainName, InvalidName, SocketPath, VmUuid};
