//! Reading `<root>/etc/passwd` and, when the document asks for it, creating a user the
//! way `useradd` would: locked password, a fresh uid/gid of at least 1000, a primary
//! group of the same name, a home folder.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fsat::{self, Owner, PwdLock};

/// passwd, group and shadow files bigger than this are refused.
const ACCOUNT_FILE_LIMIT: u64 = 16 * 1024 * 1024;
/// First and last uid/gid handed out (Debian's `FIRST_UID`/`LAST_UID`).
const FIRST_ID: u32 = 1000;
const LAST_ID: u32 = 59999;

/// One line of passwd(5), the fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_string(),
    })
}

fn read_etc(etc: &File, name: &str) -> Result<Option<String>, String> {
    let bytes = fsat::read_file_at(etc, OsStr::new(name), ACCOUNT_FILE_LIMIT)
        .map_err(|e| format!("/etc/{name}: {}", fsat::describe(&e)))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn find<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find(|l| l.split(':').next() == Some(name))
}

/// Looks `name` up in `/etc/passwd`.
pub(crate) fn lookup(etc: &File, name: &str) -> Result<Option<PasswdEntry>, String> {
    let text = read_etc(etc, "passwd")?.unwrap_or_default();
    Ok(find(&text, name).and_then(parse_passwd_line))
}

/// Looks group `name` up in `/etc/group`; its gid.
pub(crate) fn lookup_group(etc: &File, name: &str) -> Result<Option<u32>, String> {
    let text = read_etc(etc, "group")?.unwrap_or_default();
    Ok(find(&text, name).and_then(|l| l.split(':').nth(2)?.parse().ok()))
}

/// Appends `line` to `/etc/<file>` atomically unless a line for `name` is already there.
/// A missing file is created with `default_owner`.
fn append_entry(
    etc: &File,
    file: &str,
    name: &str,
    line: &str,
    default_owner: Owner,
) -> Result<(), String> {
    let os = OsStr::new(file);
    let old = read_etc(etc, file)?;
    if old.as_deref().is_some_and(|t| find(t, name).is_some()) {
        return Ok(());
    }
    let owner = match fsat::lstat_at(etc, os) {
        Ok(Some(st)) => Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
        Ok(None) => default_owner,
        Err(e) => return Err(format!("/etc/{file}: {}", fsat::describe(&e))),
    };
    let mut text = old.unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    fsat::write_atomic_at(etc, os, text.as_bytes(), owner)
        .map_err(|e| format!("cannot write /etc/{file}: {e}"))
}

fn ids(text: &str, field: usize) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect()
}

/// Creates user `name` (if it does not exist by now) under the lock `useradd` uses.
/// Files are written group, gshadow, shadow, passwd, home: passwd last, so that a user
/// that exists is complete, and every step skips what an interrupted earlier run did.
pub(crate) fn create_user(root: &File, etc: &File, name: &str) -> Result<PasswdEntry, String> {
    let _lock = PwdLock::acquire(etc, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let passwd = read_etc(etc, "passwd")?.unwrap_or_default();
    if let Some(e) = find(&passwd, name).and_then(parse_passwd_line) {
        return Ok(e);
    }
    let group = read_etc(etc, "group")?.unwrap_or_default();
    let existing_gid = find(&group, name).and_then(|l| l.split(':').nth(2)?.parse().ok());
    let used_uids = ids(&passwd, 2);
    let used_gids = ids(&group, 2);
    let uid = (FIRST_ID..=LAST_ID)
        .find(|n| !used_uids.contains(n) && (existing_gid.is_some() || !used_gids.contains(n)))
        .ok_or_else(|| format!("no free uid between {FIRST_ID} and {LAST_ID}"))?;
    let gid = existing_gid.unwrap_or(uid);

    let etc_meta = etc.metadata().map_err(|e| format!("/etc: {e}"))?;
    let public = Owner {
        uid: etc_meta.uid(),
        gid: etc_meta.gid(),
        mode: 0o644,
    };
    let shadow_gid = find(&group, "shadow")
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
        .unwrap_or(etc_meta.gid());
    let secret = Owner {
        gid: shadow_gid,
        mode: 0o640,
        ..public
    };
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let shell = if root_has(root, "bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("/home/{name}");

    append_entry(etc, "group", name, &format!("{name}:x:{gid}:"), public)?;
    if fsat::lstat_at(etc, OsStr::new("gshadow"))
        .ok()
        .flatten()
        .is_some()
    {
        append_entry(etc, "gshadow", name, &format!("{name}:!::"), secret)?;
    }
    append_entry(
        etc,
        "shadow",
        name,
        &format!("{name}:!:{days}:0:99999:7:::"),
        secret,
    )?;
    append_entry(
        etc,
        "passwd",
        name,
        &format!("{name}:x:{uid}:{gid}::{home}:{shell}"),
        public,
    )?;
    make_home(root, name, uid, gid)?;
    Ok(PasswdEntry {
        name: name.to_string(),
        uid,
        gid,
        home,
    })
}

fn root_has(root: &File, rel: &str) -> bool {
    let p = Path::new(rel);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return false;
    };
    fsat::walk_dirs(root, parent, None)
        .ok()
        .and_then(|d| fsat::lstat_at(&d, name).ok().flatten())
        .is_some()
}

/// Makes `/home/<name>` (mode 0700, owned by the user) unless it exists.
fn make_home(root: &File, name: &str, uid: u32, gid: u32) -> Result<(), String> {
    let home_parent = fsat::walk_dirs(root, Path::new("home"), Some(0o755))
        .map_err(|e| format!("cannot make /home: {e}"))?;
    let os = OsStr::new(name);
    match fsat::mkdir_at(&home_parent, os, 0o700) {
        Ok(()) => {
            let dir = fsat::open_dir_at(&home_parent, os)
                .map_err(|e| format!("/home/{name}: {}", fsat::describe(&e)))?;
            fsat::set_owner_mode(
                &dir,
                Owner {
                    uid,
                    gid,
                    mode: 0o700,
                },
            )
            .map_err(|e| format!("/home/{name}: {e}"))?;
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(format!("cannot make /home/{name}: {e}")),
    }
}

/// Takes the lock useradd takes (lckpwdf semantics: `/etc/.pwd.lock`, fcntl). Never
/// nested: closing any descriptor of the lock file drops a process's fcntl lock.
pub(crate) fn lock(etc: &File) -> Result<PwdLock, String> {
    PwdLock::acquire(etc, Duration::from_secs(5)).map_err(|e| e.to_string())
}

/// Rewrites `/etc/<file>` with `f(old text)` when that differs, keeping its owner and
/// mode; the caller holds [`lock`]. A missing file is left missing (`Ok(false)`).
pub(crate) fn edit(
    etc: &File,
    file: &str,
    f: impl FnOnce(&str) -> Result<String, String>,
) -> Result<bool, String> {
    let Some(old) = read_etc(etc, file)? else {
        return Ok(false);
    };
    let new = f(&old)?;
    if new == old {
        return Ok(false);
    }
    let st = fsat::lstat_at(etc, OsStr::new(file))
        .map_err(|e| format!("/etc/{file}: {}", fsat::describe(&e)))?
        .ok_or_else(|| format!("/etc/{file} vanished"))?;
    let owner = Owner {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
    };
    fsat::write_atomic_at(etc, OsStr::new(file), new.as_bytes(), owner)
        .map_err(|e| format!("cannot write /etc/{file}: {e}"))?;
    Ok(true)
}

/// Field `idx` of the line of `name`.
pub(crate) fn field(text: &str, name: &str, idx: usize) -> Option<String> {
    find(text, name).and_then(|l| l.split(':').nth(idx).map(str::to_string))
}

/// `text` with field `idx` of `name`'s line set to `value`; `None` when there is no
/// such line (or it has too few fields).
pub(crate) fn with_field(text: &str, name: &str, idx: usize, value: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + value.len());
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let mut f: Vec<&str> = body.split(':').collect();
        if !found && f.first() == Some(&name) && f.len() > idx {
            found = true;
            f[idx] = value;
            out.push_str(&f.join(":"));
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

/// `text` (group(5) or gshadow(5)) with `user` in (or out of) the member list of
/// `group`; unchanged when there is no such group.
pub(crate) fn with_member(text: &str, group: &str, user: &str, member: bool) -> String {
    let Some(list) = field(text, group, 3) else {
        return text.to_string();
    };
    let mut members: Vec<&str> = list.split(',').filter(|m| !m.is_empty()).collect();
    let has = members.contains(&user);
    if has == member {
        return text.to_string();
    }
    if member {
        members.push(user);
    } else {
        members.retain(|m| *m != user);
    }
    with_field(text, group, 3, &members.join(",")).unwrap_or_else(|| text.to_string())
}

/// `text` without the line of `name`.
pub(crate) fn without_line(text: &str, name: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| l.split(':').next() != Some(name))
        .collect()
}

/// Creates group `name` with a free gid from 1000 (the caller holds [`lock`]).
pub(crate) fn create_group(etc: &File, name: &str) -> Result<u32, String> {
    let group = read_etc(etc, "group")?.unwrap_or_default();
    if let Some(gid) = find(&group, name).and_then(|l| l.split(':').nth(2)?.parse().ok()) {
        return Ok(gid);
    }
    let used = ids(&group, 2);
    let gid = (FIRST_ID..=LAST_ID)
        .find(|n| !used.contains(n))
        .ok_or_else(|| format!("no free gid between {FIRST_ID} and {LAST_ID}"))?;
    let etc_meta = etc.metadata().map_err(|e| format!("/etc: {e}"))?;
    let public = Owner {
        uid: etc_meta.uid(),
        gid: etc_meta.gid(),
        mode: 0o644,
    };
    append_entry(etc, "group", name, &format!("{name}:x:{gid}:"), public)?;
    if fsat::lstat_at(etc, OsStr::new("gshadow"))
        .ok()
        .flatten()
        .is_some()
    {
        let shadow_gid = find(&group, "shadow")
            .and_then(|l| l.split(':').nth(2)?.parse().ok())
            .unwrap_or(etc_meta.gid());
        let secret = Owner {
            gid: shadow_gid,
            mode: 0o640,
            ..public
        };
        append_entry(etc, "gshadow", name, &format!("{name}:!::"), secret)?;
    }
    Ok(gid)
}

/// Reads `/etc/<file>` (empty when missing).
pub(crate) fn read(etc: &File, file: &str) -> Result<String, String> {
    Ok(read_etc(etc, file)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_edits() {
        let t = "root:x:0:\nsudo:x:27:alice\nadm:x:4:\n";
        assert_eq!(
            with_member(t, "sudo", "cloud", true),
            "root:x:0:\nsudo:x:27:alice,cloud\nadm:x:4:\n"
        );
        assert_eq!(
            with_member(t, "adm", "cloud", true),
            "root:x:0:\nsudo:x:27:alice\nadm:x:4:cloud\n"
        );
        assert_eq!(
            with_member(t, "sudo", "alice", false),
            "root:x:0:\nsudo:x:27:\nadm:x:4:\n"
        );
        assert_eq!(with_member(t, "sudo", "alice", true), t);
        assert_eq!(with_member(t, "nope", "alice", true), t);
        assert_eq!(without_line(t, "sudo"), "root:x:0:\nadm:x:4:\n");
        let s = "cloud:!:19000:0:99999:7:::\n";
        assert_eq!(
            with_field(s, "cloud", 1, "$6$a$b").unwrap(),
            "cloud:$6$a$b:19000:0:99999:7:::\n"
        );
        assert!(with_field(s, "other", 1, "x").is_none());
        assert_eq!(field(s, "cloud", 1).as_deref(), Some("!"));
    }

    #[test]
    fn parses_passwd_lines() {
        let e = parse_passwd_line("cloud:x:1000:1000:Cloud,,,:/home/cloud:/bin/bash").unwrap();
        assert_eq!(e.uid, 1000);
        assert_eq!(e.home, "/home/cloud");
        assert!(parse_passwd_line("broken:x:1000").is_none());
        assert!(parse_passwd_line("bad:x:abc:1:::").is_none());
    }

    #[test]
    fn find_matches_the_whole_name() {
        let t = "cloud2:x:1:1::/:/bin/sh\ncloud:x:2:2::/:/bin/sh\n";
        assert_eq!(find(t, "cloud").unwrap(), "cloud:x:2:2::/:/bin/sh");
        assert!(find(t, "clou").is_none());
    }
}
