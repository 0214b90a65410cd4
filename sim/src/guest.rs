//! A simulated guest's filesystem root (docs/SIMULATOR.md, "xenstore, hotplug, guest root").
//!
//! The root outlives reboots like a disk does; `dev/` is made fresh at each boot like a
//! devtmpfs, with `dev/hvc1` pointing at the boot's pty slave.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The frontend device number of the first channel (`device/console/1`).
pub const CHANNEL_DEVID: u32 = 1;

/// What the guest root says about the machine.
#[derive(Debug, Clone)]
pub struct GuestIdentity {
    /// What `sys/hypervisor/uuid` says (the VM's UUID on a real guest).
    pub uuid: String,
    /// MAC of the guest's `eth0` (Xen's 00:16:3e prefix).
    pub mac: String,
    /// The uid and gid the `cloud` user gets (the simulator's own, so no root is needed).
    pub cloud_uid: u32,
    /// See `cloud_uid`.
    pub cloud_gid: u32,
}

/// A guest root folder.
#[derive(Debug, Clone)]
pub struct GuestRoot {
    path: PathBuf,
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

impl GuestRoot {
    /// Makes a fresh root at `path` (which must not exist or be empty).
    pub fn create(path: impl Into<PathBuf>, id: &GuestIdentity) -> io::Result<GuestRoot> {
        let path = path.into();
        std::fs::create_dir_all(&path)?;
        let r = GuestRoot { path };
        let uid = id.cloud_uid;
        let gid = id.cloud_gid;
        write(
            &r.join("etc/passwd"),
            &format!(
                "root:x:0:0:root:/root:/bin/sh\n\
                 daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                 cloud:x:{uid}:{gid}:Cloud user:/home/cloud:/bin/sh\n"
            ),
        )?;
        write(
            &r.join("etc/group"),
            &format!("root:x:0:\ndaemon:x:1:\ncloud:x:{gid}:\n"),
        )?;
        write(&r.join("etc/hostname"), "localhost\n")?;
        write(
            &r.join("etc/hosts"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        )?;
        write(
            &r.join("etc/os-release"),
            "PRETTY_NAME=\"xenchan-sim guest\"\nNAME=\"xenchan-sim\"\nID=xenchan-sim\n",
        )?;
        write(&r.join("proc/sys/kernel/osrelease"), "6.1.0-xenchan-sim\n")?;
        write(&r.join("sys/hypervisor/uuid"), &format!("{}\n", id.uuid))?;
        write(
            &r.join(format!("sys/devices/console-{CHANNEL_DEVID}/nodename")),
            &format!("device/console/{CHANNEL_DEVID}\n"),
        )?;
        write(
            &r.join("sys/class/net/eth0/address"),
            &format!("{}\n", id.mac),
        )?;
        write(&r.join("sys/class/net/eth0/mtu"), "1500\n")?;
        write(&r.join("sys/class/net/eth0/flags"), "0x1003\n")?;
        write(&r.join("sys/class/net/lo/address"), "00:00:00:00:00:00\n")?;
        for dir in ["home/cloud", "root", "var/lib/xenchan-agent", "dev"] {
            std::fs::create_dir_all(r.join(dir))?;
        }
        std::fs::set_permissions(r.join("home/cloud"), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(r.join("root"), std::fs::Permissions::from_mode(0o700))?;
        Ok(r)
    }

    /// The root folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<root>/<rel>`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// `<root>/dev`.
    pub fn dev(&self) -> PathBuf {
        self.join("dev")
    }

    /// `<root>/sys`.
    pub fn sysfs(&self) -> PathBuf {
        self.join("sys")
    }

    /// `<root>/dev/xen-channel`, where `xen-console-setup` makes its links.
    pub fn channel_dir(&self) -> PathBuf {
        self.join("dev/xen-channel")
    }

    /// `<root>/dev/hvc<devid>`.
    pub fn hvc(&self) -> PathBuf {
        self.join(format!("dev/hvc{CHANNEL_DEVID}"))
    }

    /// The agent's state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.join("var/lib/xenchan-agent")
    }

    /// Replaces the VM UUID the guest sees (a cloned disk, a wrong guest).
    pub fn set_uuid(&self, uuid: &str) -> io::Result<()> {
        write(&self.join("sys/hypervisor/uuid"), &format!("{uuid}\n"))
    }

    /// A fresh `dev/` for a new boot: only `hvc1`, pointing at the boot's pty slave.
    pub fn new_boot(&self, pty_slave: &Path) -> io::Result<()> {
        let dev = self.dev();
        match std::fs::remove_dir_all(&dev) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&dev)?;
        std::os::unix::fs::symlink(pty_slave, self.hvc())
    }
}

/// A random version-4 UUID, lowercase.
pub fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The MAC of simulated domain number `n`: Xen's `00:16:3e` prefix.
pub fn mac_for(n: u32) -> String {
    let b = n.to_be_bytes();
    format!("00:16:3e:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}
