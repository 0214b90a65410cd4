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

    let place = dns_placement(p);
    s.push_str("\n[ipv4]\n");
    let method4 = if p.dhcp4 {
        "auto"
    } else if p.addrs4.is_empty() {
        "disabled"
    } else {
        "manual"
    };
    let _ = writeln!(s, "method={method4}");
    ip_section(&mut s, &p.addrs4, &p.routes4, &place.v4);

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
    ip_section(&mut s, &p.addrs6, &p.routes6, &place.v6);
    RenderedFile {
        path: PathBuf::from(format!(
            "etc/NetworkManager/system-connections/xenchan-{}.nmconnection",
            p.id
        )),
        content: s,
        mode: 0o600,
    }
}

fn ip_section(s: &mut String, addrs: &[ipnet::IpNet], routes: &[LiveRoute], dns: &FamilyDns) {
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
    if !dns.servers.is_empty() {
        let servers: Vec<String> = dns.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "dns={};", servers.join(";"));
    }
    if !dns.search.is_empty() {
        let _ = writeln!(s, "dns-search={};", dns.search.join(";"));
    }
}

/// DNS settings of one `[ipv4]`/`[ipv6]` section.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FamilyDns {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
}

/// Where an interface's DNS settings go in its keyfile, and what cannot go anywhere.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DnsPlacement {
    pub v4: FamilyDns,
    pub v6: FamilyDns,
    /// Servers NetworkManager would not take from this profile.
    pub dropped: Vec<IpAddr>,
    /// Search domains were given but neither family is configured.
    pub search_dropped: bool,
}

/// NetworkManager refuses `dns`/`dns-search` in an `[ipv4] method=disabled` or `[ipv6]
/// method=link-local` section (`nmcli`: "this property is not allowed for
/// 'method=disabled'"; the profile is not loaded), and silently drops an IPv6 server
/// listed under `[ipv4]`. So each server goes to its own family's section, only when that
/// family is configured (static addresses or DHCP); the others are left out and reported
/// by the `dns` item. Search domains belong to the connection whichever section holds
/// them: IPv4 when configured, else IPv6.
pub(crate) fn dns_placement(p: &IfacePlan) -> DnsPlacement {
    let v4_on = p.dhcp4 || !p.addrs4.is_empty();
    let v6_on = p.dhcp6 || !p.addrs6.is_empty();
    let mut out = DnsPlacement::default();
    for d in &p.dns {
        match (d.is_ipv4(), v4_on, v6_on) {
            (true, true, _) => out.v4.servers.push(*d),
            (false, _, true) => out.v6.servers.push(*d),
            _ => out.dropped.push(*d),
        }
    }
    if v4_on {
        out.v4.search.clone_from(&p.search);
    } else if v6_on {
        out.v6.search.clone_from(&p.search);
    } else {
        out.search_dropped = !p.search.is_empty();
    }
    out
}

/// Why some of the interface's DNS settings are not in its keyfile, if they are not.
pub(crate) fn dns_left_out(p: &IfacePlan) -> Option<String> {
    let place = dns_placement(p);
    let mut parts = Vec::new();
    if !place.dropped.is_empty() {
        let list: Vec<String> = place.dropped.iter().map(ToString::to_string).collect();
        parts.push(format!("nameservers {}", list.join(", ")));
    }
    if place.search_dropped {
        parts.push(format!("search domains {}", p.search.join(", ")));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "interface `{}`: {} left out: NetworkManager takes them only in the section of a \
         family the profile configures (static addresses or DHCP)",
        p.id,
        parts.join(" and "),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use xenchan_protocol::GuestConfig;

    fn plan(eth: &str) -> IfacePlan {
        let doc = format!(
            r#"{{"network":{{"version":2,"ethernets":{{"eth0":{{"match":{{"macaddress":"00:16:3e:00:00:01"}},{eth}}}}}}}}}"#
        );
        let cfg = GuestConfig::from_json(doc.as_bytes()).unwrap();
        let net = cfg.network.unwrap();
        IfacePlan::new("eth0", "enX0", net.ethernets.values().next().unwrap())
    }

    #[test]
    fn dns_goes_only_where_its_family_is_configured() {
        type Row<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            bool,
            bool,
            &'a [&'a str],
        );
        let ns =
            r#""nameservers":{"addresses":["192.0.2.53","2001:db8::53"],"search":["example.com"]}"#;
        // (interface, v4 servers, v6 servers, search in v4, search in v6, dropped)
        let table: &[Row<'_>] = &[
            (
                r#""addresses":["192.0.2.10/24"]"#,
                &["192.0.2.53"],
                &[],
                true,
                false,
                &["2001:db8::53"],
            ),
            (
                r#""addresses":["2001:db8::10/64"]"#,
                &[],
                &["2001:db8::53"],
                false,
                true,
                &["192.0.2.53"],
            ),
            (
                r#""dhcp6":true"#,
                &[],
                &["2001:db8::53"],
                false,
                true,
                &["192.0.2.53"],
            ),
            (
                r#""dhcp4":true"#,
                &["192.0.2.53"],
                &[],
                true,
                false,
                &["2001:db8::53"],
            ),
            (
                r#""addresses":["192.0.2.10/24","2001:db8::10/64"]"#,
                &["192.0.2.53"],
                &["2001:db8::53"],
                true,
                false,
                &[],
            ),
        ];
        for (eth, v4, v6, s4, s6, dropped) in table {
            let p = plan(&format!("{eth},{ns}"));
            let got = dns_placement(&p);
            let txt = |v: &[IpAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
            assert_eq!(txt(&got.v4.servers), *v4, "{eth}");
            assert_eq!(txt(&got.v6.servers), *v6, "{eth}");
            assert_eq!(!got.v4.search.is_empty(), *s4, "{eth}");
            assert_eq!(!got.v6.search.is_empty(), *s6, "{eth}");
            assert_eq!(txt(&got.dropped), *dropped, "{eth}");
            assert_eq!(dns_left_out(&p).is_some(), !dropped.is_empty(), "{eth}");
            // The rendered keyfile never has dns in an unconfigured section.
            let file = render(&p).content;
            for section in file
                .split("\n[")
                .filter(|s| s.contains("method=disabled") || s.contains("method=link-local"))
            {
                assert!(!section.contains("dns"), "{eth}: {file}");
            }
        }
        let p = plan(ns);
        let why = dns_left_out(&p).unwrap();
        assert!(
            why.contains("192.0.2.53, 2001:db8::53") && why.contains("example.com"),
            "{why}"
        );
    }
}
