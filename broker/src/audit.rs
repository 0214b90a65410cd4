//! Who made the API call being served: the caller's credentials, read from the
//! connection, and the call's scope in which every event the store records names them.
//!
//! Why a task-local and not a parameter: the caller is a fact about the request, not
//! about any one store write. One call causes events in several store operations (a PUT:
//! `config`; a prepare: `prepare`; a delete: `delete`), and the `Store` trait is shared
//! with other backends; a task-local set around the handler reaches every write the
//! request awaits without widening each method. Work the request spawns onto other tasks
//! (a session pushing later, a background hook) is not the call: its events carry no
//! caller.

use std::future::Future;

use xenchan_api::types::CallerView;

/// The peer of a control-API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its uid (`SO_PEERCRED`).
    pub uid: u32,
    /// Its primary gid at connect time (`SO_PEERCRED`).
    pub gid: u32,
    /// Its pid at connect time (`SO_PEERCRED`; `None` if the kernel gave none).
    pub pid: Option<i32>,
    /// Its command name (`/proc/<pid>/comm`), when readable.
    pub comm: Option<String>,
    /// Its supplementary groups (from `/proc/<pid>/status`, else the group database).
    pub groups: Vec<u32>,
}

impl Caller {
    /// What an event shows of the caller.
    pub fn view(&self) -> CallerView {
        CallerView {
            uid: self.uid,
            pid: self.pid,
            comm: self.comm.clone(),
        }
    }

    /// `uid 1001 (pid 4242, curl)`, for logs and errors.
    pub fn describe(&self) -> String {
        match (self.pid, &self.comm) {
            (Some(p), Some(c)) => format!("uid {} (pid {p}, {c})", self.uid),
            (Some(p), None) => format!("uid {} (pid {p})", self.uid),
            _ => format!("uid {}", self.uid),
        }
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` as a call made by `caller` (see the module documentation).
pub async fn scope<F: Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// The caller of the API call being served on this task, if any.
pub fn current() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            uid: 1001,
            gid: 1001,
            pid: Some(42),
            comm: Some("curl".into()),
            groups: vec![],
        }
    }

    #[tokio::test]
    async fn the_caller_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let seen = scope(caller(), async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(seen, Some(caller()));
        // A spawned task is not the call.
        let spawned = scope(caller(), async {
            tokio::spawn(async { current() }).await.unwrap()
        })
        .await;
        assert_eq!(spawned, None);
        assert_eq!(caller().describe(), "uid 1001 (pid 42, curl)");
    }
}
