//! The operations layer: what each control API write does, apart from HTTP.
//!
//! Each `do_*` takes typed input (already parsed and validated by the handler), owns the
//! whole operation (the check before the hooks, the `prepare` hooks, the per-domain lock
//! around the durable write and the in-memory update, the notification hooks) and returns
//! a typed outcome or an [`OpError`]. The HTTP handlers in `api::server` only extract,
//! call and map [`OpError`] to a status in one place; no handler takes a lock.
//!
//! Order of a write: refuse a doomed request first (no hook runs for it), run the
//! `prepare begin` hooks with no lock held (a hook may take its time, or even call the
//! API), then take the domain's lock ([`DomainLocks`]) for the store write and the
//! registry update, so memory ends in the order the store committed.

mod bulk;
mod config;
mod lifecycle;
mod locks;
mod migrate;

use thiserror::Error;
use xenchan_protocol::config::ConfigError;

pub use bulk::{BulkHead, do_put_configs, read_items};
pub use config::{PutConfig, PutDone, do_delete, do_push, do_put_config};
pub use lifecycle::{Prepare, do_prepare, do_release};
pub use locks::DomainLocks;
pub use migrate::{do_migrate_cancel, do_migrate_complete, do_migrate_prepare};

use crate::api::types::{DomainState, DomainView};
use crate::domains::Shared;
use crate::hooks::HookCall;
use crate::leases::LeaseConflict;
use crate::metrics::ErrorKind;
use crate::store::{PrepareRefusal, PutRefusal, StoreError};

/// Why an operation did not happen. Each variant names what is wrong; `api::server` maps
/// each to one HTTP status.
#[derive(Debug, Error)]
pub enum OpError {
    /// A request field is wrong (`path` names it).
    #[error("{error}")]
    BadField {
        /// The field (`uuid`, `channels[1].path`, `.` for the whole document).
        path: String,
        /// What is wrong with it.
        error: String,
    },
    /// The configuration document is refused (every problem found).
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// An item of a bulk PUT that was not started: the request's deadline was too near.
    #[error(
        "not attempted: the request's deadline (timeouts.request) came before this item's \
         turn; nothing was stored for it, send it again"
    )]
    NotAttempted,
    /// A lease of the configuration is held by another domain.
    #[error("{0}")]
    Lease(LeaseConflict),
    /// The broker already manages `limits.max_domains` domains.
    #[error("the broker already manages limits.max_domains = {0} domains")]
    TooManyDomains(usize),
    /// Another registered domain has the VM UUID (typically: the VM was undefined, e.g.
    /// `virsh undefine`, and defined again under another name).
    #[error(
        "VM {uuid} is registered as domain {holder}; if {holder} no longer exists (the VM \
         was undefined and defined again), clear it with `xenchan domain rm {holder}`"
    )]
    UuidTaken {
        /// The UUID.
        uuid: String,
        /// The domain registered with it.
        holder: String,
    },
    /// The domain's agent is connected under another VM UUID.
    #[error(
        "domain {name} is registered as VM {recorded} and its agent is connected; \
         it cannot become VM {asked} (stop the old VM, or clear the registration with \
         `xenchan domain rm {name}`)"
    )]
    UuidChanged {
        /// The domain.
        name: String,
        /// The UUID recorded for it.
        recorded: String,
        /// The UUID asked for.
        asked: String,
    },
    /// A `prepare begin` hook said no.
    #[error("prepare hook refused: {0}")]
    HookRefused(String),
    /// A `prepare begin` hook ran past `timeouts.hook` and was killed.
    #[error(
        "prepare hook {hook} did not finish within timeouts.hook ({after_ms} ms) and was killed{}",
        if stderr.is_empty() { String::new() } else { format!("; its stderr: {stderr}") }
    )]
    HookTimedOut {
        /// The hook's file name.
        hook: String,
        /// `timeouts.hook`, in milliseconds.
        after_ms: u64,
        /// What it wrote on stderr before (bounded).
        stderr: String,
    },
    /// `POST .../push` for a domain without a configuration.
    #[error("domain {0} has no configuration to push")]
    NothingToPush(String),
    /// The store could not answer.
    #[error("the broker's store failed")]
    Store(#[source] StoreError),
    /// A migration call with the embedded store.
    #[error(
        "migration needs the etcd backend ([store] backend = \"etcd\", docs/CLUSTER.md): \
         with the embedded store no other host can know the domain"
    )]
    NeedsCluster,
    /// Cluster mode: the lock-manager rules refuse to start the domain here, because
    /// another live host runs it (the source names that host and its lease's expiry).
    #[error("prepare refused")]
    RunsElsewhere(#[source] xenchan_cluster::ClusterError),
    /// The lock-manager rules refuse the migration step (the error names the owner, or
    /// the migration prepared instead).
    #[error("migration refused")]
    Migration(#[source] xenchan_cluster::ClusterError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store: {}", xenchan_basics::chain(&e));
        OpError::Store(e)
    }
}

impl From<PutRefusal> for OpError {
    fn from(r: PutRefusal) -> Self {
        match r {
            PutRefusal::Lease(c) => OpError::Lease(c),
            PutRefusal::TooManyDomains(max) => OpError::TooManyDomains(max),
            PutRefusal::BadField { path, error } => OpError::BadField { path, error },
        }
    }
}

impl OpError {
    fn prepare_refused(name: &str, r: PrepareRefusal) -> OpError {
        match r {
            PrepareRefusal::UuidTaken { uuid, holder } => OpError::UuidTaken { uuid, holder },
            PrepareRefusal::UuidChanged { recorded, asked } => OpError::UuidChanged {
                name: name.to_string(),
                recorded,
                asked,
            },
            PrepareRefusal::Lease(c) => OpError::Lease(c),
            PrepareRefusal::TooManyDomains(max) => OpError::TooManyDomains(max),
            PrepareRefusal::RunsElsewhere {
                uuid,
                host,
                owner,
                expires_within,
            } => OpError::RunsElsewhere(xenchan_cluster::ClusterError::RunsElsewhere {
                uuid,
                host,
                owner,
                expires_within,
            }),
        }
    }
}

/// Runs the `prepare begin` hooks with the domain's prospective view on stdin (no lock
/// is held: a hook may take its time, bounded, or call the API).
async fn prepare_hooks(
    sh: &Shared,
    name: &str,
    extra: String,
    prospective: &DomainView,
) -> Result<(), OpError> {
    let call = HookCall {
        domain: name.to_string(),
        event: "prepare",
        phase: "begin",
        extra,
        stdin: serde_json::to_vec(prospective).expect("views serialise"),
    };
    if let Err(f) = sh.hooks.run(&call).await {
        tracing::warn!(domain = %name, "prepare refused: {f}");
        sh.metrics.error(ErrorKind::Hook);
        if f.timed_out {
            return Err(OpError::HookTimedOut {
                hook: f.hook,
                after_ms: sh.config.timeouts.hook,
                stderr: f.stderr,
            });
        }
        let detail = if f.stderr.is_empty() {
            f.to_string()
        } else {
            f.stderr.clone()
        };
        return Err(OpError::HookRefused(detail));
    }
    Ok(())
}

/// The view of a domain, or of a domain the broker does not know (yet).
fn view_or_empty(sh: &Shared, name: &str) -> DomainView {
    sh.view(name).unwrap_or_else(|| empty_view(name))
}

fn empty_view(name: &str) -> DomainView {
    DomainView {
        name: name.to_string(),
        uuid: None,
        reported_uuid: None,
        state: DomainState::Pending,
        desired_generation: None,
        desired_digest: None,
        applied_generation: None,
        applied_digest: None,
        items: Vec::new(),
        last_error: None,
        facts: None,
        connected: false,
        last_result_at: None,
        config: None,
        lifecycle: None,
        socket: None,
        domid: None,
        throttled: None,
        hooks_dropped: 0,
    }
}

/// The hook input of a domain that may be gone from the registry.
fn hook_stdin(name: &str, view: Option<&DomainView>) -> Vec<u8> {
    view.map_or_else(
        || format!("{{\"name\":\"{name}\"}}").into_bytes(),
        |v| serde_json::to_vec(v).expect("views serialise"),
    )
}

#[cfg(test)]
mod tests;
