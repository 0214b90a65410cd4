//! Desired configurations with a cluster-wide generation: each change is one
//! compare-and-swap on the key's mod revision, so two brokers PUTting at once never lose an
//! update nor hand out one generation twice.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::client::Cluster;
use crate::codec::{self, Desired, MAX_CONFIG, check_name};
use crate::error::{ClusterError, Invalid};
use crate::keys::{DomainKey, Uuid};
use crate::leases::LeaseChange;

/// What a PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new generation was written.
    Changed { generation: u64 },
    /// The same name and document were already desired: nothing was written.
    Unchanged { generation: u64 },
}

impl PutOutcome {
    pub fn generation(self) -> u64 {
        match self {
            PutOutcome::Changed { generation } | PutOutcome::Unchanged { generation } => generation,
        }
    }
}

/// What to do given the stored value: pure, so the rule is tested without etcd.
pub fn next_generation(current: Option<&Desired>, name: &str, config: &[u8]) -> PutOutcome {
    match current {
        None => PutOutcome::Changed { generation: 1 },
        Some(d) if d.name == name && d.config == config => PutOutcome::Unchanged {
            generation: d.generation,
        },
        Some(d) => PutOutcome::Changed {
            generation: d.generation + 1,
        },
    }
}

/// What [`Cluster::put_domain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPut {
    pub outcome: PutOutcome,
    /// A configuration was desired before (not a first PUT, nor one after a delete).
    pub existed: bool,
    pub leases: LeaseChange,
}

/// What a PUT's write depends on, as read in one transaction ([`Cluster::read_domain`]):
/// who holds each wanted lease, the VM's own lease index, its desired key.
#[derive(Debug, Clone)]
pub struct DomainRead {
    uuid: Uuid,
    wanted: BTreeSet<String>,
    holders: BTreeMap<String, Option<Uuid>>,
    index: BTreeSet<String>,
    desired: Option<etcd_client::KeyValue>,
}

impl DomainRead {
    /// What a VM's first PUT assumes: nothing held, no index, no desired key.
    fn nothing(uuid: &Uuid, wanted: &BTreeSet<String>) -> DomainRead {
        DomainRead {
            uuid: uuid.clone(),
            wanted: wanted.clone(),
            holders: wanted.iter().map(|l| (l.clone(), None)).collect(),
            index: BTreeSet::new(),
            desired: None,
        }
    }

    /// The other VM that held `lease` when it was read, if any (`None` too for a lease
    /// that was not read).
    pub fn held_by_other(&self, lease: &str) -> Option<&Uuid> {
        self.holders
            .get(lease)
            .and_then(Option::as_ref)
            .filter(|h| **h != self.uuid)
    }

    /// A read of VM `uuid` with no lease wanted and nothing found (for tests of what
    /// keeps reads).
    pub fn nothing_for(uuid: &Uuid) -> DomainRead {
        DomainRead::nothing(uuid, &BTreeSet::new())
    }

    /// The VM it was read for.
    pub fn uuid(&self) -> &Uuid {
        &self.uuid
    }
}

/// The desired configuration as read at `key` (absent: `None`; not ours: `Corrupt`).
fn decode_current(
    key: &str,
    kv: Option<&etcd_client::KeyValue>,
) -> Result<Option<Desired>, ClusterError> {
    kv.map(|kv| {
        codec::decode_desired(kv.value()).map_err(|reason| ClusterError::Corrupt {
            key: key.to_string(),
            reason,
        })
    })
    .transpose()
}

/// The guard of a write of the desired key: unchanged since `kv` was read (or still
/// absent).
fn desired_guard(key: &str, kv: Option<&etcd_client::KeyValue>) -> Compare {
    match kv {
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(kv) => Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
    }
}

/// The write of generation `generation` of the desired configuration.
fn desired_write(key: &str, generation: u64, name: &str, config: &[u8]) -> TxnOp {
    let value = codec::encode_desired(&Desired {
        generation,
        name: name.to_string(),
        config: config.to_vec(),
    });
    TxnOp::put(key, value, None)
}

/// A desired configuration's name and document, checked before anything is read.
fn check_document(name: &str, config: &[u8]) -> Result<(), ClusterError> {
    check_name(name)?;
    if config.is_empty() {
        // An empty document is the deletion marker (`delete_desired`).
        return Err(Invalid::new("config", "", "empty document").into());
    }
    if config.len() > MAX_CONFIG {
        return Err(Invalid::new(
            "config",
            &format!("{} bytes", config.len()),
            format!("document larger than {MAX_CONFIG} bytes"),
        )
        .into());
    }
    Ok(())
}

impl Cluster {
    /// Makes `config` the desired configuration of `uuid` (displayed as `name`), with the
    /// next cluster-wide generation. Any broker may call it; the broker running the domain
    /// learns it through its watch.
    pub async fn put_desired(
        &self,
        uuid: &Uuid,
        name: &str,
        config: &[u8],
    ) -> Result<PutOutcome, ClusterError> {
        check_document(name, config)?;
        let dl = self.deadline("put_desired");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        loop {
            let kv = self.get_kv(&dl, &key).await?;
            let current = decode_current(&key, kv.as_ref())?;
            let outcome = next_generation(current.as_ref(), name, config);
            let PutOutcome::Changed { generation } = outcome else {
                return Ok(outcome);
            };
            // Unchanged since we read it, or the write is lost in a race: read again.
            let txn = Txn::new()
                .when([desired_guard(&key, kv.as_ref())])
                .and_then([desired_write(&key, generation, name, config)]);
            if self.txn(&dl, txn).await?.succeeded() {
                return Ok(outcome);
            }
            tracing::debug!(%uuid, "desired configuration changed under us, reading again");
        }
    }

    /// A PUT's whole write in ONE transaction: the VM's leases (as
    /// [`Cluster::acquire_leases`]) and its desired configuration (as
    /// [`Cluster::put_desired`]), each guarded, so that there is no state in which the
    /// leases are taken but the configuration that wants them is not written. `Conflict`
    /// names the holder of a wanted lease; then nothing changed. As
    /// [`Cluster::put_domain_after`] with nothing read before: one round trip for a VM
    /// etcd knows nothing of, two otherwise.
    pub async fn put_domain(
        &self,
        uuid: &Uuid,
        name: &str,
        config: &[u8],
        leases: &[String],
    ) -> Result<DomainPut, ClusterError> {
        self.put_domain_after(uuid, name, config, leases, None)
            .await
    }

    /// [`Cluster::put_domain`], planned on `read` (the caller's lease check,
    /// [`Cluster::read_domain`], for the same VM and leases; another is ignored) or, without
    /// it, on the guess that etcd holds nothing of the VM (its first PUT). Either way the
    /// write is guarded by what it was planned on (with a guess, also that the VM's lease
    /// index is empty), and a failed guard answers with the reads in the same round trip,
    /// which the next attempt is planned on: a wrong guess or a stale read costs the round
    /// trip that reading first would have cost, and a right one saves it. Reading first
    /// cost every PUT two round trips, and the lease check before it one per lease.
    pub async fn put_domain_after(
        &self,
        uuid: &Uuid,
        name: &str,
        config: &[u8],
        leases: &[String],
        read: Option<DomainRead>,
    ) -> Result<DomainPut, ClusterError> {
        check_document(name, config)?;
        let wanted = crate::leases::check_wanted(leases)?;
        let dl = self.deadline("put_domain");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        let reads = self.domain_reads(uuid, &wanted, &key);
        let mut basis = read.filter(|r| r.uuid == *uuid && r.wanted == wanted);
        loop {
            let guessed = basis.is_none();
            let DomainRead {
                holders,
                index,
                desired: kv,
                ..
            } = basis
                .take()
                .unwrap_or_else(|| DomainRead::nothing(uuid, &wanted));
            let current = decode_current(&key, kv.as_ref())?;
            let existed = current.as_ref().is_some_and(|d| !d.config.is_empty());
            let plan = crate::leases::plan_leases(uuid, &wanted, &holders, &index)?;
            let outcome = next_generation(current.as_ref(), name, config);
            let (mut guards, mut ops) = self.lease_writes(uuid, &plan, &index);
            if let PutOutcome::Changed { generation } = outcome {
                ops.push(desired_write(&key, generation, name, config));
            }
            if ops.is_empty() {
                return Ok(DomainPut {
                    outcome,
                    existed,
                    leases: LeaseChange::default(),
                });
            }
            guards.push(desired_guard(&key, kv.as_ref()));
            if guessed {
                // The guess of an empty index must hold too: an index entry of a lease
                // taken alone (`acquire_leases`) that this PUT no longer wants must be
                // given back.
                guards.push(
                    Compare::create_revision(self.keys.domain_leases(uuid), CompareOp::Equal, 0)
                        .with_prefix(),
                );
            }
            let txn = Txn::new().when(guards).and_then(ops).or_else(reads.clone());
            let resp = self.txn(&dl, txn).await?;
            if resp.succeeded() {
                return Ok(DomainPut {
                    outcome,
                    existed,
                    leases: plan.change(),
                });
            }
            tracing::debug!(%uuid, guessed, "leases or desired configuration not as planned on, planning again on what etcd answered");
            basis = Some(self.parse_domain_read(uuid, &wanted, &key, &resp.op_responses())?);
        }
    }

    /// Who holds each of `leases`, the VM's lease index and its desired key, in one read
    /// (one round trip, a consistent view): a PUT's lease check, whose answer
    /// [`Cluster::put_domain_after`] then plans its write on.
    pub async fn read_domain(
        &self,
        uuid: &Uuid,
        leases: &[String],
    ) -> Result<DomainRead, ClusterError> {
        let wanted = crate::leases::check_wanted(leases)?;
        let dl = self.deadline("read_domain");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        let reads = self.domain_reads(uuid, &wanted, &key);
        let resp = self.txn(&dl, Txn::new().and_then(reads)).await?;
        self.parse_domain_read(uuid, &wanted, &key, &resp.op_responses())
    }

    /// The reads of [`Cluster::read_domain`]: the leases, the index, the desired key.
    fn domain_reads(&self, uuid: &Uuid, wanted: &BTreeSet<String>, key: &str) -> Vec<TxnOp> {
        let mut reads = self.lease_reads(uuid, wanted);
        reads.push(TxnOp::get(key, None));
        reads
    }

    fn parse_domain_read(
        &self,
        uuid: &Uuid,
        wanted: &BTreeSet<String>,
        key: &str,
        responses: &[TxnOpResponse],
    ) -> Result<DomainRead, ClusterError> {
        let (holders, index) = self.read_holders(uuid, wanted, responses)?;
        let desired = match responses.get(wanted.len() + 1) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            Some(_) => {
                return Err(ClusterError::Corrupt {
                    key: key.to_string(),
                    reason: "etcd answered a get with another kind of response".into(),
                });
            }
            None => None,
        };
        Ok(DomainRead {
            uuid: uuid.clone(),
            wanted: wanted.clone(),
            holders,
            index,
            desired,
        })
    }

    /// Removes the desired configuration of `uuid`. The key keeps its generation with an
    /// empty document (a tombstone), so the next PUT gets a higher generation than any an
    /// agent may have applied: generations never go back, even across a delete. `false`
    /// when there was nothing to remove.
    pub async fn delete_desired(&self, uuid: &Uuid) -> Result<bool, ClusterError> {
        let dl = self.deadline("delete_desired");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        loop {
            let Some(kv) = self.get_kv(&dl, &key).await? else {
                return Ok(false);
            };
            let current =
                codec::decode_desired(kv.value()).map_err(|reason| ClusterError::Corrupt {
                    key: key.clone(),
                    reason,
                })?;
            if current.config.is_empty() {
                return Ok(false);
            }
            let value = codec::encode_desired(&Desired {
                config: Vec::new(),
                ..current
            });
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if self.txn(&dl, txn).await?.succeeded() {
                return Ok(true);
            }
        }
    }

    /// The desired configuration of `uuid`, if any (a deleted one is none).
    pub async fn desired(&self, uuid: &Uuid) -> Result<Option<Desired>, ClusterError> {
        let dl = self.deadline("desired");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        Ok(self
            .get_kv(&dl, &key)
            .await?
            .map(|kv| {
                codec::decode_desired(kv.value())
                    .map_err(|reason| ClusterError::Corrupt { key, reason })
            })
            .transpose()?
            .filter(|d| !d.config.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_rule() {
        let d = Desired {
            generation: 4,
            name: "web1".into(),
            config: b"{}".to_vec(),
        };
        let table: &[(Option<&Desired>, &str, &[u8], PutOutcome)] = &[
            (None, "web1", b"{}", PutOutcome::Changed { generation: 1 }),
            (
                Some(&d),
                "web1",
                b"{}",
                PutOutcome::Unchanged { generation: 4 },
            ),
            (
                Some(&d),
                "web1",
                b"{\"a\":1}",
                PutOutcome::Changed { generation: 5 },
            ),
            (
                Some(&d),
                "web2",
                b"{}",
                PutOutcome::Changed { generation: 5 },
            ),
        ];
        for (cur, name, config, want) in table {
            assert_eq!(
                next_generation(*cur, name, config),
                *want,
                "{name} {config:?}"
            );
        }
    }
}
