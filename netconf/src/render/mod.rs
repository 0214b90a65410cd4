//! What every manager's render shares: the [`Renderer`] names, [`RenderedFile`], our file
//! names, and `/etc/resolv.conf`. Each manager's own format is in [`crate::manager`].

mod resolv;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

/// The path of the per-interface file of `id` (for telling ours from others').
pub(crate) fn is_our_file_name(name: &str) -> bool {
    name.starts_with("xenchan-") || name.starts_with("10-xenchan-") || name == "90-xenchan.yaml"
}
