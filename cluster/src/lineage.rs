//! The cluster's lineage: one value for every broker on this etcd prefix, made by the
//! first broker that asks and never changed. Agents refuse an older generation of the
//! lineage they applied (docs/PROTOCOL.md, "No rollback"); generations are cluster-wide,
//! so the lineage must be too, or a VM migrating to another host would see a "new"
//! lineage and lose that protection.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::client::Cluster;
use crate::error::ClusterError;

impl Cluster {
    /// The lineage stored under `<prefix>lineage`; when there is none yet, `fresh` is
    /// written in the same transaction (create-if-absent), so two brokers starting at once
    /// both read the one that won.
    pub async fn lineage(&self, fresh: &str) -> Result<String, ClusterError> {
        let dl = self.deadline("lineage");
        let key = self.keys.lineage();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(&dl, txn).await?;
        if resp.succeeded() {
            return Ok(fresh.to_string());
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return String::from_utf8(kv.value().to_vec()).map_err(|_| ClusterError::Corrupt {
                    key: key.clone(),
                    reason: "the lineage is not UTF-8".into(),
                });
            }
        }
        Err(ClusterError::Corrupt {
            key,
            reason: "the lineage vanished between compare and read".into(),
        })
    }
}
