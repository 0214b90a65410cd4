//! Cluster mode (`[store] backend = "etcd"`): two brokers, each with its own state folder
//! and `host`, on one real etcd. The same address PUT for two VMs through different
//! brokers gives exactly one 201 and one 409 naming the holder, race after race, under
//! concurrent retries; retries afterwards change nothing.

mod support;

#[path = "../../cluster/tests/support/mod.rs"]
mod etcd;

mod cluster_support;

use std::time::Duration;

use cluster_support::cluster_config;
use hyper::Method;
use support::{Dirs, TestBroker, sample_config};
use xenchan_broker::api::types::ApiError;

fn uuid(side: u8, n: usize) -> String {
    format!("00000000-00{side:02x}-4000-8000-{n:012x}")
}

/// One PUT; the status and, for a refusal, the error document.
async fn put(b: &TestBroker, name: &str, cfg: &[u8], uuid: &str) -> (u16, Option<ApiError>) {
    let path = format!("/v1/domains/{name}/config?uuid={uuid}");
    let (status, body) = b
        .client
        .request(Method::PUT, &path, Some(cfg.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("PUT {name}: {e}"));
    let err = (!status.is_success()).then(|| {
        serde_json::from_slice::<ApiError>(&body)
            .unwrap_or_else(|e| panic!("{status} {name}: {e}: {}", String::from_utf8_lossy(&body)))
    });
    (status.as_u16(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_address_through_two_brokers_has_one_winner_per_race() {
    if etcd::etcd_binary().is_none() {
        eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
        return;
    }
    let server = etcd::Etcd::start().await;
    let (da, db) = (Dirs::new(), Dirs::new());
    let a = TestBroker::start(cluster_config(&da, &server.client_url, "/race/", "dom0-a")).await;
    let b = TestBroker::start(cluster_config(&db, &server.client_url, "/race/", "dom0-b")).await;
    let races: usize = std::env::var("XENCHAN_RACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let started = std::time::Instant::now();
    let (mut wins_a, mut wins_b) = (0, 0);
    // A few races at once keep both brokers and etcd busy; each race is four requests
    // sent together: each VM's PUT and its retry, through its own broker.
    for chunk in (0..races).collect::<Vec<_>>().chunks(8) {
        let mut set = Vec::new();
        for &i in chunk {
            let (a, b) = (&a, &b);
            set.push(async move {
                let addr = format!("10.{}.{}.{}/8", i / 60_000, (i / 250) % 240, i % 250 + 1);
                let (na, nb) = (format!("a{i}"), format!("b{i}"));
                let (ua, ub) = (uuid(0xa, i), uuid(0xb, i));
                let ca = sample_config(&format!("{na}.example.com"), &addr).canonical_json();
                let cb = sample_config(&format!("{nb}.example.com"), &addr).canonical_json();
                let (ra1, ra2, rb1, rb2) = tokio::join!(
                    put(a, &na, &ca, &ua),
                    put(a, &na, &ca, &ua),
                    put(b, &nb, &cb, &ub),
                    put(b, &nb, &cb, &ub),
                );
                let sa = [ra1.0, ra2.0];
                let sb = [rb1.0, rb2.0];
                let created = sa.iter().chain(&sb).filter(|s| **s == 201).count();
                assert_eq!(created, 1, "race {i}: exactly one 201: {sa:?} {sb:?} {ra1:?} {rb1:?}");
                let a_won = sa.contains(&201);
                let (won, lost, winner, winner_uuid) = if a_won {
                    (sa, [rb1, rb2], &na, &ua)
                } else {
                    (sb, [ra1, ra2], &nb, &ub)
                };
                let mut won = won;
                won.sort_unstable();
                assert_eq!(won, [200, 201], "race {i}: the winner's retry is unchanged");
                for (status, err) in lost {
                    assert_eq!(status, 409, "race {i}: the loser gets 409");
                    let err = err.unwrap();
                    let holder = err.domain.unwrap_or_default();
                    assert!(
                        holder == *winner || holder == *winner_uuid,
                        "race {i}: the 409 names the holder {winner} ({winner_uuid}), not {holder:?}: {}",
                        err.error
                    );
                    assert!(
                        err.path.as_deref().is_some_and(|p| p.contains("addresses")),
                        "race {i}: the 409 names the field: {:?}",
                        err.path
                    );
                }
                // Retries after the race, through both brokers: nothing changes.
                let (ra, rb) = tokio::join!(put(a, &na, &ca, &ua), put(b, &nb, &cb, &ub));
                if a_won {
                    assert_eq!((ra.0, rb.0), (200, 409), "race {i}: retries");
                } else {
                    assert_eq!((ra.0, rb.0), (409, 200), "race {i}: retries");
                }
                a_won
            });
        }
        for a_won in futures::future::join_all(set).await {
            if a_won {
                wins_a += 1;
            } else {
                wins_b += 1;
            }
        }
    }
    println!(
        "{races} races in {:?}: broker a won {wins_a}, broker b won {wins_b}",
        started.elapsed()
    );
    assert_eq!(wins_a + wins_b, races);
    // The loser's domains were never stored; the winner's are, once, with generation 1.
    let la = a.client.list().await.unwrap();
    let lb = b.client.list().await.unwrap();
    assert_eq!(la.len() + lb.len(), races, "one stored domain per race");
    assert!(
        la.iter()
            .chain(&lb)
            .all(|v| v.desired_generation == Some(1)),
        "retries did not bump generations"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    drop(server);
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_without_a_uuid_is_refused_naming_the_field() {
    if etcd::etcd_binary().is_none() {
        eprintln!("skipped: no etcd binary (install Debian's etcd-server: scripts/setup.sh)");
        return;
    }
    let server = etcd::Etcd::start().await;
    let dirs = Dirs::new();
    let a = TestBroker::start(cluster_config(
        &dirs,
        &server.client_url,
        "/nouuid/",
        "dom0-a",
    ))
    .await;
    let cfg = sample_config("web1.example.com", "192.0.2.10/24");
    let e = a.client.put_config("web1", &cfg, None).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let text = xenchan_basics::chain(&e);
    assert!(
        text.contains("uuid") || format!("{e:?}").contains("uuid"),
        "{text} {e:?}"
    );
    // With the UUID it is stored; later PUTs through the same broker need none.
    let vm = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";
    let v = a.client.put_config("web1", &cfg, Some(vm)).await.unwrap();
    assert_eq!(v.desired_generation, Some(1));
    let cfg2 = sample_config("web1.example.com", "192.0.2.11/24");
    let v = a.client.put_config("web1", &cfg2, None).await.unwrap();
    assert_eq!(v.desired_generation, Some(2));
    // Deleted: the lease goes back, and the next PUT gets a higher generation.
    let del = a.client.delete("web1").await.unwrap();
    assert!(del.removed);
    assert!(
        del.released.iter().any(|l| l == "address 192.0.2.11"),
        "{:?}",
        del.released
    );
    let v = a.client.put_config("web1", &cfg, Some(vm)).await.unwrap();
    assert_eq!(v.desired_generation, Some(3), "generations never go back");
    a.stop().await.unwrap();
}
