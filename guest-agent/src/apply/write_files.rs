//! The `file:<path>` items of `write_files`.
//!
//! A path is written only below one of the agent's allowed folders (`--write-files-allow`,
//! default `/etc`, `/home`, `/srv`, `/opt`): the broker is trusted to configure the guest,
//! not to replace its programs or libraries. The folders are walked from the guest root
//! one component at a time and never through a symlink (missing ones are made, 0755,
//! owned by root); the file itself is replaced atomically with its owner and mode, and
//! left alone when it already matches. Files dropped from the document stay (like
//! cloud-init, the agent does not know what the file held before).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xenchan_protocol::config::{FileOwner, WriteFile};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use super::accounts;
use super::put::put_file;
use super::run_once::{RunOnce, instance_id};
use super::{Applier, ApplyContext, Outcome, status};
use crate::fsat::{self, Owner};

/// The folders `write_files` may write below unless the agent is told otherwise.
pub const DEFAULT_ALLOW: [&str; 4] = ["/etc", "/home", "/srv", "/opt"];

/// Applies `file:<path>` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteFilesApplier;

#[derive(Debug, Default, Serialize, Deserialize)]
struct FilesState {
    #[serde(default)]
    run_once: Option<RunOnce>,
}

/// Whether `path` lies below (or is) one of `allow`, compared component by component.
pub fn allowed(path: &str, allow: &[PathBuf]) -> bool {
    let p = Path::new(path);
    allow
        .iter()
        .any(|a| a.is_absolute() && p.starts_with(a) && p != a)
}

impl Applier for WriteFilesApplier {
    fn name(&self) -> &'static str {
        "write_files"
    }

    fn owns(&self, item: &str) -> bool {
        item.starts_with("file:")
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let previous: FilesState = ctx
            .previous_state(self.name())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let mut once = RunOnce::for_instance(previous.run_once, &instance_id(&ctx.opts.root));
        let mut items = Vec::new();
        for f in &config.write_files {
            let item = f.item();
            if once.skip(f.run, &item) {
                items.push(ItemResult {
                    reason: Some(once.skipped_reason()),
                    ..ItemResult::new(item, ItemStatus::Unchanged)
                });
                continue;
            }
            let r = match write_one(ctx, f) {
                Ok(changed) => ItemResult::new(item.clone(), status(changed)),
                Err(e) => ItemResult::failed(item.clone(), e),
            };
            once.record(f.run, &item, r.status);
            items.push(r);
        }
        let wanted: BTreeSet<String> = config.write_files.iter().map(WriteFile::item).collect();
        once.retain(&wanted);
        let state = FilesState {
            run_once: Some(once),
        };
        Outcome {
            items,
            state: serde_json::to_value(state).ok(),
        }
    }
}

fn resolve_owner(etc: &std::fs::File, owner: Option<&FileOwner>) -> Result<(u32, u32), String> {
    let Some(o) = owner else {
        return Ok((0, 0));
    };
    let uid = match o.user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            accounts::lookup(etc, &o.user)?
                .ok_or_else(|| format!("owner: no user `{}` in /etc/passwd", o.user))?
                .uid
        }
    };
    let gid = match o.group.parse::<u32>() {
        Ok(n) => n,
        Err(_) => accounts::lookup_group(etc, &o.group)?
            .ok_or_else(|| format!("owner: no group `{}` in /etc/group", o.group))?,
    };
    Ok((uid, gid))
}

fn write_one(ctx: &ApplyContext<'_>, f: &WriteFile) -> Result<bool, String> {
    if !allowed(f.path.as_str(), &ctx.opts.write_files_allow) {
        let allow: Vec<String> = ctx
            .opts
            .write_files_allow
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(format!(
            "{} is outside the folders this agent writes files in ({}; agent option --write-files-allow)",
            f.path,
            allow.join(", ")
        ));
    }
    let bytes = f.bytes()?;
    let root = fsat::open_dir(&ctx.opts.root).map_err(|e| format!("guest root: {e}"))?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let (uid, gid) = resolve_owner(&etc, f.owner.as_ref())?;
    let path = Path::new(f.path.as_str());
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} has no file name", f.path));
    };
    let dir = fsat::walk_dirs(&root, parent, Some(0o755)).map_err(|e| e.to_string())?;
    put_file(
        ctx.batch,
        &dir,
        OsStr::new(name),
        &bytes,
        Owner {
            uid,
            gid,
            mode: f.mode(),
        },
        f.path.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_is_by_component() {
        let allow: Vec<PathBuf> = DEFAULT_ALLOW.iter().map(PathBuf::from).collect();
        assert!(allowed("/etc/motd", &allow));
        assert!(allowed("/home/a/.bashrc", &allow));
        assert!(!allowed("/etcetera/x", &allow));
        assert!(!allowed("/usr/bin/ls", &allow));
        assert!(!allowed("/etc", &allow));
        assert!(!allowed("/etc/x", &[PathBuf::from("etc")]));
    }
}
