//! The guest's ssh host keys as facts: on the first boot after `xenchan-agent seal`
//! (no host keys), they are made with `ssh-keygen -A` (with the guest root as prefix),
//! and their public halves and SHA256 fingerprints go to dom0, so the orchestrator's
//! first ssh checks the key instead of trusting it on first use.

use std::ffi::OsStr;
use std::path::Path;

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

/// Makes the host keys when sshd is installed (`/etc/ssh/sshd_config`) and none exists.
pub fn ensure(root: &Path) {
    let Ok(r) = fsat::open_dir(root) else { return };
    let Ok(ssh) = fsat::walk_dirs(&r, Path::new("etc/ssh"), None) else {
        return;
    };
    let sshd = fsat::lstat_at(&ssh, OsStr::new("sshd_config"))
        .ok()
        .flatten()
        .is_some();
    if !sshd || names(&ssh).iter().any(|n| is_private_key(n)) {
        return;
    }
    let Some(keygen) = command::find_tool("ssh-keygen") else {
        warn!("no ssh host keys and no ssh-keygen to make them");
        return;
    };
    let root_arg = root.to_string_lossy();
    let args: Vec<&str> = if crate::options::is_root_path(root) {
        vec!["-A"]
    } else {
        vec!["-A", "-f", &root_arg]
    };
    match command::run(&keygen, &args, command::TOOL_DEADLINE) {
        Ok(()) => info!("made new ssh host keys (first boot after sealing)"),
        Err(e) => warn!(error = %e, "cannot make ssh host keys"),
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
}
