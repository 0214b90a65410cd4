//! Which network manager a guest root uses, whether it runs, and who owns
//! `/etc/resolv.conf`. Everything is read from files under the root, so an offline image
//! is judged the same way as a running guest.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use xenchan_protocol::config::RendererHint;

use crate::files;
use crate::manager;
use crate::render::Renderer;

/// The manager that owns networking in the guest root: the first of
/// [`crate::manager::MANAGERS`] in use there, in this order:
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
    manager::detect(root)
}

/// The manager for a document whose `network.renderer` (cloud-init v2) is `hint`: the
/// hinted manager when the guest uses it (installed and enabled, or running) and netplan
/// does not own the network (netplan picks its backend itself, and we do not change its
/// choice); the detected manager otherwise. A hint never installs or enables anything.
pub fn choose_renderer(root: &Path, hint: Option<RendererHint>) -> Renderer {
    let detected = detect_renderer(root);
    let Some(hint) = hint else { return detected };
    let wanted = match hint {
        RendererHint::Networkd => Renderer::Networkd,
        RendererHint::NetworkManager => Renderer::NetworkManager,
    };
    if detected != Renderer::Netplan && manager::of(wanted).in_use(root) {
        wanted
    } else {
        detected
    }
}

/// Whether the manager shows signs of running in this boot (its runtime files under
/// `<root>/run`, a tmpfs that starts empty):
/// networkd `run/systemd/netif/state`, NetworkManager `run/NetworkManager/`, ifupdown
/// `run/network/ifstate`, netplan: either backend.
pub fn manager_running(root: &Path, renderer: Renderer) -> bool {
    manager::of(renderer).running(root)
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
    fn a_renderer_hint_wins_only_when_its_manager_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let nm = Some(RendererHint::NetworkManager);
        let nd = Some(RendererHint::Networkd);
        assert_eq!(choose_renderer(r, nm), Renderer::None, "not installed");
        touch(r, "usr/lib/systemd/systemd-networkd");
        touch(
            r,
            "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        );
        assert_eq!(
            choose_renderer(r, nm),
            Renderer::Networkd,
            "NM absent: detected"
        );
        touch(r, "usr/sbin/NetworkManager");
        touch(
            r,
            "etc/systemd/system/multi-user.target.wants/NetworkManager.service",
        );
        // Both enabled: detection says NetworkManager, the hint can pick networkd.
        assert_eq!(choose_renderer(r, None), Renderer::NetworkManager);
        assert_eq!(choose_renderer(r, nd), Renderer::Networkd);
        assert_eq!(choose_renderer(r, nm), Renderer::NetworkManager);
        // netplan owns the backends: the hint does not go around it.
        fs::create_dir_all(r.join("etc/netplan")).unwrap();
        touch(r, "usr/sbin/netplan");
        assert_eq!(choose_renderer(r, nd), Renderer::Netplan);
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
