//! ifupdown: one stanza file per interface in `/etc/network/interfaces.d/`
//! (interfaces(5)). ifupdown knows interfaces by name only, so the name is resolved from
//! the MAC when the file is written.

use std::fmt::Write as _;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::files;
use crate::plan::IfacePlan;
use crate::render::RenderedFile;
use crate::state::LiveRoute;

/// `etc/network/interfaces.d/xenchan-<id>`, mode 0644. No dot in the name:
/// `source-directory` only reads names made of letters, digits, `_` and `-`.
pub(crate) fn render(p: &IfacePlan) -> RenderedFile {
    let n = &p.name;
    let mut s = files::header();
    let _ = writeln!(
        s,
        "# xenchan interface `{}`: MAC {}, named {n} when this was written",
        p.id, p.mac
    );
    s.push_str("# (ifupdown matches names only; xenchan rewrites this file if the name changes)\n");
    let _ = writeln!(s, "auto {n}");

    // One stanza per address: interfaces(5) applies every stanza of an interface in turn.
    let mut stanzas: Vec<Stanza> = Vec::new();
    if p.dhcp4 {
        stanzas.push(Stanza::new(format!("iface {n} inet dhcp"), true, None));
    }
    for a in &p.addrs4 {
        let mut st = Stanza::new(format!("iface {n} inet static"), true, Some(*a));
        st.opts.push(format!("address {a}"));
        stanzas.push(st);
    }
    if p.dhcp6 {
        let mut st = Stanza::new(format!("iface {n} inet6 dhcp"), false, None);
        st.opts.push("accept_ra 1".to_string());
        stanzas.push(st);
    }
    for a in &p.addrs6 {
        let mut st = Stanza::new(format!("iface {n} inet6 static"), false, Some(*a));
        st.opts.push(format!("address {a}"));
        st.opts.push("accept_ra 0".to_string());
        stanzas.push(st);
    }
    if stanzas.is_empty() {
        stanzas.push(Stanza::new(format!("iface {n} inet manual"), true, None));
    }
    // Link options on the first stanza.
    if let Some(mtu) = p.mtu {
        stanzas[0]
            .opts
            .push(format!("pre-up ip link set dev {n} mtu {mtu}"));
    }
    let dns: Vec<String> = p.dns.iter().map(ToString::to_string).collect();
    if !dns.is_empty() {
        stanzas[0]
            .opts
            .push(format!("dns-nameservers {}", dns.join(" ")));
    }
    if !p.search.is_empty() {
        stanzas[0]
            .opts
            .push(format!("dns-search {}", p.search.join(" ")));
    }
    for r in p.routes() {
        let at = route_stanza(&stanzas, r);
        let fam = if r.via.is_ipv4() { "-4" } else { "-6" };
        route_lines(&mut stanzas[at].opts, n, r, fam);
    }
    for st in &stanzas {
        s.push('\n');
        s.push_str(&st.head);
        s.push('\n');
        for o in &st.opts {
            let _ = writeln!(s, "    {o}");
        }
    }
    RenderedFile {
        path: PathBuf::from(format!("etc/network/interfaces.d/xenchan-{}", p.id)),
        content: s,
        mode: 0o644,
    }
}

/// One `iface` stanza: its head line, its options, and what it brings up.
struct Stanza {
    head: String,
    opts: Vec<String>,
    v4: bool,
    addr: Option<IpNet>,
}

impl Stanza {
    fn new(head: String, v4: bool, addr: Option<IpNet>) -> Stanza {
        Stanza {
            head,
            opts: Vec::new(),
            v4,
            addr,
        }
    }
}

/// The stanza whose `up` lines add route `r`. The kernel refuses a gateway that no
/// address of the link reaches ("Nexthop has invalid gateway"), and a failing `up` line
/// makes ifup drop every later stanza of the interface. So a route goes on the stanza
/// whose subnet contains its gateway; with no such subnet (a DHCP or on-link gateway), on
/// the last stanza of its family, when everything of that family is up; else the last.
fn route_stanza(stanzas: &[Stanza], r: &LiveRoute) -> usize {
    let v4 = r.via.is_ipv4();
    stanzas
        .iter()
        .position(|st| st.addr.is_some_and(|a| a.contains(&r.via)))
        .or_else(|| stanzas.iter().rposition(|st| st.v4 == v4))
        .unwrap_or(stanzas.len() - 1)
}

/// Whether a kernel name can go into the file as is: `up` lines are run by a shell, and
/// the kernel allows `$`, `(` or `;` in names.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
}

fn route_lines(opts: &mut Vec<String>, name: &str, r: &LiveRoute, fam: &str) {
    let metric = r.metric.map(|m| format!(" metric {m}")).unwrap_or_default();
    opts.push(format!(
        "up ip {fam} route replace {} via {}{metric} dev {name}",
        r.to, r.via
    ));
    opts.push(format!(
        "down ip {fam} route del {} via {}{metric} dev {name} || true",
        r.to, r.via
    ));
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

    /// Which stanza (by its address line, or head) carries each `up ... route` line.
    fn route_owners(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut current = String::new();
        for l in text.lines() {
            let t = l.trim();
            if t.starts_with("iface ") {
                current = t.to_string();
            } else if let Some(a) = t.strip_prefix("address ") {
                current = a.to_string();
            } else if let Some(r) = t.strip_prefix("up ip ") {
                let via = r.split(" via ").nth(1).unwrap().split(' ').next().unwrap();
                out.push((via.to_string(), current.clone()));
            }
        }
        out
    }

    #[test]
    fn each_route_rides_on_the_stanza_that_reaches_its_gateway() {
        let table: &[(&str, &[(&str, &str)])] = &[
            (
                r#""addresses":["192.0.2.10/24","198.51.100.10/24","2001:db8::10/64"],
                   "routes":[{"to":"203.0.113.0/24","via":"198.51.100.1"},
                             {"to":"default","via":"192.0.2.1"},
                             {"to":"default","via":"2001:db8::1"}]"#,
                &[
                    ("192.0.2.1", "192.0.2.10/24"),
                    ("198.51.100.1", "198.51.100.10/24"),
                    ("2001:db8::1", "2001:db8::10/64"),
                ],
            ),
            // No subnet reaches the gateway (DHCP gives it): after every IPv4 stanza.
            (
                r#""dhcp4":true,"addresses":["198.51.100.10/24","2001:db8::10/64"],
                   "routes":[{"to":"203.0.113.0/24","via":"10.0.0.1"}]"#,
                &[("10.0.0.1", "198.51.100.10/24")],
            ),
            (
                r#""dhcp6":true,"routes":[{"to":"default","via":"fe80::1"}]"#,
                &[("fe80::1", "iface enX0 inet6 dhcp")],
            ),
        ];
        for (eth, want) in table {
            let got = route_owners(&render(&plan(eth)).content);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
                .collect();
            assert_eq!(got, want, "{eth}");
        }
    }
}
