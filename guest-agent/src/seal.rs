//! `xenchan-agent seal`: makes a template image ready to be cloned (xen-pv-channel(7)
//! step 2, "sysprep"). Everything that must differ between clones, or must not leak
//! from the template into them, is cleared:
//!
//! - `/etc/machine-id` is emptied (systemd's first-boot convention: an empty file makes
//!   systemd generate a new id at boot; a missing one breaks read-only roots), and dbus's
//!   `/var/lib/dbus/machine-id` removed when it is a file (systemd would copy it back);
//! - ssh host keys are removed (the agent regenerates them at first boot and sends their
//!   fingerprints to dom0, see `host_keys`);
//! - the agent's applied state is removed (a clone is configured afresh);
//! - DHCP leases of dhclient, NetworkManager and systemd-networkd are removed (a clone
//!   would otherwise ask for the template's address);
//! - the random seeds are removed (clones must not share an entropy seed).
//!
//! The work is a fixed table ([`TARGETS`]) turned into a plan over what is found
//! ([`plan`]), then carried out; every target gets one line of report, also when there
//! was nothing to do.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::fsat;

/// What to do with the files of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Truncate to zero bytes (kept, so read-only roots and bind mounts still work).
    Empty,
    /// Remove.
    Remove,
}

/// One kind of thing to clear: the files in `dir` (relative to the root) whose name
/// `matches`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// What it is, for the report.
    pub what: &'static str,
    /// Folder relative to the guest root (`None`: the agent's state folder).
    pub dir: Option<&'static str>,
    /// Which names in it.
    pub matches: fn(&str) -> bool,
    /// What is done.
    pub action: Action,
}

fn machine_id(n: &str) -> bool {
    n == "machine-id"
}
fn host_key(n: &str) -> bool {
    n.starts_with("ssh_host_") && (n.ends_with("_key") || n.ends_with("_key.pub"))
}
fn state(n: &str) -> bool {
    n == crate::state::STATE_FILE
}
fn extension(n: &str) -> Option<&str> {
    Path::new(n).extension().and_then(OsStr::to_str)
}
fn dhclient_lease(n: &str) -> bool {
    matches!(extension(n), Some("leases" | "lease"))
}
fn nm_lease(n: &str) -> bool {
    extension(n) == Some("lease")
}
fn any(_: &str) -> bool {
    true
}
fn random_seed(n: &str) -> bool {
    n == "random-seed"
}

/// Everything `seal` clears, in report order.
pub const TARGETS: &[Target] = &[
    Target {
        what: "machine id",
        dir: Some("etc"),
        matches: machine_id,
        action: Action::Empty,
    },
    // dbus's own copy (a regular file on Debian installs where dbus came before
    // systemd's machine-id): systemd initialises an empty /etc/machine-id from it, so a
    // clone would get the template's id back. A symlink to /etc/machine-id is left.
    Target {
        what: "D-Bus machine id",
        dir: Some("var/lib/dbus"),
        matches: machine_id,
        action: Action::Remove,
    },
    Target {
        what: "ssh host keys",
        dir: Some("etc/ssh"),
        matches: host_key,
        action: Action::Remove,
    },
    Target {
        what: "agent applied state",
        dir: None,
        matches: state,
        action: Action::Remove,
    },
    Target {
        what: "dhclient leases",
        dir: Some("var/lib/dhcp"),
        matches: dhclient_lease,
        action: Action::Remove,
    },
    Target {
        what: "dhclient leases",
        dir: Some("var/lib/dhclient"),
        matches: dhclient_lease,
        action: Action::Remove,
    },
    Target {
        what: "NetworkManager leases",
        dir: Some("var/lib/NetworkManager"),
        matches: nm_lease,
        action: Action::Remove,
    },
    Target {
        what: "systemd-networkd leases",
        dir: Some("run/systemd/netif/leases"),
        matches: any,
        action: Action::Remove,
    },
    Target {
        what: "random seed",
        dir: Some("var/lib/systemd"),
        matches: random_seed,
        action: Action::Remove,
    },
    Target {
        what: "random seed",
        dir: Some("var/lib/urandom"),
        matches: random_seed,
        action: Action::Remove,
    },
];

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Act on this file.
    Clear {
        /// What it is.
        what: &'static str,
        /// The file, as shown (guest path).
        path: String,
        /// What is done.
        action: Action,
        /// Already in the wanted state (an empty machine-id).
        done: bool,
    },
    /// Nothing of this target exists.
    Absent {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        dir: String,
    },
}

/// A file found in a target folder: its name and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The plan for one target, from the regular files found in its folder.
pub fn plan(t: &Target, shown_dir: &str, found: &[Found]) -> Vec<Step> {
    let mut hits: Vec<&Found> = found.iter().filter(|f| (t.matches)(&f.name)).collect();
    hits.sort_by(|a, b| a.name.cmp(&b.name));
    if hits.is_empty() {
        return vec![Step::Absent {
            what: t.what,
            dir: shown_dir.to_string(),
        }];
    }
    hits.into_iter()
        .map(|f| Step::Clear {
            what: t.what,
            path: format!("{}/{}", shown_dir.trim_end_matches('/'), f.name),
            action: t.action,
            done: t.action == Action::Empty && f.size == 0,
        })
        .collect()
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Clear {
                what,
                path,
                action: Action::Empty,
                done: true,
            } => {
                write!(f, "{what}: {path} already empty")
            }
            Step::Clear {
                what,
                path,
                action: Action::Empty,
                ..
            } => write!(f, "{what}: emptied {path}"),
            Step::Clear {
                what,
                path,
                action: Action::Remove,
                ..
            } => write!(f, "{what}: removed {path}"),
            Step::Absent { what, dir } => write!(f, "{what}: none in {dir} (already absent)"),
        }
    }
}

/// A failure while sealing.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SealError {
    /// The file or folder.
    pub path: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Seals the guest at `root` (agent state in `state_dir`); returns one report line per
/// step, in order. Stops at the first failure (the lines so far are in the error's
/// context via `done`).
pub fn seal(root: &Path, state_dir: &Path, done: &mut Vec<String>) -> Result<(), SealError> {
    let root_dir = fsat::open_dir(root).map_err(|source| SealError {
        path: root.display().to_string(),
        source,
    })?;
    for t in TARGETS {
        let (dir, shown): (Option<std::fs::File>, String) = match t.dir {
            Some(rel) => (
                fsat::walk_dirs(&root_dir, Path::new(rel), None).ok(),
                format!("/{rel}"),
            ),
            None => (
                fsat::open_dir(state_dir).ok(),
                state_dir.display().to_string(),
            ),
        };
        let found = dir
            .as_ref()
            .map(list)
            .transpose()
            .map_err(|source| SealError {
                path: shown.clone(),
                source,
            })?;
        for step in plan(t, &shown, &found.unwrap_or_default()) {
            if let (
                Some(d),
                Step::Clear {
                    path,
                    action,
                    done: false,
                    ..
                },
            ) = (&dir, &step)
            {
                let name = PathBuf::from(path);
                let name = name.file_name().unwrap_or_default();
                carry_out(d, name, *action).map_err(|source| SealError {
                    path: path.clone(),
                    source,
                })?;
            }
            done.push(step.to_string());
        }
    }
    Ok(())
}

fn list(dir: &std::fs::File) -> std::io::Result<Vec<Found>> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let Ok(m) = e.metadata() else { continue };
        // Only regular files: a symlink named like a lease is not followed anywhere.
        if m.file_type().is_file() {
            out.push(Found {
                name: e.file_name().to_string_lossy().into_owned(),
                size: m.len(),
            });
        }
    }
    Ok(out)
}

fn carry_out(dir: &std::fs::File, name: &OsStr, action: Action) -> std::io::Result<()> {
    match action {
        Action::Remove => fsat::unlink_at(dir, name),
        Action::Empty => {
            let f = fsat::open_at(
                dir,
                name,
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_TRUNC,
                0,
            )?;
            f.sync_all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(names: &[(&str, u64)]) -> Vec<Found> {
        names
            .iter()
            .map(|(n, s)| Found {
                name: (*n).into(),
                size: *s,
            })
            .collect()
    }

    #[test]
    fn plans() {
        let by = |what: &str| *TARGETS.iter().find(|t| t.what == what).unwrap();
        let keys = by("ssh host keys");
        let steps = plan(
            &keys,
            "/etc/ssh",
            &found(&[
                ("sshd_config", 10),
                ("ssh_host_ed25519_key.pub", 1),
                ("ssh_host_ed25519_key", 1),
                ("moduli", 1),
            ]),
        );
        let lines: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "ssh host keys: removed /etc/ssh/ssh_host_ed25519_key",
                "ssh host keys: removed /etc/ssh/ssh_host_ed25519_key.pub"
            ]
        );
        let dbus = by("D-Bus machine id");
        assert_eq!(
            plan(&dbus, "/var/lib/dbus", &found(&[("machine-id", 33)]))[0].to_string(),
            "D-Bus machine id: removed /var/lib/dbus/machine-id"
        );
        let mid = by("machine id");
        assert_eq!(
            plan(&mid, "/etc", &found(&[("machine-id", 33)]))[0].to_string(),
            "machine id: emptied /etc/machine-id"
        );
        assert_eq!(
            plan(&mid, "/etc", &found(&[("machine-id", 0)]))[0].to_string(),
            "machine id: /etc/machine-id already empty"
        );
        assert_eq!(
            plan(&mid, "/etc", &[])[0].to_string(),
            "machine id: none in /etc (already absent)"
        );
    }
}
