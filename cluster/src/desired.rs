//! Desired configurations with a cluster-wide generation: each change is one
//! compare-and-swap on the key's mod revision, so two brokers PUTting at once never lose an
//! update nor hand out one generation twice.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::client::Cluster;
use crate::codec::{self, Desired, MAX_CONFIG, check_name};
use crate::error::{ClusterError, Invalid};
use crate::keys::{DomainKey, Uuid};

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
        Ok(self.put_desired_detail(uuid, name, config).await?.0)
    }

    /// [`Cluster::put_desired`], also saying whether a desired configuration existed
    /// before (a broker answers 201 for a domain new to the cluster, 200 otherwise).
    pub async fn put_desired_detail(
        &self,
        uuid: &Uuid,
        name: &str,
        config: &[u8],
    ) -> Result<(PutOutcome, bool), ClusterError> {
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
        let dl = self.deadline("put_desired");
        let key = self.keys.domain(uuid, &DomainKey::Desired);
        loop {
            let kv = self.get_kv(&dl, &key).await?;
            let current = kv
                .as_ref()
                .map(|kv| {
                    codec::decode_desired(kv.value()).map_err(|reason| ClusterError::Corrupt {
                        key: key.clone(),
                        reason,
                    })
                })
                .transpose()?;
            let existed = current.as_ref().is_some_and(|d| !d.config.is_empty());
            let outcome = next_generation(current.as_ref(), name, config);
            let PutOutcome::Changed { generation } = outcome else {
                return Ok((outcome, existed));
            };
            // Unchanged since we read it, or the write is lost in a race: read again.
            let guard = match &kv {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some(kv) => Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
            };
            let value = codec::encode_desired(&Desired {
                generation,
                name: name.to_string(),
                config: config.to_vec(),
            });
            let txn = Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if self.txn(&dl, txn).await?.succeeded() {
                return Ok((outcome, existed));
            }
            tracing::debug!(%uuid, "desired configuration changed under us, reading again");
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
