//! ifupdown: one stanza file per interface in `/etc/network/interfaces.d/`
//! (interfaces(5)). ifupdown knows interfaces by name only, so the name is resolved from
//! the MAC when the file is written.

use std::fmt::Write as _;
use std::path::PathBuf;

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
    let mut stanzas: Vec<(String, Vec<String>)> = Vec::new();
    if p.dhcp4 {
        stanzas.push((format!("iface {n} inet dhcp"), Vec::new()));
    }
    for a in &p.addrs4 {
        stanzas.push((
            format!("iface {n} inet static"),
            vec![format!("address {a}")],
        ));
    }
    let first6 = stanzas.len();
    if p.dhcp6 {
        stanzas.push((
            format!("iface {n} inet6 dhcp"),
            vec!["accept_ra 1".to_string()],
        ));
    }
    for a in &p.addrs6 {
        stanzas.push((
            format!("iface {n} inet6 static"),
            vec![format!("address {a}"), "accept_ra 0".to_string()],
        ));
    }
    if stanzas.is_empty() {
        stanzas.push((format!("iface {n} inet manual"), Vec::new()));
    }
    let has6 = stanzas.len() > first6;
    // Link options on the first stanza; routes on the first stanza of their family, once
    // its address is there (else on the last one).
    let (head, _) = stanzas.split_at_mut(1);
    if let Some(mtu) = p.mtu {
        head[0]
            .1
            .push(format!("pre-up ip link set dev {n} mtu {mtu}"));
    }
    let dns: Vec<String> = p.dns.iter().map(ToString::to_string).collect();
    if !dns.is_empty() {
        head[0].1.push(format!("dns-nameservers {}", dns.join(" ")));
    }
    if !p.search.is_empty() {
        head[0].1.push(format!("dns-search {}", p.search.join(" ")));
    }
    let last = stanzas.len() - 1;
    let at4 = if first6 > 0 { 0 } else { last };
    let at6 = if has6 { first6 } else { last };
    for r in &p.routes4 {
        route_lines(&mut stanzas[at4].1, n, r, "-4");
    }
    for r in &p.routes6 {
        route_lines(&mut stanzas[at6].1, n, r, "-6");
    }
    for (head, opts) in &stanzas {
        s.push('\n');
        s.push_str(head);
        s.push('\n');
        for o in opts {
            let _ = writeln!(s, "    {o}");
        }
    }
    RenderedFile {
        path: PathBuf::from(format!("etc/network/interfaces.d/xenchan-{}", p.id)),
        content: s,
        mode: 0o644,
    }
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
