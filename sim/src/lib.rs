//! xenchan-sim: a stand-in for what a Xen host and guest provide, so that the real
//! broker, the real `xen-console-setup` helper and the real agent run together on a
//! machine without Xen. See `docs/SIMULATOR.md`.

pub mod binaries;
pub mod bridge;
pub mod broker;
pub mod checks;
pub mod cluster;
pub mod configs;
pub mod demo;
pub mod domain;
pub mod guest;
pub mod guest_tty;
pub mod hold;
pub mod hotplug;
pub mod noise;
pub mod process;
pub mod pty;
pub mod scenario;
mod sys;
pub mod tap;
pub mod wait;
pub mod world;
pub mod xenstore;
