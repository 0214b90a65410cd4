//! A user's sudo rule: `/etc/sudoers.d/xenchan-<user>`, mode 0440, checked with
//! `visudo -c -f` before it is put in place. Without visudo the rule is refused: a
//! sudoers file sudo cannot parse locks everyone out of sudo, so it is never written
//! unchecked.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::command;
use super::put::remove_file;
use crate::fsat::{self, Owner};

/// The file name for `user` (sudo skips names with a `.`, so the check copy, dotted, is
/// never read by sudo).
pub fn file_name(user: &str) -> String {
    format!("xenchan-{user}")
}

/// The file's content.
pub fn render(user: &str, rule: &str) -> String {
    format!(
        "# Written by xenchan-agent from the broker's configuration; replaced on every push.\n{user} {rule}\n"
    )
}

fn sudoers_d(root: &std::fs::File) -> Result<std::fs::File, String> {
    fsat::walk_dirs(root, Path::new("etc/sudoers.d"), Some(0o755)).map_err(|e| e.to_string())
}

/// Puts `user`'s rule in place; returns whether anything changed.
pub(crate) fn write_rule(root: &std::fs::File, user: &str, rule: &str) -> Result<bool, String> {
    let dir = sudoers_d(root)?;
    let name = file_name(user);
    let content = render(user, rule);
    let owner = Owner {
        uid: 0,
        gid: 0,
        mode: 0o440,
    };
    if let Ok(Some(old)) = fsat::read_file_at(&dir, OsStr::new(&name), 64 * 1024)
        && old == content.as_bytes()
    {
        let f = fsat::open_at(&dir, OsStr::new(&name), nix::fcntl::OFlag::O_RDONLY, 0)
            .map_err(|e| format!("/etc/sudoers.d/{name}: {e}"))?;
        return fsat::set_owner_mode(&f, owner).map_err(|e| format!("/etc/sudoers.d/{name}: {e}"));
    }
    let visudo = command::find_tool("visudo").ok_or_else(|| {
        "visudo is not installed, so the sudo rule cannot be checked; refused (install the sudo package)".to_string()
    })?;
    let check = format!(".{name}.check");
    fsat::write_atomic_at(
        &dir,
        OsStr::new(&check),
        content.as_bytes(),
        Owner {
            mode: 0o440,
            ..owner
        },
    )
    .map_err(|e| format!("cannot write /etc/sudoers.d/{check}: {e}"))?;
    // Through our folder descriptor (the child does not inherit it, so by our pid): the
    // path visudo opens is the file just written, whatever happens to the names above.
    let path = format!(
        "/proc/{}/fd/{}/{check}",
        std::process::id(),
        dir.as_raw_fd()
    );
    let checked = command::run(&visudo, &["-c", "-f", &path], command::TOOL_DEADLINE);
    if let Err(e) = checked {
        let _ = fsat::unlink_at(&dir, OsStr::new(&check));
        return Err(format!(
            "the sudo rule does not parse: {}",
            e.replace(&path, "<rule>")
        ));
    }
    nix::fcntl::renameat(
        Some(dir.as_raw_fd()),
        check.as_str(),
        Some(dir.as_raw_fd()),
        name.as_str(),
    )
    .map_err(|e| format!("cannot put /etc/sudoers.d/{name} in place: {e}"))?;
    dir.sync_all().map_err(|e| format!("/etc/sudoers.d: {e}"))?;
    Ok(true)
}

/// Removes `user`'s rule file; returns whether it was there.
pub(crate) fn remove_rule(root: &std::fs::File, user: &str) -> Result<bool, String> {
    let Ok(dir) = fsat::walk_dirs(root, Path::new("etc/sudoers.d"), None) else {
        return Ok(false);
    };
    let name = file_name(user);
    remove_file(&dir, OsStr::new(&name), &format!("/etc/sudoers.d/{name}"))
}
