//! Cluster-wide leases (an address, a hostname), held by a VM (its UUID), never by a host:
//! they stay put while the VM migrates or its host dies. Taking a VM's set of leases is ONE
//! transaction that succeeds only if every key is absent or already the VM's; on conflict
//! the answer names the holder.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::client::Cluster;
use crate::codec;
use crate::error::ClusterError;
use crate::keys::{DomainKey, Uuid, check_lease};

/// The most leases one VM may ask for at once (one transaction holds them all; etcd's
/// default limit is 128 operations per transaction, and each lease costs two).
pub const MAX_LEASES: usize = 48;

/// Who holds each wanted lease (`None`: absent), and the VM's own index of its leases.
type Holders = (BTreeMap<String, Option<Uuid>>, BTreeSet<String>);

/// What `acquire_leases` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseChange {
    /// Leases the VM did not hold before.
    pub taken: Vec<String>,
    /// Leases the VM held and no longer asked for.
    pub released: Vec<String>,
}

/// The transaction to run, decided from what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeasePlan {
    /// Absent: take (guard: still absent).
    pub take: Vec<String>,
    /// Already the VM's: keep (guard: still the VM's).
    pub keep: Vec<String>,
    /// In the VM's index but not wanted: give back.
    pub release: Vec<String>,
}

impl LeasePlan {
    /// What carrying the plan out changes.
    pub fn change(self) -> LeaseChange {
        LeaseChange {
            taken: self.take,
            released: self.release,
        }
    }
}

/// The wanted leases, checked (spelling, how many) and deduplicated.
pub(crate) fn check_wanted(wanted: &[String]) -> Result<BTreeSet<String>, ClusterError> {
    let wanted: BTreeSet<String> = wanted.iter().cloned().collect();
    for l in &wanted {
        check_lease(l)?;
    }
    if wanted.len() > MAX_LEASES {
        return Err(crate::Invalid::new(
            "leases",
            &format!("{} leases", wanted.len()),
            format!("at most {MAX_LEASES} leases per VM"),
        )
        .into());
    }
    Ok(wanted)
}

/// Decides from the holders read (`None`: absent) and the VM's own index. Pure.
pub fn plan_leases(
    uuid: &Uuid,
    wanted: &BTreeSet<String>,
    holders: &BTreeMap<String, Option<Uuid>>,
    index: &BTreeSet<String>,
) -> Result<LeasePlan, ClusterError> {
    let mut plan = LeasePlan::default();
    for lease in wanted {
        match holders.get(lease).cloned().flatten() {
            None => plan.take.push(lease.clone()),
            Some(h) if &h == uuid => plan.keep.push(lease.clone()),
            Some(h) => {
                return Err(ClusterError::Conflict {
                    lease: lease.clone(),
                    holder: h.to_string(),
                });
            }
        }
    }
    plan.release = index.difference(wanted).cloned().collect();
    Ok(plan)
}

impl Cluster {
    /// Makes `wanted` the VM's set of leases: takes the missing ones and gives back those
    /// it holds and no longer asks for, all in one transaction. `Conflict` names the first
    /// lease held by another VM and its holder; then nothing changed.
    pub async fn acquire_leases(
        &self,
        uuid: &Uuid,
        wanted: &[String],
    ) -> Result<LeaseChange, ClusterError> {
        let wanted = check_wanted(wanted)?;
        let dl = self.deadline("acquire_leases");
        let read = Txn::new().and_then(self.lease_reads(uuid, &wanted));
        loop {
            // One read transaction: a consistent view of the holders and the index.
            let resp = self.txn(&dl, read.clone()).await?;
            let (holders, index) = self.read_holders(uuid, &wanted, &resp.op_responses())?;
            let plan = plan_leases(uuid, &wanted, &holders, &index)?;
            let (guards, ops) = self.lease_writes(uuid, &plan, &index);
            if ops.is_empty() {
                return Ok(LeaseChange::default());
            }
            if self
                .txn(&dl, Txn::new().when(guards).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(plan.change());
            }
            // Someone took or gave back one of them in between: read again; the next
            // plan answers `Conflict` with the holder if another VM won.
        }
    }

    /// The reads of a lease transaction: one get per wanted lease, then the VM's index
    /// (what [`Cluster::read_holders`] takes apart, in this order).
    pub(crate) fn lease_reads(&self, uuid: &Uuid, wanted: &BTreeSet<String>) -> Vec<TxnOp> {
        let mut reads: Vec<TxnOp> = wanted
            .iter()
            .map(|l| TxnOp::get(self.keys.lease(l), None))
            .collect();
        reads.push(TxnOp::get(
            self.keys.domain_leases(uuid),
            Some(GetOptions::new().with_prefix()),
        ));
        reads
    }

    /// The guards and writes that carry `plan` out: each lease taken only if still
    /// absent, kept only if still the VM's; released ones deleted only while the VM's.
    pub(crate) fn lease_writes(
        &self,
        uuid: &Uuid,
        plan: &LeasePlan,
        index: &BTreeSet<String>,
    ) -> (Vec<Compare>, Vec<TxnOp>) {
        let mut guards = Vec::new();
        let mut ops = Vec::new();
        for l in &plan.take {
            let key = self.keys.lease(l);
            guards.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(key, uuid.as_str(), None));
            ops.push(TxnOp::put(
                self.keys.domain(uuid, &DomainKey::Lease(l.clone())),
                "",
                None,
            ));
        }
        for l in &plan.keep {
            let key = self.keys.lease(l);
            guards.push(Compare::value(key, CompareOp::Equal, uuid.as_str()));
            // The index entry exists already unless an older broker wrote the lease
            // alone; writing it again would cost a revision for nothing.
            if !index.contains(l) {
                ops.push(TxnOp::put(
                    self.keys.domain(uuid, &DomainKey::Lease(l.clone())),
                    "",
                    None,
                ));
            }
        }
        for l in &plan.release {
            let key = self.keys.lease(l);
            // Delete the lease only while it is still this VM's; the index entry goes
            // in any case (it is this VM's own bookkeeping).
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, uuid.as_str())])
                    .and_then([TxnOp::delete(key, None)]),
            ));
            ops.push(TxnOp::delete(
                self.keys.domain(uuid, &DomainKey::Lease(l.clone())),
                None,
            ));
        }
        (guards, ops)
    }

    pub async fn release_leases(&self, uuid: &Uuid) -> Result<Vec<String>, ClusterError> {
        Ok(self.acquire_leases(uuid, &[]).await?.released)
    }

    /// Which VM holds `lease`, if any.
    pub async fn lease_holder(&self, lease: &str) -> Result<Option<Uuid>, ClusterError> {
        check_lease(lease)?;
        let dl = self.deadline("lease_holder");
        let key = self.keys.lease(lease);
        self.get_kv(&dl, &key)
            .await?
            .map(|kv| {
                codec::decode_uuid(kv.value())
                    .map_err(|reason| ClusterError::Corrupt { key, reason })
            })
            .transpose()
    }

    pub(crate) fn read_holders(
        &self,
        uuid: &Uuid,
        wanted: &BTreeSet<String>,
        responses: &[TxnOpResponse],
    ) -> Result<Holders, ClusterError> {
        let index_prefix = self.keys.domain_leases(uuid);
        let index_prefix = index_prefix.as_str();
        let mut holders = BTreeMap::new();
        for (lease, resp) in wanted.iter().zip(responses) {
            let TxnOpResponse::Get(get) = resp else {
                return Err(ClusterError::Corrupt {
                    key: self.keys.lease(lease),
                    reason: "etcd answered a get with another kind of response".into(),
                });
            };
            let holder = get
                .kvs()
                .first()
                .map(|kv| {
                    codec::decode_uuid(kv.value()).map_err(|reason| ClusterError::Corrupt {
                        key: self.keys.lease(lease),
                        reason,
                    })
                })
                .transpose()?;
            holders.insert(lease.clone(), holder);
        }
        let mut index = BTreeSet::new();
        if let Some(TxnOpResponse::Get(get)) = responses.get(wanted.len()) {
            for kv in get.kvs() {
                if let Some(lease) = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(index_prefix))
                    .filter(|l| check_lease(l).is_ok())
                {
                    index.insert(lease.to_string());
                }
            }
        }
        Ok((holders, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u8) -> Uuid {
        Uuid::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn plan_takes_keeps_releases_or_names_the_holder() {
        let a = "addr/192.0.2.10";
        let h = "host/web1";
        let old = "addr/192.0.2.99";
        let holders = |pairs: &[(&str, Option<Uuid>)]| -> BTreeMap<String, Option<Uuid>> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect()
        };
        // (wanted, holders, index, expected plan or conflicting (lease, holder))
        #[allow(clippy::type_complexity)] // one row per case reads best as a plain tuple
        let table: Vec<(
            BTreeSet<String>,
            BTreeMap<String, Option<Uuid>>,
            BTreeSet<String>,
            Result<LeasePlan, (String, String)>,
        )> = vec![
            (
                set(&[a, h]),
                holders(&[(a, None), (h, None)]),
                set(&[]),
                Ok(LeasePlan {
                    take: vec![a.into(), h.into()],
                    ..LeasePlan::default()
                }),
            ),
            (
                set(&[a, h]),
                holders(&[(a, Some(u(1))), (h, None)]),
                set(&[a, old]),
                Ok(LeasePlan {
                    take: vec![h.into()],
                    keep: vec![a.into()],
                    release: vec![old.into()],
                }),
            ),
            (
                set(&[a, h]),
                holders(&[(a, None), (h, Some(u(2)))]),
                set(&[]),
                Err((h.into(), u(2).to_string())),
            ),
            (
                set(&[]),
                holders(&[]),
                set(&[a]),
                Ok(LeasePlan {
                    release: vec![a.into()],
                    ..LeasePlan::default()
                }),
            ),
        ];
        for (wanted, holders, index, want) in table {
            let got = plan_leases(&u(1), &wanted, &holders, &index);
            match (got, want) {
                (Ok(p), Ok(w)) => assert_eq!(p, w),
                (Err(ClusterError::Conflict { lease, holder }), Err((wl, wh))) => {
                    assert_eq!((lease, holder), (wl, wh));
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}
