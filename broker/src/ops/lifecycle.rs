//! The lifecycle endpoints of the libvirt hook: `POST .../prepare` (the VM is about to
//! start) and `POST .../release` (it stopped).

use std::path::{Component, PathBuf};
use std::sync::Arc;

use super::{OpError, hook_stdin, prepare_hooks, view_or_empty};
use crate::api::types::{ChannelSpec, DomainState, DomainView, Lifecycle, ReleaseResult};
use crate::config::Config;
use crate::domains::Shared;
use crate::hooks::HookCall;
use crate::store::PrepareRequest;

/// A lifecycle prepare.
#[derive(Debug, Clone)]
pub struct Prepare {
    /// The domain.
    pub name: String,
    /// Its VM UUID, if the caller knows it (lowercase).
    pub uuid: Option<String>,
    /// The VM's channels; the broker's names its socket when it is not the default.
    pub channels: Vec<ChannelSpec>,
}

/// Registers the domain, records its UUID and channel path, confirms its leases, runs
/// the `prepare begin` hooks, marks it running (attaching its session where this
/// broker's mode says so). Idempotent.
pub async fn do_prepare(sh: &Arc<Shared>, req: Prepare) -> Result<DomainView, OpError> {
    let Prepare {
        name,
        uuid,
        channels,
    } = req;
    let channel_path = channel_path_of(&sh.config, &name, &channels)?;
    let path_text = channel_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let ask = |connected: bool, check_only: bool| PrepareRequest {
        name: &name,
        uuid: uuid.as_deref(),
        channel_path: path_text.as_deref(),
        hostname_leases: sh.config.leases.hostname,
        connected,
        max_domains: sh.config.limits.max_domains,
        check_only,
    };
    let refused = |r| OpError::prepare_refused(&name, r);
    // Refuse a doomed prepare before running hooks for it.
    sh.store
        .prepare(ask(sh.connected(&name), true))
        .await?
        .map_err(refused)?;
    let mut prospective = view_or_empty(sh, &name);
    if uuid.is_some() {
        prospective.uuid.clone_from(&uuid);
    }
    prospective.lifecycle = Some(Lifecycle::Running);
    if channel_path.is_some() {
        prospective.socket.clone_from(&channel_path);
    }
    prepare_hooks(sh, &name, "-".into(), &prospective).await?;
    if let (Some(etcd), Some(u)) = (sh.store.as_cluster(), uuid.as_deref()) {
        // Cluster mode: the current desired configuration, before the session can start.
        crate::cluster_sync::refresh(sh, etcd, &name, u).await;
    }
    {
        let _domain = sh.locks.lock(&name).await;
        let done = sh
            .store
            .prepare(ask(sh.connected(&name), false))
            .await?
            .map_err(refused)?;
        tracing::info!(
            domain = %name,
            uuid = done.uuid.as_deref().unwrap_or("-"),
            socket = path_text.as_deref().unwrap_or("(default)"),
            leases = ?done.leases,
            created = done.created,
            "domain prepared"
        );
        sh.prepared(&name, done.uuid, channel_path);
    }
    Ok(view_or_empty(sh, &name))
}

/// Stops the session, keeps the configuration and leases, drops the running marker,
/// queues the `release end` hooks. Idempotent; `released` says whether it was running.
pub async fn do_release(sh: &Arc<Shared>, name: String) -> Result<ReleaseResult, OpError> {
    let before = sh.view(&name);
    let (known, released) = {
        let _domain = sh.locks.lock(&name).await;
        let stored = sh.store.release(&name).await?;
        let in_memory = sh.released(&name);
        (
            stored.is_some() || before.is_some(),
            stored.unwrap_or(false) || in_memory,
        )
    };
    if known {
        tracing::info!(domain = %name, released, "domain released");
        let view = sh.view(&name).or_else(|| {
            before.map(|mut v| {
                v.lifecycle = Some(Lifecycle::Stopped);
                v.state = DomainState::Pending;
                v.connected = false;
                v.domid = None;
                v
            })
        });
        sh.hooks.notify(HookCall {
            domain: name.clone(),
            event: "release",
            phase: "end",
            extra: "-".into(),
            stdin: hook_stdin(&name, view.as_ref()),
        });
    }
    Ok(ReleaseResult { name, released })
}

/// The socket path of the broker's channel among `channels`, when it is not the default
/// `<socket_dir>/<name>.sock` (`None`: the default).
fn channel_path_of(
    config: &Config,
    name: &str,
    channels: &[ChannelSpec],
) -> Result<Option<PathBuf>, OpError> {
    let bad = |path: String, error: String| OpError::BadField { path, error };
    let ours: Vec<(usize, &ChannelSpec)> = channels
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name == config.channel)
        .collect();
    if ours.len() > 1 {
        return Err(bad(
            format!("channels[{}]", ours[1].0),
            format!("channel {} is listed more than once", config.channel),
        ));
    }
    let Some((i, Some(p))) = ours.first().map(|(i, c)| (*i, c.path.as_ref())) else {
        return Ok(None);
    };
    let field = format!("channels[{i}].path");
    let normal = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && p.components().collect::<PathBuf>() == *p
        && !p.as_os_str().as_encoded_bytes().contains(&0);
    if !p.is_absolute() || !normal {
        return Err(bad(
            field,
            format!(
                "channel path {} must be absolute and normal (no `.`, `..`, `//` or trailing `/`)",
                p.display()
            ),
        ));
    }
    crate::paths::check_socket_path(p).map_err(|e| bad(field.clone(), e))?;
    let default = config.socket_path(name);
    if *p == default {
        return Ok(None);
    }
    if p.parent() == Some(config.socket_dir.as_path()) {
        // Discovery would take that file for another domain.
        return Err(bad(
            field,
            format!(
                "channel path {} is in socket_dir but is not {}",
                p.display(),
                default.display()
            ),
        ));
    }
    Ok(Some(p.clone()))
}
