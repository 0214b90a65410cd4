//! The control API: its JSON types (shared with the client) and its server.

mod server;
pub mod types;

pub use server::{router, serve};
