//! The lifecycle calls: the libvirt hook's `prepare` and `release`, and the cluster's
//! migration steps. Thin: parse and check the request, call the `ops::do_*` function,
//! map its answer (docs/API.md).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::server::{Fail, bad_field, blank, fail, json, read_body, valid_name};
use crate::api::types::{MigratePrepareRequest, PrepareRequest};
use crate::domains::Shared;
use crate::ops::{self, Prepare};
use crate::paths::canonical_uuid;

/// A lifecycle request body: empty means the defaults; otherwise JSON, a 400 naming the
/// call (`what`) and serde's reason when it is not.
fn request<T: serde::de::DeserializeOwned + Default>(bytes: &[u8], what: &str) -> Result<T, Fail> {
    if blank(bytes) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("invalid {what} request: {e}"),
        )
    })
}

/// `POST /v1/domains/{name}/prepare`: the libvirt hook's `prepare` (the VM is about
/// to start). Registers the domain, records its UUID and channel path, confirms its
/// leases, runs the `prepare begin` hooks, marks it running. Idempotent.
pub(super) async fn prepare(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let bytes = read_body(body, sh.config.limits.max_body).await?;
    let req: PrepareRequest = request(&bytes, "prepare")?;
    let uuid = match &req.uuid {
        Some(u) => Some(canonical_uuid(u).ok_or_else(|| {
            bad_field(
                "uuid",
                format!(
                    "`{}` is not a UUID (expected 8-4-4-4-12 hex digits)",
                    u.escape_debug()
                ),
            )
        })?),
        None => None,
    };
    let prepare = Prepare {
        name,
        uuid,
        channels: req.channels,
    };
    Ok(json(StatusCode::OK, &ops::do_prepare(&sh, prepare).await?))
}

/// `POST /v1/domains/{name}/release`: the libvirt hook's `release` (the VM stopped).
/// Stops the session, keeps the configuration and leases, drops the running marker,
/// runs the `release end` hooks. Always 200; idempotent.
pub(super) async fn release(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let bytes = read_body(body, sh.config.limits.max_body).await?;
    if !blank(&bytes) {
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("invalid release request: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "the release request body must be a JSON object (`{}`)",
            ));
        }
    }
    Ok(json(StatusCode::OK, &ops::do_release(&sh, name).await?))
}

/// `POST /v1/domains/{uuid}/migrate/{prepare,complete,cancel}` (cluster mode): the
/// migration hand-off with libvirt's lock-manager meanings (docs/API.md).
pub(super) async fn migrate(
    State(sh): State<Arc<Shared>>,
    Path((uuid, step)): Path<(String, String)>,
    body: Body,
) -> Result<Response, Fail> {
    let uuid = canonical_uuid(&uuid).ok_or_else(|| {
        bad_field(
            "uuid",
            format!(
                "`{}` is not a VM UUID (expected 8-4-4-4-12 hex digits): migration calls name \
                 the domain by its UUID",
                uuid.escape_debug()
            ),
        )
    })?;
    let bytes = read_body(body, sh.config.limits.max_body).await?;
    let done = match step.as_str() {
        "prepare" => {
            let req: MigratePrepareRequest = request(&bytes, "migrate prepare")?;
            ops::do_migrate_prepare(&sh, &uuid, req.name).await?
        }
        "complete" | "cancel" => {
            if !blank(&bytes)
                && !bytes
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .eq(*b"{}")
            {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!("migrate {step} takes no request body (or `{{}}`)"),
                ));
            }
            if step == "complete" {
                ops::do_migrate_complete(&sh, &uuid).await?
            } else {
                ops::do_migrate_cancel(&sh, &uuid).await?
            }
        }
        other => {
            return Err(fail(
                StatusCode::NOT_FOUND,
                format!(
                    "no such migration step `{}` (prepare, complete or cancel)",
                    other.escape_debug()
                ),
            ));
        }
    };
    Ok(json(StatusCode::OK, &done))
}
