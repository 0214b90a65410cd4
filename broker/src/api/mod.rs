//! The control API: its JSON types (shared with the client) and its server.

mod bulk;
mod lifecycle;
pub mod roles;
mod server;
/// The JSON documents (moved to the API crate; the path stays for the broker's code).
pub use xenchan_api::types;

pub use server::{router, serve};
