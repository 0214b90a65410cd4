//! `PUT /v1/domains`: many configurations in one request, each answered on its own
//! (docs/API.md, "Bulk").

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::server::{Fail, bad_field, fail, json, op_error, read_body};
use crate::api::types::{BulkItemResult, BulkOutcome, BulkResult};
use crate::domains::Shared;
use crate::ops::{self, OpError};
use crate::store::PutOutcome;

/// `PUT /v1/domains`: a JSON array of `{"name", "uuid", "config"}`, each item answered on
/// its own (docs/API.md). Only a body that cannot be read as such an array fails the
/// request.
pub(super) async fn put_configs(
    State(sh): State<Arc<Shared>>,
    body: Body,
) -> Result<Response, Fail> {
    let limits = &sh.config.limits;
    // Items not started by then are answered "not attempted": a started item may wait
    // for the prepare hooks (`timeouts.hook`, when there are hooks), and the answer must
    // beat the request's own deadline (timeouts.hook < timeouts.request is checked at
    // start). 500 ms are left for the last items' commits and the answer.
    let hooks = if sh.hooks.list().is_empty() {
        Duration::ZERO
    } else {
        Duration::from_millis(sh.config.timeouts.hook)
    };
    let budget = sh
        .config
        .timeouts
        .request()
        .saturating_sub(hooks + Duration::from_millis(500));
    let cutoff = tokio::time::Instant::now() + budget;
    let bytes = read_body(body, limits.max_bulk_body).await.map_err(|f| {
        if f.0 == StatusCode::PAYLOAD_TOO_LARGE {
            fail(
                f.0,
                format!(
                    "the bulk request body exceeds limits.max_bulk_body ({} bytes): send \
                     the configurations in several requests",
                    limits.max_bulk_body
                ),
            )
        } else {
            f
        }
    })?;
    let values = bulk_array(&bytes, limits.max_bulk)?;
    let items = ops::read_items(values);
    let done = ops::do_put_configs(&sh, items, cutoff).await;
    let results: Vec<BulkItemResult> = done.into_iter().map(bulk_result).collect();
    let succeeded = results.iter().filter(|r| r.ok()).count();
    Ok(json(
        StatusCode::OK,
        &BulkResult {
            succeeded,
            failed: results.len() - succeeded,
            results,
        },
    ))
}

/// The body of a bulk PUT as its items: a JSON array of at most `max` values.
fn bulk_array(bytes: &[u8], max: usize) -> Result<Vec<serde_json::Value>, Fail> {
    if bytes.trim_ascii_start().first() != Some(&b'[') {
        return Err(bad_field(
            ".",
            "a bulk PUT takes a JSON array of {\"name\", \"uuid\", \"config\"} items",
        ));
    }
    let values: Vec<serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| bad_field(".", format!("the bulk request is not a JSON array: {e}")))?;
    if values.len() > max {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request holds {} configurations; limits.max_bulk is {max}: send them \
                 in several requests",
                values.len()
            ),
        ));
    }
    Ok(values)
}

/// One item's answer: what its single PUT would have answered.
fn bulk_result((head, done): (ops::BulkHead, Result<ops::PutDone, OpError>)) -> BulkItemResult {
    let mut r = BulkItemResult {
        index: head.index,
        name: head.name,
        uuid: head.uuid,
        status: 0,
        outcome: None,
        generation: None,
        digest: None,
        error: None,
        path: None,
        errors: Vec::new(),
        domain: None,
    };
    match done {
        Ok(done) => {
            let (status, outcome) = match done.outcome {
                PutOutcome::Created(_) => (StatusCode::CREATED, BulkOutcome::Created),
                PutOutcome::Updated(_) => (StatusCode::OK, BulkOutcome::Updated),
                PutOutcome::Unchanged(_) => (StatusCode::OK, BulkOutcome::Unchanged),
            };
            let desired = done.outcome.desired();
            r.status = status.as_u16();
            r.outcome = Some(outcome);
            r.generation = Some(desired.generation);
            r.digest = Some(desired.digest.to_string());
        }
        Err(e) => {
            let (status, doc) = op_error(&e);
            r.status = status.as_u16();
            r.error = Some(doc.error);
            r.path = doc.path;
            r.errors = doc.errors;
            r.domain = doc.domain;
        }
    }
    r
}
