//! The control API server: HTTP/1.1 + JSON on a unix socket (docs/API.md).
//!
//! Bounded everywhere: request heads (`limits.max_header`), bodies (`limits.max_body`),
//! concurrent connections (`limits.max_connections`), one request per connection, and a
//! deadline on each request (`timeouts.request`).
//!
//! Each connection's peer credentials ([`roles::peer`]) ride along with its request; the
//! `guard` layer refuses a call the caller's role does not allow (403) and serves the
//! others in the caller's audit scope ([`crate::audit`]), so the events they cause name
//! the caller.

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
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xenchan_basics::chain;
use xenchan_protocol::config::{ConfigError, GuestConfig};

use crate::api::roles::{self, Roles};
use crate::api::types::{ApiError, DomainView, EventPage, EventView, Forbidden, Health};
use crate::api::{bulk, lifecycle};
use crate::audit::{self, Caller};
use crate::domains::Shared;
use crate::ops::{self, OpError, PutConfig};
use crate::paths::{canonical_uuid, check_domain_name};
use crate::store::{EtcdStore, EventFilter, PutOutcome};
use xenchan_api::query::{DomainQuery, EventQuery, NEXT_CURSOR_HEADER, QueryError};

/// An error response.
#[derive(Debug)]
pub(super) struct Fail(pub(super) StatusCode, pub(super) ApiError);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        json(self.0, &self.1)
    }
}

pub(super) fn fail(status: StatusCode, msg: impl Into<String>) -> Fail {
    Fail(status, ApiError::msg(msg))
}

pub(super) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut bytes = serde_json::to_vec_pretty(body).expect("API types serialise");
    bytes.push(b'\n');
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The one mapping of an operation's error to a status and an error document.
impl From<OpError> for Fail {
    fn from(e: OpError) -> Fail {
        let (status, doc) = op_error(&e);
        Fail(status, doc)
    }
}

/// The status and error document of an operation's error (a request's, or one item's of
/// a bulk PUT).
pub(super) fn op_error(e: &OpError) -> (StatusCode, ApiError) {
    let (status, path, domain) = match e {
        OpError::BadField { path, .. } => (StatusCode::BAD_REQUEST, Some(path.clone()), None),
        OpError::Config(c) => {
            return (
                StatusCode::BAD_REQUEST,
                ApiError {
                    error: chain(e),
                    path: Some(c.first_path().to_string()),
                    errors: c.errors.clone(),
                    domain: None,
                },
            );
        }
        OpError::Lease(c) => (
            StatusCode::CONFLICT,
            Some(c.lease.path.clone()),
            Some(c.holder.clone()),
        ),
        OpError::TooManyDomains(_) => (StatusCode::CONFLICT, None, None),
        OpError::UuidTaken { holder, .. } => (
            StatusCode::CONFLICT,
            Some("uuid".into()),
            Some(holder.clone()),
        ),
        OpError::UuidChanged { name, .. } => (
            StatusCode::CONFLICT,
            Some("uuid".into()),
            Some(name.clone()),
        ),
        OpError::HookRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, None, None),
        OpError::HookTimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, None, None),
        OpError::NothingToPush(_) => (StatusCode::NOT_FOUND, None, None),
        OpError::NotAttempted | OpError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, None, None),
        OpError::NeedsCluster => (StatusCode::BAD_REQUEST, Some("store.backend".into()), None),
        OpError::Migration(c) | OpError::RunsElsewhere(c) => migration_refusal(c),
    };
    (
        status,
        ApiError {
            error: chain(e),
            path,
            errors: Vec::new(),
            domain,
        },
    )
}

/// A lock-manager refusal: 409 with `domain` naming the host that owns the domain (or
/// the destination prepared instead), `path` what stands in the way.
pub(super) fn migration_refusal(
    c: &xenchan_cluster::ClusterError,
) -> (StatusCode, Option<String>, Option<String>) {
    use xenchan_cluster::ClusterError as C;
    let (path, host) = match c {
        C::NotOwner { owner, .. } => ("owner", owner.clone()),
        C::RunsElsewhere { owner, .. } => ("owner", Some(owner.clone())),
        C::NoMigration { incoming, .. } => ("incoming", incoming.clone()),
        C::MigrationPending { incoming, .. } => ("incoming", Some(incoming.clone())),
        _ => ("uuid", None),
    };
    (StatusCode::CONFLICT, Some(path.into()), host)
}

pub(super) fn bad_config(e: ConfigError) -> Fail {
    Fail::from(OpError::Config(e))
}

pub(super) fn valid_name(name: &str) -> Result<(), Fail> {
    check_domain_name(name).map_err(|e| fail(StatusCode::BAD_REQUEST, e))
}

/// The routes, over `shared`. Every request must carry its connection's [`Caller`] as
/// an extension ([`serve`] adds it); one without is refused.
pub fn router(shared: Arc<Shared>) -> Router {
    let request_timeout = shared.config.timeouts.request();
    let roles = Arc::new(Roles::resolve(&shared.config.control));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/events", get(events))
        .route("/v1/domains", get(list).put(bulk::put_configs))
        .route("/v1/domains/{name}", get(get_domain).delete(delete_domain))
        .route("/v1/domains/{name}/config", put(put_config))
        .route("/v1/domains/{name}/push", post(push))
        .route("/v1/domains/{name}/prepare", post(lifecycle::prepare))
        .route("/v1/domains/{name}/release", post(lifecycle::release))
        // `{name}` is the VM UUID here: in cluster mode the UUID is a domain's identity.
        .route(
            "/v1/domains/{name}/migrate/{step}",
            post(lifecycle::migrate),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(roles, guard))
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

/// Refuses a call the caller's role does not allow (403 naming the role and the uid),
/// and serves the others as made by the caller (their events name it).
async fn guard(State(roles): State<Arc<Roles>>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return fail(
            StatusCode::FORBIDDEN,
            "the caller's credentials are unknown (not a unix socket connection)",
        )
        .into_response();
    };
    let need = roles::needed_role(req.method());
    let have = roles.role_of(caller.uid, caller.gid, &caller.groups);
    if !roles::allows(have, need) {
        let what = format!("{} {}", req.method(), req.uri().path());
        let error = roles.refusal(&caller, have, need, &what);
        tracing::warn!(uid = caller.uid, pid = ?caller.pid, comm = ?caller.comm, "refused: {error}");
        return json(
            StatusCode::FORBIDDEN,
            &Forbidden {
                error,
                role: need,
                uid: caller.uid,
            },
        );
    }
    audit::scope(caller, next.run(req)).await
}

/// A 400 naming the query parameter at fault.
fn bad_query(e: QueryError) -> Fail {
    Fail(
        StatusCode::BAD_REQUEST,
        ApiError {
            error: e.to_string(),
            path: Some(e.param),
            errors: Vec::new(),
            domain: None,
        },
    )
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
            cluster: sh.store.as_cluster().map(EtcdStore::health),
        },
    )
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let (domains, _) = sh.counts();
    sh.metrics.set_throttled_now(sh.throttled_count());
    sh.metrics.set_store_commits(sh.store.commits());
    let text = sh.metrics.render(&sh.states(), domains);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// `GET /v1/domains[?state=&prefix=&limit=&cursor=]`: by name; the cursor of the next
/// page, if any, in the `x-next-cursor` header (the body stays the plain list).
async fn list(State(sh): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Result<Response, Fail> {
    let query = DomainQuery::parse(q.as_deref().unwrap_or("")).map_err(bad_query)?;
    let (page, next) = page_of_domains(sh.views(), &query);
    let mut resp = json(StatusCode::OK, &page);
    if let Some(next) = next
        && let Ok(v) = header::HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert(NEXT_CURSOR_HEADER, v);
    }
    Ok(resp)
}

/// The page of `views` that `query` asks for, and the cursor of the next one.
fn page_of_domains(
    mut views: Vec<DomainView>,
    query: &DomainQuery,
) -> (Vec<DomainView>, Option<String>) {
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let mut page: Vec<DomainView> = views
        .into_iter()
        .filter(|v| query.cursor.as_deref().is_none_or(|c| v.name.as_str() > c))
        .filter(|v| query.matches(&v.name, v.state))
        .collect();
    let next = match query.limit {
        Some(n) if page.len() > n => {
            page.truncate(n);
            page.last().map(|v| v.name.clone())
        }
        _ => None,
    };
    (page, next)
}

/// `GET /v1/events[?domain=&kind=&since=&until=&limit=&cursor=]`: newest first.
async fn events(State(sh): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Result<Response, Fail> {
    let query = EventQuery::parse(q.as_deref().unwrap_or("")).map_err(bad_query)?;
    let size = query.page_size();
    let filter = EventFilter {
        // `-`: the broker's own events (no domain).
        domain: query.domain.clone().map(|d| (d != "-").then_some(d)),
        kind: query.kind.clone(),
        since: query.since.clone(),
        until: query.until.clone(),
        before_id: query.cursor.as_deref().and_then(|c| c.parse().ok()),
        // One more than the page, to know whether another page follows.
        limit: size + 1,
    };
    let mut rows = sh
        .store
        .events(&filter)
        .await
        .map_err(|e| Fail::from(ops::OpError::from(e)))?;
    let more = rows.len() > size;
    rows.truncate(size);
    let next_cursor = if more {
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let events = rows
        .into_iter()
        .map(|r| EventView {
            id: r.id,
            at: r.at,
            domain: r.domain,
            kind: r.kind,
            detail: r.detail,
            caller: r.caller,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &EventPage {
            events,
            next_cursor,
        },
    ))
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

pub(super) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Fail> {
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
pub(super) fn uuid_query(q: Option<&str>) -> Result<Option<String>, Fail> {
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
    let done = ops::do_put_config(&sh, PutConfig { name, uuid, config }).await?;
    let status = match done.outcome {
        PutOutcome::Created(_) => StatusCode::CREATED,
        PutOutcome::Updated(_) | PutOutcome::Unchanged(_) => StatusCode::OK,
    };
    Ok(json(status, &done.view))
}

async fn delete_domain(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    Ok(json(StatusCode::OK, &ops::do_delete(&sh, name).await?))
}

async fn push(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Fail> {
    valid_name(&name)?;
    let force = force_query(query.as_deref())?;
    Ok(json(
        StatusCode::ACCEPTED,
        &ops::do_push(&sh, &name, force)?,
    ))
}

/// `force=true|false` (or a bare `force`) from the push's query.
fn force_query(q: Option<&str>) -> Result<bool, Fail> {
    let mut force = false;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k != "force" {
            return Err(bad_field(
                k,
                format!("unknown query parameter `{}`", k.escape_debug()),
            ));
        }
        force = match v {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(bad_field(
                    "force",
                    format!("`{}` is not true or false", v.escape_debug()),
                ));
            }
        };
    }
    Ok(force)
}

/// A 400 naming the request field at fault.
pub(super) fn bad_field(path: impl Into<String>, error: impl Into<String>) -> Fail {
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

/// Whether a body is empty (only whitespace).
pub(super) fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Serves the API on `listener` until `stop`, then lets running requests finish
/// (bounded by `timeouts.shutdown`).
pub async fn serve(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    let router = router(Arc::clone(&shared));
    let own_uid = nix::unistd::geteuid().as_raw();
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
        let router = router.clone();
        let stop = stop.clone();
        let header_timeout = cfg.timeouts.request();
        let grace = cfg.timeouts.shutdown();
        let max_buf = cfg.limits.max_header.max(8192);
        conns.spawn(async move {
            let _permit = permit;
            // Read here, not in the accept loop: /proc reads are quick but not free.
            let Some(caller) = roles::peer(&stream, own_uid) else {
                tracing::warn!("control connection without peer credentials: closed");
                return;
            };
            // The caller rides in each request's extensions (`Extension<Caller>`): a
            // `Router::layer` per connection rebuilt every route for every request.
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(caller.clone());
                tower_service::Service::call(&mut router.clone(), req)
            });
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
    fn force_queries() {
        assert!(!force_query(None).unwrap());
        assert!(force_query(Some("force=true")).unwrap());
        assert!(force_query(Some("force")).unwrap());
        assert!(!force_query(Some("force=false")).unwrap());
        assert!(force_query(Some("force=maybe")).is_err());
        assert!(force_query(Some("uuid=x")).is_err());
    }

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
