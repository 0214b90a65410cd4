//! Roles on the control socket (docs/API.md, "Roles"): who the caller is (its
//! credentials from the connection, [`peer`]), which role that gives ([`Roles::role_of`])
//! and which role a call needs ([`needed_role`]).
//!
//! The socket's mode and group are the first gate (0660, the unit's group, plus an ACL
//! entry for the read-only group: transport/acl.rs): only callers that can open it get
//! here. The roles tell apart those that may: read-only callers
//! (monitoring, dashboards) get the GET calls, operators everything.

use std::ffi::CString;

use axum::http::Method;
use tokio::net::UnixStream;
use xenchan_api::config::Control;
use xenchan_api::types::Role;

use crate::audit::Caller;

/// The groups of the roles, resolved to gids at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// The operator group's gid (`None`: the group does not exist).
    pub operator_gid: Option<u32>,
    /// The read-only group's gid (`None`: the group does not exist).
    pub read_only_gid: Option<u32>,
    /// The broker's own uid: it owns the store already, so it is an operator.
    pub own_uid: u32,
    /// The configured group names, for messages.
    pub names: Control,
}

impl Roles {
    /// Resolves `control`'s groups; a group that does not exist is a warning (its role is
    /// then held by nobody but root and the broker's user), not a failure.
    pub fn resolve(control: &Control) -> Roles {
        let gid = |key: &str, name: &str| match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => {
                tracing::warn!(
                    "{key}: group `{name}` does not exist on this machine; nobody gets its \
                     role through it (create it, or name another group in broker.toml [control])"
                );
                None
            }
            Err(e) => {
                tracing::warn!("{key}: cannot look up group `{name}`: {e}");
                None
            }
        };
        Roles {
            operator_gid: gid("control.operator_group", &control.operator_group),
            read_only_gid: gid("control.read_only_group", &control.read_only_group),
            own_uid: nix::unistd::geteuid().as_raw(),
            names: control.clone(),
        }
    }

    /// The role of a caller with `uid`, primary `gid` and supplementary `groups`: root
    /// and the broker's own user are operators, then membership of the operator group,
    /// then of the read-only group; else none.
    pub fn role_of(&self, uid: u32, gid: u32, groups: &[u32]) -> Option<Role> {
        let member = |g: Option<u32>| g.is_some_and(|g| gid == g || groups.contains(&g));
        if uid == 0 || uid == self.own_uid || member(self.operator_gid) {
            Some(Role::Operator)
        } else if member(self.read_only_gid) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// The 403 sentence for `caller` (holding `have`) asking `what`, which needs `need`.
    pub fn refusal(&self, caller: &Caller, have: Option<Role>, need: Role, what: &str) -> String {
        let has = match have {
            Some(r) => format!("has the {r} role"),
            None => "has no role".to_string(),
        };
        let group = match need {
            Role::Operator => &self.names.operator_group,
            Role::ReadOnly => &self.names.read_only_group,
        };
        let also = match need {
            Role::Operator => String::new(),
            Role::ReadOnly => format!(" or `{}`", self.names.operator_group),
        };
        format!(
            "{what} needs the {need} role; {} {has} (members of group `{group}`{also} have it)",
            caller.describe()
        )
    }
}

/// The role a call needs: reads (GET, HEAD) need read-only, everything else operator.
pub fn needed_role(method: &Method) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::ReadOnly
    } else {
        Role::Operator
    }
}

/// Whether holding `have` allows a call that needs `need` (operator includes read-only).
pub fn allows(have: Option<Role>, need: Role) -> bool {
    have.is_some_and(|h| h >= need)
}

/// The caller at the other end of `stream`: uid, gid and pid from `SO_PEERCRED`, the
/// command name and supplementary groups from `/proc/<pid>` when readable (with
/// `ProtectProc=invisible` other users' processes are hidden), else the groups of the uid in
/// the group database. `None` if the kernel gives no credentials.
///
/// Root and `own_uid` (the broker's user) are operators whatever their groups
/// ([`Roles::role_of`]), so theirs are not read: `/proc/<pid>/status`, which the kernel
/// formats in full for each read, was a tenth of the broker's CPU per API request.
pub fn peer(stream: &UnixStream, own_uid: u32) -> Option<Caller> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    if uid == 0 || uid == own_uid {
        // The pid may have been reused since the connect: its command name only counts
        // when `/proc/<pid>` (owned by the process's effective uid) is the connection's.
        let comm = pid
            .filter(|p| {
                std::fs::metadata(format!("/proc/{p}"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid)
            })
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| clean_comm(&c));
        return Some(Caller {
            uid,
            gid,
            pid,
            comm,
            groups: Vec::new(),
        });
    }
    let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    // The pid may have been reused since the connect: /proc's answer only counts when
    // its effective uid is the connection's.
    let proc_groups = status.as_deref().and_then(|s| groups_from_status(s, uid));
    let comm = if proc_groups.is_some() {
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| clean_comm(&c))
    } else {
        None
    };
    let groups = proc_groups.unwrap_or_else(|| groups_of_uid(uid, gid));
    Some(Caller {
        uid,
        gid,
        pid,
        comm,
        groups,
    })
}

/// The `Groups:` of a `/proc/<pid>/status` whose effective uid is `uid`.
fn groups_from_status(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::split_whitespace)
    };
    let euid: u32 = field("Uid:")?.nth(1)?.parse().ok()?;
    if euid != uid {
        return None;
    }
    Some(field("Groups:")?.filter_map(|g| g.parse().ok()).collect())
}

/// The groups of `uid`'s user in the group database (none for a uid without a name).
fn groups_of_uid(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(nix::unistd::Gid::as_raw).collect())
        .unwrap_or_default()
}

/// A command name as one short printable word.
fn clean_comm(raw: &str) -> String {
    raw.trim_end_matches('\n')
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            operator_gid: Some(900),
            read_only_gid: Some(901),
            own_uid: 500,
            names: Control::default(),
        }
    }

    #[test]
    fn roles_by_uid_and_groups() {
        let r = roles();
        for (uid, gid, groups, want) in [
            (0, 0, vec![], Some(Role::Operator)),
            (500, 500, vec![], Some(Role::Operator)),
            (1001, 900, vec![], Some(Role::Operator)),
            (1001, 1001, vec![900], Some(Role::Operator)),
            (1001, 1001, vec![901, 900], Some(Role::Operator)),
            (1001, 901, vec![], Some(Role::ReadOnly)),
            (1001, 1001, vec![901], Some(Role::ReadOnly)),
            (1001, 1001, vec![4, 24], None),
            (1001, 1001, vec![], None),
        ] {
            assert_eq!(r.role_of(uid, gid, &groups), want, "{uid} {gid} {groups:?}");
        }
        // A group that does not exist gives its role to nobody.
        let none = Roles {
            operator_gid: None,
            read_only_gid: None,
            ..roles()
        };
        assert_eq!(none.role_of(1001, 900, &[901]), None);
        assert_eq!(none.role_of(0, 0, &[]), Some(Role::Operator));
    }

    #[test]
    fn calls_need_roles_by_method() {
        assert_eq!(needed_role(&Method::GET), Role::ReadOnly);
        assert_eq!(needed_role(&Method::HEAD), Role::ReadOnly);
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(needed_role(&m), Role::Operator, "{m}");
        }
        for (have, need, ok) in [
            (Some(Role::Operator), Role::Operator, true),
            (Some(Role::Operator), Role::ReadOnly, true),
            (Some(Role::ReadOnly), Role::ReadOnly, true),
            (Some(Role::ReadOnly), Role::Operator, false),
            (None, Role::ReadOnly, false),
            (None, Role::Operator, false),
        ] {
            assert_eq!(allows(have, need), ok, "{have:?} {need:?}");
        }
    }

    #[test]
    fn refusals_name_the_role_and_the_caller() {
        let c = Caller {
            uid: 1001,
            gid: 901,
            pid: Some(7),
            comm: Some("xenchan".into()),
            groups: vec![],
        };
        let m = roles().refusal(
            &c,
            Some(Role::ReadOnly),
            Role::Operator,
            "PUT /v1/domains/a/config",
        );
        assert_eq!(
            m,
            "PUT /v1/domains/a/config needs the operator role; uid 1001 (pid 7, xenchan) has \
             the read-only role (members of group `xenchan` have it)"
        );
        let m = roles().refusal(&c, None, Role::ReadOnly, "GET /v1/domains");
        assert!(
            m.contains("has no role") && m.contains("`xenchan-ro` or `xenchan`"),
            "{m}"
        );
    }

    #[test]
    fn proc_status_groups_count_only_for_the_same_uid() {
        let status =
            "Name:\tcat\nUid:\t1000\t1001\t1001\t1001\nGid:\t5\t5\t5\t5\nGroups:\t4 24 901 \n";
        assert_eq!(groups_from_status(status, 1001), Some(vec![4, 24, 901]));
        assert_eq!(groups_from_status(status, 1000), None);
        assert_eq!(
            groups_from_status("Uid:\t7\t7\t7\t7\nGroups:\t\n", 7),
            Some(vec![])
        );
        assert_eq!(groups_from_status("Name:\tx\n", 7), None);
        assert_eq!(clean_comm("xen\u{1b}chan\n"), "xen?chan");
    }

    #[tokio::test]
    async fn a_peer_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // As the broker's own user (groups not needed) and as any other user would be.
        for own in [me, me.wrapping_add(1)] {
            let c = peer(&a, own).unwrap();
            assert_eq!(c.uid, me);
            assert_eq!(c.pid, Some(std::process::id().cast_signed()));
            assert!(c.comm.is_some(), "{c:?}");
        }
    }
}
