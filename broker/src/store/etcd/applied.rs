//! The background task that records in etcd what agents applied, in batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use xenchan_cluster::{Cluster, Uuid};

/// How long a batch that is not full waits for more: results come one by one (each agent
/// answers on its own), and what queued during one transaction's round trip alone made
/// batches of about 7 at 10,000 domains (0.14 transactions and WAL fsyncs per domain in
/// etcd); waiting this long first makes them several times larger. A record reaches etcd
/// this much later, which only a migration's destination reads.
const LINGER: Duration = Duration::from_millis(25);

/// Records what agents applied in etcd, many domains per transaction: whatever queued
/// while the last transaction was in flight goes in the next (up to
/// [`xenchan_cluster::APPLIED_BATCH`]). One transaction per result cost each result an
/// etcd round trip and a revision; at 10,000 domains that was a third of etcd's writes.
/// A record lost here (etcd unreachable, the domain owned elsewhere) only costs a
/// migration's destination one push it could have skipped: the local store has it.
pub(super) async fn record_applied_task(
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<(String, Uuid, xenchan_cluster::Applied)>,
) {
    // The batch as etcd takes it, and each entry's domain name (for the log).
    let mut items = Vec::with_capacity(xenchan_cluster::APPLIED_BATCH);
    let mut names = Vec::with_capacity(xenchan_cluster::APPLIED_BATCH);
    while let Some(first) = rx.recv().await {
        items.clear();
        names.clear();
        let (name, uuid, applied) = first;
        names.push(name);
        items.push((uuid, applied));
        take_queued(&mut rx, &mut names, &mut items);
        if items.len() < xenchan_cluster::APPLIED_BATCH {
            tokio::time::sleep(LINGER).await;
            take_queued(&mut rx, &mut names, &mut items);
        }
        match cluster.record_applied_batch(&items).await {
            Ok(refused) => {
                for uuid in refused {
                    let name = items
                        .iter()
                        .position(|(u, _)| *u == uuid)
                        .map_or("?", |i| names[i].as_str());
                    tracing::debug!(domain = %name, %uuid,
                        "applied state not recorded in etcd: this host does not own the domain");
                }
            }
            Err(e) => tracing::debug!(
                domains = items.len(),
                "applied state not recorded in etcd: {}",
                xenchan_basics::chain(&e)
            ),
        }
    }
}

/// Moves what is queued into the batch, up to [`xenchan_cluster::APPLIED_BATCH`].
fn take_queued(
    rx: &mut mpsc::UnboundedReceiver<(String, Uuid, xenchan_cluster::Applied)>,
    names: &mut Vec<String>,
    items: &mut Vec<(Uuid, xenchan_cluster::Applied)>,
) {
    while items.len() < xenchan_cluster::APPLIED_BATCH {
        let Ok((name, uuid, applied)) = rx.try_recv() else {
            return;
        };
        names.push(name);
        items.push((uuid, applied));
    }
}
