//! The `user:<name>` items: ssh keys in the managed block of the user's
//! `authorized_keys`, and the user itself when the document says `create: true`.
//!
//! The user's home is reached from the guest root one folder at a time without following
//! any symlink, and `.ssh` and `authorized_keys` are opened relative to it, so a user who
//! plants a symlink (`.ssh -> /root/.ssh`) gets a refusal, never a write elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use xenchan_protocol::config::{GroupName, PasswordHash, User};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use super::accounts::{self, PasswdEntry};
use super::keys::write_authorized_keys;
use super::run_once::{RunOnce, instance_id};
use super::sudo;
use super::{Applier, ApplyContext, Outcome, status};
use crate::fsat::{self, Owner};

/// Applies `user:<name>` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsersApplier;

/// The users applier's saved state: whose `authorized_keys` hold a managed block, and
/// what it made, so that removal never touches users or groups it did not create.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersState {
    users: Vec<String>,
    /// Users the agent created.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    created_users: BTreeSet<String>,
    /// Groups the agent created.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    created_groups: BTreeSet<String>,
    /// Supplementary memberships the agent added, by user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    memberships: BTreeMap<String, BTreeSet<String>>,
    /// Users with a sudoers.d file written by the agent.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    sudo: BTreeSet<String>,
    /// Per-instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_once: Option<RunOnce>,
}

impl Applier for UsersApplier {
    fn name(&self) -> &'static str {
        "users"
    }

    fn owns(&self, item: &str) -> bool {
        item.starts_with("user:")
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let mut st: UsersState = ctx
            .previous_state(self.name())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let mut once = RunOnce::for_instance(st.run_once.take(), &instance_id(&ctx.opts.root));
        let items = config
            .users
            .iter()
            .map(|u| {
                let item = format!("user:{}", u.name);
                if once.skip(u.run, &item) {
                    return ItemResult {
                        reason: Some(once.skipped_reason()),
                        ..ItemResult::new(item, ItemStatus::Unchanged)
                    };
                }
                let r = match apply_user(ctx, u, &mut st) {
                    Ok(changed) => ItemResult::new(item.clone(), status(changed)),
                    Err(reason) => ItemResult::failed(item.clone(), reason),
                };
                once.record(u.run, &item, r.status);
                r
            })
            .collect();
        let gone: Vec<String> = st
            .users
            .iter()
            .chain(&st.created_users)
            .chain(st.memberships.keys())
            .chain(&st.sudo)
            .filter(|n| !config.users.iter().any(|u| u.name.as_str() == n.as_str()))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in &gone {
            match drop_keys(ctx, name) {
                Ok(true) => {
                    info!(user = %name, "removed the managed keys of a user no longer in the document");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(user = %name, error = %e, "cannot remove the managed keys of a user no longer in the document");
                }
            }
            if let Err(e) = drop_account(ctx, name, &mut st) {
                warn!(user = %name, error = %e, "cannot undo what the agent did for a user no longer in the document");
            }
        }
        let wanted_groups: BTreeSet<&str> = config
            .users
            .iter()
            .flat_map(|u| u.groups.iter().map(GroupName::as_str))
            .collect();
        if let Err(e) = drop_groups(ctx, &wanted_groups, &mut st) {
            warn!(error = %e, "cannot remove groups the agent created that are no longer wanted");
        }
        st.users = config
            .users
            .iter()
            .map(|u| u.name.as_str().to_string())
            .collect();
        let items_now: BTreeSet<String> = config
            .users
            .iter()
            .map(|u| format!("user:{}", u.name))
            .collect();
        once.retain(&items_now);
        st.run_once = Some(once);
        Outcome {
            items,
            state: serde_json::to_value(st).ok(),
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

fn apply_user(ctx: &ApplyContext<'_>, user: &User, st: &mut UsersState) -> Result<bool, String> {
    let root = fsat::open_dir(&ctx.opts.root)
        .map_err(|e| format!("guest root {}: {e}", ctx.opts.root.display()))?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let name = user.name.as_str();
    let (entry, created) = match accounts::lookup(&etc, name)? {
        Some(e) => (e, false),
        None if user.create => {
            let e = accounts::create_user(&root, &etc, name)?;
            info!(user = name, uid = e.uid, "created user");
            st.created_users.insert(name.to_string());
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
    let mut changed = created;
    changed |= apply_account(ctx, &root, &etc, user, st)?;
    let home = open_home(&root, entry)?;
    changed |= write_keys(ctx, &home, &keys)?;
    Ok(changed)
}

/// Removes the managed block of a user dropped from the document.
fn drop_keys(ctx: &ApplyContext<'_>, name: &str) -> Result<bool, String> {
    let root = fsat::open_dir(&ctx.opts.root).map_err(|e| e.to_string())?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let Some(entry) = accounts::lookup(&etc, name)? else {
        return Ok(false);
    };
    let home = open_home(&root, entry)?;
    write_keys(ctx, &home, &[])
}

fn write_keys(ctx: &ApplyContext<'_>, home: &Home, keys: &[&str]) -> Result<bool, String> {
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
    changed |= write_authorized_keys(ctx.batch, &ssh, keys, uid, gid)?;
    Ok(changed)
}

/// The shadow(5) password field wanted, from the current one and the document.
pub(crate) fn shadow_password(current: &str, hash: Option<&str>, lock: Option<bool>) -> String {
    match (hash, lock) {
        (Some(h), Some(true)) => format!("!{h}"),
        (Some(h), _) => h.to_string(),
        (None, Some(true)) if !current.starts_with('!') => format!("!{current}"),
        (None, _) => current.to_string(),
    }
}

/// The users-v2 fields: shell, password, supplementary groups, sudo rule.
fn apply_account(
    ctx: &ApplyContext<'_>,
    root: &std::fs::File,
    etc: &std::fs::File,
    user: &User,
    st: &mut UsersState,
) -> Result<bool, String> {
    let name = user.name.as_str();
    let mut changed = false;
    if let Some(shell) = &user.shell
        && ctx
            .opts
            .guest_path(shell.as_str())
            .symlink_metadata()
            .is_err()
    {
        return Err(format!(
            "shell {} does not exist in the guest",
            shell.as_str()
        ));
    }
    {
        let _lock = accounts::lock(etc)?;
        if let Some(shell) = &user.shell {
            changed |= accounts::edit(etc, "passwd", |t| {
                accounts::with_field(t, name, 6, shell.as_str())
                    .ok_or_else(|| format!("{name} has no complete line in /etc/passwd"))
            })?;
        }
        if user.hashed_passwd.is_some() || user.lock_passwd.is_some() {
            let hash = user.hashed_passwd.as_ref().map(PasswordHash::as_str);
            changed |= accounts::edit(etc, "shadow", |t| {
                let current = accounts::field(t, name, 1)
                    .ok_or_else(|| format!("{name} has no line in /etc/shadow"))?;
                let want = shadow_password(&current, hash, user.lock_passwd);
                accounts::with_field(t, name, 1, &want)
                    .ok_or_else(|| format!("{name} has no line in /etc/shadow"))
            })?;
            if accounts::read(etc, "shadow")?.is_empty() {
                return Err("/etc/shadow does not exist; the password cannot be set".into());
            }
        }
        let added = st.memberships.entry(name.to_string()).or_default();
        let wanted: BTreeSet<&str> = user.groups.iter().map(GroupName::as_str).collect();
        for g in &user.groups {
            let g = g.as_str();
            if accounts::lookup_group(etc, g)?.is_none() {
                let gid = accounts::create_group(etc, g)?;
                info!(group = g, gid, "created group");
                st.created_groups.insert(g.to_string());
                changed = true;
            }
            let group_text = accounts::read(etc, "group")?;
            let already =
                accounts::field(&group_text, g, 3).is_some_and(|m| m.split(',').any(|m| m == name));
            if !already {
                added.insert(g.to_string());
            }
            for file in ["group", "gshadow"] {
                changed |=
                    accounts::edit(etc, file, |t| Ok(accounts::with_member(t, g, name, true)))?;
            }
        }
        // Memberships the agent added that the document no longer lists.
        let dropped: Vec<String> = added
            .iter()
            .filter(|g| !wanted.contains(g.as_str()))
            .cloned()
            .collect();
        for g in dropped {
            for file in ["group", "gshadow"] {
                changed |=
                    accounts::edit(etc, file, |t| Ok(accounts::with_member(t, &g, name, false)))?;
            }
            added.remove(&g);
        }
        if added.is_empty() {
            st.memberships.remove(name);
        }
    }
    match &user.sudo {
        Some(rule) => {
            changed |= sudo::write_rule(root, name, rule.as_str())?;
            st.sudo.insert(name.to_string());
        }
        None if st.sudo.remove(name) => changed |= sudo::remove_rule(root, name)?,
        None => {}
    }
    Ok(changed)
}

/// Undoes what the agent did for a user dropped from the document: its sudo rule, the
/// memberships it added and, when the agent created the account, the account itself
/// (passwd, shadow, its own primary group). The home folder is kept: its data is the
/// user's, not the agent's.
fn drop_account(ctx: &ApplyContext<'_>, name: &str, st: &mut UsersState) -> Result<(), String> {
    let root = fsat::open_dir(&ctx.opts.root).map_err(|e| e.to_string())?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    if st.sudo.remove(name) && sudo::remove_rule(&root, name)? {
        info!(
            user = name,
            "removed the sudo rule of a user no longer in the document"
        );
    }
    let _lock = accounts::lock(&etc)?;
    for g in st.memberships.remove(name).unwrap_or_default() {
        for file in ["group", "gshadow"] {
            accounts::edit(&etc, file, |t| {
                Ok(accounts::with_member(t, &g, name, false))
            })?;
        }
    }
    if st.created_users.remove(name) {
        let passwd = accounts::read(&etc, "passwd")?;
        let gid = accounts::field(&passwd, name, 3);
        accounts::edit(&etc, "passwd", |t| Ok(accounts::without_line(t, name)))?;
        accounts::edit(&etc, "shadow", |t| Ok(accounts::without_line(t, name)))?;
        // Its own group, when no other account has it as primary group and it has no
        // members.
        let passwd = accounts::read(&etc, "passwd")?;
        let group = accounts::read(&etc, "group")?;
        let private = accounts::field(&group, name, 2) == gid
            && accounts::field(&group, name, 3).is_some_and(|m| m.is_empty())
            && !passwd
                .lines()
                .any(|l| l.split(':').nth(3).map(str::to_string) == gid);
        if private {
            accounts::edit(&etc, "group", |t| Ok(accounts::without_line(t, name)))?;
            accounts::edit(&etc, "gshadow", |t| Ok(accounts::without_line(t, name)))?;
        }
        info!(
            user = name,
            "removed the account the agent created (home folder kept)"
        );
    }
    Ok(())
}

/// Removes groups the agent created that no user in the document lists and that have
/// no members left.
fn drop_groups(
    ctx: &ApplyContext<'_>,
    wanted: &BTreeSet<&str>,
    st: &mut UsersState,
) -> Result<(), String> {
    let candidates: Vec<String> = st
        .created_groups
        .iter()
        .filter(|g| !wanted.contains(g.as_str()))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let root = fsat::open_dir(&ctx.opts.root).map_err(|e| e.to_string())?;
    let etc = fsat::walk_dirs(&root, Path::new("etc"), None).map_err(|e| e.to_string())?;
    let _lock = accounts::lock(&etc)?;
    for g in candidates {
        let group = accounts::read(&etc, "group")?;
        let passwd = accounts::read(&etc, "passwd")?;
        let gid = accounts::field(&group, &g, 2);
        let empty = accounts::field(&group, &g, 3).is_none_or(|m| m.is_empty());
        let primary = gid.is_some()
            && passwd
                .lines()
                .any(|l| l.split(':').nth(3).map(str::to_string) == gid);
        if gid.is_none() || (empty && !primary) {
            accounts::edit(&etc, "group", |t| Ok(accounts::without_line(t, &g)))?;
            accounts::edit(&etc, "gshadow", |t| Ok(accounts::without_line(t, &g)))?;
            st.created_groups.remove(&g);
            info!(group = %g, "removed a group the agent created that is no longer wanted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shadow_password;

    #[test]
    fn password_field() {
        for (current, hash, lock, want) in [
            ("!", Some("$6$a$b"), None, "$6$a$b"),
            ("!", Some("$6$a$b"), Some(false), "$6$a$b"),
            ("$6$old$x", Some("$6$a$b"), Some(true), "!$6$a$b"),
            ("$6$old$x", None, Some(true), "!$6$old$x"),
            ("!$6$old$x", None, Some(true), "!$6$old$x"),
            ("*", None, None, "*"),
        ] {
            assert_eq!(
                shadow_password(current, hash, lock),
                want,
                "{current} {hash:?} {lock:?}"
            );
        }
    }
}
