//! `xenchan domain known-hosts NAME`: `known_hosts` lines for a domain, from the ssh host
//! keys its agent reported as facts (made at the clone's first boot after
//! `xenchan-agent seal`), so an orchestrator's first ssh checks the key
//! (`StrictHostKeyChecking=yes`) instead of trusting whatever answers.
//!
//! The host names on each line are the configured hostname (and its first label), the
//! hostname the guest reports, the configured static addresses and the global addresses
//! the guest reports. Everything from the guest is untrusted: a key that does not parse
//! and a name that is not a host name or address are left out (and said so on stderr
//! by the caller), never written into a known_hosts file.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;

use xenchan_protocol::config::{GuestConfig, Hostname, SshKey};
use xenchan_protocol::message::GuestFacts;

/// `xenchan domain known-hosts --help`.
pub const AFTER_HELP: &str = "\
Prints one known_hosts line per ssh host key the guest's agent reported, with the
domain's hostname and addresses as host names. Append them to the orchestrator's
known_hosts, then ssh with StrictHostKeyChecking=yes.

Examples:
  xenchan domain known-hosts web1 >> ~/.ssh/known_hosts
  ssh -o StrictHostKeyChecking=yes cloud@web1.example.com

Exit codes: 0 printed; 65 the guest reported no usable host key (no sshd, an agent older
than host-key facts, or not connected since its first boot); 69 broker unavailable.";

/// The lines and what was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KnownHosts {
    /// `names keytype base64`, one per key.
    pub lines: Vec<String>,
    /// Untrusted values left out, with the reason.
    pub skipped: Vec<String>,
}

fn global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The host names for a domain, in a stable order: names first, then addresses.
pub fn host_names(
    config: Option<&GuestConfig>,
    facts: Option<&GuestFacts>,
    skipped: &mut Vec<String>,
) -> Vec<String> {
    let mut names = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    if let Some(h) = config.and_then(|c| c.hostname.as_ref()) {
        names.insert(h.as_str().to_ascii_lowercase());
        names.insert(h.short().to_ascii_lowercase());
    }
    if let Some(f) = facts
        && !f.hostname.is_empty()
        && f.hostname != "localhost"
    {
        match Hostname::from_str(&f.hostname) {
            Ok(h) => {
                names.insert(h.as_str().to_ascii_lowercase());
            }
            Err(e) => skipped.push(format!("the reported hostname: {e}")),
        }
    }
    if let Some(net) = config.and_then(|c| c.network.as_ref()) {
        for eth in net.ethernets.values() {
            addrs.extend(eth.addresses.iter().map(|a| a.0.addr()));
        }
    }
    for iface in facts.map(|f| f.interfaces.as_slice()).unwrap_or_default() {
        for a in &iface.addresses {
            let ip = a.split('/').next().unwrap_or_default();
            match ip.parse::<IpAddr>() {
                Ok(ip) if global(ip) => {
                    addrs.insert(ip);
                }
                Ok(_) => {}
                Err(_) => skipped.push(format!(
                    "reported address `{}` of {}: not an address",
                    a.escape_debug(),
                    iface.name.escape_debug()
                )),
            }
        }
    }
    names
        .into_iter()
        .chain(addrs.into_iter().map(|a| a.to_string()))
        .collect()
}

/// The known_hosts lines for a domain.
pub fn render(config: Option<&GuestConfig>, facts: Option<&GuestFacts>) -> KnownHosts {
    let mut out = KnownHosts::default();
    let names = host_names(config, facts, &mut out.skipped);
    if names.is_empty() {
        out.skipped
            .push("the domain has no hostname and no address to name the keys with".into());
        return out;
    }
    let names = names.join(",");
    for k in facts.map(|f| f.host_keys.as_slice()).unwrap_or_default() {
        match SshKey::from_str(&k.key) {
            Ok(key) => {
                // Only `type base64`: a comment from the guest has no place here.
                let mut parts = key.as_str().split_whitespace();
                let (Some(t), Some(b)) = (parts.next(), parts.next()) else {
                    continue;
                };
                out.lines.push(format!("{names} {t} {b}"));
            }
            Err(e) => out.skipped.push(format!(
                "a reported host key ({}): {e}",
                k.fingerprint.escape_debug()
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenchan_protocol::message::{HostKeyFacts, InterfaceFacts};

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn lines_name_the_host_by_name_and_address() {
        let cfg = GuestConfig::from_json(br#"{"hostname":"web1.example.com","network":{"version":2,"ethernets":{"eth0":{"match":{"macaddress":"00:16:3e:00:00:01"},"addresses":["192.0.2.10/24","2001:db8::10/64"]}}}}"#).unwrap();
        let facts = GuestFacts {
            hostname: "web1.example.com".into(),
            interfaces: vec![InterfaceFacts {
                name: "eth0".into(),
                addresses: vec![
                    "192.0.2.10/24".into(),
                    "198.51.100.7/24".into(),
                    "fe80::1/64".into(),
                    "127.0.0.1/8".into(),
                    "bad,x".into(),
                ],
                ..InterfaceFacts::default()
            }],
            host_keys: vec![
                HostKeyFacts {
                    key: format!("{ED} root@template"),
                    fingerprint: "SHA256:x".into(),
                },
                HostKeyFacts {
                    key: "ssh-ed25519 AAAA,evil".into(),
                    fingerprint: "SHA256:y".into(),
                },
            ],
            ..GuestFacts::default()
        };
        let kh = render(Some(&cfg), Some(&facts));
        assert_eq!(
            kh.lines,
            [format!(
                "web1,web1.example.com,192.0.2.10,198.51.100.7,2001:db8::10 {ED}"
            )]
        );
        assert_eq!(kh.skipped.len(), 2, "{:?}", kh.skipped);
    }

    #[test]
    fn no_keys_no_lines() {
        let kh = render(None, None);
        assert!(kh.lines.is_empty());
    }
}
