//! A PUT's one transaction (`put_domain`: leases and desired configuration together) and
//! the batched record of what agents applied (`record_applied_batch`).

mod support;

use support::{Etcd, connect, kv_requests, quick, uuid};
use xenchan_cluster::{Applied, ClusterError, PutOutcome};

fn leases(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_document_are_written_together_or_not_at_all() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/pd/", "dom0-a", quick()).await;
    let b = connect(&urls, "/pd/", "dom0-b", quick()).await;
    let (vm1, vm2) = (uuid(7, 1), uuid(7, 2));
    let addr = "addr/192.0.2.10";

    let first = a
        .put_domain(&vm1, "web1", b"{\"n\":1}", &leases(&[addr, "host/web1"]))
        .await
        .unwrap();
    assert_eq!(first.outcome, PutOutcome::Changed { generation: 1 });
    assert!(!first.existed);
    assert_eq!(first.leases.taken, leases(&[addr, "host/web1"]));
    assert_eq!(a.lease_holder(addr).await.unwrap(), Some(vm1.clone()));
    assert_eq!(a.desired(&vm1).await.unwrap().unwrap().generation, 1);

    // Another VM asking for the same address through the other broker: the holder is
    // named, and neither its document nor its other lease was written.
    let e = b
        .put_domain(&vm2, "web2", b"{\"n\":2}", &leases(&["host/web2", addr]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Conflict { lease, holder } if lease == addr && *holder == vm1.to_string()),
        "{e}"
    );
    assert_eq!(b.desired(&vm2).await.unwrap(), None);
    assert_eq!(b.lease_holder("host/web2").await.unwrap(), None);

    // The same PUT again writes nothing: not one revision.
    let mut raw = etcd_client::Client::connect(&urls, None).await.unwrap();
    let rev =
        |r: etcd_client::GetResponse| r.header().map_or(0, etcd_client::ResponseHeader::revision);
    let before = rev(raw.get("/pd/", None).await.unwrap());
    let again = b
        .put_domain(&vm1, "web1", b"{\"n\":1}", &leases(&["host/web1", addr]))
        .await
        .unwrap();
    assert_eq!(again.outcome, PutOutcome::Unchanged { generation: 1 });
    assert!(again.existed);
    assert_eq!(again.leases, xenchan_cluster::LeaseChange::default());
    assert_eq!(rev(raw.get("/pd/", None).await.unwrap()), before);

    // A new document without the address: a new generation, the address given back in
    // the same transaction, so the other VM can take it now.
    let next = a
        .put_domain(&vm1, "web1", b"{\"n\":3}", &leases(&["host/web1"]))
        .await
        .unwrap();
    assert_eq!(next.outcome, PutOutcome::Changed { generation: 2 });
    assert_eq!(next.leases.released, leases(&[addr]));
    assert_eq!(
        rev(raw.get("/pd/", None).await.unwrap()),
        before + 1,
        "one transaction, one revision"
    );
    let won = b
        .put_domain(&vm2, "web2", b"{\"n\":2}", &leases(&[addr]))
        .await
        .unwrap();
    assert_eq!(won.outcome, PutOutcome::Changed { generation: 1 });
    assert_eq!(b.lease_holder(addr).await.unwrap(), Some(vm2.clone()));

    // Bad input is refused before anything is read or written.
    let e = a
        .put_domain(&vm1, "web1", b"{}", &leases(&["not a lease"]))
        .await
        .unwrap_err();
    assert!(matches!(&e, ClusterError::Invalid(_)), "{e}");
    assert_eq!(a.desired(&vm1).await.unwrap().unwrap().generation, 2);
}

/// Two VMs racing for one address through two brokers, many times: exactly one wins each
/// race, and the loser's document is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_for_one_address_have_exactly_one_winner() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/pdr/", "dom0-a", quick()).await;
    let b = connect(&urls, "/pdr/", "dom0-b", quick()).await;
    for i in 0..100u64 {
        let (vm1, vm2) = (uuid(8, 2 * i + 1), uuid(8, 2 * i + 2));
        let addr = leases(&[&format!("addr/198.51.100.{}", i % 250)]);
        // A fresh address each round: release the last round's first.
        let (ra, rb) = tokio::join!(
            a.put_domain(&vm1, "x1", b"{\"a\":1}", &addr),
            b.put_domain(&vm2, "x2", b"{\"b\":1}", &addr)
        );
        let wins = [ra.is_ok(), rb.is_ok()];
        assert_eq!(
            wins.iter().filter(|w| **w).count(),
            1,
            "round {i}: {wins:?}"
        );
        let (loser, lost) = if ra.is_ok() { (&vm2, rb) } else { (&vm1, ra) };
        assert!(
            matches!(lost, Err(ClusterError::Conflict { .. })),
            "round {i}"
        );
        assert_eq!(a.desired(loser).await.unwrap(), None, "round {i}");
        a.release_leases(&vm1).await.unwrap();
        b.release_leases(&vm2).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_records_go_in_one_transaction_and_only_for_owned_domains() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/ab/", "dom0-a", quick()).await;
    let b = connect(&urls, "/ab/", "dom0-b", quick()).await;
    let mine: Vec<_> = (1..=5).map(|n| uuid(9, n)).collect();
    let theirs = uuid(9, 99);
    for u in &mine {
        a.claim(u).await.unwrap();
    }
    b.claim(&theirs).await.unwrap();
    let applied = |g: u64| Applied {
        lineage: "lin".into(),
        generation: g,
        digest: format!("d{g}"),
    };
    let mut batch: Vec<_> = mine.iter().map(|u| (u.clone(), applied(1))).collect();
    batch.push((theirs.clone(), applied(1)));
    // The same domain twice: the last entry is what is recorded.
    batch.push((mine[0].clone(), applied(2)));

    let mut raw = etcd_client::Client::connect(&urls, None).await.unwrap();
    let rev =
        |r: etcd_client::GetResponse| r.header().map_or(0, etcd_client::ResponseHeader::revision);
    let before = rev(raw.get("/ab/", None).await.unwrap());
    let refused = a.record_applied_batch(&batch).await.unwrap();
    assert_eq!(refused, vec![theirs.clone()]);
    assert_eq!(
        rev(raw.get("/ab/", None).await.unwrap()),
        before + 1,
        "one transaction"
    );
    assert_eq!(a.applied(&mine[0]).await.unwrap(), Some(applied(2)));
    for u in &mine[1..] {
        assert_eq!(a.applied(u).await.unwrap(), Some(applied(1)));
    }
    assert_eq!(a.applied(&theirs).await.unwrap(), None, "not the owner");

    let too_many: Vec<_> = (0..=xenchan_cluster::APPLIED_BATCH as u64)
        .map(|n| (uuid(10, n), applied(1)))
        .collect();
    let e = a.record_applied_batch(&too_many).await.unwrap_err();
    assert!(
        matches!(&e, ClusterError::Invalid(i) if i.field == "batch"),
        "{e}"
    );
}

/// A first PUT is one round trip (planned on the guess that etcd holds nothing of the
/// VM); a PUT after its lease check (`read_domain`) is one more; a wrong guess or a stale
/// read costs the round trip reading first would have, never a wrong write: the
/// generation goes on from what etcd holds, even across a delete, a lease taken alone is
/// given back, and a lease another VM took since the read is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_one_round_trip_when_its_plan_holds_and_correct_when_it_does_not() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/pg/", "dom0-a", quick()).await;
    let b = connect(&urls, "/pg/", "dom0-b", quick()).await;
    let url = etcd.client_url.as_str();
    let mut raw = etcd_client::Client::connect(&urls, None).await.unwrap();
    let rev =
        |r: etcd_client::GetResponse| r.header().map_or(0, etcd_client::ResponseHeader::revision);
    let (vm1, vm2, vm3) = (uuid(11, 1), uuid(11, 2), uuid(11, 3));

    // First PUT: one request, one revision.
    let r0 = rev(raw.get("/pg/", None).await.unwrap());
    let q0 = kv_requests(url);
    let first = a
        .put_domain(
            &vm1,
            "web1",
            b"{\"n\":1}",
            &leases(&["addr/192.0.2.1", "host/web1"]),
        )
        .await
        .unwrap();
    assert_eq!(first.outcome, PutOutcome::Changed { generation: 1 });
    assert!(!first.existed);
    assert_eq!(kv_requests(url) - q0, 1, "a first PUT is one round trip");
    assert_eq!(rev(raw.get("/pg/", None).await.unwrap()) - r0, 1);

    // The check's read, then the write planned on it: one round trip each.
    let q1 = kv_requests(url);
    let wanted = leases(&["addr/192.0.2.2", "host/web1"]);
    let read = b.read_domain(&vm1, &wanted).await.unwrap();
    assert_eq!(read.held_by_other("addr/192.0.2.2"), None);
    assert_eq!(read.held_by_other("host/web1"), None, "its own lease");
    let next = b
        .put_domain_after(&vm1, "web1", b"{\"n\":2}", &wanted, Some(read.clone()))
        .await
        .unwrap();
    assert_eq!(next.outcome, PutOutcome::Changed { generation: 2 });
    assert!(next.existed);
    assert_eq!(next.leases.released, leases(&["addr/192.0.2.1"]));
    assert_eq!(kv_requests(url) - q1, 2, "check + write");

    // The same read again is stale now (generation 2 was written since): the guard
    // fails, etcd's answer is planned on, and the generation goes on from 2.
    let q2 = kv_requests(url);
    let again = b
        .put_domain_after(&vm1, "web1", b"{\"n\":3}", &wanted, Some(read))
        .await
        .unwrap();
    assert_eq!(again.outcome, PutOutcome::Changed { generation: 3 });
    assert_eq!(
        kv_requests(url) - q2,
        2,
        "a stale read costs one more round trip"
    );
    // Without a read, a known VM is a wrong guess: the same two round trips.
    let q3 = kv_requests(url);
    let same = a
        .put_domain(&vm1, "web1", b"{\"n\":3}", &wanted)
        .await
        .unwrap();
    assert_eq!(same.outcome, PutOutcome::Unchanged { generation: 3 });
    assert_eq!(
        kv_requests(url) - q3,
        1,
        "the failed guess answered the reads"
    );

    // Across a delete (a tombstone keeps the generation), the guess of nothing fails
    // and the generation goes on.
    a.release_leases(&vm1).await.unwrap();
    assert!(a.delete_desired(&vm1).await.unwrap());
    let after_delete = b
        .put_domain(&vm1, "web1", b"{\"n\":4}", &leases(&["host/web1"]))
        .await
        .unwrap();
    assert_eq!(after_delete.outcome, PutOutcome::Changed { generation: 4 });
    assert!(!after_delete.existed);

    // A lease taken alone (no desired configuration): the guess of an empty index
    // fails, and the lease the PUT does not want is given back.
    a.acquire_leases(&vm2, &leases(&["addr/192.0.2.50"]))
        .await
        .unwrap();
    let put2 = b
        .put_domain(&vm2, "web2", b"{\"n\":1}", &leases(&["host/web2"]))
        .await
        .unwrap();
    assert_eq!(put2.outcome, PutOutcome::Changed { generation: 1 });
    assert_eq!(put2.leases.released, leases(&["addr/192.0.2.50"]));
    assert_eq!(a.lease_holder("addr/192.0.2.50").await.unwrap(), None);
    assert_eq!(
        a.lease_holder("host/web2").await.unwrap(),
        Some(vm2.clone())
    );

    // A lease another VM took between the check and the write: refused, naming it, and
    // nothing of the PUT written.
    let want3 = leases(&["addr/192.0.2.60", "host/web3"]);
    let read3 = a.read_domain(&vm3, &want3).await.unwrap();
    assert_eq!(read3.held_by_other("addr/192.0.2.60"), None);
    b.put_domain(
        &vm2,
        "web2",
        b"{\"n\":2}",
        &leases(&["host/web2", "addr/192.0.2.60"]),
    )
    .await
    .unwrap();
    let e = a
        .put_domain_after(&vm3, "web3", b"{\"n\":1}", &want3, Some(read3))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Conflict { lease, holder } if lease == "addr/192.0.2.60" && *holder == vm2.to_string()),
        "{e}"
    );
    assert_eq!(a.desired(&vm3).await.unwrap(), None);
    assert_eq!(a.lease_holder("host/web3").await.unwrap(), None);
    // The check names it too; a read of another VM is not used for this one.
    let read3 = a.read_domain(&vm3, &want3).await.unwrap();
    assert_eq!(read3.held_by_other("addr/192.0.2.60"), Some(&vm2));
    let other_vm = a.read_domain(&vm1, &leases(&["host/web3"])).await.unwrap();
    let put3 = a
        .put_domain_after(
            &vm3,
            "web3",
            b"{\"n\":1}",
            &leases(&["host/web3"]),
            Some(other_vm),
        )
        .await
        .unwrap();
    assert_eq!(put3.outcome, PutOutcome::Changed { generation: 1 });
    assert_eq!(
        a.lease_holder("host/web3").await.unwrap(),
        Some(vm3.clone())
    );
}
