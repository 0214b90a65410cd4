//! The `user:<name>` items: ssh keys in the managed block of the user's
//! `authorized_keys`, and the user itself when the document says `create: true`.
//!
//! The user's home is reached from the guest root one folder at a time without following
//! any symlink, and `.ssh` and `authorized_keys` are opened relative to it, so a user who
//! plants a symlink (`.ssh -> /root/.ssh`) gets a refusal, never a write elsewhere.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use xenchan_protocol::config::User;
use xenchan_protocol::{GuestConfig, ItemResult};

use super::accounts::{self, PasswdEntry};
use super::keys::write_authorized_keys;
use super::{Applier, ApplyContext, Outcome, status};
use crate::fsat::{self, Owner};

/// Applies `user:<name>` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsersApplier;

/// The users applier's saved state: whose `authorized_keys` hold a managed block.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersState {
    users: Vec<String>,
}

impl Applier for UsersApplier {
    fn name(&self) -> &'static str {
        "users"
    }

    fn owns(&self, item: &str) -> bool {
        item.starts_with("user:")
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let items = config
            .users
            .iter()
            .map(|u| {
                let item = format!("user:{}", u.name);
                match apply_user(ctx, u) {
                    Ok(changed) => ItemResult::new(item, status(changed)),
                    Err(reason) => ItemResult::failed(item, reason),
                }
            })
            .collect();
        let previous: UsersState = ctx
            .previous_state(self.name())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        for gone in previous
            .users
            .iter()
            .filter(|n| !config.users.iter().any(|u| u.name.as_str() == n.as_str()))
        {
            match drop_keys(ctx, gone) {
                Ok(true) => {
                    info!(user = %gone, "removed the managed keys of a user no longer in the document");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(user = %gone, error = %e, "cannot remove the managed keys of a user no longer in the document");
                }
            }
        }
        let state = UsersState {
            users: config
                .users
                .iter()
                .map(|u| u.name.as_str().to_string())
                .collect(),
        };
        Outcome {
            items,
            state: serde_json::to_value(state).ok(),
        }
    }
}

struct Home {
    dir: std::fs::File,
    entry: PasswdEntry,
}

fn open_home(root: &std::fs::File, entry: PasswdEntry) -> Result<Home, String> {
    if !entry.home.starts_with('/') {
        return Err(format!(
            "home folder `{}` of {} is not an absolute path",
            entry.home, entry.name
        ));
    }
    let dir = fsat::walk_dirs(root, Path::new(&entry.home), None)
        .map_err(|e| format!("home folder of {}: {e}", entry.name))?;
    let owner = dir.metadata().map_err(|e| e.to_string())?.uid();
    if owner != entry.uid {
        return Err(format!(
            "home folder {} belongs to uid {owner}, not to {} (uid {}); refused",
            entry.home, entry.name, entry.uid
        ));
    }
    Ok(Home { dir, entry })
}

fn apply_user(ctx: &ApplyContext<'_>, user: &User) -> Result<bool, String> {
    let root = fsat::open_dir(&ctx.opts.root)
        .map_err(|e| format!("guest root {}: {e}", ctx.opts.root.display()))?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let name = user.name.as_str();
    let (entry, created) = match accounts::lookup(&etc, name)? {
        Some(e) => (e, false),
        None if user.create => {
            let e = accounts::create_user(&root, &etc, name)?;
            info!(user = name, uid = e.uid, "created user");
            (e, true)
        }
        None => {
            return Err(format!(
                "user {name} does not exist in /etc/passwd (set `create: true` to create it)"
            ));
        }
    };
    let keys: Vec<&str> = user
        .ssh_authorized_keys
        .iter()
        .map(xenchan_protocol::config::SshKey::as_str)
        .collect();
    let home = open_home(&root, entry)?;
    Ok(write_keys(&home, &keys)? || created)
}

/// Removes the managed block of a user dropped from the document.
fn drop_keys(ctx: &ApplyContext<'_>, name: &str) -> Result<bool, String> {
    let root = fsat::open_dir(&ctx.opts.root).map_err(|e| e.to_string())?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let Some(entry) = accounts::lookup(&etc, name)? else {
        return Ok(false);
    };
    let home = open_home(&root, entry)?;
    write_keys(&home, &[])
}

fn write_keys(home: &Home, keys: &[&str]) -> Result<bool, String> {
    let ssh_name = OsStr::new(".ssh");
    let (uid, gid) = (home.entry.uid, home.entry.gid);
    let mut changed = false;
    let ssh = match fsat::open_dir_at(&home.dir, ssh_name) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if keys.is_empty() {
                return Ok(false);
            }
            fsat::mkdir_at(&home.dir, ssh_name, 0o700)
                .map_err(|e| format!("cannot make ~{}/.ssh: {e}", home.entry.name))?;
            changed = true;
            fsat::open_dir_at(&home.dir, ssh_name)
                .map_err(|e| format!("~{}/.ssh: {}", home.entry.name, fsat::describe(&e)))?
        }
        Err(e) => return Err(format!("~{}/.ssh {}", home.entry.name, fsat::describe(&e))),
    };
    if !keys.is_empty() {
        changed |= fsat::set_owner_mode(
            &ssh,
            Owner {
                uid,
                gid,
                mode: 0o700,
            },
        )
        .map_err(|e| format!("~{}/.ssh: {e}", home.entry.name))?;
    }
    changed |= write_authorized_keys(&ssh, keys, uid, gid)?;
    Ok(changed)
}
