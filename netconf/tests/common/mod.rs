//! Helpers shared by the integration tests: documents, fake guest roots, snapshots.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use xenchan_netconf::{ItemResult, ItemStatus};
use xenchan_protocol::GuestConfig;

pub mod tools;

pub const MAC0: &str = "00:16:3e:00:00:01";
pub const MAC1: &str = "00:16:3e:00:00:02";

/// Parses a document (validated like the agent does).
pub fn doc(json: &str) -> GuestConfig {
    GuestConfig::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("bad test document: {e}"))
}

/// Makes `<sysfs>/class/net/<name>/{address,ifindex,device}`.
pub fn fake_nic(sysfs: &Path, name: &str, mac: &str, index: u32) {
    let d = sysfs.join("class/net").join(name);
    fs::create_dir_all(d.join("device")).unwrap();
    fs::write(d.join("address"), format!("{mac}\n")).unwrap();
    fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
}

/// A guest root with two Xen NICs (enX0, enX1) in a fake sysfs beside it.
pub struct Guest {
    pub dir: tempfile::TempDir,
}

impl Guest {
    pub fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/etc")).unwrap();
        fake_nic(&dir.path().join("sys"), "lo", "00:00:00:00:00:00", 1);
        fake_nic(&dir.path().join("sys"), "enX0", MAC0, 2);
        fake_nic(&dir.path().join("sys"), "enX1", MAC1, 3);
        Guest { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }
}

/// Every regular file under `root` as (relative path, mode, content), sorted.
pub fn tree(root: &Path) -> Vec<(String, u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(base, &p, out);
            } else if meta.is_file() {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((
                    rel,
                    meta.permissions().mode() & 0o7777,
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Compares every file of ours (carrying the marker) under `root`, and its mode, with `tests/snapshots/<name>/`;
/// `UPDATE_SNAPSHOTS=1` rewrites the snapshot instead.
pub fn assert_snapshot(name: &str, root: &Path) {
    let snap = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    let marker = xenchan_netconf::MARKER.as_bytes();
    let got: Vec<_> = tree(root)
        .into_iter()
        .filter(|(_, _, c)| c.windows(marker.len()).any(|w| w == marker))
        .collect();
    let mut modes = String::new();
    for (p, m, _) in &got {
        let _ = writeln!(modes, "{m:04o} {p}");
    }
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        let _ = fs::remove_dir_all(&snap);
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("MODES"), &modes).unwrap();
        for (p, _, c) in &got {
            let dst = snap.join("files").join(p);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::write(dst, c).unwrap();
        }
        return;
    }
    let want_modes = fs::read_to_string(snap.join("MODES")).unwrap_or_else(|e| {
        panic!("snapshot {name} is missing ({e}); run with UPDATE_SNAPSHOTS=1 to create it")
    });
    assert_eq!(modes, want_modes, "snapshot {name}: files or modes differ");
    for (p, _, c) in &got {
        let want = fs::read(snap.join("files").join(p)).unwrap();
        assert!(
            *c == want,
            "snapshot {name}: {p} differs\n--- want\n{}\n--- got\n{}",
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(c)
        );
    }
}

/// The statuses of results, as `(item, status)` pairs.
pub fn statuses(results: &[ItemResult]) -> Vec<(String, ItemStatus)> {
    results.iter().map(|r| (r.item.clone(), r.status)).collect()
}

/// Panics with the reasons unless every result has `status`.
pub fn assert_all(results: &[ItemResult], status: ItemStatus) {
    for r in results {
        assert_eq!(r.status, status, "{}: {:?}", r.item, r.reason);
    }
}
