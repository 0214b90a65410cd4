//! NetworkManager: one keyfile per interface, bound to the MAC (nm-settings-keyfile(5),
//! nm-settings-nmcli(5)).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::files;
use crate::plan::IfacePlan;
use crate::render::RenderedFile;
use crate::state::LiveRoute;

/// Above the default (0) so that our profile wins over NetworkManager's automatic
/// "Wired connection" and over profiles other tools left for the same device.
const AUTOCONNECT_PRIORITY: u32 = 50;

/// `etc/NetworkManager/system-connections/xenchan-<id>.nmconnection`, mode 0600
/// (NetworkManager ignores keyfiles that others can read or write).
pub(crate) fn render(p: &IfacePlan) -> RenderedFile {
    let mut s = files::header();
    s.push_str("[connection]\n");
    let _ = writeln!(s, "id=xenchan-{}", p.id);
    let _ = writeln!(s, "uuid={}", uuid_for(&p.id, &p.mac));
    s.push_str("type=ethernet\n");
    s.push_str("autoconnect=true\n");
    let _ = writeln!(s, "autoconnect-priority={AUTOCONNECT_PRIORITY}");

    s.push_str("\n[ethernet]\n");
    let _ = writeln!(s, "mac-address={}", p.mac.to_ascii_uppercase());
    if let Some(mtu) = p.mtu {
        let _ = writeln!(s, "mtu={mtu}");
    }

    let v4_on = p.dhcp4 || !p.addrs4.is_empty();
    let v6_on = p.dhcp6 || !p.addrs6.is_empty();
    s.push_str("\n[ipv4]\n");
    let method4 = if p.dhcp4 {
        "auto"
    } else if p.addrs4.is_empty() {
        "disabled"
    } else {
        "manual"
    };
    let _ = writeln!(s, "method={method4}");
    ip_section(
        &mut s,
        &p.addrs4,
        &p.routes4,
        p.dns4(),
        // Search domains belong to the connection; NetworkManager reads them from either
        // family. Put them where the family is in use.
        if v4_on || !v6_on { &p.search } else { &[] },
    );

    s.push_str("\n[ipv6]\n");
    // link-local: no router advertisements, no DHCPv6, but the fe80:: address that IPv6
    // neighbours need.
    let method6 = if p.dhcp6 {
        "auto"
    } else if p.addrs6.is_empty() {
        "link-local"
    } else {
        "manual"
    };
    let _ = writeln!(s, "method={method6}");
    ip_section(
        &mut s,
        &p.addrs6,
        &p.routes6,
        p.dns6(),
        if v4_on || !v6_on { &[] } else { &p.search },
    );
    RenderedFile {
        path: PathBuf::from(format!(
            "etc/NetworkManager/system-connections/xenchan-{}.nmconnection",
            p.id
        )),
        content: s,
        mode: 0o600,
    }
}

fn ip_section<'a>(
    s: &mut String,
    addrs: &[ipnet::IpNet],
    routes: &[LiveRoute],
    dns: impl Iterator<Item = &'a IpAddr>,
    search: &[String],
) {
    for (i, a) in addrs.iter().enumerate() {
        let _ = writeln!(s, "address{}={a}", i + 1);
    }
    for (i, r) in routes.iter().enumerate() {
        let _ = write!(s, "route{}={},{}", i + 1, r.to, r.via);
        if let Some(m) = r.metric {
            let _ = write!(s, ",{m}");
        }
        s.push('\n');
    }
    let dns: Vec<String> = dns.map(ToString::to_string).collect();
    if !dns.is_empty() {
        let _ = writeln!(s, "dns={};", dns.join(";"));
    }
    if !search.is_empty() {
        let _ = writeln!(s, "dns-search={};", search.join(";"));
    }
}

/// A stable UUID for the profile: the same interface always gets the same one, so a
/// re-render is byte-identical and NetworkManager sees one profile, not a new one.
fn uuid_for(id: &str, mac: &str) -> String {
    let h = Sha256::digest(format!("xenchan-nm\0{id}\0{mac}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // RFC 9562 layout: version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}
