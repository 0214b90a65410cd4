//! The control API server: HTTP/1.1 + JSON on a unix socket (docs/API.md).
//!
//! Bounded everywhere: request heads (`limits.max_header`), bodies (`limits.max_body`),
//! concurrent connections (`limits.max_connections`), one request per connection, and a
//! deadline on each request (`timeouts.request`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xenchan_protocol::config::{ConfigError, GuestConfig};
use xenchan_protocol::message::ConfigPush;
use xenchan_protocol::{Body as Msg, Envelope, Nonce, Role};

use crate::api::types::{
    ApiError, ChannelSpec, DeleteResult, DomainState, DomainView, Health, Lifecycle,
    PrepareRequest, ReleaseResult,
};
use crate::config::Config;
use crate::domains::Shared;
use crate::hooks::HookCall;
use crate::metrics::ErrorKind;
use crate::paths::{canonical_uuid, check_domain_name};
use crate::store::{
    self, LeaseConflict, PrepareRefusal, PutOutcome, PutRefusal, StoreError, leases_of,
};

/// An error response.
#[derive(Debug)]
struct Fail(StatusCode, ApiError);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        json(self.0, &self.1)
    }
}

fn fail(status: StatusCode, msg: impl Into<String>) -> Fail {
    Fail(status, ApiError::msg(msg))
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = serde_json::to_vec_pretty(body).expect("API types serialise");
    bytes.push(b'\n');
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn store_fail(e: &StoreError) -> Fail {
    tracing::error!("store: {e}");
    fail(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the broker's store failed: {}", chain(e)),
    )
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn conflict(c: &LeaseConflict) -> Fail {
    Fail(
        StatusCode::CONFLICT,
        ApiError {
            error: c.to_string(),
            path: Some(c.lease.path.clone()),
            errors: Vec::new(),
            domain: Some(c.holder.clone()),
        },
    )
}

fn bad_config(e: ConfigError) -> Fail {
    Fail(
        StatusCode::BAD_REQUEST,
        ApiError {
            error: format!("invalid configuration: {e}"),
            path: Some(e.first_path().to_string()),
            errors: e.errors,
            domain: None,
        },
    )
}

fn valid_name(name: &str) -> Result<(), Fail> {
    check_domain_name(name).map_err(|e| fail(StatusCode::BAD_REQUEST, e))
}

/// The routes, over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    let request_timeout = shared.config.timeouts.request();
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/domains", get(list))
        .route("/v1/domains/{name}", get(get_domain).delete(delete_domain))
        .route("/v1/domains/{name}/config", put(put_config))
        .route("/v1/domains/{name}/push", post(push))
        .route("/v1/domains/{name}/prepare", post(prepare))
        .route("/v1/domains/{name}/release", post(release))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            (request_timeout, Arc::clone(&shared)),
            deadline,
        ))
        .with_state(shared)
}

async fn deadline(
    State((t, shared)): State<(Duration, Arc<Shared>)>,
    req: Request,
    next: Next,
) -> Response {
    shared.metrics.api_request();
    match tokio::time::timeout(t, next.run(req)).await {
        Ok(r) => r,
        Err(_) => fail(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request did not complete within {} ms", t.as_millis()),
        )
        .into_response(),
    }
}

async fn not_found(req: Request) -> Fail {
    fail(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Fail {
    fail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    let (domains, sessions) = sh.counts();
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            domains,
            sessions,
        },
    )
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let (domains, _) = sh.counts();
    let text = sh.metrics.render(&sh.states(), domains);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn list(State(sh): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &sh.views())
}

async fn get_domain(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let v = sh
        .view(&name)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, format!("no domain named {name}")))?;
    Ok(json(StatusCode::OK, &v))
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Fail> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// `uuid=<uuid>` from the query, checked and lowercased.
fn uuid_query(q: Option<&str>) -> Result<Option<String>, Fail> {
    let Some(q) = q else { return Ok(None) };
    let mut uuid = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "uuid" {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                ApiError {
                    error: format!("unknown query parameter `{}`", k.escape_debug()),
                    path: Some(k.to_string()),
                    errors: Vec::new(),
                    domain: None,
                },
            ));
        }
        let Some(v) = canonical_uuid(v).filter(|_| !v.contains(char::is_whitespace)) else {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                ApiError {
                    error: format!(
                        "`{}` is not a UUID (expected 8-4-4-4-12 hex digits)",
                        v.escape_debug()
                    ),
                    path: Some("uuid".into()),
                    errors: Vec::new(),
                    domain: None,
                },
            ));
        };
        uuid = Some(v);
    }
    Ok(uuid)
}

async fn put_config(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let uuid = uuid_query(query.as_deref())?;
    let bytes = read_body(body, sh.config.limits.max_body).await?;
    let config = GuestConfig::from_json(&bytes).map_err(bad_config)?;
    check_wire_size(&config, sh.config.limits.max_frame)?;
    let leases = leases_of(&config, sh.config.leases.hostname);

    // Prepare: refuse a doomed config before running hooks for it.
    let (who, wanted) = (name.clone(), leases.clone());
    if let Some(c) = sh
        .store
        .call(move |db| db.lease_conflict(&who, &wanted))
        .await
        .map_err(|e| store_fail(&e))?
    {
        return Err(conflict(&c));
    }
    let mut prospective = sh.view(&name).unwrap_or_else(|| empty_view(&name));
    prospective.config = Some(config.clone());
    prospective.desired_digest = Some(config.digest().to_string());
    if uuid.is_some() {
        prospective.uuid.clone_from(&uuid);
    }
    // No lock is held here: a hook may take its time (bounded) or even call the API.
    if let Err(f) = sh
        .hooks
        .run(&HookCall {
            domain: name.clone(),
            event: "prepare",
            phase: "begin",
            extra: config.digest().to_string(),
            stdin: serde_json::to_vec(&prospective).expect("views serialise"),
        })
        .await
    {
        tracing::warn!(domain = %name, "prepare refused: {f}");
        sh.metrics.error(ErrorKind::Hook);
        let detail = if f.stderr.is_empty() {
            f.to_string()
        } else {
            f.stderr.clone()
        };
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("prepare hook refused: {detail}"),
        ));
    }

    let outcome = {
        let _serial = sh.config_lock.lock().await;
        let (who, id, doc) = (name.clone(), uuid.clone(), config.clone());
        let max = sh.config.limits.max_domains;
        let outcome = sh
            .store
            .call(move |db| db.put_config(&who, id.as_deref(), &doc, &leases, max))
            .await
            .map_err(|e| store_fail(&e))?;
        match outcome {
            Ok(done) => {
                sh.install_desired(&name, done.desired().clone(), uuid.as_ref());
                done
            }
            Err(PutRefusal::Lease(c)) => return Err(conflict(&c)),
            Err(PutRefusal::TooManyDomains(max)) => {
                return Err(fail(
                    StatusCode::CONFLICT,
                    format!("the broker already manages limits.max_domains = {max} domains"),
                ));
            }
        }
    };
    let status = match &outcome {
        PutOutcome::Created(_) => StatusCode::CREATED,
        PutOutcome::Updated(_) | PutOutcome::Unchanged(_) => StatusCode::OK,
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
    let view = sh.view(&name).unwrap_or_else(|| empty_view(&name));
    Ok(json(status, &view))
}

/// Refuses a config whose push would not fit in one frame.
fn check_wire_size(config: &GuestConfig, max_frame: usize) -> Result<(), Fail> {
    let env = Envelope::new(
        Role::Broker,
        Some(Nonce::from_bytes([0; 16])),
        Msg::Config(ConfigPush::new(u64::MAX, config.clone())),
    );
    let size = serde_json::to_vec(&env).map_or(usize::MAX, |v| v.len());
    if size > max_frame {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            ApiError {
                error: format!(
                    "the configuration takes {size} bytes on the wire; limits.max_frame is {max_frame}"
                ),
                path: Some(".".into()),
                errors: Vec::new(),
                domain: None,
            },
        ));
    }
    Ok(())
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
    }
}

async fn delete_domain(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let before = sh.view(&name);
    let (removed, released) = {
        let _serial = sh.config_lock.lock().await;
        let keep_row = sh.keeps_row_without_config(&name);
        let n = name.clone();
        let r = sh
            .store
            .call(move |db| db.delete_config(&n, keep_row))
            .await
            .map_err(|e| store_fail(&e))?;
        sh.remove_desired(&name);
        r
    };
    if removed || !released.is_empty() {
        tracing::info!(domain = %name, "configuration removed; released {released:?}");
        let stdin = before.map_or_else(
            || format!("{{\"name\":\"{name}\"}}").into_bytes(),
            |v| serde_json::to_vec(&v).expect("views serialise"),
        );
        sh.hooks.notify(HookCall {
            domain: name.clone(),
            event: "unprepare",
            phase: "end",
            extra: "-".into(),
            stdin,
        });
    }
    Ok(json(
        StatusCode::OK,
        &DeleteResult {
            name,
            removed,
            released,
        },
    ))
}

async fn push(State(sh): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Fail> {
    valid_name(&name)?;
    if !sh.force_push(&name) {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("domain {name} has no configuration to push"),
        ));
    }
    let view = sh.view(&name).unwrap_or_else(|| empty_view(&name));
    Ok(json(StatusCode::ACCEPTED, &view))
}

/// A 400 naming the request field at fault.
fn bad_field(path: impl Into<String>, error: impl Into<String>) -> Fail {
    Fail(
        StatusCode::BAD_REQUEST,
        ApiError {
            error: error.into(),
            path: Some(path.into()),
            errors: Vec::new(),
            domain: None,
        },
    )
}

/// The socket path of the broker's channel among `channels`, when it is not the default
/// `<socket_dir>/<name>.sock` (`None`: the default).
fn channel_path_of(
    config: &Config,
    name: &str,
    channels: &[ChannelSpec],
) -> Result<Option<std::path::PathBuf>, Fail> {
    use std::path::Component;
    let ours: Vec<(usize, &ChannelSpec)> = channels
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name == config.channel)
        .collect();
    if ours.len() > 1 {
        return Err(bad_field(
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
        && p.components().collect::<std::path::PathBuf>() == *p
        && !p.as_os_str().as_encoded_bytes().contains(&0);
    if !p.is_absolute() || !normal {
        return Err(bad_field(
            field,
            format!(
                "channel path {} must be absolute and normal (no `.`, `..`, `//` or trailing `/`)",
                p.display()
            ),
        ));
    }
    crate::paths::check_socket_path(p).map_err(|e| bad_field(field.clone(), e))?;
    let default = config.socket_path(name);
    if *p == default {
        return Ok(None);
    }
    if p.parent() == Some(config.socket_dir.as_path()) {
        // Discovery would take that file for another domain.
        return Err(bad_field(
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

fn prepare_refused(name: &str, r: PrepareRefusal) -> Fail {
    match r {
        PrepareRefusal::UuidTaken { uuid, holder } => Fail(
            StatusCode::CONFLICT,
            ApiError {
                error: format!("VM {uuid} is registered as domain {holder}"),
                path: Some("uuid".into()),
                errors: Vec::new(),
                domain: Some(holder),
            },
        ),
        PrepareRefusal::UuidChanged { recorded, asked } => Fail(
            StatusCode::CONFLICT,
            ApiError {
                error: format!(
                    "domain {name} is registered as VM {recorded} and its agent is connected; \
                     it cannot become VM {asked} (release it first)"
                ),
                path: Some("uuid".into()),
                errors: Vec::new(),
                domain: Some(name.to_string()),
            },
        ),
        PrepareRefusal::Lease(c) => conflict(&c),
        PrepareRefusal::TooManyDomains(max) => fail(
            StatusCode::CONFLICT,
            format!("the broker already manages limits.max_domains = {max} domains"),
        ),
    }
}

/// Whether a body is empty (only whitespace).
fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// `POST /v1/domains/{name}/prepare`: the libvirt hook's `prepare` (the VM is about
/// to start). Registers the domain, records its UUID and channel path, confirms its
/// leases, runs the `prepare begin` hooks, marks it running. Idempotent.
async fn prepare(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let bytes = read_body(body, sh.config.limits.max_body).await?;
    let req: PrepareRequest = if blank(&bytes) {
        PrepareRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("invalid prepare request: {e}"),
            )
        })?
    };
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
    let channel_path = channel_path_of(&sh.config, &name, &req.channels)?;
    let path_text = channel_path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());

    let hostname_leases = sh.config.leases.hostname;
    let max_domains = sh.config.limits.max_domains;
    let ask = |connected: bool, check_only: bool| {
        let (n, u, p) = (name.clone(), uuid.clone(), path_text.clone());
        move |db: &mut store::Db| {
            db.prepare(&store::PrepareRequest {
                name: &n,
                uuid: u.as_deref(),
                channel_path: p.as_deref(),
                hostname_leases,
                connected,
                max_domains,
                check_only,
            })
        }
    };
    // Refuse a doomed prepare before running hooks for it.
    let check = ask(sh.connected(&name), true);
    if let Err(r) = sh.store.call(check).await.map_err(|e| store_fail(&e))? {
        return Err(prepare_refused(&name, r));
    }
    let mut prospective = sh.view(&name).unwrap_or_else(|| empty_view(&name));
    if uuid.is_some() {
        prospective.uuid.clone_from(&uuid);
    }
    prospective.lifecycle = Some(Lifecycle::Running);
    if channel_path.is_some() {
        prospective.socket.clone_from(&channel_path);
    }
    // No lock is held while hooks run.
    if let Err(f) = sh
        .hooks
        .run(&HookCall {
            domain: name.clone(),
            event: "prepare",
            phase: "begin",
            extra: "-".into(),
            stdin: serde_json::to_vec(&prospective).expect("views serialise"),
        })
        .await
    {
        tracing::warn!(domain = %name, "prepare refused: {f}");
        sh.metrics.error(ErrorKind::Hook);
        let detail = if f.stderr.is_empty() {
            f.to_string()
        } else {
            f.stderr.clone()
        };
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("prepare hook refused: {detail}"),
        ));
    }
    {
        let _serial = sh.config_lock.lock().await;
        let commit = ask(sh.connected(&name), false);
        let done = sh
            .store
            .call(commit)
            .await
            .map_err(|e| store_fail(&e))?
            .map_err(|r| prepare_refused(&name, r))?;
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
    let view = sh.view(&name).unwrap_or_else(|| empty_view(&name));
    Ok(json(StatusCode::OK, &view))
}

/// `POST /v1/domains/{name}/release`: the libvirt hook's `release` (the VM stopped).
/// Stops the session, keeps the configuration and leases, drops the running marker,
/// runs the `release end` hooks. Always 200; idempotent.
async fn release(
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
    let before = sh.view(&name);
    let (known, released) = {
        let _serial = sh.config_lock.lock().await;
        let n = name.clone();
        let stored = sh
            .store
            .call(move |db| db.release(&n))
            .await
            .map_err(|e| store_fail(&e))?;
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
        let stdin = view.map_or_else(
            || format!("{{\"name\":\"{name}\"}}").into_bytes(),
            |v| serde_json::to_vec(&v).expect("views serialise"),
        );
        sh.hooks.notify(HookCall {
            domain: name.clone(),
            event: "release",
            phase: "end",
            extra: "-".into(),
            stdin,
        });
    }
    Ok(json(StatusCode::OK, &ReleaseResult { name, released }))
}

/// Serves the API on `listener` until `stop`, then lets running requests finish
/// (bounded by `timeouts.shutdown`).
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    let router = router(Arc::clone(&shared));
    let cfg = Arc::clone(&shared.config);
    let permits = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: pause instead of spinning.
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let header_timeout = cfg.timeouts.request();
        let grace = cfg.timeouts.shutdown();
        let max_buf = cfg.limits.max_header.max(8192);
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_buf)
                // One request per connection: an idle client cannot hold a slot.
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("control connection: {e}");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(cfg.timeouts.shutdown(), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_queries() {
        assert_eq!(uuid_query(None).unwrap(), None);
        assert_eq!(
            uuid_query(Some("uuid=0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"))
                .unwrap()
                .as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        let Fail(s, e) = uuid_query(Some("uuid=nope")).unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(e.path.as_deref(), Some("uuid"));
        let Fail(_, e) = uuid_query(Some("uid=x")).unwrap_err();
        assert!(e.error.contains("uid"), "{}", e.error);
    }
}
