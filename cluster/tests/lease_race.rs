//! Two brokers race the same address for two VMs, 1,000 times: exactly one wins each race
//! and the other is told the holder; retries do not change the outcome.

mod support;

use futures::StreamExt;
use support::{Etcd, connect, quick, uuid};
use xenchan_cluster::ClusterError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_per_race_and_the_loser_learns_the_holder() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/race/", "dom0-a", quick()).await;
    let b = connect(&urls, "/race/", "dom0-b", quick()).await;
    let races = 1000u64;
    let wins = futures::stream::iter(0..races)
        .map(|i| {
            let (a, b) = (&a, &b);
            async move {
                // Documentation prefix (RFC 3849): a lease string, no traffic anywhere.
                let lease = vec![format!("addr/2001:db8::{i:x}")];
                let (vm1, vm2) = (uuid(1, i), uuid(2, i));
                let (r1, r2) = tokio::join!(
                    a.acquire_leases(&vm1, &lease),
                    b.acquire_leases(&vm2, &lease)
                );
                let (winner, loser, lost) = match (r1, r2) {
                    (Ok(c), Err(e)) => {
                        assert_eq!(c.taken, lease);
                        (vm1.clone(), vm2.clone(), e)
                    }
                    (Err(e), Ok(c)) => {
                        assert_eq!(c.taken, lease);
                        (vm2.clone(), vm1.clone(), e)
                    }
                    (r1, r2) => panic!("race {i}: not exactly one winner: {r1:?} / {r2:?}"),
                };
                match lost {
                    ClusterError::Conflict { lease: l, holder } => {
                        assert_eq!(l, lease[0]);
                        assert_eq!(holder, winner.to_string(), "race {i}: wrong holder named");
                    }
                    e => panic!("race {i}: loser got {e:?}, not Conflict"),
                }
                // Retries through the other broker: the winner keeps it, the loser is
                // refused again, naming the same holder.
                let (c_win, c_lose) = if winner == vm1 { (b, a) } else { (a, b) };
                assert!(
                    c_win
                        .acquire_leases(&winner, &lease)
                        .await
                        .unwrap()
                        .taken
                        .is_empty()
                );
                match c_lose.acquire_leases(&loser, &lease).await {
                    Err(ClusterError::Conflict { holder, .. }) => {
                        assert_eq!(holder, winner.to_string());
                    }
                    r => panic!("race {i}: retry of the loser gave {r:?}"),
                }
                assert_eq!(
                    a.lease_holder(&lease[0]).await.unwrap(),
                    Some(winner.clone())
                );
                winner == vm1
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<bool>>()
        .await;
    assert_eq!(wins.len() as u64, races);
    let by_a = wins.iter().filter(|w| **w).count();
    eprintln!(
        "{races} races: broker A's VM won {by_a}, broker B's VM won {}",
        races as usize - by_a
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_set_of_leases_is_all_or_nothing_and_replaced_as_a_whole() {
    require_etcd!();
    let etcd = Etcd::start().await;
    let urls = vec![etcd.client_url.clone()];
    let a = connect(&urls, "/sets/", "dom0-a", quick()).await;
    let (vm1, vm2) = (uuid(1, 1), uuid(2, 1));
    let addr = "addr/192.0.2.10".to_string();
    let host = "host/web1".to_string();
    let other = "addr/192.0.2.11".to_string();
    a.acquire_leases(&vm1, std::slice::from_ref(&addr))
        .await
        .unwrap();
    // vm2 wants a free hostname and vm1's address: refused whole, the hostname not taken.
    let e = a
        .acquire_leases(&vm2, &[host.clone(), addr.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Conflict { lease, holder } if *lease == addr && *holder == vm1.to_string()),
        "{e}"
    );
    assert!(e.to_string().contains(vm1.as_str()), "{e}");
    assert_eq!(a.lease_holder(&host).await.unwrap(), None);
    // vm1 moves to another address: the old one is released in the same transaction.
    let change = a
        .acquire_leases(&vm1, &[other.clone(), host.clone()])
        .await
        .unwrap();
    assert_eq!(change.taken, vec![other.clone(), host.clone()]);
    assert_eq!(change.released, vec![addr.clone()]);
    assert_eq!(a.lease_holder(&addr).await.unwrap(), None);
    a.acquire_leases(&vm2, std::slice::from_ref(&addr))
        .await
        .unwrap();
    assert_eq!(
        a.release_leases(&vm1).await.unwrap(),
        vec![other.clone(), host.clone()]
    );
    assert_eq!(a.lease_holder(&other).await.unwrap(), None);
    // Bad lease strings are refused naming the field, before etcd is asked.
    let e = a
        .acquire_leases(&vm1, &["addr/../x".to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClusterError::Invalid(i) if i.field == "lease"),
        "{e}"
    );
}
