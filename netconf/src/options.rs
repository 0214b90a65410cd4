//! What the caller decides: where the guest root is, which manager to write for, whether to
//! touch the running kernel.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which network manager's files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RendererChoice {
    /// Detect it in the guest root (order: netplan, NetworkManager, networkd, ifupdown;
    /// see [`crate::detect_renderer`]).
    #[default]
    Auto,
    /// systemd-networkd `.network` files.
    Networkd,
    /// NetworkManager keyfiles.
    NetworkManager,
    /// One netplan YAML file.
    Netplan,
    /// `/etc/network/interfaces.d/` stanzas.
    Ifupdown,
    /// No manager: live apply and `/etc/resolv.conf` only.
    None,
}

/// Whether to configure the running kernel over rtnetlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiveMode {
    /// Live apply when no manager is in charge: the renderer is `none`, or the chosen
    /// manager is not running (no runtime marker under `<root>/run`, see
    /// [`crate::manager_running`]).
    #[default]
    Auto,
    /// Always apply live (as well as writing the manager's files).
    Always,
    /// Never touch the running kernel: files only.
    Never,
}

/// Options of [`crate::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// The guest root: every file is read and written under it.
    pub root: PathBuf,
    /// Which manager's files to write.
    pub renderer: RendererChoice,
    /// Whether to configure the running kernel.
    pub live: LiveMode,
    /// Where sysfs is mounted (interfaces are found by MAC in `<sysfs>/class/net/*/address`
    /// when nothing is applied live).
    pub sysfs: PathBuf,
    /// Run the live part in this network namespace (a file such as `/run/netns/<name>` or
    /// `/proc/<pid>/ns/net`) instead of the caller's. Interfaces are then found over
    /// rtnetlink in that namespace.
    pub netns: Option<PathBuf>,
    /// After writing files, ask the manager to apply them (`networkctl reload` and
    /// `reconfigure`, `nmcli connection reload` and `up`, `netplan apply`,
    /// `ifdown`/`ifup`). Only when the root is `/`, no `netns` is given and the manager
    /// is running; a failing command fails the item (the files stay written).
    pub reload: bool,
    /// Where the managers' own parsers are looked up (a folder laid out like a root:
    /// `usr/bin/nmcli`, `usr/libexec/netplan/generate`, `sbin/ifup`) to check each render
    /// before it is written; a render the manager refuses fails its item with the
    /// manager's message and nothing is written. `None`: the guest root itself when it is
    /// `/`; an image root is not checked (its binaries may not run here).
    pub tools: Option<PathBuf>,
    /// Test hook: make the live apply of every interface fail just before its step number
    /// `n` (0-based, counting only steps that change something), so that rollback is
    /// exercised deterministically.
    #[doc(hidden)]
    pub fail_after_step: Option<usize>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            root: PathBuf::from("/"),
            renderer: RendererChoice::Auto,
            live: LiveMode::Auto,
            sysfs: PathBuf::from("/sys"),
            netns: None,
            reload: true,
            tools: None,
            fail_after_step: None,
        }
    }
}

impl NetOptions {
    /// Options for a guest root, everything else default.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        NetOptions {
            root: root.into(),
            ..NetOptions::default()
        }
    }
}
