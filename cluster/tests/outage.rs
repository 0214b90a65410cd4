//! etcd killed: calls answer `Unavailable` naming the endpoints within the deadline; after
//! a restart the same client works again and nothing acknowledged is lost.

mod support;

use std::time::{Duration, Instant};

use support::{Etcd, connect, uuid};
use xenchan_cluster::{ClusterError, PutOutcome, Timeouts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_within_the_deadline_then_recovery() {
    require_etcd!();
    let mut etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        request: Duration::from_secs(1),
        host_ttl: Duration::from_secs(10),
    };
    let a = connect(&urls, "/outage/", "dom0-a", timeouts).await;
    let vm = uuid(1, 1);
    a.put_desired(&vm, "web1", b"{\"n\":1}").await.unwrap();
    a.acquire_leases(&vm, &["addr/192.0.2.10".into()])
        .await
        .unwrap();

    etcd.kill();
    for attempt in 0..3 {
        let start = Instant::now();
        let e = a.put_desired(&vm, "web1", b"{\"n\":2}").await.unwrap_err();
        let took = start.elapsed();
        assert!(e.is_unavailable(), "{e}");
        assert!(
            matches!(&e, ClusterError::Unavailable { endpoints, op: "put_desired", .. } if *endpoints == etcd.client_url),
            "{e}"
        );
        assert!(
            e.to_string().contains(&etcd.client_url),
            "the error names the endpoint: {e}"
        );
        assert!(
            took <= Duration::from_millis(1500),
            "attempt {attempt}: answered after {took:?}, deadline 1 s"
        );
        eprintln!(
            "attempt {attempt}: {} (after {took:?})",
            xenchan_basics::chain(&e)
        );
    }
    let start = Instant::now();
    assert!(
        a.lease_holder("addr/192.0.2.10")
            .await
            .unwrap_err()
            .is_unavailable()
    );
    assert!(start.elapsed() <= Duration::from_millis(1500));

    etcd.spawn();
    support::wait_ready(&urls, Duration::from_secs(20)).await;
    // The same client reconnects by itself; the first calls may still see the restart.
    let start = Instant::now();
    let outcome = loop {
        match a.put_desired(&vm, "web1", b"{\"n\":2}").await {
            Ok(o) => break o,
            Err(e) if e.is_unavailable() && start.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("no recovery after restart: {e}"),
        }
    };
    eprintln!("recovered {:?} after etcd answered again", start.elapsed());
    assert_eq!(
        outcome,
        PutOutcome::Changed { generation: 2 },
        "generation 1 was lost in the outage"
    );
    assert_eq!(
        a.lease_holder("addr/192.0.2.10").await.unwrap(),
        Some(vm.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_unavailable_within_the_deadline() {
    let port = support::free_ports(1)[0];
    let url = format!("http://127.0.0.1:{port}");
    let config = xenchan_cluster::ClusterConfig {
        endpoints: vec![url.clone()],
        prefix: "/none/".into(),
        host: "dom0-a".into(),
        timeouts: Timeouts {
            connect: Duration::from_millis(200),
            request: Duration::from_secs(1),
            host_ttl: Duration::from_secs(10),
        },
    };
    let start = Instant::now();
    let e = xenchan_cluster::Cluster::connect(&config)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(
        start.elapsed() <= Duration::from_millis(2500),
        "took {:?}",
        start.elapsed()
    );
}
