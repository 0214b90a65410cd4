//! `PUT /v1/domains`: many configurations in one request, each answered on its own.
//!
//! Each item goes through [`do_put_config`], the single PUT's operation (the lease check,
//! the `prepare` hooks, the per-domain lock, the durable write), so the rules are the
//! same by construction. The items run concurrently: their store jobs reach the store
//! thread together and share its group commits, instead of one fsync per item.
//!
//! Why the work runs on tasks of its own and not in the request's future: the request's
//! deadline (`timeouts.request`) cancels the handler, and a PUT cancelled between its
//! durable commit and the registry update would leave the store ahead of the registry.
//! Started items always finish; an item not started by the cut-off is answered
//! "not attempted" instead, so that the answer arrives within the deadline.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use xenchan_api::types::BulkItem;
use xenchan_protocol::config::GuestConfig;

use super::{OpError, PutConfig, PutDone, do_put_config};
use crate::audit;
use crate::domains::Shared;
use crate::paths::{canonical_uuid, check_domain_name};

/// Items of one bulk PUT in flight at once: enough for their commits to share a group
/// commit (the store batches up to 256 jobs), few enough that a folder of `prepare`
/// hooks does not fork hundreds of processes at once.
pub const BULK_CONCURRENCY: usize = 64;

/// Which item of a bulk PUT an answer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkHead {
    /// Its position in the request.
    pub index: usize,
    /// The domain, when the item names a valid one.
    pub name: Option<String>,
    /// The UUID given with it (lowercase), when valid.
    pub uuid: Option<String>,
}

/// One item of a bulk PUT, as read from the request.
#[derive(Debug)]
pub struct BulkPut {
    /// Which item.
    pub head: BulkHead,
    /// What to store, or why the item is refused before anything runs.
    pub put: Result<PutConfig, OpError>,
}

/// Reads the items of a bulk PUT, each on its own: a malformed item, a bad name, UUID or
/// configuration, or a second item for a domain already in the request is refused alone
/// (the first item for a domain is the one stored: two in one request have no order).
pub fn read_items(values: Vec<Value>) -> Vec<BulkPut> {
    let mut first_of: HashMap<String, usize> = HashMap::new();
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let mut item = read_item(index, value);
            if let (Some(name), Ok(_)) = (&item.head.name, &item.put) {
                match first_of.get(name) {
                    Some(&first) => {
                        item.put = Err(OpError::BadField {
                            path: "name".into(),
                            error: format!(
                                "domain {name} appears more than once in the request (first \
                                 as item {first}); only that item is stored"
                            ),
                        });
                    }
                    None => {
                        first_of.insert(name.clone(), index);
                    }
                }
            }
            item
        })
        .collect()
}

fn read_item(index: usize, value: Value) -> BulkPut {
    let bad = |path: &str, error: String| BulkPut {
        head: BulkHead {
            index,
            name: None,
            uuid: None,
        },
        put: Err(OpError::BadField {
            path: path.into(),
            error,
        }),
    };
    // The name first, so that even an item refused for another reason says which
    // domain it was about.
    let named = value
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| check_domain_name(n).is_ok())
        .map(str::to_string);
    let item: BulkItem = match serde_json::from_value(value) {
        Ok(i) => i,
        Err(e) => {
            let mut b = bad(
                ".",
                format!("item {index} is not {{\"name\", \"uuid\", \"config\"}}: {e}"),
            );
            b.head.name = named;
            return b;
        }
    };
    if let Err(e) = check_domain_name(&item.name) {
        return bad("name", e);
    }
    let uuid = match item.uuid.as_deref() {
        None => None,
        Some(u) => {
            let Some(canonical) = canonical_uuid(u).filter(|_| !u.contains(char::is_whitespace))
            else {
                let mut b = bad(
                    "uuid",
                    format!(
                        "`{}` is not a UUID (expected 8-4-4-4-12 hex digits)",
                        u.escape_debug()
                    ),
                );
                b.head.name = Some(item.name);
                return b;
            };
            Some(canonical)
        }
    };
    let put = GuestConfig::from_document(item.config)
        .map_err(OpError::Config)
        .map(|config| PutConfig {
            name: item.name.clone(),
            uuid: uuid.clone(),
            config,
        });
    BulkPut {
        head: BulkHead {
            index,
            name: Some(item.name),
            uuid,
        },
        put,
    }
}

/// Runs the items' PUTs, [`BULK_CONCURRENCY`] at a time; an item not started by
/// `cutoff` is answered [`OpError::NotAttempted`]. Returns one outcome per item, in the
/// items' order. The work goes on if the caller stops waiting (see the module doc).
pub async fn do_put_configs(
    sh: &Arc<Shared>,
    items: Vec<BulkPut>,
    cutoff: Instant,
) -> Vec<(BulkHead, Result<PutDone, OpError>)> {
    let sh = Arc::clone(sh);
    let caller = audit::current();
    let work = tokio::spawn(async move {
        let n = items.len();
        let gate = Arc::new(Semaphore::new(BULK_CONCURRENCY));
        let mut outcomes: Vec<Option<Result<PutDone, OpError>>> = (0..n).map(|_| None).collect();
        let mut heads = Vec::with_capacity(n);
        let mut running = JoinSet::new();
        for BulkPut { head, put } in items {
            let index = head.index;
            heads.push(head);
            let put = match put {
                Ok(p) => p,
                Err(e) => {
                    outcomes[index] = Some(Err(e));
                    continue;
                }
            };
            let permit = Arc::clone(&gate)
                .acquire_owned()
                .await
                .expect("the gate is never closed");
            if Instant::now() >= cutoff {
                outcomes[index] = Some(Err(OpError::NotAttempted));
                continue;
            }
            let sh = Arc::clone(&sh);
            let caller = caller.clone();
            running.spawn(async move {
                let put = do_put_config(&sh, put);
                let done = match caller {
                    Some(c) => audit::scope(c, put).await,
                    None => put.await,
                };
                drop(permit);
                (index, done)
            });
            // Collect what finished meanwhile, so the set stays small.
            while let Some(r) = running.try_join_next() {
                let (i, done) = r.expect("a PUT task does not panic");
                outcomes[i] = Some(done);
            }
        }
        while let Some(r) = running.join_next().await {
            let (i, done) = r.expect("a PUT task does not panic");
            outcomes[i] = Some(done);
        }
        heads
            .into_iter()
            .zip(outcomes)
            .map(|(head, done)| (head, done.expect("every item has an outcome")))
            .collect()
    });
    work.await.expect("the bulk PUT task does not panic")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(hostname: &str) -> Value {
        json!({"hostname": hostname})
    }

    #[test]
    fn each_item_is_read_on_its_own() {
        let items = read_items(vec![
            json!({"name": "web1", "config": doc("web1")}),
            json!({"name": "web2", "uuid": "6F0C1E4E-9A3B-4A53-8D7E-0D9F3F1C2B7A", "config": doc("web2")}),
            json!({"name": "bad name", "config": doc("x")}),
            json!({"name": "web3", "uuid": "nope", "config": doc("web3")}),
            json!({"name": "web4", "config": {"hostname": "web4", "colour": "blue"}}),
            json!({"name": "web5", "config": doc("web5"), "extra": 1}),
            json!(["web6"]),
            json!({"name": "web1", "config": doc("again")}),
        ]);
        assert_eq!(items.len(), 8);
        let ok: Vec<usize> = items
            .iter()
            .filter(|i| i.put.is_ok())
            .map(|i| i.head.index)
            .collect();
        assert_eq!(ok, [0, 1], "only the valid items pass");
        assert_eq!(
            items[1].head.uuid.as_deref(),
            Some("6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a"),
            "the UUID is lowercased"
        );
        let refusal = |i: usize| match &items[i].put {
            Err(OpError::BadField { path, error }) => (path.clone(), error.clone()),
            Err(OpError::Config(e)) => (e.first_path().to_string(), e.to_string()),
            other => panic!("item {i}: unexpected {other:?}"),
        };
        assert_eq!(refusal(2).0, "name");
        assert_eq!(
            items[2].head.name, None,
            "an invalid name is not echoed as a name"
        );
        assert_eq!(refusal(3).0, "uuid");
        assert_eq!(items[3].head.name.as_deref(), Some("web3"));
        let (path, error) = refusal(4);
        assert!(path.contains("colour"), "{path}: {error}");
        assert_eq!(items[4].head.name.as_deref(), Some("web4"));
        let (path, error) = refusal(5);
        assert_eq!(path, ".");
        assert!(error.contains("extra"), "{error}");
        assert_eq!(
            items[5].head.name.as_deref(),
            Some("web5"),
            "a malformed item still names its domain"
        );
        assert_eq!(refusal(6).0, ".");
        let (path, error) = refusal(7);
        assert_eq!(path, "name");
        assert!(
            error.contains("more than once") && error.contains("item 0"),
            "{error}"
        );
    }
}
