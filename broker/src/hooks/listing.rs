//! The hooks folder's executables, listed again only when the folder may have changed.
//!
//! Every PUT and every session event asks which hooks are installed; reading the folder
//! each time (open, two `getdents`, a `stat` per entry) was about 6% of the broker's CPU
//! at 10,000 domains with no hook installed. The listing is kept with the folder's
//! stamp (inode, mtime, ctime) and the stamp of every candidate entry, and used again
//! while all of them are unchanged: one `stat` for an empty folder, one more per file.
//!
//! File timestamps come from a coarse clock, so two changes within one tick can leave a
//! stamp as it was. A listing is therefore kept only when every stamp it rests on is
//! older than [`SETTLED`]: a change after that gets a later timestamp, which differs.

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How old a stamp must be before a listing resting on it is kept.
const SETTLED: Duration = Duration::from_secs(2);

/// When a file last changed, as far as a listing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether both times are at least [`SETTLED`] before `now`.
    fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let newest = self.mtime.max(self.ctime);
        let Ok(secs) = u64::try_from(newest.0) else {
            return true; // before 1970: long settled
        };
        let at = Duration::new(secs, u32::try_from(newest.1).unwrap_or(0));
        now.checked_sub(at).is_some_and(|age| age >= SETTLED)
    }
}

/// A listing and the stamps it rests on.
#[derive(Debug)]
struct Kept {
    dir: Stamp,
    /// Every candidate entry (not skipped by name), with its stamp (`None`: `stat`
    /// failed, e.g. a dangling symlink).
    entries: Vec<(PathBuf, Option<Stamp>)>,
    hooks: Vec<PathBuf>,
}

/// The hooks of one folder.
#[derive(Debug)]
pub(super) struct Listing {
    dir: PathBuf,
    kept: Mutex<Option<Kept>>,
}

impl Listing {
    pub(super) fn new(dir: PathBuf) -> Listing {
        Listing {
            dir,
            kept: Mutex::new(None),
        }
    }

    /// Executable regular files in the folder (symlinks followed), sorted, skipping
    /// hidden files, editor backups and package-manager leftovers. A missing folder has
    /// none.
    pub(super) fn list(&self) -> Vec<PathBuf> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(meta) = std::fs::metadata(&self.dir) else {
            *kept = None;
            return Vec::new();
        };
        let dir = Stamp::of(&meta);
        if let Some(k) = kept.as_ref()
            && k.dir == dir
            && k.entries.iter().all(|(p, s)| stamp_of(p) == *s)
        {
            return k.hooks.clone();
        }
        let (entries, hooks) = read(&self.dir);
        let now = SystemTime::now();
        let settled = dir.settled(now)
            && entries
                .iter()
                .all(|(_, s)| s.is_none_or(|s| s.settled(now)));
        *kept = settled.then(|| Kept {
            dir,
            entries,
            hooks: hooks.clone(),
        });
        hooks
    }
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
}

/// Whether a file named `name` is never a hook.
fn skipped(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.contains(".dpkg-")
        || name.ends_with(".rpmnew")
        || name.ends_with(".rpmsave")
}

/// The candidate entries of `dir` with their stamps, and the hooks among them (sorted).
fn read(dir: &Path) -> (Vec<(PathBuf, Option<Stamp>)>, Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut candidates = Vec::new();
    let mut hooks = Vec::new();
    for e in entries.filter_map(Result::ok) {
        if skipped(&e.file_name().to_string_lossy()) {
            continue;
        }
        let path = e.path();
        let meta = std::fs::metadata(&path).ok();
        if meta
            .as_ref()
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            hooks.push(path.clone());
        }
        candidates.push((path, meta.as_ref().map(Stamp::of)));
    }
    hooks.sort();
    (candidates, hooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn every_change_is_seen_whether_or_not_the_listing_was_kept() {
        let d = tempfile::tempdir().unwrap();
        let hooks = d.path().join("hooks");
        let l = Listing::new(hooks.clone());
        assert!(l.list().is_empty(), "no folder");
        fs::create_dir(&hooks).unwrap();
        assert!(l.list().is_empty());
        let a = hooks.join("10-a");
        fs::write(&a, "#!/bin/sh\n").unwrap();
        assert!(l.list().is_empty(), "not executable");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            l.list(),
            vec![a.clone()],
            "made executable: only its ctime changed"
        );
        fs::write(hooks.join(".hidden"), "").unwrap();
        fs::write(hooks.join("10-a~"), "").unwrap();
        assert_eq!(l.list(), vec![a.clone()]);
        fs::remove_file(&a).unwrap();
        assert!(l.list().is_empty(), "removed");
    }

    #[test]
    fn a_settled_listing_is_kept_and_still_sees_changes() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("10-a");
        fs::write(&a, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
        let l = Listing::new(d.path().to_path_buf());
        // ctime cannot be set back: a fresh listing is not kept.
        assert_eq!(l.list(), vec![a.clone()]);
        assert!(l.kept.lock().unwrap().is_none(), "stamps are too recent");
        // With stamps old enough (as seen by a clock 3 s ahead), it is.
        let kept = |now: SystemTime| {
            let (entries, _) = read(d.path());
            Stamp::of(&fs::metadata(d.path()).unwrap()).settled(now)
                && entries.iter().all(|(_, s)| s.unwrap().settled(now))
        };
        assert!(!kept(SystemTime::now()));
        assert!(kept(SystemTime::now() + Duration::from_secs(3)));
        // A kept listing answers without reading the folder, and sees a change.
        *l.kept.lock().unwrap() = Some(Kept {
            dir: Stamp::of(&fs::metadata(d.path()).unwrap()),
            entries: read(d.path()).0,
            hooks: vec![a.clone()],
        });
        assert_eq!(l.list(), vec![a.clone()]);
        assert!(l.kept.lock().unwrap().is_some());
        fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(l.list().is_empty(), "chmod -x changed the hook's ctime");
        let b = d.path().join("20-b");
        fs::write(&b, "").unwrap();
        fs::set_permissions(&b, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(l.list(), vec![b], "a new file changed the folder's mtime");
    }
}
