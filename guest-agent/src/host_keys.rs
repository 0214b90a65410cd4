//! The guest's ssh host keys as facts: on the first boot after `xenchan-agent seal`
//! (no host keys), they are made with `ssh-keygen -A` (with the guest root as prefix),
//! and their public halves and SHA256 fingerprints go to dom0, so the orchestrator's
//! first ssh checks the key instead of trusting it on first use.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use ssh_key::{HashAlg, PublicKey};
use tracing::{info, warn};
use xenchan_protocol::message::HostKeyFacts;

use crate::apply::command;
use crate::fsat;

/// At most this many keys are reported.
const MAX_KEYS: usize = 16;
/// A public key file is small.
const PUB_LIMIT: u64 = 16 * 1024;

fn is_private_key(name: &str) -> bool {
    name.starts_with("ssh_host_") && name.ends_with("_key")
}

fn names(dir: &std::fs::File) -> Vec<String> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
    let mut out: Vec<String> = std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The key type made first, alone: ed25519 takes milliseconds even under an emulator.
const FIRST_TYPE: &str = "ed25519";
/// `ssh-keygen -A` for the other types: RSA 3072 takes seconds on hardware and was
/// measured over 20 s under QEMU's TCG on a busy host. Nobody waits for it.
const REST_DEADLINE: Duration = Duration::from_secs(300);

/// The `etc/ssh` folder of `root` when sshd is installed there (`sshd_config`) and has no
/// host key at all (the first boot after `xenchan-agent seal`).
fn keyless_sshd(root: &Path) -> bool {
    let Ok(r) = fsat::open_dir(root) else {
        return false;
    };
    let Ok(ssh) = fsat::walk_dirs(&r, Path::new("etc/ssh"), None) else {
        return false;
    };
    let sshd = fsat::lstat_at(&ssh, OsStr::new("sshd_config"))
        .ok()
        .flatten()
        .is_some();
    sshd && !names(&ssh).iter().any(|n| is_private_key(n))
}

fn keygen() -> Option<std::path::PathBuf> {
    let k = command::find_tool("ssh-keygen");
    if k.is_none() {
        warn!("no ssh host keys and no ssh-keygen to make them");
    }
    k
}

/// First boot after sealing: makes the ed25519 host key alone (fast) and returns true,
/// so the caller can let sshd start at once and make the other types with
/// [`ensure_rest`] in the background. False (nothing made) when sshd is not installed
/// or has a host key already.
pub fn ensure_first(root: &Path) -> bool {
    if !keyless_sshd(root) {
        return false;
    }
    let Some(keygen) = keygen() else { return false };
    let file = root.join(format!("etc/ssh/ssh_host_{FIRST_TYPE}_key"));
    let file = file.to_string_lossy();
    let args = ["-q", "-t", FIRST_TYPE, "-N", "", "-C", "", "-f", &file];
    match command::run(&keygen, &args, command::TOOL_DEADLINE) {
        Ok(()) => {
            info!(
                key = FIRST_TYPE,
                "made a new ssh host key (first boot after sealing)"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "cannot make the ssh host key");
            false
        }
    }
}

/// Makes the host key types still missing (`ssh-keygen -A`, which skips existing ones).
pub fn ensure_rest(root: &Path) {
    let Some(keygen) = keygen() else { return };
    let root_arg = root.to_string_lossy();
    let args: Vec<&str> = if crate::options::is_root_path(root) {
        vec!["-A"]
    } else {
        vec!["-A", "-f", &root_arg]
    };
    match command::run(&keygen, &args, REST_DEADLINE) {
        Ok(()) => info!("made the other ssh host keys (first boot after sealing)"),
        Err(e) => warn!(error = %e, "cannot make ssh host keys"),
    }
}

/// Makes the host keys when sshd is installed (`/etc/ssh/sshd_config`) and none exists.
pub fn ensure(root: &Path) {
    if ensure_first(root) {
        ensure_rest(root);
    }
}

/// Parses one `.pub` line into the fact.
pub fn fact(line: &str) -> Option<HostKeyFacts> {
    let key = PublicKey::from_openssh(line.trim()).ok()?;
    let bare = PublicKey::new(key.key_data().clone(), "");
    Some(HostKeyFacts {
        key: bare.to_openssh().ok()?.trim().to_string(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// The host keys of the guest at `root` (made first when missing).
pub fn gather(root: &Path) -> Vec<HostKeyFacts> {
    ensure(root);
    let Ok(r) = fsat::open_dir(root) else {
        return Vec::new();
    };
    let Ok(ssh) = fsat::walk_dirs(&r, Path::new("etc/ssh"), None) else {
        return Vec::new();
    };
    names(&ssh)
        .into_iter()
        .filter(|n| n.strip_suffix(".pub").is_some_and(is_private_key))
        .filter_map(|n| {
            let bytes = fsat::read_file_at(&ssh, OsStr::new(&n), PUB_LIMIT).ok()??;
            fact(&String::from_utf8_lossy(&bytes))
        })
        .take(MAX_KEYS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_reported_with_fingerprints() {
        if command::find_tool("ssh-keygen").is_none() {
            eprintln!("skipped: ssh-keygen (openssh-client) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(gather(dir.path()).is_empty(), "no /etc/ssh: nothing made");
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        std::fs::write(dir.path().join("etc/ssh/sshd_config"), "").unwrap();
        let keys = gather(dir.path());
        assert!(
            keys.iter().any(|k| k.key.starts_with("ssh-ed25519 ")),
            "{keys:?}"
        );
        assert!(keys.iter().all(|k| k.fingerprint.starts_with("SHA256:")));
        // The fingerprint is the one ssh-keygen -l prints.
        let pubfile = dir.path().join("etc/ssh/ssh_host_ed25519_key.pub");
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&pubfile)
            .output()
            .unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        let ed = keys
            .iter()
            .find(|k| k.key.starts_with("ssh-ed25519 "))
            .unwrap();
        assert!(printed.contains(&ed.fingerprint), "{printed} vs {ed:?}");
        // A second gather makes nothing new.
        let again = gather(dir.path());
        assert_eq!(again, keys);
    }

    #[test]
    fn first_boot_makes_ed25519_alone_then_the_rest() {
        if command::find_tool("ssh-keygen").is_none() {
            eprintln!("skipped: ssh-keygen (openssh-client) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(!ensure_first(dir.path()), "no sshd_config: nothing made");
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        std::fs::write(dir.path().join("etc/ssh/sshd_config"), "").unwrap();
        assert!(ensure_first(dir.path()));
        let ssh = dir.path().join("etc/ssh");
        let made = |t: &str| ssh.join(format!("ssh_host_{t}_key")).is_file();
        assert!(made("ed25519") && !made("rsa") && !made("ecdsa"));
        // sshd can load it: `sshd -t` would; ssh-keygen -y derives the public half.
        let out = std::process::Command::new("ssh-keygen")
            .arg("-yf")
            .arg(ssh.join("ssh_host_ed25519_key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!ensure_first(dir.path()), "a key exists: nothing more made");
        ensure_rest(dir.path());
        assert!(made("rsa") && made("ecdsa"));
        let keys = gather(dir.path());
        assert_eq!(keys.len(), 3, "{keys:?}");
    }
}
