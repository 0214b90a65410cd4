//! The network managers' own parsers, unpacked by `scripts/net-tools.sh` (not installed):
//! `netplan generate`, `nmcli --offline`, `ifup --no-act`. Each check returns what the
//! manager said when it refuses our output.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The unpacked tools, or why they are not there (the caller prints `SKIP:` with it).
pub struct Tools {
    root: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools, String> {
        let root = std::env::var_os("XENCHAN_NET_TOOLS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/net"),
            PathBuf::from,
        );
        let t = Tools { root };
        for bin in ["usr/bin/nmcli", "usr/libexec/netplan/generate", "sbin/ifup"] {
            if !t.root.join(bin).exists() {
                return Err(format!(
                    "the network managers' parsers are not unpacked ({} missing): run scripts/net-tools.sh",
                    t.root.join(bin).display()
                ));
            }
        }
        Ok(t)
    }

    fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(self.root.join(bin));
        c.env("LD_LIBRARY_PATH", self.lib());
        c
    }

    fn lib(&self) -> PathBuf {
        let multiarch = std::fs::read_dir(self.root.join("usr/lib"))
            .ok()
            .and_then(|rd| {
                rd.filter_map(Result::ok)
                    .find(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
            })
            .map(|e| e.path());
        multiarch.unwrap_or_else(|| self.root.join("usr/lib"))
    }

    /// The folder, laid out like a root (for `NetOptions::tools`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a tool (for running it under `ip netns exec`).
    pub fn bin(&self, bin: &str) -> PathBuf {
        self.root.join(bin)
    }

    /// `LD_LIBRARY_PATH` for [`Tools::bin`].
    pub fn ld_path(&self) -> PathBuf {
        self.lib()
    }

    /// NetworkManager's keyfile reader: `nmcli --offline connection modify` reads the
    /// profile on stdin, validates it like NetworkManager does when loading it, and prints
    /// it back normalised.
    pub fn nmcli_check(&self, keyfile: &Path) -> Result<String, String> {
        let input = std::fs::read(keyfile).unwrap();
        let mut child = self
            .cmd("usr/bin/nmcli")
            .args(["--offline", "connection", "modify"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nmcli: {e}"))?;
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "nmcli refused {}: {}",
                keyfile.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// netplan's parser and generator over a guest root: writes the backend's files under
    /// `<root>/run`.
    pub fn netplan_generate(&self, root: &Path) -> Result<(), String> {
        let out = self
            .cmd("usr/libexec/netplan/generate")
            .arg("--root-dir")
            .arg(root)
            .output()
            .map_err(|e| format!("cannot run netplan generate: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !stderr.contains("Error") {
            Ok(())
        } else {
            Err(format!("netplan generate refused: {}", stderr.trim()))
        }
    }

    /// ifupdown's parser: `ifup --no-act` over one file, for one interface; returns the
    /// commands it would run.
    pub fn ifup_no_act(&self, file: &Path, name: &str) -> Result<String, String> {
        let state = tempfile::tempdir().unwrap();
        let out = self
            .cmd("sbin/ifup")
            .args(["--no-act", "--no-scripts", "-i"])
            .arg(file)
            .arg("--state-dir")
            .arg(state.path())
            .arg(name)
            .output()
            .map_err(|e| format!("cannot run ifup: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ifup --no-act refused {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// `key=value` lines per section of a keyfile, as a sorted set (comments and blank lines
/// dropped), to compare ours with what nmcli read back.
pub fn keyfile_entries(text: &str) -> std::collections::BTreeSet<String> {
    let mut section = String::new();
    let mut out = std::collections::BTreeSet::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('[') {
            section = l.to_string();
        } else {
            out.insert(format!("{section}{l}"));
        }
    }
    out
}
