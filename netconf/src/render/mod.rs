//! Each manager's native configuration for the planned interfaces. Every function here is
//! pure: text in, text out; [`crate::apply`] does the writing.

mod ifupdown;
mod netplan;
mod networkd;
mod nm;
mod resolv;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::IfacePlan;

pub(crate) use ifupdown::safe_name as ifupdown_safe_name;
pub(crate) use netplan::{netplan_file, netplan_section};
pub(crate) use nm::dns_left_out as nm_dns_left_out;
pub(crate) use resolv::resolv_conf;

/// A network manager we write configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Renderer {
    /// No manager: nothing is written but `/etc/resolv.conf`.
    #[default]
    None,
    /// systemd-networkd.
    Networkd,
    /// NetworkManager.
    NetworkManager,
    /// netplan.
    Netplan,
    /// ifupdown (Debian's `/etc/network/interfaces`).
    Ifupdown,
}

impl fmt::Display for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Renderer::None => "none",
            Renderer::Networkd => "networkd",
            Renderer::NetworkManager => "NetworkManager",
            Renderer::Netplan => "netplan",
            Renderer::Ifupdown => "ifupdown",
        })
    }
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path relative to the guest root.
    pub path: PathBuf,
    /// Full content, header included.
    pub content: String,
    /// Permission bits.
    pub mode: u32,
}

/// The file of one interface for the per-interface renderers; `None` for netplan (one
/// shared file, see [`netplan_file`]) and for no renderer.
pub(crate) fn interface_file(renderer: Renderer, plan: &IfacePlan) -> Option<RenderedFile> {
    match renderer {
        Renderer::Networkd => Some(networkd::render(plan)),
        Renderer::NetworkManager => Some(nm::render(plan)),
        Renderer::Ifupdown => Some(ifupdown::render(plan)),
        Renderer::Netplan | Renderer::None => None,
    }
}

/// The path of the per-interface file of `id` (for telling ours from others').
pub(crate) fn is_our_file_name(name: &str) -> bool {
    name.starts_with("xenchan-") || name.starts_with("10-xenchan-") || name == "90-xenchan.yaml"
}
