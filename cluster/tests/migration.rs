//! Migration hand-off with libvirt's lock-manager rules; the VM's leases stay held by the
//! VM at every step.

mod support;

use std::time::Duration;

use support::{Etcd, connect, quick, uuid};
use xenchan_cluster::{Cluster, ClusterError, Uuid, WatchEvent, Watcher};

async fn next(w: &mut Watcher) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event within 5 s")
        .unwrap()
}

/// Another VM asking for the address is refused, naming `vm`.
async fn leases_still_held(c: &Cluster, vm: &Uuid, stage: &str) {
    let intruder = uuid(9, 9);
    match c
        .acquire_leases(&intruder, &["addr/192.0.2.10".into()])
        .await
    {
        Err(ClusterError::Conflict { holder, .. }) => assert_eq!(holder, vm.to_string(), "{stage}"),
        r => panic!("{stage}: another VM got the address: {r:?}"),
    }
    assert_eq!(
        c.lease_holder("host/web1").await.unwrap().as_ref(),
        Some(vm),
        "{stage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_complete_cancel() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/mig/", "dom0-a", quick()).await;
    let b = connect(&urls, "/mig/", "dom0-b", quick()).await;
    let obs = connect(&urls, "/mig/", "dom0-c", quick()).await;
    let vm = uuid(1, 1);
    a.claim(&vm).await.unwrap();
    a.acquire_leases(&vm, &["addr/192.0.2.10".into(), "host/web1".into()])
        .await
        .unwrap();
    a.put_desired(&vm, "web1", b"{\"n\":1}").await.unwrap();
    let rev = a.revision().await.unwrap() + 1;
    let mut watch_a = a.watch([vm.clone()], rev);
    let mut watch_b = b.watch([], rev);
    leases_still_held(&obs, &vm, "before").await;

    // Only the owner can be the source.
    let err = b
        .prepare_migrate(&vm, "dom0-c", "dom0-b")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::NotOwner { owner: Some(o), .. } if o == "dom0-a"),
        "{err}"
    );

    // Prepare: B is incoming, A still owns; a PUT anywhere now reaches B too.
    b.prepare_migrate(&vm, "dom0-a", "dom0-b").await.unwrap();
    assert_eq!(
        next(&mut watch_b).await,
        WatchEvent::Incoming { uuid: vm.clone() }
    );
    let own = obs.ownership(&vm).await.unwrap();
    assert_eq!(
        (own.owner.as_deref(), own.incoming.as_deref()),
        (Some("dom0-a"), Some("dom0-b"))
    );
    leases_still_held(&obs, &vm, "prepared").await;
    let err = obs
        .prepare_migrate(&vm, "dom0-a", "dom0-c")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::MigrationPending { incoming, .. } if incoming == "dom0-b"),
        "{err}"
    );
    obs.put_desired(&vm, "web1", b"{\"n\":2}").await.unwrap();
    for w in [&mut watch_a, &mut watch_b] {
        match next(w).await {
            WatchEvent::Desired { desired, .. } => assert_eq!(desired.generation, 2),
            e => panic!("expected generation 2, got {e:?}"),
        }
    }

    // Complete is the destination's call, and moves ownership in one transaction.
    let err = a
        .complete_migrate(&vm, "dom0-a", "dom0-b")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Invalid(i) if i.field == "to"),
        "{err}"
    );
    b.complete_migrate(&vm, "dom0-a", "dom0-b").await.unwrap();
    let own = obs.ownership(&vm).await.unwrap();
    assert_eq!(
        (own.owner.as_deref(), own.incoming.as_deref()),
        (Some("dom0-b"), None)
    );
    assert_eq!(
        next(&mut watch_a).await,
        WatchEvent::Lost {
            uuid: vm.clone(),
            owner: Some("dom0-b".into())
        }
    );
    assert_eq!(
        next(&mut watch_b).await,
        WatchEvent::Acquired { uuid: vm.clone() }
    );
    assert_eq!(
        next(&mut watch_b).await,
        WatchEvent::IncomingEnded { uuid: vm.clone() }
    );
    leases_still_held(&obs, &vm, "completed").await;
    // A completed migration cannot complete again; the old source cannot record results.
    let err = b
        .complete_migrate(&vm, "dom0-a", "dom0-b")
        .await
        .unwrap_err();
    assert!(matches!(&err, ClusterError::NotOwner { .. }), "{err}");
    let applied = xenchan_cluster::Applied {
        lineage: "l1".into(),
        generation: 2,
        digest: "d2".into(),
    };
    let err = a.record_applied(&vm, &applied).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::NotOwner { owner: Some(o), .. } if o == "dom0-b"),
        "{err}"
    );
    b.record_applied(&vm, &applied).await.unwrap();
    assert_eq!(obs.applied(&vm).await.unwrap(), Some(applied));

    // Cancel: the migration back to A fails; B keeps the domain.
    a.prepare_migrate(&vm, "dom0-b", "dom0-a").await.unwrap();
    assert!(b.cancel_migrate(&vm, "dom0-a").await.unwrap());
    assert!(
        !b.cancel_migrate(&vm, "dom0-a").await.unwrap(),
        "cancelled twice"
    );
    let own = obs.ownership(&vm).await.unwrap();
    assert_eq!(
        (own.owner.as_deref(), own.incoming.as_deref()),
        (Some("dom0-b"), None)
    );
    let err = a
        .complete_migrate(&vm, "dom0-b", "dom0-a")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::NoMigration { incoming: None, .. }),
        "{err}"
    );
    leases_still_held(&obs, &vm, "cancelled").await;

    // The source lost the domain mid-migration (it stopped it): no completion.
    a.prepare_migrate(&vm, "dom0-b", "dom0-a").await.unwrap();
    assert!(b.disown(&vm).await.unwrap());
    let err = a
        .complete_migrate(&vm, "dom0-b", "dom0-a")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::NotOwner { owner: None, .. }),
        "{err}"
    );
    leases_still_held(&obs, &vm, "source gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_migration_keeps_the_owner() {
    // `xl migrate` to the same dom0: source and destination are one host.
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/mig-self/", "dom0-a", quick()).await;
    let vm = uuid(1, 2);
    a.claim(&vm).await.unwrap();
    a.prepare_migrate(&vm, "dom0-a", "dom0-a").await.unwrap();
    a.complete_migrate(&vm, "dom0-a", "dom0-a").await.unwrap();
    let own = a.ownership(&vm).await.unwrap();
    assert_eq!(
        (own.owner.as_deref(), own.incoming.as_deref()),
        (Some("dom0-a"), None)
    );
}
