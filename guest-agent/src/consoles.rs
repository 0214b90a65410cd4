//! `xenchan-agent consoles`: what udev knows about Xen console devices and hvc ttys, and
//! which channel links point at them. For diagnosis only.
//!
//! This is where libudev is the right tool: it enumerates devices with their properties
//! the way udev rules see them (DRIVER, MODALIAS, ID_MM_* flags from our rules). The agent
//! itself does not use it to find its device (see docs/AGENT.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// A Xen console device (`SUBSYSTEM=xen`, `console-N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenConsole {
    /// `console-N`.
    pub sysname: String,
    /// The device path (`/devices/console-1`).
    pub devpath: String,
    /// The xenstore node (`device/console/1`), from sysfs `nodename`.
    pub nodename: Option<String>,
    /// The bound driver (`xenconsole`).
    pub driver: Option<String>,
}

/// An hvc tty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvcTty {
    /// `hvcN`.
    pub sysname: String,
    /// Its device node.
    pub devnode: Option<PathBuf>,
    /// Whether our rule told ModemManager to keep away.
    pub mm_ignored: bool,
    /// Channel links (in the channel folder) that lead to this tty.
    pub links: Vec<String>,
}

fn s(v: Option<&std::ffi::OsStr>) -> Option<String> {
    v.map(|v| v.to_string_lossy().into_owned())
}

/// Enumerates Xen consoles and hvc ttys from udev.
pub fn enumerate(channel_dir: &Path) -> io::Result<(Vec<XenConsole>, Vec<HvcTty>)> {
    let mut xen = udev::Enumerator::new()?;
    xen.match_subsystem("xen")?;
    xen.match_sysname("console-*")?;
    let mut consoles: Vec<XenConsole> = xen
        .scan_devices()?
        .map(|d| XenConsole {
            sysname: d.sysname().to_string_lossy().into_owned(),
            devpath: d.devpath().to_string_lossy().into_owned(),
            nodename: s(d.attribute_value("nodename")).map(|n| n.trim().to_string()),
            driver: s(d.driver()),
        })
        .collect();
    consoles.sort_by(|a, b| a.sysname.cmp(&b.sysname));

    let links = channel_links(channel_dir);
    let mut tty = udev::Enumerator::new()?;
    tty.match_subsystem("tty")?;
    tty.match_sysname("hvc*")?;
    let mut ttys: Vec<HvcTty> = tty
        .scan_devices()?
        .map(|d| {
            let devnode = d.devnode().map(Path::to_path_buf);
            let target = devnode.as_ref().and_then(|p| std::fs::canonicalize(p).ok());
            HvcTty {
                sysname: d.sysname().to_string_lossy().into_owned(),
                mm_ignored: d
                    .property_value("ID_MM_DEVICE_IGNORE")
                    .is_some_and(|v| v == "1"),
                links: target
                    .and_then(|t| links.get(&t).cloned())
                    .unwrap_or_default(),
                devnode,
            }
        })
        .collect();
    ttys.sort_by_key(|t| (t.sysname.len(), t.sysname.clone()));
    Ok((consoles, ttys))
}

/// Channel links in `dir`, by the canonical device they lead to.
fn channel_links(dir: &Path) -> BTreeMap<PathBuf, Vec<String>> {
    let mut map: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok).take(4096) {
            if let Ok(t) = std::fs::canonicalize(e.path()) {
                map.entry(t)
                    .or_default()
                    .push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    map
}

/// The enumeration as a human-readable report.
pub fn list(channel_dir: &Path) -> io::Result<String> {
    let (consoles, ttys) = enumerate(channel_dir)?;
    let mut out = String::new();
    let _ = writeln!(out, "Xen console devices (SUBSYSTEM=xen):");
    if consoles.is_empty() {
        let _ = writeln!(out, "  none (not a Xen guest, or no channels configured)");
    }
    for c in &consoles {
        let _ = writeln!(
            out,
            "  {:<12} {:<22} nodename={} driver={}",
            c.sysname,
            c.devpath,
            c.nodename.as_deref().unwrap_or("-"),
            c.driver.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "hvc ttys (channel links in {}):",
        channel_dir.display()
    );
    if ttys.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for t in &ttys {
        let _ = writeln!(
            out,
            "  {:<8} {:<12} modem-probers={} links={}",
            t.sysname,
            t.devnode
                .as_ref()
                .map_or_else(|| "-".to_string(), |p| p.display().to_string()),
            if t.mm_ignored { "ignored" } else { "ALLOWED" },
            if t.links.is_empty() {
                "-".to_string()
            } else {
                t.links.join(",")
            },
        );
    }
    Ok(out)
}
