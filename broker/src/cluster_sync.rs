//! Cluster mode's watch (docs/CLUSTER.md): what reaches this broker from etcd.
//!
//! A PUT may go through any broker; only the one running the domain talks to its agent.
//! This task watches the domains this host owns (or is about to receive in a migration)
//! and brings each new desired configuration into the local cache and the registry, so
//! the domain's session pushes it, exactly as after a local PUT. When this host becomes
//! the owner (a claim at prepare, a completed migration, a domain taken after host loss)
//! it reads the desired configuration from etcd the same way. When etcd is unreachable it
//! says so and retries; the watch resumes from the last revision seen, so nothing is
//! missed, and the domains keep being served from the cache meanwhile. A broker that
//! started while etcd was unreachable joins here first, once etcd answers, and then does
//! what a start does: claims, the watch, the applied states held meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xenchan_basics::chain;
use xenchan_cluster::{Cluster, Desired, Uuid, WatchEvent};
use xenchan_protocol::config::{Digest, GuestConfig};

use crate::api::types::Lifecycle;
use crate::domains::Shared;
use crate::leases::leases_of;
use crate::store::etcd::{SyncRequest, join_when_etcd_answers, store_error};
use crate::store::{EtcdStore, PutRequest, Store};

/// Watches etcd until `stop`.
pub(crate) async fn run(sh: Arc<Shared>, etcd: Arc<EtcdStore>, stop: CancellationToken) {
    let Some(mut requests) = etcd.take_sync_requests() else {
        tracing::error!("cluster watch started twice: the second one does nothing");
        return;
    };
    // At once when the broker joined at start; else when etcd first answers.
    let Some(cluster) = join_when_etcd_answers(&etcd, &stop).await else {
        return;
    };
    let mut lease = cluster.host_lease();
    // From "now": the state before it is read by `resync` below, which runs after the
    // watch is set up, so nothing between the two is missed.
    let from = loop {
        match cluster.revision().await {
            Ok(r) => break r + 1,
            Err(e) => {
                tracing::warn!("cluster watch waits for etcd: {}", chain(&e));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let (owned, waiting) = owned_at_start(&etcd, &cluster).await;
    // Only the owner may record what an agent applied: the states held until now go
    // out once the claims are made.
    etcd.record_applied_from_now(Arc::clone(&cluster));
    let mut watcher = cluster.watch(owned.clone(), from);
    for uuid in &owned {
        adopt(&sh, &etcd, uuid).await;
    }
    for uuid in waiting {
        wait_for(&etcd, &mut watcher, uuid).await;
    }
    let mut warned = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            changed = lease.changed() => {
                if changed.is_ok() {
                    // The host lease expired and was granted anew: every ownership key
                    // of the old one is gone (the watch may already have reported them
                    // lost). Claim the domains this host still owns or runs.
                    let mut again: Vec<Uuid> = watcher.interest().owned().iter().cloned().collect();
                    again.extend(running_here(&sh, &etcd));
                    again.sort();
                    again.dedup();
                    tracing::warn!(domains = again.len(), "host lease renewed after expiry: claiming domains again");
                    for uuid in again {
                        if let Err(e) = cluster.claim(&uuid).await {
                            tracing::warn!(%uuid, "cannot claim again: {}", chain(&e));
                            watcher.interest_mut().wait_for(uuid);
                        }
                    }
                }
                continue;
            }
            r = requests.recv() => {
                match r {
                    // The prepare read the current configuration (`refresh`); the
                    // watch follows it from now on.
                    Some(SyncRequest::Wait(uuid)) if !watcher.interest().owned().contains(&uuid) => {
                        wait_for(&etcd, &mut watcher, uuid).await;
                    }
                    Some(SyncRequest::Forget(uuid)) => watcher.interest_mut().stop_waiting(&uuid),
                    Some(SyncRequest::Gone(uuid)) => gone(&sh, &etcd, &mut watcher, &uuid).await,
                    Some(SyncRequest::Wait(_)) | None => {}
                }
                continue;
            }
            e = watcher.next() => e,
        };
        match event {
            Ok(e) => {
                if warned {
                    tracing::info!("etcd reachable again: cluster watch resumed");
                    warned = false;
                }
                handle(&sh, &etcd, &mut watcher, e).await;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        "cluster watch interrupted (serving the cached domains meanwhile): {}",
                        chain(&e)
                    );
                    warned = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// The cached domains this host owns in etcd (after a restart within the host lease's
/// TTL the ownership keys are still there; claiming rebinds them to the new lease), and
/// those it runs (prepared, not released) that another host owns: waited for. One
/// released here that this host still owns (its release could not reach etcd: before
/// joining, or during an outage) is given up.
async fn owned_at_start(etcd: &EtcdStore, cluster: &Cluster) -> (Vec<Uuid>, Vec<Uuid>) {
    let (mut owned, mut waiting) = (Vec::new(), Vec::new());
    let Ok(records) = etcd.local().load_all().await else {
        return (owned, waiting);
    };
    for r in records {
        let Some(uuid) = r.uuid.as_deref().and_then(|u| Uuid::parse(u).ok()) else {
            continue;
        };
        let runs_here = r.lifecycle == Some(Lifecycle::Running);
        match cluster.ownership(&uuid).await {
            Ok(o)
                if o.owner.as_deref() == Some(cluster.host())
                    && r.lifecycle == Some(Lifecycle::Stopped) =>
            {
                match cluster.disown(&uuid).await {
                    Ok(_) => tracing::info!(domain = %r.name, %uuid,
                        "released here while etcd could not be told: ownership given up"),
                    Err(e) => tracing::warn!(domain = %r.name, %uuid,
                        "cannot give up ownership in etcd: {}", chain(&e)),
                }
            }
            Ok(o)
                if o.owner.as_deref() == Some(cluster.host())
                    || (o.owner.is_none() && runs_here) =>
            {
                match cluster.claim(&uuid).await {
                    Ok(()) => owned.push(uuid),
                    Err(_) if runs_here => waiting.push(uuid),
                    Err(_) => {}
                }
            }
            Ok(_) if runs_here => waiting.push(uuid),
            Ok(_) => {}
            Err(e) => tracing::warn!(domain = %r.name, "ownership unknown at start: {}", chain(&e)),
        }
    }
    (owned, waiting)
}

/// The UUIDs of the domains running here (prepared and not released, or with a live
/// session).
fn running_here(sh: &Shared, etcd: &EtcdStore) -> Vec<Uuid> {
    sh.views()
        .into_iter()
        .filter(|v| v.lifecycle == Some(Lifecycle::Running) || v.connected)
        .filter_map(|v| {
            etcd.uuid_of(&v.name)
                .or_else(|| v.uuid.as_deref().and_then(|u| Uuid::parse(u).ok()))
        })
        .collect()
}

/// Discovery saw a domain stop here: give its ownership up, unless a session or a
/// lifecycle prepare here still holds the VM (the other half of a same-host migration).
async fn gone(sh: &Shared, etcd: &EtcdStore, watcher: &mut xenchan_cluster::Watcher, uuid: &Uuid) {
    let held = sh.views().into_iter().any(|v| {
        (v.connected || v.socket.is_some() || v.lifecycle == Some(Lifecycle::Running))
            && (v.uuid.as_deref() == Some(uuid.as_str())
                || etcd.uuid_of(&v.name).as_ref() == Some(uuid))
    });
    if held {
        return;
    }
    watcher.interest_mut().stop_waiting(uuid);
    let Ok(cluster) = etcd.cluster() else {
        return; // not joined: the claims at join skip a domain no longer running here
    };
    match cluster.disown(uuid).await {
        Ok(true) => {
            tracing::info!(%uuid, "stopped here (its socket went away): ownership given up");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%uuid, "cannot give up ownership in etcd (the host lease bounds it): {}", chain(&e));
        }
    }
}

/// Whether the domain `uuid` runs here.
fn runs_here(sh: &Shared, etcd: &EtcdStore, uuid: &Uuid) -> bool {
    etcd.name_of(uuid)
        .and_then(|n| sh.view(&n))
        .is_some_and(|v| v.lifecycle == Some(Lifecycle::Running) || v.connected)
}

/// Waits for the owner of a domain running here to give it up; claims once now, so that
/// an owner gone before the watch knew is not missed.
async fn wait_for(etcd: &EtcdStore, watcher: &mut xenchan_cluster::Watcher, uuid: Uuid) {
    watcher.interest_mut().wait_for(uuid.clone());
    claim_orphan(etcd, &uuid).await;
}

/// Claims a domain running here that nobody owns (its host was lost, or it gave it up);
/// the watch then reports it acquired and the desired configuration is read.
async fn claim_orphan(etcd: &EtcdStore, uuid: &Uuid) {
    let claimed = match etcd.cluster() {
        Ok(c) => c.claim(uuid).await,
        Err(e) => {
            tracing::warn!(%uuid, "cannot claim: {}", chain(&e));
            return;
        }
    };
    match claimed {
        Ok(()) => tracing::info!(%uuid, "claimed a domain running here that nobody owned"),
        Err(xenchan_cluster::ClusterError::NotOwner { owner, .. }) => {
            tracing::info!(%uuid, ?owner,
                "runs here but another host owns it: claimed when that host gives it up or its lease expires");
        }
        Err(e) => tracing::warn!(%uuid, "cannot claim: {}", chain(&e)),
    }
}

async fn handle(
    sh: &Arc<Shared>,
    etcd: &EtcdStore,
    watcher: &mut xenchan_cluster::Watcher,
    event: WatchEvent,
) {
    match event {
        WatchEvent::Desired { uuid, desired } => install(sh, etcd, &uuid, &desired).await,
        WatchEvent::Acquired { uuid } | WatchEvent::Incoming { uuid } => {
            adopt(sh, etcd, &uuid).await;
        }
        WatchEvent::DesiredDeleted { uuid } => {
            if let Some(name) = etcd.name_of(&uuid) {
                drop_cached(sh, etcd, &name).await;
            }
        }
        WatchEvent::Lost { uuid, owner } => {
            let name = etcd.name_of(&uuid).unwrap_or_else(|| uuid.to_string());
            tracing::info!(domain = %name, %uuid, owner = ?owner, "this host no longer owns the domain");
            let _ = sh
                .store
                .event(
                    Some(&name),
                    "ownership",
                    &format!("lost to {}", owner.as_deref().unwrap_or("nobody")),
                )
                .await;
            if runs_here(sh, etcd, &uuid) {
                // Still running here: after a migration away, until its `release`; or
                // this host's lease expired. Take it back if nobody else holds it.
                watcher.interest_mut().wait_for(uuid.clone());
                if owner.is_none() {
                    claim_orphan(etcd, &uuid).await;
                }
            }
        }
        WatchEvent::Orphaned { uuid } => {
            if runs_here(sh, etcd, &uuid) {
                claim_orphan(etcd, &uuid).await;
            } else {
                watcher.interest_mut().stop_waiting(&uuid);
            }
        }
        WatchEvent::IncomingEnded { uuid } => {
            tracing::debug!(%uuid, "incoming migration ended");
        }
        WatchEvent::Corrupt { key, reason } => {
            tracing::warn!(key, "etcd value not written by xenchan, ignored: {reason}");
        }
    }
}

/// Drops the cached desired configuration of a domain (deleted in etcd, or a migration
/// to here that was cancelled: this host no longer follows it).
pub(crate) async fn drop_cached(sh: &Shared, etcd: &EtcdStore, name: &str) {
    let _domain = sh.locks.lock(name).await;
    let keep_row = sh.keeps_row_without_config(name);
    match etcd.local().delete_config(name, keep_row).await {
        Ok(_) => sh.remove_desired(name),
        Err(e) => tracing::warn!(domain = %name, "cache: {}", chain(&e)),
    }
}

/// A domain starts here (lifecycle prepare): its desired configuration is read from etcd
/// before its session starts, so that what this host cached long ago (a PUT through it,
/// the VM's last run here) is never what it pushes. An outage only logs: the cache
/// serves.
pub(crate) async fn refresh(sh: &Arc<Shared>, etcd: &EtcdStore, name: &str, uuid: &str) {
    let Ok(uuid) = Uuid::parse(uuid) else {
        return;
    };
    if etcd.uuid_of(name).is_none() {
        etcd.remember_uuid(name, &uuid);
    }
    adopt(sh, etcd, &uuid).await;
}

/// Reads the desired configuration of a domain this host now owns or receives.
pub(crate) async fn adopt(sh: &Arc<Shared>, etcd: &EtcdStore, uuid: &Uuid) {
    let desired = match etcd.cluster() {
        Ok(c) => c.desired(uuid).await.map_err(store_error),
        Err(e) => Err(e),
    };
    match desired {
        Ok(Some(d)) => install(sh, etcd, uuid, &d).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(%uuid, "cannot read the desired configuration: {}", chain(&e)),
    }
}

/// Brings a desired configuration from etcd into the cache and the registry (the session
/// pushes it if the agent has not applied it).
pub(crate) async fn install(sh: &Arc<Shared>, etcd: &EtcdStore, uuid: &Uuid, desired: &Desired) {
    let name = etcd.name_of(uuid).unwrap_or_else(|| desired.name.clone());
    // The echo of this broker's own PUT (or a generation it read already): the cache and
    // the registry have it. Etcd holds the canonical form, so its digest is exact; a
    // document in another form falls through to the full install.
    if etcd.uuid_of(&name).as_ref() == Some(uuid)
        && sh.has_desired(
            &name,
            desired.generation,
            &Digest::of_canonical(&desired.config),
        )
    {
        return;
    }
    if let Err(e) = crate::paths::check_domain_name(&name) {
        tracing::warn!(%uuid, "desired configuration in etcd names an unusable domain: {e}");
        return;
    }
    let config = match GuestConfig::from_json(&desired.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(domain = %name, %uuid, generation = desired.generation,
                "desired configuration in etcd is not a valid document: {e}");
            return;
        }
    };
    let leases = leases_of(&config, sh.config.leases.hostname);
    let _domain = sh.locks.lock(&name).await;
    let cached = etcd
        .local()
        .put_config_at(
            PutRequest {
                name: &name,
                uuid: Some(uuid.as_str()),
                config: &config,
                leases: &leases,
                max_domains: sh.config.limits.max_domains,
            },
            desired.generation,
        )
        .await;
    match cached {
        Ok(outcome) => {
            let u = uuid.to_string();
            etcd.remember_uuid(&name, uuid);
            sh.install_desired(&name, Arc::clone(outcome.desired()), Some(&u));
            tracing::info!(domain = %name, generation = desired.generation, "desired configuration from etcd");
        }
        Err(e) => tracing::warn!(domain = %name, "cache: {}", chain(&e)),
    }
}
