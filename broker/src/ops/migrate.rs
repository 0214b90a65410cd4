//! The migration hand-off of cluster mode (docs/CLUSTER.md), with libvirt's lock-manager
//! meanings: `prepare` on the destination registers it as the incoming host while the
//! source still owns the domain (the domain appears here, its desired configuration read
//! from etcd); `complete` on the destination moves ownership here in one transaction;
//! `cancel` forgets the prepared migration and leaves the source owning. The VM's leases
//! are keyed by its UUID, not by a host: none of these touches them.

use std::sync::Arc;

use xenchan_cluster::{ClusterError, Ownership, Uuid};

use super::OpError;
use crate::api::types::MigrationView;
use crate::cluster_sync;
use crate::domains::Shared;
use crate::store::EtcdStore;
use crate::store::etcd::store_error;

/// The cluster backend, or the refusal saying migration needs it.
fn cluster_of(sh: &Shared) -> Result<&EtcdStore, OpError> {
    sh.store.as_cluster().ok_or(OpError::NeedsCluster)
}

fn parse_uuid(uuid: &str) -> Result<Uuid, OpError> {
    Uuid::parse(uuid).map_err(|e| OpError::BadField {
        path: "uuid".into(),
        error: e.to_string(),
    })
}

/// A cluster error as an operation error: the lock-manager refusals are 409 naming the
/// owner or the pending migration; an outage is 503 naming it.
fn refused(e: ClusterError) -> OpError {
    match e {
        e @ (ClusterError::NotOwner { .. }
        | ClusterError::NoMigration { .. }
        | ClusterError::MigrationPending { .. }) => OpError::Migration(e),
        ClusterError::Invalid(i) => OpError::BadField {
            path: i.field.to_string(),
            error: i.to_string(),
        },
        e => OpError::from(store_error(e)),
    }
}

fn view(etcd: &EtcdStore, uuid: &Uuid, own: Ownership, changed: bool) -> MigrationView {
    MigrationView {
        uuid: uuid.to_string(),
        name: etcd.name_of(uuid),
        host: etcd.host().to_string(),
        owner: own.owner,
        incoming: own.incoming,
        changed,
    }
}

/// `prepare` on the destination (this host): registers this host as the incoming one
/// while the owner (the source) keeps the domain, and brings the domain's desired
/// configuration into the cache and the registry, so that the session attaching to the
/// destination's socket finds it (and pushes nothing the agent already applied).
pub async fn do_migrate_prepare(
    sh: &Arc<Shared>,
    uuid: &str,
    name: Option<String>,
) -> Result<MigrationView, OpError> {
    let etcd = cluster_of(sh)?;
    let uuid = parse_uuid(uuid)?;
    let cluster = etcd.cluster()?;
    let host = cluster.host().to_string();
    if let Some(n) = &name {
        crate::paths::check_domain_name(n).map_err(|error| OpError::BadField {
            path: "name".into(),
            error,
        })?;
    }
    let before = cluster.ownership(&uuid).await.map_err(refused)?;
    let Some(source) = before.owner.clone() else {
        return Err(OpError::Migration(ClusterError::NotOwner {
            uuid: uuid.to_string(),
            host: "the source".into(),
            owner: None,
        }));
    };
    let desired = cluster.desired(&uuid).await.map_err(refused)?;
    let known = name
        .or_else(|| etcd.name_of(&uuid))
        .or_else(|| desired.as_ref().map(|d| d.name.clone()));
    let Some(known) = known else {
        return Err(OpError::BadField {
            path: "name".into(),
            error: format!(
                "VM {uuid} has no desired configuration in etcd to take its name from: \
                 give the domain's name (`{{\"name\": ...}}`)"
            ),
        });
    };
    cluster
        .prepare_migrate(&uuid, &source, &host)
        .await
        .map_err(refused)?;
    etcd.remember_uuid(&known, &uuid);
    if let Some(d) = &desired {
        cluster_sync::install(sh, etcd, &uuid, d).await;
    }
    let changed = before.incoming.as_deref() != Some(host.as_str());
    tracing::info!(domain = %known, %uuid, from = %source, to = %host, changed, "migration prepared");
    let _ = sh
        .store
        .event(
            Some(&known),
            "migrate",
            &format!("prepared: {source} -> {host}"),
        )
        .await;
    let after = Ownership {
        owner: Some(source),
        incoming: Some(host),
    };
    Ok(view(etcd, &uuid, after, changed))
}

/// `complete` on the destination (this host): ownership moves here, only while the
/// source still owns the domain and this host is the prepared destination. Repeating it
/// once done changes nothing.
pub async fn do_migrate_complete(sh: &Arc<Shared>, uuid: &str) -> Result<MigrationView, OpError> {
    let etcd = cluster_of(sh)?;
    let uuid = parse_uuid(uuid)?;
    let cluster = etcd.cluster()?;
    let host = cluster.host().to_string();
    let before = cluster.ownership(&uuid).await.map_err(refused)?;
    if before.owner.as_deref() == Some(host.as_str()) && before.incoming.is_none() {
        return Ok(view(etcd, &uuid, before, false));
    }
    let Some(source) = before.owner.clone() else {
        return Err(OpError::Migration(ClusterError::NoMigration {
            uuid: uuid.to_string(),
            to: host,
            incoming: before.incoming,
        }));
    };
    cluster
        .complete_migrate(&uuid, &source, &host)
        .await
        .map_err(refused)?;
    let name = etcd.name_of(&uuid);
    tracing::info!(domain = ?name, %uuid, from = %source, to = %host, "migration complete: this host owns the domain");
    let _ = sh
        .store
        .event(
            name.as_deref(),
            "migrate",
            &format!("complete: {source} -> {host}"),
        )
        .await;
    let after = Ownership {
        owner: Some(host),
        incoming: None,
    };
    Ok(view(etcd, &uuid, after, true))
}

/// `cancel` on the destination (this host): the prepared migration to here is
/// forgotten; the owner (the source) keeps the domain. Repeating it changes nothing. A
/// domain that does not run here is dropped from this host's cache: the watch no longer
/// follows it.
pub async fn do_migrate_cancel(sh: &Arc<Shared>, uuid: &str) -> Result<MigrationView, OpError> {
    let etcd = cluster_of(sh)?;
    let uuid = parse_uuid(uuid)?;
    let cluster = etcd.cluster()?;
    let host = cluster.host().to_string();
    let changed = cluster
        .cancel_migrate(&uuid, &host)
        .await
        .map_err(refused)?;
    let after = cluster.ownership(&uuid).await.map_err(refused)?;
    let name = etcd.name_of(&uuid);
    if let Some(n) = &name {
        let runs_here = sh.view(n).is_some_and(|v| {
            v.lifecycle == Some(crate::api::types::Lifecycle::Running) || v.connected
        });
        if changed && !runs_here && after.owner.as_deref() != Some(host.as_str()) {
            cluster_sync::drop_cached(sh, etcd, n).await;
        }
        if changed {
            tracing::info!(domain = %n, %uuid, owner = ?after.owner, "migration cancelled: the source keeps the domain");
            let _ = sh
                .store
                .event(Some(n), "migrate", &format!("cancelled: to {host}"))
                .await;
        }
    }
    Ok(view(etcd, &uuid, after, changed))
}
