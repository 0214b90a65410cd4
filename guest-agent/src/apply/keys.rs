//! The managed block of `~user/.ssh/authorized_keys`.
//!
//! The agent owns only the lines between its two marker lines; everything else in the
//! file is the user's and is kept byte for byte. Everything below works on open folder
//! descriptors and never follows a symlink (see `fsat`).

use std::ffi::OsStr;
use std::fs::File;

use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;
use xenchan_basics::commit::Batch;

use crate::fsat::{self, Owner};

/// The first line of the managed block (recognised by its prefix up to `keys`).
pub const BLOCK_BEGIN: &str =
    "# BEGIN xenchan managed keys (replaced on every push; add your own keys outside this block)";
/// The last line of the managed block.
pub const BLOCK_END: &str = "# END xenchan managed keys";

const BEGIN_PREFIX: &[u8] = b"# BEGIN xenchan managed keys";

/// authorized_keys files larger than this are refused.
const KEYS_FILE_LIMIT: u64 = 4 * 1024 * 1024;

const AUTHORIZED_KEYS: &str = "authorized_keys";

fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `old` with its managed block holding exactly `keys` (one per line). The block stays
/// where it was; a new block goes at the end. With no keys the block is removed. Lines
/// outside the block are not touched. A file with broken markers is refused rather than
/// guessed at.
pub fn render_managed_block(old: &[u8], keys: &[&str]) -> Result<Vec<u8>, String> {
    let lines: Vec<&[u8]> = old.split_inclusive(|b| *b == b'\n').collect();
    let begins: Vec<usize> = (0..lines.len())
        .filter(|&i| content(lines[i]).starts_with(BEGIN_PREFIX))
        .collect();
    let ends: Vec<usize> = (0..lines.len())
        .filter(|&i| content(lines[i]) == BLOCK_END.as_bytes())
        .collect();
    let mut block = Vec::new();
    if !keys.is_empty() {
        block.extend_from_slice(BLOCK_BEGIN.as_bytes());
        block.push(b'\n');
        for k in keys {
            block.extend_from_slice(k.as_bytes());
            block.push(b'\n');
        }
        block.extend_from_slice(BLOCK_END.as_bytes());
        block.push(b'\n');
    }
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => {
            let mut out = old.to_vec();
            if !block.is_empty() && !out.is_empty() && !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(&block);
            Ok(out)
        }
        ([b], [e]) if b < e => {
            let mut out = Vec::with_capacity(old.len() + block.len());
            for l in &lines[..*b] {
                out.extend_from_slice(l);
            }
            out.extend_from_slice(&block);
            for l in &lines[e + 1..] {
                out.extend_from_slice(l);
            }
            Ok(out)
        }
        (b, e) => Err(format!(
            "authorized_keys has {} xenchan begin marker(s) and {} end marker(s){}; fix the file by hand",
            b.len(),
            e.len(),
            if b.len() == 1 && e.len() == 1 {
                " in the wrong order"
            } else {
                ""
            }
        )),
    }
}

/// Makes `<ssh>/authorized_keys` hold `keys` in its managed block, owned by `uid:gid`
/// with mode 0600 (a new content is staged in `batch`). Returns whether anything changed.
pub(crate) fn write_authorized_keys(
    batch: &Batch,
    ssh: &File,
    keys: &[&str],
    uid: u32,
    gid: u32,
) -> Result<bool, String> {
    let name = OsStr::new(AUTHORIZED_KEYS);
    let shown = "~/.ssh/authorized_keys";
    let owner = Owner {
        uid,
        gid,
        mode: 0o600,
    };
    let st = fsat::lstat_at(ssh, name).map_err(|e| format!("{shown}: {}", fsat::describe(&e)))?;
    if let Some(st) = &st {
        match fsat::kind(st) {
            SFlag::S_IFREG => {}
            SFlag::S_IFLNK => return Err(format!("{shown} is a symbolic link; refused")),
            _ => return Err(format!("{shown} is not a regular file; refused")),
        }
        if st.st_nlink > 1 {
            // A hard link to another file (say /etc/shadow) would have us copy that file's
            // contents into a file the user owns.
            return Err(format!("{shown} has {} hard links; refused", st.st_nlink));
        }
    }
    let old = fsat::current_at(batch, ssh, name, KEYS_FILE_LIMIT)
        .map_err(|e| format!("{shown}: {}", fsat::describe(&e)))?;
    let new = render_managed_block(old.as_deref().unwrap_or_default(), keys)?;
    match old {
        None if keys.is_empty() => Ok(false),
        Some(old) if old == new && batch.pending(ssh, name).is_some() => Ok(false),
        Some(old) if old == new => {
            let f = fsat::open_at(ssh, name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)
                .map_err(|e| format!("{shown}: {}", fsat::describe(&e)))?;
            fsat::set_owner_mode(&f, owner).map_err(|e| format!("{shown}: {e}"))
        }
        _ => {
            fsat::stage_at(batch, ssh, name, &new, owner, shown)
                .map_err(|e| format!("cannot write {shown}: {e}"))?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice";

    #[test]
    fn appends_block_and_keeps_user_lines_byte_for_byte() {
        let old = b"# mine\r\nssh-rsa AAAA me@laptop  \nno-newline-at-end";
        let new = render_managed_block(old, &[K1]).unwrap();
        let expected = format!(
            "# mine\r\nssh-rsa AAAA me@laptop  \nno-newline-at-end\n{BLOCK_BEGIN}\n{K1}\n{BLOCK_END}\n"
        );
        assert_eq!(String::from_utf8(new.clone()).unwrap(), expected);
        // Rendering again is a fixed point.
        assert_eq!(render_managed_block(&new, &[K1]).unwrap(), new);
    }

    #[test]
    fn replaces_block_in_place_and_removes_it_when_empty() {
        let old = format!("a\n{BLOCK_BEGIN}\nold-key\n{BLOCK_END}\nb\n");
        let new = render_managed_block(old.as_bytes(), &[K1]).unwrap();
        assert_eq!(
            String::from_utf8(new).unwrap(),
            format!("a\n{BLOCK_BEGIN}\n{K1}\n{BLOCK_END}\nb\n")
        );
        let gone = render_managed_block(old.as_bytes(), &[]).unwrap();
        assert_eq!(gone, b"a\nb\n");
    }

    #[test]
    fn broken_markers_are_refused() {
        let only_begin = format!("{BLOCK_BEGIN}\nx\n");
        assert!(render_managed_block(only_begin.as_bytes(), &[K1]).is_err());
        let reversed = format!("{BLOCK_END}\n{BLOCK_BEGIN}\n");
        let err = render_managed_block(reversed.as_bytes(), &[K1]).unwrap_err();
        assert!(err.contains("wrong order"), "{err}");
        let two = format!("{BLOCK_BEGIN}\n{BLOCK_END}\n{BLOCK_BEGIN}\n{BLOCK_END}\n");
        assert!(render_managed_block(two.as_bytes(), &[K1]).is_err());
    }

    #[test]
    fn no_keys_and_no_block_changes_nothing() {
        assert_eq!(render_managed_block(b"x\n", &[]).unwrap(), b"x\n");
        assert_eq!(render_managed_block(b"", &[]).unwrap(), b"");
    }
}
