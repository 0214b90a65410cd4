//! systemd-networkd: one `.network` file per interface, matched by MAC
//! (systemd.network(5)).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::files;
use crate::plan::IfacePlan;
use crate::render::RenderedFile;

/// `etc/systemd/network/10-xenchan-<id>.network`, mode 0644. The `10-` prefix sorts it
/// before distribution and cloud-init files (`50-cloud-init.network`,
/// `99-default.network`): networkd applies the first file that matches.
pub(crate) fn render(p: &IfacePlan) -> RenderedFile {
    let mut s = files::header();
    let _ = writeln!(s, "# xenchan interface `{}`", p.id);
    s.push_str("\n[Match]\n");
    let _ = writeln!(s, "MACAddress={}", p.mac);
    // VLANs and bridges inherit their lower device's MAC; only the device itself matches.
    s.push_str("Type=ether\n");
    if let Some(mtu) = p.mtu {
        s.push_str("\n[Link]\n");
        let _ = writeln!(s, "MTUBytes={mtu}");
    }
    s.push_str("\n[Network]\n");
    let dhcp = match (p.dhcp4, p.dhcp6) {
        (true, true) => "yes",
        (true, false) => "ipv4",
        (false, true) => "ipv6",
        (false, false) => "no",
    };
    let _ = writeln!(s, "DHCP={dhcp}");
    // dhcp6 also means "take router advertisements" (SLAAC, and DHCPv6 when they say so);
    // off means static IPv6 only.
    let _ = writeln!(s, "IPv6AcceptRA={}", if p.dhcp6 { "yes" } else { "no" });
    for a in p.addrs() {
        let _ = writeln!(s, "Address={a}");
    }
    for d in &p.dns {
        let _ = writeln!(s, "DNS={d}");
    }
    if !p.search.is_empty() {
        let _ = writeln!(s, "Domains={}", p.search.join(" "));
    }
    if p.dhcp4 {
        // The DHCP server's MTU option, as netplan's own networkd output does: the same
        // document must give the same MTU whichever renderer the guest uses.
        s.push_str("\n[DHCPv4]\n");
        s.push_str("UseMTU=true\n");
    }
    for r in p.routes() {
        s.push_str("\n[Route]\n");
        let _ = writeln!(s, "Destination={}", r.to);
        let _ = writeln!(s, "Gateway={}", r.via);
        if let Some(m) = r.metric {
            let _ = writeln!(s, "Metric={m}");
        }
    }
    RenderedFile {
        path: PathBuf::from(format!("etc/systemd/network/10-xenchan-{}.network", p.id)),
        content: s,
        mode: 0o644,
    }
}
