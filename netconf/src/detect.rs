//! Which network manager a guest root uses, whether it runs, and who owns
//! `/etc/resolv.conf`. Everything is read from files under the root, so an offline image
//! is judged the same way as a running guest.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::files;
use crate::render::Renderer;

fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

fn any_exists(root: &Path, rels: &[&str]) -> bool {
    rels.iter().any(|r| exists(root, r))
}

const NETPLAN_BINS: &[&str] = &["usr/sbin/netplan", "usr/bin/netplan", "sbin/netplan"];
const NM_BINS: &[&str] = &["usr/sbin/NetworkManager", "sbin/NetworkManager"];
const NM_ENABLED: &[&str] = &[
    "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
    "etc/systemd/system/dbus-org.freedesktop.NetworkManager.service",
    "etc/runlevels/default/NetworkManager",
    "etc/runlevels/default/networkmanager",
];
const NETWORKD_BINS: &[&str] = &[
    "usr/lib/systemd/systemd-networkd",
    "lib/systemd/systemd-networkd",
];
const NETWORKD_ENABLED: &[&str] = &[
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "etc/systemd/system/dbus-org.freedesktop.network1.service",
    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
];
const IFUP_BINS: &[&str] = &["sbin/ifup", "usr/sbin/ifup"];

/// The manager that owns networking in the guest root, in this order:
///
/// 1. **netplan**: `<root>/etc/netplan` is a folder and a `netplan` binary exists. Netplan
///    generates the networkd or NetworkManager configuration at boot; files written
///    behind its back would compete with what it generates.
/// 2. **NetworkManager**: installed and enabled (systemd `multi-user.target.wants` or
///    D-Bus alias, or an OpenRC runlevel link) or running.
/// 3. **systemd-networkd**: installed and enabled or running.
/// 4. **ifupdown**: `<root>/etc/network/interfaces` and `ifup` exist. Checked last because
///    the file often lingers on systems that moved to another manager.
/// 5. otherwise **none**: live apply and `/etc/resolv.conf`.
pub fn detect_renderer(root: &Path) -> Renderer {
    if root.join("etc/netplan").is_dir() && any_exists(root, NETPLAN_BINS) {
        return Renderer::Netplan;
    }
    if any_exists(root, NM_BINS)
        && (any_exists(root, NM_ENABLED) || manager_running(root, Renderer::NetworkManager))
    {
        return Renderer::NetworkManager;
    }
    if any_exists(root, NETWORKD_BINS)
        && (any_exists(root, NETWORKD_ENABLED) || manager_running(root, Renderer::Networkd))
    {
        return Renderer::Networkd;
    }
    if exists(root, "etc/network/interfaces") && any_exists(root, IFUP_BINS) {
        return Renderer::Ifupdown;
    }
    Renderer::None
}

/// Whether the manager shows signs of running in this boot (its runtime files under
/// `<root>/run`, a tmpfs that starts empty):
/// networkd `run/systemd/netif/state`, NetworkManager `run/NetworkManager/`, ifupdown
/// `run/network/ifstate`, netplan: either backend.
pub fn manager_running(root: &Path, renderer: Renderer) -> bool {
    match renderer {
        Renderer::Networkd => exists(root, "run/systemd/netif/state"),
        Renderer::NetworkManager => root.join("run/NetworkManager").is_dir(),
        Renderer::Netplan => {
            manager_running(root, Renderer::Networkd)
                || manager_running(root, Renderer::NetworkManager)
        }
        Renderer::Ifupdown => exists(root, "run/network/ifstate"),
        Renderer::None => false,
    }
}

/// Who owns `<root>/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvConf {
    /// There is none.
    Missing,
    /// A symlink (systemd-resolved's stub, resolvconf's or NetworkManager's file): its
    /// owner writes it.
    Symlink(PathBuf),
    /// Ours (carries the marker).
    Ours,
    /// A regular file whose header names the program that generates it.
    Generated(String),
    /// A regular file nobody claims (hand-written or left by the installer).
    Unmanaged,
}

/// Header words of programs that generate resolv.conf themselves.
const GENERATORS: &[(&str, &str)] = &[
    ("NetworkManager", "NetworkManager"),
    ("systemd-resolved", "systemd-resolved"),
    ("/run/systemd/resolve", "systemd-resolved"),
    ("resolvconf", "resolvconf"),
    ("netconfig", "netconfig"),
    ("dhcpcd", "dhcpcd"),
    ("connman", "connman"),
];

/// Classifies `<root>/etc/resolv.conf`.
pub fn resolv_conf_status(root: &Path) -> ResolvConf {
    let p = root.join("etc/resolv.conf");
    let Ok(meta) = fs::symlink_metadata(&p) else {
        return ResolvConf::Missing;
    };
    if meta.file_type().is_symlink() {
        return ResolvConf::Symlink(fs::read_link(&p).unwrap_or_default());
    }
    let mut head = Vec::new();
    if let Ok(f) = fs::File::open(&p) {
        let _ = f.take(2048).read_to_end(&mut head);
    }
    if files::has_marker(&head) {
        return ResolvConf::Ours;
    }
    let text = String::from_utf8_lossy(&head);
    let comments: String = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    for (word, who) in GENERATORS {
        if comments.contains(word) {
            return ResolvConf::Generated((*who).to_string());
        }
    }
    ResolvConf::Unmanaged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "").unwrap();
    }

    #[test]
    fn detection_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert_eq!(detect_renderer(r), Renderer::None);
        touch(r, "etc/network/interfaces");
        assert_eq!(detect_renderer(r), Renderer::None, "no ifup binary");
        touch(r, "sbin/ifup");
        assert_eq!(detect_renderer(r), Renderer::Ifupdown);
        touch(r, "usr/lib/systemd/systemd-networkd");
        assert_eq!(
            detect_renderer(r),
            Renderer::Ifupdown,
            "networkd not enabled"
        );
        touch(r, "run/systemd/netif/state");
        assert_eq!(detect_renderer(r), Renderer::Networkd, "networkd running");
        touch(r, "usr/sbin/NetworkManager");
        assert_eq!(detect_renderer(r), Renderer::Networkd, "NM not enabled");
        touch(
            r,
            "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
        );
        assert_eq!(detect_renderer(r), Renderer::NetworkManager);
        fs::create_dir_all(r.join("etc/netplan")).unwrap();
        assert_eq!(
            detect_renderer(r),
            Renderer::NetworkManager,
            "no netplan binary"
        );
        touch(r, "usr/sbin/netplan");
        assert_eq!(detect_renderer(r), Renderer::Netplan);
        assert!(manager_running(r, Renderer::Netplan));
        assert!(!manager_running(r, Renderer::Ifupdown));
    }

    #[test]
    fn resolv_conf_owners() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert_eq!(resolv_conf_status(r), ResolvConf::Missing);
        fs::create_dir_all(r.join("etc")).unwrap();
        let p = r.join("etc/resolv.conf");
        fs::write(&p, "nameserver 192.0.2.1\n").unwrap();
        assert_eq!(resolv_conf_status(r), ResolvConf::Unmanaged);
        fs::write(&p, "# Generated by NetworkManager\nnameserver 192.0.2.1\n").unwrap();
        assert_eq!(
            resolv_conf_status(r),
            ResolvConf::Generated("NetworkManager".into())
        );
        fs::write(&p, format!("{}nameserver 192.0.2.1\n", files::header())).unwrap();
        assert_eq!(resolv_conf_status(r), ResolvConf::Ours);
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &p).unwrap();
        assert_eq!(
            resolv_conf_status(r),
            ResolvConf::Symlink("../run/systemd/resolve/stub-resolv.conf".into())
        );
    }
}
