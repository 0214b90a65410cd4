//! The `hostname` item: `/etc/hostname`, the `127.0.1.1` line of `/etc/hosts`, and the
//! running system's hostname.
//!
//! Debian's convention: `/etc/hostname` holds the short name, `/etc/hosts` maps
//! `127.0.1.1` to the FQDN and the short name (so `hostname -f` answers the FQDN), and the
//! kernel hostname is the short name.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use nix::sys::stat::SFlag;
use xenchan_protocol::config::Hostname;
use xenchan_protocol::{GuestConfig, ItemResult};

use super::{Applier, ApplyContext, Outcome, status};
use crate::fsat::{self, Owner};

const ETC_FILE_LIMIT: u64 = 1024 * 1024;

/// Applies the `hostname` item.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostnameApplier;

impl Applier for HostnameApplier {
    fn name(&self) -> &'static str {
        "hostname"
    }

    fn owns(&self, item: &str) -> bool {
        item == "hostname"
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let Some(name) = &config.hostname else {
            return Outcome::default();
        };
        let result = match apply_hostname(ctx, name) {
            Ok(changed) => ItemResult::new("hostname", status(changed)),
            Err(reason) => ItemResult::failed("hostname", reason),
        };
        Outcome {
            items: vec![result],
            state: None,
        }
    }
}

fn apply_hostname(ctx: &ApplyContext<'_>, name: &Hostname) -> Result<bool, String> {
    let etc_path = ctx.opts.guest_path("etc");
    let etc = fsat::open_dir(&etc_path)
        .map_err(|e| format!("{}: {}", etc_path.display(), fsat::describe(&e)))?;
    let short = name.short();
    let mut changed =
        replace_if_different(ctx, &etc, "hostname", |_| format!("{short}\n").into_bytes())?;
    changed |= replace_if_different(ctx, &etc, "hosts", |old| {
        render_hosts(
            old.unwrap_or(b"127.0.0.1\tlocalhost\n"),
            name.as_str(),
            short,
        )
    })?;
    if ctx.opts.sets_live_hostname() {
        let live = nix::unistd::gethostname()
            .map_err(|e| format!("cannot read the running hostname: {e}"))?;
        if live.as_encoded_bytes() != short.as_bytes() {
            nix::unistd::sethostname(short)
                .map_err(|e| format!("cannot set the running hostname to {short}: {e}"))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Rewrites `/etc/<name>` with `render(old contents)` when that differs (staged in the
/// push's batch); keeps the file's owner and mode (a new file gets the folder's owner
/// and 0644). A symlink there is refused rather than replaced by a file.
fn replace_if_different(
    ctx: &ApplyContext<'_>,
    etc: &File,
    name: &str,
    render: impl FnOnce(Option<&[u8]>) -> Vec<u8>,
) -> Result<bool, String> {
    let os = OsStr::new(name);
    let path = format!("/etc/{name}");
    let st = fsat::lstat_at(etc, os).map_err(|e| format!("{path}: {}", fsat::describe(&e)))?;
    let owner = match &st {
        Some(st) if fsat::kind(st) == SFlag::S_IFLNK => {
            return Err(format!(
                "{path} is a symbolic link; refusing to replace it with a file"
            ));
        }
        Some(st) => Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        },
        None => {
            let m = etc.metadata().map_err(|e| format!("/etc: {e}"))?;
            Owner {
                uid: m.uid(),
                gid: m.gid(),
                mode: 0o644,
            }
        }
    };
    let old = fsat::current_at(ctx.batch, etc, os, ETC_FILE_LIMIT)
        .map_err(|e| format!("{path}: {}", fsat::describe(&e)))?;
    let new = render(old.as_deref());
    if old.as_deref() == Some(new.as_slice()) {
        return Ok(false);
    }
    fsat::stage_at(ctx.batch, etc, os, &new, owner, &path)
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    Ok(true)
}

/// `/etc/hosts` with our `127.0.1.1` line: the first such line is replaced, later ones
/// dropped (two would make the answer depend on the resolver), every other line kept as
/// it is. Without one, ours goes after the first `127.0.0.1` line, or first.
pub(crate) fn render_hosts(old: &[u8], fqdn: &str, short: &str) -> Vec<u8> {
    let ours = if fqdn == short {
        format!("127.0.1.1\t{short}\n")
    } else {
        format!("127.0.1.1\t{fqdn} {short}\n")
    };
    let first_field = |line: &[u8]| -> Vec<u8> {
        line.split(u8::is_ascii_whitespace)
            .find(|f| !f.is_empty())
            .unwrap_or_default()
            .to_vec()
    };
    let mut out = Vec::with_capacity(old.len() + ours.len());
    let mut placed = false;
    let lines: Vec<&[u8]> = old.split_inclusive(|b| *b == b'\n').collect();
    let has_loopback = lines.iter().any(|l| first_field(l) == b"127.0.0.1");
    if !has_loopback {
        out.extend_from_slice(ours.as_bytes());
        placed = true;
    }
    for line in lines {
        let field = first_field(line);
        if field == b"127.0.1.1" {
            if !placed {
                out.extend_from_slice(ours.as_bytes());
                placed = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            // A last line without a newline gets one, so that a line can follow it.
            out.push(b'\n');
        }
        if field == b"127.0.0.1" && !placed {
            out.extend_from_slice(ours.as_bytes());
            placed = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render_hosts;

    #[test]
    fn replaces_first_loopback_alias_and_keeps_the_rest() {
        let old = b"127.0.0.1\tlocalhost\n127.0.1.1\told.example old\n# keep me\n::1 localhost ip6-localhost\n127.0.1.1 dup\n";
        let new = render_hosts(old, "web1.example.com", "web1");
        assert_eq!(
            String::from_utf8(new).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.com web1\n# keep me\n::1 localhost ip6-localhost\n"
        );
    }

    #[test]
    fn inserts_after_localhost_or_first() {
        let new = render_hosts(b"127.0.0.1 localhost\n10.0.0.1 other", "web1", "web1");
        assert_eq!(
            String::from_utf8(new).unwrap(),
            "127.0.0.1 localhost\n127.0.1.1\tweb1\n10.0.0.1 other\n"
        );
        let new = render_hosts(b"10.0.0.1 other\n", "a.b", "a");
        assert_eq!(
            String::from_utf8(new).unwrap(),
            "127.0.1.1\ta.b a\n10.0.0.1 other\n"
        );
    }

    #[test]
    fn rendering_is_idempotent() {
        let once = render_hosts(b"127.0.0.1 localhost\n", "h.example", "h");
        assert_eq!(render_hosts(&once, "h.example", "h"), once);
    }
}
