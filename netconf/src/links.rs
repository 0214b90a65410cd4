//! The guest's network interfaces, and choosing one by MAC.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// At most this many interfaces are looked at (a guest has a handful).
const MAX_LINKS: usize = 4096;

/// A network interface as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Kernel name (`eth0`, `enX0`).
    pub name: String,
    /// MAC, lowercase and colon-separated (empty if the link has none).
    pub mac: String,
    /// Interface index.
    pub index: u32,
    /// Backed by a device (sysfs `device` link) or not a stacked kind (vlan, bridge,
    /// bond...) that inherits its lower device's MAC.
    pub physical: bool,
}

/// The interfaces could not be listed.
#[derive(Debug, Error)]
pub enum LinkError {
    /// sysfs could not be read.
    #[error("cannot list interfaces in {}", path.display())]
    Sysfs {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// rtnetlink failed.
    #[error("cannot list interfaces over rtnetlink")]
    Netlink(#[source] io::Error),
}

fn read_small(p: &Path) -> io::Result<String> {
    let mut s = String::new();
    fs::File::open(p)?.take(4096).read_to_string(&mut s)?;
    Ok(s.trim().to_string())
}

/// Lists interfaces from `<sysfs>/class/net`.
pub fn links_from_sysfs(sysfs: &Path) -> Result<Vec<Link>, LinkError> {
    let dir = sysfs.join("class/net");
    let err = |source| LinkError::Sysfs {
        path: dir.clone(),
        source,
    };
    let mut links = Vec::new();
    for entry in fs::read_dir(&dir).map_err(err)?.take(MAX_LINKS) {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        // Entries without a readable address are not interfaces we can match.
        let Ok(mac) = read_small(&p.join("address")) else {
            continue;
        };
        let index = read_small(&p.join("ifindex"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let physical = fs::symlink_metadata(p.join("device")).is_ok();
        links.push(Link {
            name,
            mac: mac.to_ascii_lowercase(),
            index,
            physical,
        });
    }
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(links)
}

/// The interface with `mac`: the only one, or the only physical one when stacked
/// interfaces (vlan, bridge) share it. The error names the MAC and what the guest has.
pub(crate) fn find_by_mac<'a>(links: &'a [Link], mac: &str) -> Result<&'a Link, String> {
    let all: Vec<&Link> = links.iter().filter(|l| l.mac == mac).collect();
    let physical: Vec<&Link> = all.iter().copied().filter(|l| l.physical).collect();
    match (all.as_slice(), physical.as_slice()) {
        ([one], _) | (_, [one]) => Ok(one),
        ([], _) => {
            let have: Vec<String> = links
                .iter()
                .filter(|l| !l.mac.is_empty() && l.mac != "00:00:00:00:00:00")
                .map(|l| format!("{} {}", l.name, l.mac))
                .collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            Err(format!(
                "no interface with MAC {mac} in this guest (interfaces: {have})"
            ))
        }
        (many, _) => Err(format!(
            "MAC {mac} is shared by several interfaces ({}) and none stands out as the device",
            many.iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_link(sysfs: &Path, name: &str, mac: &str, index: u32, device: bool) {
        let d = sysfs.join("class/net").join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("address"), format!("{mac}\n")).unwrap();
        fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
        if device {
            fs::create_dir_all(d.join("device")).unwrap();
        }
    }

    #[test]
    fn finds_by_mac_and_explains_misses() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        fake_link(s, "lo", "00:00:00:00:00:00", 1, false);
        fake_link(s, "enX0", "00:16:3E:00:00:01", 2, true);
        fake_link(s, "enX0.10", "00:16:3e:00:00:01", 3, false);
        fake_link(s, "enX1", "00:16:3e:00:00:02", 4, true);
        let links = links_from_sysfs(s).unwrap();
        assert_eq!(links.len(), 4);
        let l = find_by_mac(&links, "00:16:3e:00:00:01").unwrap();
        assert_eq!((l.name.as_str(), l.index), ("enX0", 2));
        assert_eq!(
            find_by_mac(&links, "00:16:3e:00:00:02").unwrap().name,
            "enX1"
        );
        let miss = find_by_mac(&links, "00:16:3e:00:00:09").unwrap_err();
        assert!(
            miss.contains("no interface with MAC 00:16:3e:00:00:09"),
            "{miss}"
        );
        assert!(miss.contains("enX1 00:16:3e:00:00:02"), "{miss}");
        assert!(!miss.contains("lo "), "{miss}");

        fake_link(s, "enX2", "00:16:3e:00:00:03", 5, true);
        fake_link(s, "enX3", "00:16:3e:00:00:03", 6, true);
        let links = links_from_sysfs(s).unwrap();
        let amb = find_by_mac(&links, "00:16:3e:00:00:03").unwrap_err();
        assert!(amb.contains("enX2, enX3"), "{amb}");
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = links_from_sysfs(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("cannot list interfaces in"), "{e}");
    }
}
