//! Desired configurations with a cluster-wide generation: each change is one
//! compare-and-swap on the key's mod revision, so two brokers PUTting at once never lose an
//! update nor hand out one generation twice.

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
    /// [`Cluster::put_desired`]), read together and written together, each guarded. Two
    /// round trips and one revision where the two calls take four and two; and no state
    /// in which the leases are taken but the configuration that wants them is not
    /// written. `Conflict` names the holder of a wanted lease; then nothing changed.
    pub async fn put_domain(
        &self,
        uuid: &Uuid,
        name: &str,
        config: &[u8],
        leases: &[String],
    ) -> Result<DomainPut, ClusterError> {
        check_document(name, config)?;
        let wanted = crate::leases::check_wanted(leases)?;
        let dl = self.deadline("put_domain");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        let mut reads = self.lease_reads(uuid, &wanted);
        reads.push(TxnOp::get(key.clone(), None));
        let read = Txn::new().and_then(reads);
        loop {
            let resp = self.txn(&dl, read.clone()).await?;
            let responses = resp.op_responses();
            let (holders, index) = self.read_holders(uuid, &wanted, &responses)?;
            let kv = match responses.last() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                _ => None,
            };
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
            if self
                .txn(&dl, Txn::new().when(guards).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(DomainPut {
                    outcome,
                    existed,
                    leases: plan.change(),
                });
            }
            tracing::debug!(%uuid, "leases or desired configuration changed under us, reading again");
        }
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
