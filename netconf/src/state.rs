//! What a previous [`crate::apply`] left behind, for the caller to persist and hand back:
//! the files we own and what we set live. It is the only list of things we may remove.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::render::Renderer;

/// Everything the network applier owns in a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The renderer that wrote [`NetState::files`].
    #[serde(default)]
    pub renderer: Renderer,
    /// Files we wrote, relative to the guest root.
    #[serde(default)]
    pub files: Vec<OwnedFile>,
    /// Per interface label: what we know and what we set live.
    #[serde(default)]
    pub interfaces: BTreeMap<String, IfaceState>,
    /// Our `/etc/resolv.conf`, when we wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<ResolvState>,
    /// What the DNS settings were (servers and search domains, as text), to tell
    /// `applied` from `unchanged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
}

/// A file we wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedFile {
    /// Path relative to the guest root (`etc/systemd/network/10-xenchan-eth0.network`).
    pub path: PathBuf,
    /// The interface label it configures (`None` for files shared by all, such as the
    /// netplan file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

impl OwnedFile {
    /// Whether the path is plainly inside the root (relative, no `..`): a state file is
    /// input too, and a hostile one must not make us remove `/etc/passwd`.
    pub(crate) fn is_safe(&self) -> bool {
        safe_relative(&self.path)
    }
}

pub(crate) fn safe_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// One interface as we last configured it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceState {
    /// Its MAC.
    pub mac: String,
    /// Its kernel name when we last saw it.
    #[serde(default)]
    pub name: String,
    /// The rendered configuration of this interface in a file shared by several
    /// interfaces (netplan), kept so that a failed interface keeps its previous part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_section: Option<String>,
    /// Our files are in place but the manager has not applied them yet (its reload
    /// failed): the next apply tries again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_reload: bool,
    /// Addresses we added live (so that a later configuration removes only ours).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_addresses: Vec<IpNet>,
    /// Routes we added live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_routes: Vec<LiveRoute>,
    /// The MTU we set live, if the document gave one (restored at boot with the
    /// addresses when nothing else configures the interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_mtu: Option<u32>,
}

/// A route we added live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LiveRoute {
    /// Destination (`0.0.0.0/0` or `::/0` for a default route).
    pub to: IpNet,
    /// Gateway.
    pub via: IpAddr,
    /// Metric (`None`: the kernel default, 0 for IPv4 and 1024 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl std::fmt::Display for LiveRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.to, self.via)?;
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// Our `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvState {
    /// Where the file we replaced was kept (relative to the root), to put it back when
    /// the configuration no longer has DNS; `None` if there was no file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<PathBuf>,
}
