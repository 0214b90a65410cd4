//! Guest network configuration for xenchan: the `network:<id>` and `dns` items of a
//! [`GuestConfig`].
//!
//! Interfaces are chosen by MAC, never by name. The configuration is handed to the network
//! manager the guest already uses, in that manager's own format (systemd-networkd,
//! NetworkManager, netplan or ifupdown, detected in the guest root or forced), and applied
//! live over rtnetlink when asked or when no manager is running, with the previous state
//! restored if a step fails. DNS goes through the manager (or systemd-resolved);
//! `/etc/resolv.conf` is written only when nothing manages it.
//!
//! Files we write carry [`MARKER`] and a `xenchan-` name; [`NetState`] lists them so that
//! a later configuration removes the ones it no longer needs. Files of others are never
//! touched. See `docs/NETWORK.md` for the whole story.
//!
//! The entry point is [`apply`]: blocking, one [`ItemResult`] per `network:<id>` item and
//! one for `dns` when present, in [`GuestConfig::items`] order.

mod activate;
mod apply;
mod detect;
mod files;
mod links;
mod live;
mod manager;
mod options;
mod plan;
mod reconcile;
mod render;
mod state;

pub use apply::{apply, apply_in, fail_changed};
pub use detect::{
    ResolvConf, choose_renderer, detect_renderer, manager_running, resolv_conf_status,
};
pub use files::MARKER;
pub use links::{Link, LinkError, links_from_sysfs};
pub use live::{Drained, LinkChanges, LinkWatch};
pub use options::{LiveMode, NetOptions, RendererChoice};
pub use reconcile::{Restored, is_live_only, restore_live, waiting_macs};
pub use render::Renderer;
pub use state::{IfaceState, LiveRoute, NetState, OwnedFile, ResolvState};

#[doc(no_inline)]
pub use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};
