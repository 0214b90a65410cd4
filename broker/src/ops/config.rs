//! `PUT config` (prepare), `DELETE` (unprepare) and `POST .../push`.

use std::sync::Arc;

use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::ConfigPush;
use xenchan_protocol::{Body as Msg, Envelope, Nonce, Role};

use super::{OpError, hook_stdin, prepare_hooks, view_or_empty};
use crate::api::types::{DeleteResult, DomainView};
use crate::domains::Shared;
use crate::hooks::HookCall;
use crate::leases::leases_of;
use crate::store::{Deleted, PutOutcome, PutRequest};

/// A PUT: the domain, its configuration (already validated) and, if given, its VM UUID
/// (lowercase).
#[derive(Debug, Clone)]
pub struct PutConfig {
    /// The domain.
    pub name: String,
    /// `?uuid=`.
    pub uuid: Option<String>,
    /// The document.
    pub config: GuestConfig,
}

/// What a PUT did, and the domain's view after it.
#[derive(Debug)]
pub struct PutDone {
    /// Created, updated or unchanged, with the desired configuration now.
    pub outcome: PutOutcome,
    /// The domain now.
    pub view: DomainView,
}

/// Stores a new desired configuration: checks that its push fits in one frame, runs the
/// `prepare begin` hooks (after checking its leases are free: a doomed configuration runs
/// no hook), stores it (the store checks the leases in its transaction), updates the
/// registry (the session pushes), and queues the `prepare end` hooks. The same document
/// again changes nothing and runs no end hook.
pub async fn do_put_config(sh: &Arc<Shared>, put: PutConfig) -> Result<PutDone, OpError> {
    let PutConfig { name, uuid, config } = put;
    check_wire_size(&config, sh.config.limits.max_frame)?;
    let leases = leases_of(&config, sh.config.leases.hostname);
    // The check before the store's exists for the hooks, which must not run for a
    // configuration the store would refuse; without hooks it would only repeat the
    // transaction's own check (the same answer) at the cost of a store round trip
    // (an etcd read in cluster mode).
    if sh.hooks.any() {
        if let Some(c) = sh.store.lease_conflict(&name, &leases).await? {
            return Err(OpError::Lease(c));
        }
        let digest = config.digest().to_string();
        let mut prospective = view_or_empty(sh, &name);
        prospective.config = Some(config.clone());
        prospective.desired_digest = Some(digest.clone());
        if uuid.is_some() {
            prospective.uuid.clone_from(&uuid);
        }
        prepare_hooks(sh, &name, digest, &prospective).await?;
    }

    let outcome = {
        let _domain = sh.locks.lock(&name).await;
        let outcome = sh
            .store
            .put_config(PutRequest {
                name: &name,
                uuid: uuid.as_deref(),
                config: &config,
                leases: &leases,
                max_domains: sh.config.limits.max_domains,
            })
            .await??;
        sh.install_desired(&name, Arc::clone(outcome.desired()), uuid.as_ref());
        outcome
    };
    if !matches!(outcome, PutOutcome::Unchanged(_)) {
        tracing::info!(domain = %name, generation = outcome.desired().generation, "configuration accepted");
        sh.notify_hook(
            &name,
            "prepare",
            "end",
            outcome.desired().generation.to_string(),
        );
    }
    Ok(PutDone {
        outcome,
        view: view_or_empty(sh, &name),
    })
}

/// Refuses a config whose push would not fit in one frame (the agent could never read
/// it).
fn check_wire_size(config: &GuestConfig, max_frame: usize) -> Result<(), OpError> {
    let env = Envelope::new(
        Role::Broker,
        Some(Nonce::from_bytes([0; 16])),
        Msg::Config(ConfigPush::new(u64::MAX, config.clone())),
    );
    let size = serde_json::to_vec(&env).map_or(usize::MAX, |v| v.len());
    if size > max_frame {
        return Err(OpError::BadField {
            path: ".".into(),
            error: format!(
                "the configuration takes {size} bytes on the wire; limits.max_frame is {max_frame}"
            ),
        });
    }
    Ok(())
}

/// Drops the desired configuration and releases the domain's leases (unprepare), then
/// queues the `unprepare end` hooks with the view from before. Idempotent.
pub async fn do_delete(sh: &Arc<Shared>, name: String) -> Result<DeleteResult, OpError> {
    let before = sh.view(&name);
    let Deleted { removed, released } = {
        let _domain = sh.locks.lock(&name).await;
        let keep_row = sh.keeps_row_without_config(&name);
        let deleted = sh.store.delete_config(&name, keep_row).await?;
        sh.remove_desired(&name);
        deleted
    };
    if removed || !released.is_empty() {
        tracing::info!(domain = %name, "configuration removed; released {released:?}");
        sh.hooks.notify(HookCall {
            domain: name.clone(),
            event: "unprepare",
            phase: "end",
            extra: "-".into(),
            stdin: hook_stdin(&name, before.as_ref()),
        });
    }
    Ok(DeleteResult {
        name,
        removed,
        released,
    })
}

/// Pushes the desired configuration again, even if the agent has applied it. `force`:
/// the push carries `force: true`, the operator's override of the generation order (an
/// agent applies it even if it applied a later generation of this store's lineage).
pub fn do_push(sh: &Shared, name: &str, force: bool) -> Result<DomainView, OpError> {
    if !sh.force_push(name, force) {
        return Err(OpError::NothingToPush(name.to_string()));
    }
    Ok(view_or_empty(sh, name))
}
