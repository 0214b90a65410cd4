//! The guest facts report sent after each session start: agent version, OS, kernel,
//! hostname and network interfaces with their addresses.
//!
//! Under a temporary root only what exists there is read (no addresses: those come from
//! the running kernel, which is not the guest's); with root `/` the live kernel is asked.
//!
//! Gathering never runs on the session's path: [`gather_bounded`] runs each source on its
//! own blocking thread with its own deadline, and only regular files are read (a FIFO as
//! `/etc/os-release` is skipped at once instead of blocking a thread forever).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use xenchan_protocol::message::{GuestFacts, InterfaceFacts};

use crate::options::AgentOptions;

/// At most this many interfaces and addresses per interface are reported.
const MAX_INTERFACES: usize = 64;
const MAX_ADDRESSES: usize = 64;

/// The agent's software string (`xenchan-agent 0.1.0`).
pub fn software() -> String {
    format!("xenchan-agent {}", env!("CARGO_PKG_VERSION"))
}

/// Gathers the facts of the guest at `opts.root`.
pub fn gather(opts: &AgentOptions) -> GuestFacts {
    let root = opts.root.as_path();
    let live = opts.is_live_root();
    let mut interfaces = sysfs_interfaces(root);
    if live {
        add_live_addresses(&mut interfaces);
    }
    GuestFacts {
        agent: software(),
        os: os_name(root),
        kernel: kernel(root, live),
        hostname: hostname(root, live),
        interfaces,
        host_keys: crate::host_keys::gather(root),
    }
}

/// Gathers like [`gather`], each source (os-release, kernel, hostname, interfaces) on its
/// own blocking thread bounded by `per_source`: a source past its deadline is reported
/// empty, the others are not held up by it.
pub async fn gather_bounded(opts: Arc<AgentOptions>, per_source: Duration) -> GuestFacts {
    async fn bounded<T: Default + Send + 'static>(
        what: &'static str,
        per_source: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        match tokio::time::timeout(per_source, tokio::task::spawn_blocking(f)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                warn!(source = what, error = %e, "a facts source failed");
                T::default()
            }
            Err(_) => {
                warn!(
                    source = what,
                    ?per_source,
                    "a facts source took too long; reported empty"
                );
                T::default()
            }
        }
    }
    let live = opts.is_live_root();
    let (o1, o2, o3, o4, o5) = (
        Arc::clone(&opts),
        Arc::clone(&opts),
        Arc::clone(&opts),
        Arc::clone(&opts),
        Arc::clone(&opts),
    );
    // Host keys may first have to be made (`ssh-keygen -A` after sealing): past the
    // deadline they are reported empty and the next gathering (facts are re-sent when
    // they change) carries them.
    let (os, kernel, hostname, interfaces, host_keys) = tokio::join!(
        bounded("os-release", per_source, move || os_name(&o1.root)),
        bounded("kernel", per_source, move || kernel(&o2.root, live)),
        bounded("hostname", per_source, move || hostname(&o3.root, live)),
        bounded("interfaces", per_source, move || {
            let mut i = sysfs_interfaces(&o4.root);
            if live {
                add_live_addresses(&mut i);
            }
            i
        }),
        bounded("host keys", per_source, move || crate::host_keys::gather(
            &o5.root
        )),
    );
    GuestFacts {
        agent: software(),
        os,
        kernel,
        hostname,
        interfaces,
        host_keys,
    }
}

/// Reads at most 64 KiB of a regular file. Anything else (a FIFO, a device) is skipped:
/// it is opened non-blocking and refused after a look at what it is, so it cannot stall.
fn read_small(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        warn!(file = %path.display(), "not a regular file; skipped");
        return None;
    }
    let mut s = String::new();
    file.take(64 * 1024).read_to_string(&mut s).ok()?;
    Some(s)
}

/// `PRETTY_NAME` of `<root>/etc/os-release` (or `/usr/lib/os-release`), else `NAME
/// VERSION`, else empty.
fn os_name(root: &Path) -> String {
    let text = read_small(&root.join("etc/os-release"))
        .or_else(|| read_small(&root.join("usr/lib/os-release")))
        .unwrap_or_default();
    let vars = parse_os_release(&text);
    if let Some(p) = vars.get("PRETTY_NAME") {
        return p.clone();
    }
    match (vars.get("NAME"), vars.get("VERSION")) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n.clone(),
        _ => String::new(),
    }
}

/// Parses os-release(5): `KEY=value` lines, values optionally quoted, shell escapes.
pub(crate) fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        out.insert(k.to_string(), v);
    }
    out
}

fn kernel(root: &Path, live: bool) -> String {
    if let Some(k) = read_small(&root.join("proc/sys/kernel/osrelease")) {
        return k.trim().to_string();
    }
    if live && let Ok(u) = nix::sys::utsname::uname() {
        return u.release().to_string_lossy().into_owned();
    }
    String::new()
}

fn hostname(root: &Path, live: bool) -> String {
    if live && let Ok(h) = nix::unistd::gethostname() {
        return h.to_string_lossy().into_owned();
    }
    read_small(&root.join("etc/hostname"))
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_default()
}

fn sysfs_interfaces(root: &Path) -> Vec<InterfaceFacts> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .take(4 * MAX_INTERFACES)
        .collect();
    names.sort();
    names.truncate(MAX_INTERFACES);
    names
        .into_iter()
        .map(|name| {
            let attr = |a: &str| {
                read_small(&dir.join(&name).join(a))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let flags =
                u32::from_str_radix(attr("flags").trim_start_matches("0x"), 16).unwrap_or(0);
            InterfaceFacts {
                mac: attr("address").to_ascii_lowercase(),
                mtu: attr("mtu").parse().unwrap_or(0),
                up: flags & 1 == 1,
                addresses: Vec::new(),
                name,
            }
        })
        .collect()
}

fn add_live_addresses(interfaces: &mut [InterfaceFacts]) {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return;
    };
    for ifa in addrs {
        let Some(iface) = interfaces.iter_mut().find(|i| i.name == ifa.interface_name) else {
            continue;
        };
        let Some(addr) = ifa.address.as_ref().and_then(ip_of) else {
            continue;
        };
        let prefix = ifa.netmask.as_ref().and_then(ip_of).map_or(0, |m| match m {
            IpAddr::V4(m) => u32::from(m).count_ones(),
            IpAddr::V6(m) => u128::from(m).count_ones(),
        });
        if iface.addresses.len() < MAX_ADDRESSES {
            iface.addresses.push(format!("{addr}/{prefix}"));
        }
    }
}

fn ip_of(s: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quotes_and_escapes() {
        let v = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian'\nID=debian\n# c\nX=\"a\\\"b\"\n",
        );
        assert_eq!(v["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(v["NAME"], "Debian");
        assert_eq!(v["ID"], "debian");
        assert_eq!(v["X"], "a\"b");
    }

    #[test]
    fn temp_root_facts_read_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "NAME=Test\nVERSION=\"1 (x)\"\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/hostname"), "guest1\n").unwrap();
        let eth = root.join("sys/class/net/eth0");
        std::fs::create_dir_all(&eth).unwrap();
        std::fs::write(eth.join("address"), "00:16:3E:01:02:03\n").unwrap();
        std::fs::write(eth.join("mtu"), "1500\n").unwrap();
        std::fs::write(eth.join("flags"), "0x1003\n").unwrap();
        std::fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
        let f = gather(&AgentOptions::under_root(root));
        assert_eq!(f.os, "Test 1 (x)");
        assert_eq!(f.hostname, "guest1");
        assert_eq!(f.interfaces.len(), 1);
        assert_eq!(f.interfaces[0].name, "eth0");
        assert_eq!(f.interfaces[0].mac, "00:16:3e:01:02:03");
        assert_eq!(f.interfaces[0].mtu, 1500);
        assert!(f.interfaces[0].up);
        assert!(f.agent.starts_with("xenchan-agent "));
    }
}
