//! netplan: one YAML file of ours holding every interface (netplan YAML reference,
//! `ethernets` matched by `macaddress`).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::networkd::words;
use super::{Manager, Rendered, Tools, any_exists, validate};
use crate::activate::{Changed, Cmd};
use crate::files;
use crate::plan::IfacePlan;
use crate::render::{RenderedFile, Renderer};

const BINS: &[&str] = &["usr/sbin/netplan", "usr/bin/netplan", "sbin/netplan"];
/// netplan's parser and generator (C), by release.
const GENERATE: &[&str] = &[
    "usr/libexec/netplan/generate",
    "usr/lib/netplan/generate",
    "lib/netplan/generate",
];

/// netplan: one YAML file for all interfaces, checked by `netplan generate` in a scratch
/// root before it is written.
pub(crate) struct Netplan;

impl Manager for Netplan {
    fn renderer(&self) -> Renderer {
        Renderer::Netplan
    }

    /// `etc/netplan/` is a folder and the tool is installed: netplan generates its
    /// backend's configuration at boot, so files written for the backend would compete.
    fn in_use(&self, root: &Path) -> bool {
        root.join("etc/netplan").is_dir() && any_exists(root, BINS)
    }

    /// Either backend runs.
    fn running(&self, root: &Path) -> bool {
        super::of(Renderer::Networkd).running(root)
            || super::of(Renderer::NetworkManager).running(root)
    }

    fn render(&self, plan: &IfacePlan) -> Rendered {
        Rendered::Section(netplan_section(plan))
    }

    fn assemble(&self, sections: &[&str]) -> Option<RenderedFile> {
        Some(netplan_file(sections))
    }

    /// Our file alone in a scratch root: netplan must parse it and generate the backend's
    /// files without an error (it also prints `Error:` for conflicts it tolerates, such
    /// as two default routes of one family on two interfaces).
    fn validate(
        &self,
        tools: &Tools,
        file: &RenderedFile,
        _plan: Option<&IfacePlan>,
    ) -> Result<(), String> {
        let Some(generate) = tools.find(GENERATE) else {
            return Ok(());
        };
        let scratch = validate::scratch()?;
        let path = scratch.path().join(&file.path);
        let written = std::fs::create_dir_all(path.parent().unwrap_or(scratch.path()))
            .and_then(|()| std::fs::write(&path, &file.content))
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)));
        written.map_err(|e| format!("cannot copy the netplan file to check it: {e}"))?;
        let args = [
            std::ffi::OsStr::new("--root-dir"),
            scratch.path().as_os_str(),
        ];
        let said = tools
            .run(&generate, &args, None)
            .map_err(|e| format!("netplan refuses the configuration: {e}"))?;
        match said.lines().find(|l| l.starts_with("Error")) {
            Some(_) => Err(format!(
                "netplan refuses the configuration: {}",
                said.trim()
            )),
            None => Ok(()),
        }
    }

    fn activate(&self, _changed: &[Changed]) -> Vec<Cmd> {
        vec![(None, words(&["netplan", "apply"]))]
    }
}

/// Where the file goes. `90-` sorts after the installer's and cloud-init's files; netplan
/// merges all files, later ones winning key by key.
pub(crate) const NETPLAN_PATH: &str = "etc/netplan/90-xenchan.yaml";

/// Every scalar is double-quoted: YAML 1.1 reads an all-digit MAC such as
/// 00:16:35:12:34:56 as a base-60 number.
fn q(s: impl std::fmt::Display) -> String {
    format!("\"{s}\"")
}

/// The part of the file for one interface (indented for `ethernets:`). The netplan id is
/// `xenchan-<id>`, so that it never merges with another file's definition of `eth0`.
pub(crate) fn netplan_section(p: &IfacePlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "    xenchan-{}:", p.id);
    s.push_str("      match:\n");
    let _ = writeln!(s, "        macaddress: {}", q(&p.mac));
    let _ = writeln!(s, "      dhcp4: {}", p.dhcp4);
    let _ = writeln!(s, "      dhcp6: {}", p.dhcp6);
    let _ = writeln!(s, "      accept-ra: {}", p.dhcp6);
    if let Some(mtu) = p.mtu {
        let _ = writeln!(s, "      mtu: {mtu}");
    }
    if p.addrs().next().is_some() {
        s.push_str("      addresses:\n");
        for a in p.addrs() {
            let _ = writeln!(s, "        - {}", q(a));
        }
    }
    if p.routes().next().is_some() {
        s.push_str("      routes:\n");
        for r in p.routes() {
            // `to: default` needs netplan 0.103; 0.0.0.0/0 and ::/0 work everywhere.
            let _ = writeln!(s, "        - to: {}", q(r.to));
            let _ = writeln!(s, "          via: {}", q(r.via));
            if let Some(m) = r.metric {
                let _ = writeln!(s, "          metric: {m}");
            }
        }
    }
    if p.has_dns() {
        s.push_str("      nameservers:\n");
        if !p.dns.is_empty() {
            s.push_str("        addresses:\n");
            for d in &p.dns {
                let _ = writeln!(s, "          - {}", q(d));
            }
        }
        if !p.search.is_empty() {
            s.push_str("        search:\n");
            for d in &p.search {
                let _ = writeln!(s, "          - {}", q(d));
            }
        }
    }
    s
}

/// The whole file from the sections (in interface order), mode 0600 (netplan warns about
/// files others can read).
pub(crate) fn netplan_file(sections: &[&str]) -> RenderedFile {
    let mut s = files::header();
    s.push_str("network:\n  version: 2\n  ethernets:\n");
    for sec in sections {
        s.push_str(sec);
    }
    RenderedFile {
        path: PathBuf::from(NETPLAN_PATH),
        content: s,
        mode: 0o600,
    }
}
