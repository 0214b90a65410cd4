//! `/etc/resolv.conf` (resolv.conf(5)), written only when nothing else manages it.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::files;
use crate::plan::IfacePlan;
use crate::render::RenderedFile;

/// Where it goes.
pub(crate) const RESOLV_PATH: &str = "etc/resolv.conf";

/// Servers and search domains of all interfaces, in interface order, without repeats.
pub(crate) fn resolv_conf(plans: &[&IfacePlan]) -> RenderedFile {
    let mut servers: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    for p in plans {
        for d in &p.dns {
            let d = d.to_string();
            if !servers.contains(&d) {
                servers.push(d);
            }
        }
        for d in &p.search {
            if !search.contains(d) {
                search.push(d.clone());
            }
        }
    }
    let mut s = files::header();
    if servers.len() > 3 {
        s.push_str("# The resolver uses the first 3 nameservers only.\n");
    }
    for d in &servers {
        let _ = writeln!(s, "nameserver {d}");
    }
    if !search.is_empty() {
        let _ = writeln!(s, "search {}", search.join(" "));
    }
    RenderedFile {
        path: PathBuf::from(RESOLV_PATH),
        content: s,
        mode: 0o644,
    }
}
