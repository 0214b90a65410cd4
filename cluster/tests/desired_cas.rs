//! The generation of a desired configuration is a compare-and-swap: concurrent PUTs through
//! two brokers each get their own generation, none is lost.

mod support;

use std::collections::BTreeSet;

use support::{Etcd, connect, quick, uuid};
use xenchan_cluster::{ClusterError, PutOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_get_distinct_generations_and_none_is_lost() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/cas/", "dom0-a", quick()).await;
    let b = connect(&urls, "/cas/", "dom0-b", quick()).await;
    let vm = uuid(1, 1);
    let (writers, each) = (8u64, 25u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = if w % 2 == 0 { &a } else { &b };
        let vm = vm.clone();
        tasks.push(async move {
            let mut got = Vec::new();
            for n in 0..each {
                let doc = format!("{{\"writer\":{w},\"n\":{n}}}");
                match c.put_desired(&vm, "web1", doc.as_bytes()).await.unwrap() {
                    PutOutcome::Changed { generation } => got.push((generation, doc)),
                    PutOutcome::Unchanged { .. } => {
                        panic!("a distinct document reported unchanged")
                    }
                }
            }
            got
        });
    }
    let results: Vec<(u64, String)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let total = writers * each;
    let generations: BTreeSet<u64> = results.iter().map(|(g, _)| *g).collect();
    assert_eq!(
        generations.len() as u64,
        total,
        "a generation was handed out twice"
    );
    assert_eq!(
        generations,
        (1..=total).collect(),
        "generations are not 1..={total}"
    );
    let last = a.desired(&vm).await.unwrap().unwrap();
    assert_eq!(last.generation, total);
    let (_, doc) = results.iter().find(|(g, _)| *g == total).unwrap();
    assert_eq!(
        last.config,
        doc.as_bytes(),
        "the last acknowledged PUT is not what etcd holds"
    );
    // The same document again changes nothing.
    assert_eq!(
        b.put_desired(&vm, "web1", doc.as_bytes()).await.unwrap(),
        PutOutcome::Unchanged { generation: total }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_is_reported_not_overwritten() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/corrupt/", "dom0-a", quick()).await;
    let vm = uuid(1, 2);
    let key = format!("/corrupt/domains/{vm}/desired");
    let mut raw = etcd_client::Client::connect(&urls, None).await.unwrap();
    raw.put(key.clone(), "hand-written by etcdctl", None)
        .await
        .unwrap();
    let e = a.put_desired(&vm, "web1", b"{}").await.unwrap_err();
    assert!(
        matches!(&e, ClusterError::Corrupt { key: k, .. } if *k == key),
        "{e}"
    );
    let kept = raw.get(key, None).await.unwrap();
    assert_eq!(kept.kvs()[0].value(), b"hand-written by etcdctl");
    let e = a.put_desired(&vm, "bad\nname", b"{}").await.unwrap_err();
    assert!(
        matches!(&e, ClusterError::Invalid(i) if i.field == "name"),
        "{e}"
    );
}

/// Every broker on one prefix pushes under one lineage: the first offer wins, even when
/// two brokers offer theirs at once; another prefix is another lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_lineage_offered_is_the_clusters() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/lin/", "dom0-a", quick()).await;
    let b = connect(&urls, "/lin/", "dom0-b", quick()).await;
    let (la, lb) = tokio::join!(a.lineage("aaaa"), b.lineage("bbbb"));
    let (la, lb) = (la.unwrap(), lb.unwrap());
    assert_eq!(la, lb, "two brokers got different lineages");
    assert!(la == "aaaa" || la == "bbbb", "{la}");
    // Later offers (a restart, a new host) read the stored one.
    assert_eq!(a.lineage("cccc").await.unwrap(), la);
    let other = connect(&urls, "/lin2/", "dom0-a", quick()).await;
    assert_eq!(other.lineage("dddd").await.unwrap(), "dddd");
}
