//! The event log over the real API: per-domain retention (a noisy domain's events do not
//! evict another's), `GET /v1/events` filters and paging, `GET /v1/domains` filters and
//! paging, and the caller recorded with each event a call caused.

mod support;

use std::collections::HashSet;

use support::{Dirs, TestBroker, sample_config};
use xenchan_api::query::{DomainQuery, EventQuery};
use xenchan_broker::api::types::{DomainState, EventView};
use xenchan_broker::client::{Client, ClientError};

/// Every event `q` selects, page by page (`limit` per page), newest first.
async fn all_pages(client: &Client, mut q: EventQuery) -> Vec<EventView> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = client.events(&q).await.unwrap();
        assert!(page.events.len() <= q.page_size());
        out.extend(page.events);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_domain_does_not_evict_another_domains_events() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.limits.events = 100;
    config.limits.events_per_domain = 10;
    let broker = TestBroker::start(config).await;
    let c = &broker.client;
    c.put_config("quiet", &sample_config("quiet", "192.0.2.10/24"), None)
        .await
        .unwrap();
    // 60 new configurations of one domain: 60 `config` events, 6 times its share.
    for i in 0..60 {
        c.put_config(
            "noisy",
            &sample_config(&format!("noisy{i}"), "192.0.2.11/24"),
            None,
        )
        .await
        .unwrap();
    }
    let noisy = all_pages(
        c,
        EventQuery {
            domain: Some("noisy".into()),
            ..EventQuery::default()
        },
    )
    .await;
    // Pruned in batches of an eighth: between 10 and 11 kept, the newest ones.
    assert!(
        (10..=11).contains(&noisy.len()),
        "noisy keeps its share: {}",
        noisy.len()
    );
    assert!(noisy[0].detail.contains("generation 60"), "{:?}", noisy[0]);
    let quiet = all_pages(
        c,
        EventQuery {
            domain: Some("quiet".into()),
            ..EventQuery::default()
        },
    )
    .await;
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0].kind, "config");
    // The broker's own `start` event is its own "domain" and stays too.
    let own = all_pages(
        c,
        EventQuery {
            domain: Some("-".into()),
            ..EventQuery::default()
        },
    )
    .await;
    assert!(own.iter().any(|e| e.kind == "start"), "{own:?}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_and_page_over_the_api() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    for (i, name) in ["web1", "web2", "db1"].iter().enumerate() {
        for g in 0..3 {
            c.put_config(
                name,
                &sample_config(&format!("{name}-{g}"), &format!("192.0.2.{}/24", 20 + i)),
                None,
            )
            .await
            .unwrap();
        }
    }
    c.delete("db1").await.unwrap();

    // Everything, one page: newest first, ids unique and falling.
    let all = c
        .events(&EventQuery {
            limit: Some(1000),
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.next_cursor, None);
    assert!(all.events.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all.events[0].kind, "delete");
    assert_eq!(all.events[0].domain.as_deref(), Some("db1"));
    // The calls were made by this process: each event names it.
    let me = nix::unistd::geteuid().as_raw();
    let caller = all.events[0]
        .caller
        .as_ref()
        .expect("a call's event names its caller");
    assert_eq!(caller.uid, me);
    assert_eq!(caller.pid, Some(std::process::id().cast_signed()));
    assert!(caller.comm.is_some(), "{caller:?}");
    // The broker's own `start` has none.
    let start = all.events.iter().find(|e| e.kind == "start").unwrap();
    assert_eq!(start.caller, None);

    // Pages of 2 walk the same events, in the same order, none twice.
    let paged = all_pages(
        c,
        EventQuery {
            limit: Some(2),
            ..EventQuery::default()
        },
    )
    .await;
    assert_eq!(paged, all.events);

    // Filters: domain, kind, and both with paging.
    let web1 = all_pages(
        c,
        EventQuery {
            domain: Some("web1".into()),
            limit: Some(2),
            ..EventQuery::default()
        },
    )
    .await;
    assert_eq!(web1.len(), 3);
    assert!(
        web1.iter()
            .all(|e| e.domain.as_deref() == Some("web1") && e.kind == "config")
    );
    let deletes = all_pages(
        c,
        EventQuery {
            kind: Some("delete".into()),
            ..EventQuery::default()
        },
    )
    .await;
    assert_eq!(deletes.len(), 1);

    // Time: since the 4th oldest config event (inclusive), until the newest (exclusive).
    let configs: Vec<&EventView> = all.events.iter().filter(|e| e.kind == "config").collect();
    assert_eq!(configs.len(), 9);
    let from = configs[5].at.clone();
    let to = all.events[0].at.clone();
    let window = all_pages(
        c,
        EventQuery {
            kind: Some("config".into()),
            since: Some(from.clone()),
            until: Some(to.clone()),
            ..EventQuery::default()
        },
    )
    .await;
    let want: Vec<EventView> = all
        .events
        .iter()
        .filter(|e| e.kind == "config" && e.at >= from && e.at < to)
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(window, want);

    // Bad parameters are 400 naming the parameter.
    for (query, param) in [
        ("limit=0", "limit"),
        ("since=yesterday", "since"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = c
            .request(hyper::Method::GET, &format!("/v1/events?{query}"), None)
            .await
            .unwrap();
        assert_eq!(status, 400, "{query}");
        let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(e["path"], param, "{query}: {e}");
    }
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_filter_and_page_over_the_api() {
    let dirs = Dirs::new();
    let broker = TestBroker::start(dirs.config()).await;
    let c = &broker.client;
    let names = ["db1", "web1", "web2", "web3", "web4", "web5"];
    for (i, n) in names.iter().enumerate() {
        c.put_config(
            n,
            &sample_config(n, &format!("192.0.2.{}/24", 40 + i)),
            None,
        )
        .await
        .unwrap();
    }
    // No filter: the plain list, every domain (no socket: pending).
    let all = c.list().await.unwrap();
    assert_eq!(all.len(), names.len());
    // Prefix, paged by 2: web1 web2 | web3 web4 | web5.
    let mut q = DomainQuery {
        prefix: Some("web".into()),
        limit: Some(2),
        ..DomainQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.list_page(&q).await.unwrap();
        pages += 1;
        assert!(page.domains.len() <= 2);
        seen.extend(page.domains.into_iter().map(|d| d.name));
        match page.next_cursor {
            Some(n) => q.cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["web1", "web2", "web3", "web4", "web5"]);
    let set: HashSet<&String> = seen.iter().collect();
    assert_eq!(set.len(), seen.len());
    // State.
    let pending = c
        .list_page(&DomainQuery {
            state: Some(DomainState::Pending),
            ..DomainQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.domains.len(), names.len());
    assert_eq!(pending.next_cursor, None);
    let configured = c
        .list_page(&DomainQuery {
            state: Some(DomainState::Configured),
            ..DomainQuery::default()
        })
        .await
        .unwrap();
    assert!(configured.domains.is_empty());
    let e = c
        .request(hyper::Method::GET, "/v1/domains?state=running", None)
        .await
        .unwrap();
    assert_eq!(e.0, 400);
    // The client reads a refusal as an error naming the parameter.
    let ClientError::Api { status: 400, error } = c
        .list_page(&DomainQuery {
            limit: Some(0),
            ..DomainQuery::default()
        })
        .await
        .unwrap_err()
    else {
        panic!("a zero limit is refused")
    };
    assert_eq!(error.path.as_deref(), Some("limit"));
    broker.stop().await.unwrap();
}
