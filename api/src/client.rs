//! An async client for the control API over its unix socket, used by the `xenchan` CLI,
//! the simulator and tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), xenchan_api::client::ClientError> {
//! use xenchan_api::client::Client;
//! let client = Client::new(xenchan_api::defaults::CONTROL_SOCKET);
//! for d in client.list().await? {
//!     println!("{} {}", d.name, d.state);
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::UnixStream;
use xenchan_protocol::config::GuestConfig;

use crate::paths::MAX_SOCKET_PATH;
use crate::query::{DomainQuery, EventQuery, NEXT_CURSOR_HEADER, encode};
use crate::types::{
    ApiError, BulkItem, BulkResult, DeleteResult, DomainPage, DomainView, EventPage, Health,
    MigratePrepareRequest, MigrationView, PrepareRequest, ReleaseResult,
};

/// Default deadline of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response body read (a list of 20000 domains fits).
pub const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The broker's socket cannot be reached (missing, refused, permission denied).
    #[error("cannot reach the broker at {path}")]
    Unavailable {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket path cannot be used at all.
    #[error("control socket path {0} is longer than the {MAX_SOCKET_PATH}-byte unix socket limit")]
    PathTooLong(PathBuf),
    /// The request did not complete in time.
    #[error("the broker did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The HTTP exchange broke.
    #[error("HTTP exchange with the broker failed")]
    Http(#[source] hyper::Error),
    /// The broker refused the request.
    #[error("{}", .error.error)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error document.
        error: ApiError,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer from the broker (status {status})")]
    Decode {
        /// The HTTP status.
        status: u16,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The answer is too large.
    #[error("the broker's answer exceeds {MAX_RESPONSE} bytes")]
    TooLarge,
}

impl ClientError {
    /// The HTTP status, for refusals.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A control API client. Each request uses its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A success's JSON, or the error document of a refusal.
fn decode<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, ClientError> {
    if status.is_success() {
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
            status: status.as_u16(),
            source,
        })
    } else {
        let error = serde_json::from_slice::<ApiError>(bytes).unwrap_or_else(|_| {
            ApiError::msg(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).trim()
            ))
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            error,
        })
    }
}

impl Client {
    /// A client for the API on `socket_path`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket_path: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket_path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the deadline of each request (connect, send, answer).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The control socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the status and body, whatever the status.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, body) = self.request_full(method, path_and_query, body).await?;
        Ok((status, body))
    }

    /// [`Client::request`] with the response headers.
    async fn request_full(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClientError::PathTooLong(self.socket.clone()));
        }
        tokio::time::timeout(self.timeout, self.exchange(method, path_and_query, body))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unavailable {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, "xenchan-broker");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a request from valid parts");
        let result = async {
            let resp = sender.send_request(req).await.map_err(ClientError::Http)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(h) => ClientError::Http(*h),
                    Err(_) => ClientError::TooLarge,
                })?
                .to_bytes();
            Ok((status, headers, body))
        }
        .await;
        driver.abort();
        result
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, _, bytes) = self.request_full(method, path, body).await?;
        decode(status, &bytes)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", None).await
    }

    /// `GET /v1/domains`.
    pub async fn list(&self) -> Result<Vec<DomainView>, ClientError> {
        self.call(Method::GET, "/v1/domains", None).await
    }

    /// `GET /v1/domains?...`: the domains that pass `query`'s filters, by name, one page
    /// (all of them when `query.limit` is `None`).
    pub async fn list_page(&self, query: &DomainQuery) -> Result<DomainPage, ClientError> {
        let q = query.to_query();
        let path = if q.is_empty() {
            "/v1/domains".to_string()
        } else {
            format!("/v1/domains?{q}")
        };
        let (status, headers, bytes) = self.request_full(Method::GET, &path, None).await?;
        let domains: Vec<DomainView> = decode(status, &bytes)?;
        let next_cursor = headers
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(DomainPage {
            domains,
            next_cursor,
        })
    }

    /// `GET /v1/events?...`: one page of the event log, newest first.
    pub async fn events(&self, query: &EventQuery) -> Result<EventPage, ClientError> {
        let q = query.to_query();
        let path = if q.is_empty() {
            "/v1/events".to_string()
        } else {
            format!("/v1/events?{q}")
        };
        self.call(Method::GET, &path, None).await
    }

    /// `GET /v1/domains/{name}`.
    pub async fn get_domain(&self, name: &str) -> Result<DomainView, ClientError> {
        self.call(Method::GET, &format!("/v1/domains/{}", encode(name)), None)
            .await
    }

    /// `PUT /v1/domains/{name}/config[?uuid=]` with a document.
    pub async fn put_config(
        &self,
        name: &str,
        config: &GuestConfig,
        uuid: Option<&str>,
    ) -> Result<DomainView, ClientError> {
        self.put_config_json(name, &config.canonical_json(), uuid)
            .await
    }

    /// `PUT /v1/domains/{name}/config[?uuid=]` with raw JSON (the broker validates it).
    pub async fn put_config_json(
        &self,
        name: &str,
        json: &[u8],
        uuid: Option<&str>,
    ) -> Result<DomainView, ClientError> {
        let mut path = format!("/v1/domains/{}/config", encode(name));
        if let Some(u) = uuid {
            path.push_str("?uuid=");
            path.push_str(&encode(u));
        }
        self.call(Method::PUT, &path, Some(json.to_vec())).await
    }

    /// `PUT /v1/domains`: many configurations in one request, each answered on its own
    /// (a refused item fails only itself: look at each result's `status`). The request
    /// itself fails only when it cannot be read at all (413: more than
    /// `limits.max_bulk` items or `limits.max_bulk_body` bytes; 400: not a JSON array).
    pub async fn put_configs(&self, items: &[BulkItem]) -> Result<BulkResult, ClientError> {
        let body = serde_json::to_vec(items).expect("bulk items serialise");
        self.put_configs_json(body).await
    }

    /// `PUT /v1/domains` with a raw JSON array of items (the broker validates each).
    pub async fn put_configs_json(&self, json: Vec<u8>) -> Result<BulkResult, ClientError> {
        self.call(Method::PUT, "/v1/domains", Some(json)).await
    }

    /// `DELETE /v1/domains/{name}`.
    pub async fn delete(&self, name: &str) -> Result<DeleteResult, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/domains/{}", encode(name)),
            None,
        )
        .await
    }

    /// `POST /v1/domains/{name}/push`.
    pub async fn push(&self, name: &str) -> Result<DomainView, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/push", encode(name)),
            Some(Vec::new()),
        )
        .await
    }

    /// `POST /v1/domains/{name}/push?force=true`: a push the agent applies even if it
    /// applied a later generation of this store's lineage (a deliberate rollback).
    pub async fn push_force(&self, name: &str) -> Result<DomainView, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/push?force=true", encode(name)),
            Some(Vec::new()),
        )
        .await
    }

    /// `POST /v1/domains/{name}/prepare`: the VM is about to start (libvirt hook
    /// `prepare`). Registers the domain, records its UUID and channel socket, confirms
    /// its leases and runs the `prepare` hooks. 409 on a UUID or lease clash (the error
    /// names the other domain), 422 if a hook refused.
    pub async fn prepare(
        &self,
        name: &str,
        request: &PrepareRequest,
    ) -> Result<DomainView, ClientError> {
        let body = serde_json::to_vec(request).expect("a prepare request serialises");
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/prepare", encode(name)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/domains/{name}/release`: the VM stopped (libvirt hook `release`). Stops
    /// the session and keeps the configuration. Succeeds for unknown domains too.
    pub async fn release(&self, name: &str) -> Result<ReleaseResult, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/release", encode(name)),
            Some(b"{}".to_vec()),
        )
        .await
    }

    /// `POST /v1/domains/{uuid}/migrate/prepare` (cluster mode), on the destination: a
    /// migration of the VM to this broker's host is registered while the source still
    /// owns it, and the domain appears here. 409 names the owner or the pending
    /// migration; 400 with the embedded store (migration needs etcd).
    pub async fn migrate_prepare(
        &self,
        uuid: &str,
        request: &MigratePrepareRequest,
    ) -> Result<MigrationView, ClientError> {
        let body = serde_json::to_vec(request).expect("a migrate request serialises");
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/migrate/prepare", encode(uuid)),
            Some(body),
        )
        .await
    }

    /// `POST /v1/domains/{uuid}/migrate/complete` (cluster mode), on the destination:
    /// ownership moves to this broker's host. 409 when no migration to here is prepared.
    pub async fn migrate_complete(&self, uuid: &str) -> Result<MigrationView, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/migrate/complete", encode(uuid)),
            Some(Vec::new()),
        )
        .await
    }

    /// `POST /v1/domains/{uuid}/migrate/cancel` (cluster mode), on the destination: the
    /// prepared migration is forgotten and the source keeps the domain.
    pub async fn migrate_cancel(&self, uuid: &str) -> Result<MigrationView, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/domains/{}/migrate/cancel", encode(uuid)),
            Some(Vec::new()),
        )
        .await
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, bytes) = self.request(Method::GET, "/metrics", None).await?;
        if status.is_success() {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            Err(ClientError::Api {
                status: status.as_u16(),
                error: ApiError::msg(String::from_utf8_lossy(&bytes).into_owned()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("web-1.a_b"), "web-1.a_b");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
