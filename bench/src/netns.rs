//! A network namespace holding one veth interface with a given MAC: the "guest's" NIC
//! that the end-to-end push configures over netlink. Made and removed with iproute2.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// A namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("cannot run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why namespaces cannot be used here, if they cannot (not root, no iproute2).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    None
}

impl NetNs {
    /// Makes namespace `name` with `lo` up and a veth `iface` carrying `mac`, up.
    pub fn create(name: &str, iface: &str, mac: &str) -> anyhow::Result<NetNs> {
        // A leftover of an interrupted run would make `add` fail.
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        // A veth pair inside the namespace (not every kernel has the dummy driver): the
        // NIC with the MAC, and its peer so the link is up and carrier is on.
        let peer = format!("{iface}p");
        ip(&[
            "-n", name, "link", "add", iface, "address", mac, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["-n", name, "link", "set", &peer, "up"])?;
        ip(&["-n", name, "link", "set", iface, "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what `setns` is given.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The IPv4 addresses (CIDR) on `iface`.
    pub fn addresses(&self, iface: &str) -> anyhow::Result<Vec<String>> {
        let out = ip(&["-n", &self.name, "-4", "-o", "addr", "show", "dev", iface])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|w| *w == "inet")
                    .and_then(|i| f.get(i + 1))
                    .map(|s| (*s).to_string())
            })
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if std::env::var_os("XENCHAN_BENCH_KEEP").is_some() {
            eprintln!("xenchan-bench: network namespace {} kept", self.name);
            return;
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_with_a_veth_nic() {
        if let Some(why) = unavailable() {
            eprintln!("SKIP: {why}");
            return;
        }
        let name = format!("xcbt{}", std::process::id());
        let ns = NetNs::create(&name, "eth0", "00:16:3e:7e:57:01").unwrap();
        assert!(ns.path().exists());
        ip(&["-n", &name, "addr", "add", "192.0.2.5/24", "dev", "eth0"]).unwrap();
        assert_eq!(ns.addresses("eth0").unwrap(), vec!["192.0.2.5/24"]);
        drop(ns);
        assert!(!PathBuf::from("/run/netns").join(&name).exists());
    }
}
