//! A 3-member etcd loses its leader mid-run: every write still succeeds (within its
//! deadline, retried across the election) and every acknowledged write is there after.

mod support;

use std::time::Duration;

use support::{Etcd, connect, uuid};
use xenchan_cluster::{PutOutcome, Timeouts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_loses_nothing() {
    require_etcd!();
    let mut members = Etcd::cluster(3).await;
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        request: Duration::from_secs(5),
        host_ttl: Duration::from_secs(5),
    };
    let a = connect(&urls, "/quorum/", "dom0-a", timeouts).await;
    let b = connect(&urls, "/quorum/", "dom0-b", timeouts).await;

    // Which member leads: kill that one, the hardest case.
    let mut raw = etcd_client::Client::connect([&urls[0]], None)
        .await
        .unwrap();
    let leader_id = raw.status().await.unwrap().leader();
    let mut leader = None;
    for (i, url) in urls.iter().enumerate() {
        let mut c = etcd_client::Client::connect([url], None).await.unwrap();
        if c.status()
            .await
            .unwrap()
            .header()
            .map(etcd_client::ResponseHeader::member_id)
            == Some(leader_id)
        {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader among the members");

    let writes_total = 300u64;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let writes = async {
        let mut killed_tx = Some(killed_tx);
        let mut acked = Vec::new();
        for i in 0..writes_total {
            if i == writes_total / 3 {
                let _ = killed_tx.take().unwrap().send(());
            }
            let broker = if i % 2 == 0 { &a } else { &b };
            let vm = uuid(1, i);
            let doc = format!("{{\"n\":{i}}}");
            let put = broker
                .put_desired(&vm, &format!("vm{i}"), doc.as_bytes())
                .await;
            assert_eq!(
                put.unwrap(),
                PutOutcome::Changed { generation: 1 },
                "write {i}"
            );
            broker
                .acquire_leases(&vm, &[format!("addr/2001:db8::{i:x}")])
                .await
                .unwrap();
            acked.push((vm, doc));
        }
        acked
    };
    let kill = async {
        killed_rx.await.unwrap();
        members[leader].kill();
        eprintln!("killed the leader, member {leader}");
    };
    let (acked, ()) = tokio::join!(writes, kill);
    assert_eq!(acked.len() as u64, writes_total);

    // Read everything back through a survivor alone.
    let survivor = urls
        .iter()
        .enumerate()
        .find(|(i, _)| *i != leader)
        .unwrap()
        .1
        .clone();
    let reader = connect(&[survivor], "/quorum/", "dom0-r", timeouts).await;
    for (i, (vm, doc)) in acked.iter().enumerate() {
        let d = reader
            .desired(vm)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("write {i} lost"));
        assert_eq!(d.config, doc.as_bytes(), "write {i}");
        let lease = format!("addr/2001:db8::{i:x}");
        assert_eq!(
            reader.lease_holder(&lease).await.unwrap().as_ref(),
            Some(vm),
            "lease {i}"
        );
    }
}
