//! The bulk PUT (`PUT /v1/domains`): each item answered on its own with the single PUT's
//! rules (validation, leases, UUIDs, prepare hooks), the items' writes sharing the
//! store's group commits, and the request's own bounds (413/400, nothing stored).

mod support;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Dirs, TestBroker, sample_config};
use xenchan_broker::api::types::{BulkItem, BulkOutcome, BulkResult};

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn commits(b: &TestBroker) -> u64 {
    let text = b.client.metrics().await.expect("metrics");
    metric(&text, "xenchan_store_commits_total").expect("the SQLite store counts its commits")
}

/// Items in the main test's request: enough that one commit per item would show.
const N: usize = 200;

fn item(name: &str, n: usize) -> BulkItem {
    let cfg = sample_config(
        &format!("{name}.example.com"),
        &format!("10.{}.{}.{}/8", n / 65536, (n / 256) % 256, n % 256),
    );
    BulkItem::new(name, None, &cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_item_is_answered_on_its_own_and_the_writes_share_group_commits() {
    let dirs = Dirs::new();
    let b = TestBroker::start(dirs.config()).await;
    // A domain already holding an address that one item of the bulk asks for.
    b.client
        .put_config(
            "holder",
            &sample_config("holder.example.com", "192.0.2.77/24"),
            None,
        )
        .await
        .expect("the holder's PUT");

    let mut items: Vec<BulkItem> = (0..N).map(|i| item(&format!("vm{i:03}"), i + 1)).collect();
    let uuid = "6F0C1E4E-9A3B-4A53-8D7E-0D9F3F1C2B7A";
    items[1].uuid = Some(uuid.into());
    // Refused, each alone: a bad document, a lease held by another domain, a lease held
    // by an earlier item of the same request (whichever commits first keeps it), a bad
    // name, a second item for the same domain, a bad UUID.
    items.push(BulkItem {
        name: "bad-doc".into(),
        uuid: None,
        config: json!({"hostname": "x", "network": {"version": 3}}),
    });
    items.push(BulkItem::new(
        "lease-taken",
        None,
        &sample_config("lease-taken.example.com", "192.0.2.77/24"),
    ));
    items.push(item("twin-a", 100_000));
    items.push(item("twin-b", 100_000));
    items.push(BulkItem {
        name: "no/slash".into(),
        uuid: None,
        config: json!({"hostname": "x"}),
    });
    items.push(item("vm000", 7));
    items.push(BulkItem {
        name: "bad-uuid".into(),
        uuid: Some("nope".into()),
        config: json!({"hostname": "bad-uuid"}),
    });

    let before = commits(&b).await;
    let res: BulkResult = b.client.put_configs(&items).await.expect("the bulk PUT");
    let after = commits(&b).await;

    assert_eq!(res.results.len(), items.len(), "one result per item");
    for (i, r) in res.results.iter().enumerate() {
        assert_eq!(r.index, i, "results come in the request's order");
    }
    for r in &res.results[..N] {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.outcome, Some(BulkOutcome::Created), "{r:?}");
        assert!(r.generation.is_some() && r.digest.is_some(), "{r:?}");
        assert!(r.error.is_none(), "{r:?}");
    }
    assert_eq!(
        res.results[1].uuid.as_deref(),
        Some(uuid.to_lowercase().as_str())
    );
    let by_name = |n: &str| {
        res.results
            .iter()
            .find(|r| r.name.as_deref() == Some(n))
            .unwrap_or_else(|| panic!("a result for {n}"))
    };
    let bad_doc = by_name("bad-doc");
    assert_eq!(bad_doc.status, 400, "{bad_doc:?}");
    assert_eq!(
        bad_doc.path.as_deref(),
        Some("network.version"),
        "{bad_doc:?}"
    );
    assert!(!bad_doc.errors.is_empty(), "{bad_doc:?}");
    let taken = by_name("lease-taken");
    assert_eq!(taken.status, 409, "{taken:?}");
    assert_eq!(taken.domain.as_deref(), Some("holder"), "{taken:?}");
    let twins = [by_name("twin-a"), by_name("twin-b")];
    assert_eq!(
        twins.iter().filter(|r| r.status == 201).count(),
        1,
        "one of two items claiming one address gets it: {twins:?}"
    );
    let loser = twins.iter().find(|r| r.status != 201).unwrap();
    assert_eq!(loser.status, 409, "{loser:?}");
    let slash = &res.results[N + 4];
    assert_eq!(
        (slash.status, slash.name.as_deref()),
        (400, None),
        "{slash:?}"
    );
    assert_eq!(slash.path.as_deref(), Some("name"));
    let dup = &res.results[N + 5];
    assert_eq!(dup.status, 400, "{dup:?}");
    assert!(
        dup.error.as_deref().unwrap().contains("more than once"),
        "{dup:?}"
    );
    let bad_uuid = by_name("bad-uuid");
    assert_eq!(
        (bad_uuid.status, bad_uuid.path.as_deref()),
        (400, Some("uuid"))
    );
    assert_eq!(res.succeeded, N + 1);
    assert_eq!(res.failed, items.len() - N - 1);

    // What the answers say is what the broker holds.
    let v = b.client.get_domain("vm001").await.expect("vm001");
    assert_eq!(v.uuid.as_deref(), Some(uuid.to_lowercase().as_str()));
    assert_eq!(v.desired_generation, res.results[1].generation);
    assert_eq!(v.desired_digest, res.results[1].digest);
    let first = b.client.get_domain("vm000").await.expect("vm000");
    assert_eq!(
        first.config.unwrap().hostname.map(|h| h.to_string()),
        Some("vm000.example.com".to_string()),
        "the duplicate did not replace the first item"
    );
    for refused in ["bad-doc", "lease-taken", "bad-uuid"] {
        let e = b.client.get_domain(refused).await.unwrap_err();
        assert_eq!(e.status(), Some(404), "{refused} was not stored");
    }
    // Every item's event names the caller, as a single PUT's does.
    let page = b
        .client
        .events(&xenchan_api::query::EventQuery {
            domain: Some("vm150".into()),
            kind: Some("config".into()),
            ..Default::default()
        })
        .await
        .expect("events");
    assert!(
        page.events.iter().any(|e| e.caller.is_some()),
        "{:?}",
        page.events
    );

    // The items committed together: far fewer durable commits than items (one per
    // item is what serialised PUTs cost).
    let spent = after - before;
    eprintln!("{} items stored in {spent} durable commits", N + 1);
    assert!(
        spent > 0 && spent <= (N as u64) / 4,
        "{spent} commits for {N} items: the bulk PUT's writes did not share group commits"
    );

    // The same request again changes nothing: every stored item is unchanged.
    let again: BulkResult = b.client.put_configs(&items[..N]).await.expect("again");
    assert!(
        again
            .results
            .iter()
            .all(|r| r.status == 200 && r.outcome == Some(BulkOutcome::Unchanged)),
        "{:?}",
        again.results.iter().find(|r| r.status != 200)
    );
    assert_eq!(again.results[5].generation, res.results[5].generation);
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_prepare_hook_fails_only_its_item() {
    let dirs = Dirs::new();
    dirs.hook(
        "10-refuse",
        "if [ \"$1 $2 $3\" = 'vm2 prepare begin' ]; then echo 'vm2 is not allowed here' >&2; exit 1; fi\nexit 0",
    );
    let b = TestBroker::start(dirs.config()).await;
    let items: Vec<BulkItem> = (1..=4).map(|i| item(&format!("vm{i}"), i)).collect();
    let res = b.client.put_configs(&items).await.expect("the bulk PUT");
    let statuses: Vec<u16> = res.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 422, 201, 201]);
    let refused = &res.results[1];
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("vm2 is not allowed here"),
        "{refused:?}"
    );
    assert_eq!(
        b.client.get_domain("vm2").await.unwrap_err().status(),
        Some(404)
    );
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_request_out_of_bounds_is_refused_whole_and_stores_nothing() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.limits.max_bulk = 3;
    config.limits.max_bulk_body = 4096;
    let b = TestBroker::start(config).await;
    let put = |body: Vec<u8>| {
        let c = b.client.clone();
        async move {
            let (status, bytes) = c
                .request(Method::PUT, "/v1/domains", Some(body))
                .await
                .expect("an answer");
            let doc: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
            (
                status,
                doc["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    };

    let four: Vec<BulkItem> = (1..=4)
        .map(|i| BulkItem {
            name: format!("vm{i}"),
            uuid: None,
            config: json!({"hostname": format!("vm{i}")}),
        })
        .collect();
    let (status, error) = put(serde_json::to_vec(&four).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(
        error.contains("limits.max_bulk is 3") && error.contains("holds 4"),
        "{error}"
    );

    let big = vec![BulkItem {
        name: "vm1".into(),
        uuid: None,
        config: json!({"hostname": "vm1", "write_files": [{"path": "/etc/x", "content": "a".repeat(5000)}]}),
    }];
    let (status, error) = put(serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(
        error.contains("limits.max_bulk_body (4096 bytes)"),
        "{error}"
    );

    for body in [&br#"{"name":"vm1","config":{}}"#[..], b"[{\"name\":", b""] {
        let (status, error) = put(body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {error}");
        assert!(error.contains("JSON array"), "{error}");
    }

    let empty = b.client.put_configs(&[]).await.expect("an empty bulk");
    assert_eq!((empty.succeeded, empty.failed), (0, 0));
    assert!(b.client.list().await.unwrap().is_empty(), "nothing stored");
    b.stop().await.expect("clean stop");
}

/// Items whose turn comes too near the request's deadline are answered "not attempted"
/// (nothing stored), so the request still gets its per-item answer instead of a 408;
/// started items finish and are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_not_started_before_the_deadline_are_answered_not_attempted() {
    let dirs = Dirs::new();
    dirs.hook(
        "10-slow",
        "[ \"$2 $3\" = 'prepare begin' ] && sleep 0.2\nexit 0",
    );
    let mut config = dirs.config();
    // Items may start during the first 1500 - 900 - 500 = 100 ms: the first 64 (one
    // wave) do, the rest wait for a slot past it.
    config.timeouts.request = 1500;
    config.timeouts.hook = 900;
    let b = TestBroker::start(config).await;
    let items: Vec<BulkItem> = (1..=100).map(|i| item(&format!("vm{i:03}"), i)).collect();
    let res = b
        .client
        .put_configs(&items)
        .await
        .expect("an answer per item, not a 408");
    let stored: Vec<&str> = res
        .results
        .iter()
        .filter(|r| r.status == 201)
        .filter_map(|r| r.name.as_deref())
        .collect();
    let skipped: Vec<&str> = res
        .results
        .iter()
        .filter(|r| r.status == 503 && r.error.as_deref().unwrap_or("").contains("not attempted"))
        .filter_map(|r| r.name.as_deref())
        .collect();
    assert_eq!(
        stored.len() + skipped.len(),
        100,
        "every item is stored or not attempted: {:?}",
        res.results
            .iter()
            .find(|r| r.status != 201 && r.status != 503)
    );
    assert!(
        !stored.is_empty() && !skipped.is_empty(),
        "{} stored, {} not attempted",
        stored.len(),
        skipped.len()
    );
    for name in &skipped {
        assert_eq!(
            b.client.get_domain(name).await.unwrap_err().status(),
            Some(404),
            "{name} was not stored"
        );
    }
    for name in &stored {
        assert!(b.client.get_domain(name).await.is_ok(), "{name} is stored");
    }
    b.stop().await.expect("clean stop");
}
