//! Which host runs a domain, and the migration hand-off (libvirt lock-manager rules).
//!
//! `owner` is bound to the owning host's etcd lease: when the host dies its keepalives
//! stop and the key vanishes after the TTL, so the domain can be claimed elsewhere.
//! `incoming` (a prepared migration) is bound to the lease of the host that prepared it:
//! a migration whose preparer dies is forgotten, and the source still owns the domain.
//! Leases (addresses, hostnames) are the VM's and are not touched by any of this.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::client::Cluster;
use crate::codec::{self, Applied};
use crate::error::{ClusterError, Invalid};
use crate::keys::{DomainKey, Uuid, check_host};

/// The most domains [`Cluster::record_applied_batch`] writes in one transaction (etcd's
/// default limit is 128 operations per transaction; each domain is one).
pub const APPLIED_BATCH: usize = 64;

/// The ownership keys of one domain as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    pub owner: Option<String>,
    /// The destination of a prepared migration.
    pub incoming: Option<String>,
}

/// Whether `host` may claim a domain owned by `owner`: when nobody owns it, or it already
/// does (claiming again rebinds the key to the current host lease). Pure.
pub fn may_claim(uuid: &Uuid, host: &str, own: &Ownership) -> Result<(), ClusterError> {
    match &own.owner {
        Some(o) if o != host => Err(ClusterError::NotOwner {
            uuid: uuid.to_string(),
            host: host.to_string(),
            owner: Some(o.clone()),
        }),
        _ => Ok(()),
    }
}

/// What starting a domain on a host means under the lock-manager rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Nobody owns it, or this host does: this host owns it now.
    Claim,
    /// Another host owns it and a migration to this host is prepared: the destination
    /// runs it and takes ownership at `complete` (or gives it up on `cancel`).
    AwaitMigration,
}

/// Whether `host` may start the domain `uuid` (libvirt's `prepare begin`): another host
/// owning it (its key is bound to that host's live etcd lease) runs the VM, and a second
/// start would run one VM on two hosts, unless it is the destination of a prepared
/// migration. `RunsElsewhere` names the owner. Pure.
pub fn may_start(uuid: &Uuid, host: &str, own: &Ownership) -> Result<Start, ClusterError> {
    match &own.owner {
        None => Ok(Start::Claim),
        Some(o) if o == host => Ok(Start::Claim),
        Some(_) if own.incoming.as_deref() == Some(host) => Ok(Start::AwaitMigration),
        Some(o) => Err(ClusterError::RunsElsewhere {
            uuid: uuid.to_string(),
            host: host.to_string(),
            owner: o.clone(),
            expires_within: None,
        }),
    }
}

/// Whether a migration `from` -> `to` may be prepared: `from` must own the domain, and no
/// migration elsewhere be prepared (preparing the same one again is fine). Pure.
pub fn may_prepare(uuid: &Uuid, from: &str, to: &str, own: &Ownership) -> Result<(), ClusterError> {
    if own.owner.as_deref() != Some(from) {
        return Err(ClusterError::NotOwner {
            uuid: uuid.to_string(),
            host: from.to_string(),
            owner: own.owner.clone(),
        });
    }
    match &own.incoming {
        Some(i) if i != to => Err(ClusterError::MigrationPending {
            uuid: uuid.to_string(),
            incoming: i.clone(),
        }),
        _ => Ok(()),
    }
}

/// Whether a prepared migration `from` -> `to` may complete: `from` still owns the domain
/// and `to` is the prepared destination. Pure.
pub fn may_complete(
    uuid: &Uuid,
    from: &str,
    to: &str,
    own: &Ownership,
) -> Result<(), ClusterError> {
    if own.owner.as_deref() != Some(from) {
        return Err(ClusterError::NotOwner {
            uuid: uuid.to_string(),
            host: from.to_string(),
            owner: own.owner.clone(),
        });
    }
    if own.incoming.as_deref() != Some(to) {
        return Err(ClusterError::NoMigration {
            uuid: uuid.to_string(),
            to: to.to_string(),
            incoming: own.incoming.clone(),
        });
    }
    Ok(())
}

/// The guard that `value` at `key` is still what was read (`None`: still absent).
fn still(key: &str, value: Option<&str>) -> Compare {
    match value {
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(v) => Compare::value(key, CompareOp::Equal, v),
    }
}

/// Reads of the ownership keys, in [`Cluster::ownership_keys`]'s order.
fn gets(keys: &[String; 2]) -> [TxnOp; 2] {
    [
        TxnOp::get(keys[0].clone(), None),
        TxnOp::get(keys[1].clone(), None),
    ]
}

/// The ownership in the responses of [`gets`].
fn ownership_of(resps: Vec<TxnOpResponse>, keys: &[String; 2]) -> Result<Ownership, ClusterError> {
    let mut values = [None, None];
    for ((slot, resp), key) in values.iter_mut().zip(resps).zip(keys) {
        if let TxnOpResponse::Get(get) = resp
            && let Some(kv) = get.kvs().first()
        {
            *slot =
                Some(
                    codec::decode_host(kv.value()).map_err(|reason| ClusterError::Corrupt {
                        key: key.clone(),
                        reason,
                    })?,
                );
        }
    }
    let [owner, incoming] = values;
    Ok(Ownership { owner, incoming })
}

impl Cluster {
    /// Reads the owner and prepared destination of a domain (one consistent read).
    pub async fn ownership(&self, uuid: &Uuid) -> Result<Ownership, ClusterError> {
        let dl = self.deadline("ownership");
        self.read_ownership(&dl, uuid).await
    }

    async fn read_ownership(
        &self,
        dl: &crate::client::Deadline,
        uuid: &Uuid,
    ) -> Result<Ownership, ClusterError> {
        self.read_ownership_at(dl, &self.ownership_keys(uuid)).await
    }

    async fn read_ownership_at(
        &self,
        dl: &crate::client::Deadline,
        keys: &[String; 2],
    ) -> Result<Ownership, ClusterError> {
        let resp = self.txn(dl, Txn::new().and_then(gets(keys))).await?;
        ownership_of(resp.op_responses(), keys)
    }

    fn ownership_keys(&self, uuid: &Uuid) -> [String; 2] {
        [
            self.keys.domain(uuid, &DomainKey::Owner),
            self.keys.domain(uuid, &DomainKey::Incoming),
        ]
    }

    /// Runs `ops(ownership)` guarded on that ownership until the guards hold, or `decide`
    /// refuses. It starts from `guess` when `decide` accepts it (no read: a domain started
    /// for the first time is owned by nobody), else from a read; a failed guard brings the
    /// current ownership back in the same round trip. A guess is never refused on: a
    /// refusal is always decided on what etcd holds.
    async fn ownership_step(
        &self,
        op: &'static str,
        uuid: &Uuid,
        guess: Option<Ownership>,
        decide: impl Fn(&Ownership) -> Result<(), ClusterError>,
        ops: impl Fn(&Ownership) -> Vec<TxnOp>,
    ) -> Result<Ownership, ClusterError> {
        let dl = self.deadline(op);
        let keys = self.ownership_keys(uuid);
        let [owner_key, incoming_key] = &keys;
        let mut own = match guess {
            Some(g) if decide(&g).is_ok() => g,
            _ => self.read_ownership_at(&dl, &keys).await?,
        };
        loop {
            decide(&own)?;
            let txn = Txn::new()
                .when([
                    still(owner_key, own.owner.as_deref()),
                    still(incoming_key, own.incoming.as_deref()),
                ])
                .and_then(ops(&own))
                .or_else(gets(&keys));
            let resp = self.txn(&dl, txn).await?;
            if resp.succeeded() {
                return Ok(own);
            }
            own = ownership_of(resp.op_responses(), &keys)?;
        }
    }

    /// Makes this host the owner of `uuid` (a domain started here, or found running here
    /// at start), unless another host owns it: then `NotOwner` names that host.
    pub async fn claim(&self, uuid: &Uuid) -> Result<(), ClusterError> {
        let key = self.keys.domain(uuid, &DomainKey::Owner);
        let lease = self.lease();
        self.ownership_step(
            "claim",
            uuid,
            Some(Ownership::default()),
            |own| may_claim(uuid, &self.host, own),
            |_| {
                vec![TxnOp::put(
                    key.clone(),
                    self.host.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )]
            },
        )
        .await
        .map(drop)
    }

    /// Whether this host may start `uuid` now ([`may_start`] on one read; nothing written).
    /// A refusal says how long the owner's lease has left, for an owner that is down.
    pub async fn check_start(&self, uuid: &Uuid) -> Result<Start, ClusterError> {
        let dl = self.deadline("check_start");
        let own = self.read_ownership(&dl, uuid).await?;
        match may_start(uuid, &self.host, &own) {
            Err(e) => Err(self.with_expiry(&dl, uuid, e).await),
            ok => ok,
        }
    }

    /// Starts `uuid` on this host: claims it ([`Start::Claim`]) in one guarded transaction,
    /// or leaves ownership to a prepared migration's `complete`. Two hosts starting the
    /// same domain at once: one claims, the other is refused with `RunsElsewhere`.
    pub async fn start_here(&self, uuid: &Uuid) -> Result<Start, ClusterError> {
        let key = self.keys.domain(uuid, &DomainKey::Owner);
        let lease = self.lease();
        let decide = |own: &Ownership| may_start(uuid, &self.host, own);
        let started = self
            .ownership_step(
                "start",
                uuid,
                Some(Ownership::default()),
                |own| decide(own).map(drop),
                |own| match decide(own) {
                    Ok(Start::Claim) => vec![TxnOp::put(
                        key.clone(),
                        self.host.as_str(),
                        Some(PutOptions::new().with_lease(lease)),
                    )],
                    _ => Vec::new(),
                },
            )
            .await;
        match started {
            Ok(own) => decide(&own),
            Err(e @ ClusterError::RunsElsewhere { .. }) => Err(self
                .with_expiry(&self.deadline("check_start"), uuid, e)
                .await),
            Err(e) => Err(e),
        }
    }

    /// Adds to a `RunsElsewhere` refusal how long the owner's etcd lease has left (best
    /// effort: the refusal stands without it).
    async fn with_expiry(
        &self,
        dl: &crate::client::Deadline,
        uuid: &Uuid,
        e: ClusterError,
    ) -> ClusterError {
        let ClusterError::RunsElsewhere {
            uuid: u,
            host,
            owner,
            expires_within: None,
        } = e
        else {
            return e;
        };
        let key = self.keys.domain(uuid, &DomainKey::Owner);
        let lease = match self.get_kv(dl, &key).await {
            Ok(Some(kv)) if kv.lease() != 0 => Some(kv.lease()),
            _ => None,
        };
        let mut expires_within = None;
        if let Some(id) = lease
            && let Ok(r) = self
                .attempt(
                    dl,
                    |mut c| async move { c.lease_time_to_live(id, None).await },
                )
                .await
        {
            expires_within = u64::try_from(r.ttl()).ok().map(Duration::from_secs);
        }
        ClusterError::RunsElsewhere {
            uuid: u,
            host,
            owner,
            expires_within,
        }
    }

    /// Gives up ownership (the domain stopped here). `false` when this host did not own it.
    pub async fn disown(&self, uuid: &Uuid) -> Result<bool, ClusterError> {
        let dl = self.deadline("disown");
        let key = self.keys.domain(uuid, &DomainKey::Owner);
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.host.as_str(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(&dl, txn).await?.succeeded())
    }

    /// Registers `to` as the incoming destination of `uuid` while `from` still owns it
    /// (libvirt's prepare on the destination). Bound to this host's lease.
    pub async fn prepare_migrate(
        &self,
        uuid: &Uuid,
        from: &str,
        to: &str,
    ) -> Result<(), ClusterError> {
        check_host(from).map_err(|e| Invalid { field: "from", ..e })?;
        check_host(to).map_err(|e| Invalid { field: "to", ..e })?;
        let key = self.keys.domain(uuid, &DomainKey::Incoming);
        let lease = self.lease();
        self.ownership_step(
            "prepare_migrate",
            uuid,
            None,
            |own| may_prepare(uuid, from, to, own),
            |_| {
                vec![TxnOp::put(
                    key.clone(),
                    to,
                    Some(PutOptions::new().with_lease(lease)),
                )]
            },
        )
        .await
        .map(drop)
    }

    /// Moves ownership from `from` to `to` in one transaction, only while `from` still owns
    /// the domain and `to` is the prepared destination. Called by the destination (`to`
    /// must be this host): the ownership key is bound to the destination's lease.
    pub async fn complete_migrate(
        &self,
        uuid: &Uuid,
        from: &str,
        to: &str,
    ) -> Result<(), ClusterError> {
        check_host(from).map_err(|e| Invalid { field: "from", ..e })?;
        if to != self.host {
            return Err(Invalid::new(
                "to",
                to,
                format!(
                    "completing a migration is the destination's call (this host is {}): \
                     the ownership key is bound to the destination's etcd lease",
                    self.host
                ),
            )
            .into());
        }
        let owner_key = self.keys.domain(uuid, &DomainKey::Owner);
        let incoming_key = self.keys.domain(uuid, &DomainKey::Incoming);
        let lease = self.lease();
        self.ownership_step(
            "complete_migrate",
            uuid,
            None,
            |own| may_complete(uuid, from, to, own),
            |_| {
                vec![
                    TxnOp::put(
                        owner_key.clone(),
                        to,
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::delete(incoming_key.clone(), None),
                ]
            },
        )
        .await
        .map(drop)
    }

    /// Forgets a prepared migration to `to`; the owner is untouched (a failed migration
    /// leaves the source owning the domain). `false` when none was prepared (libvirt may
    /// report a failure twice).
    pub async fn cancel_migrate(&self, uuid: &Uuid, to: &str) -> Result<bool, ClusterError> {
        check_host(to).map_err(|e| Invalid { field: "to", ..e })?;
        let dl = self.deadline("cancel_migrate");
        let key = self.keys.domain(uuid, &DomainKey::Incoming);
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, to)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(&dl, txn).await?.succeeded())
    }

    /// Records what the agent reported as applied; only the owner records (a broker that
    /// lost the domain must not overwrite what the new owner saw).
    pub async fn record_applied(&self, uuid: &Uuid, applied: &Applied) -> Result<(), ClusterError> {
        let dl = self.deadline("record_applied");
        let owner_key = self.keys.domain(uuid, &DomainKey::Owner);
        let key = self.keys.domain(uuid, &DomainKey::Applied);
        let txn = Txn::new()
            .when([Compare::value(
                owner_key,
                CompareOp::Equal,
                self.host.as_str(),
            )])
            .and_then([TxnOp::put(key, codec::encode_applied(applied), None)]);
        if self.txn(&dl, txn).await?.succeeded() {
            return Ok(());
        }
        let own = self.read_ownership(&dl, uuid).await?;
        Err(ClusterError::NotOwner {
            uuid: uuid.to_string(),
            host: self.host.clone(),
            owner: own.owner,
        })
    }

    /// [`Cluster::record_applied`] for many domains in one transaction: a nested
    /// transaction per domain, each guarded by this host's ownership, so one domain lost
    /// to another host does not keep the others from being recorded. Returns the domains
    /// whose record was refused (not owned here). A domain given twice is recorded once,
    /// with its last entry (etcd refuses two writes of one key in a transaction).
    /// At most [`APPLIED_BATCH`] domains per call.
    pub async fn record_applied_batch(
        &self,
        batch: &[(Uuid, Applied)],
    ) -> Result<Vec<Uuid>, ClusterError> {
        if batch.len() > APPLIED_BATCH {
            return Err(Invalid::new(
                "batch",
                &format!("{} domains", batch.len()),
                format!("at most {APPLIED_BATCH} per transaction"),
            )
            .into());
        }
        let mut last: std::collections::BTreeMap<&Uuid, &Applied> =
            std::collections::BTreeMap::new();
        for (u, a) in batch {
            last.insert(u, a);
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let dl = self.deadline("record_applied");
        let ops: Vec<TxnOp> = last
            .iter()
            .map(|(uuid, applied)| {
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::value(
                            self.keys.domain(uuid, &DomainKey::Owner),
                            CompareOp::Equal,
                            self.host.as_str(),
                        )])
                        .and_then([TxnOp::put(
                            self.keys.domain(uuid, &DomainKey::Applied),
                            codec::encode_applied(applied),
                            None,
                        )]),
                )
            })
            .collect();
        let resp = self.txn(&dl, Txn::new().and_then(ops)).await?;
        Ok(last
            .keys()
            .zip(resp.op_responses())
            .filter(|(_, r)| !matches!(r, TxnOpResponse::Txn(t) if t.succeeded()))
            .map(|(u, _)| (*u).clone())
            .collect())
    }

    /// What the agent of `uuid` last reported as applied, as recorded by its owner.
    pub async fn applied(&self, uuid: &Uuid) -> Result<Option<Applied>, ClusterError> {
        let dl = self.deadline("applied");
        let key = self.keys.domain(uuid, &DomainKey::Applied);
        self.get_kv(&dl, &key)
            .await?
            .map(|kv| {
                codec::decode_applied(kv.value())
                    .map_err(|reason| ClusterError::Corrupt { key, reason })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(owner: Option<&str>, incoming: Option<&str>) -> Ownership {
        Ownership {
            owner: owner.map(str::to_string),
            incoming: incoming.map(str::to_string),
        }
    }

    fn kind(r: &Result<(), ClusterError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(ClusterError::NotOwner { .. }) => "not-owner",
            Err(ClusterError::NoMigration { .. }) => "no-migration",
            Err(ClusterError::MigrationPending { .. }) => "pending",
            Err(ClusterError::RunsElsewhere { .. }) => "runs-elsewhere",
            Err(_) => "other",
        }
    }

    #[test]
    fn lock_manager_rules() {
        let u = Uuid::parse("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10").unwrap();
        let table: &[(&str, Ownership, &str)] = &[
            ("claim", own(None, None), "ok"),
            ("claim", own(Some("a"), None), "ok"),
            ("claim", own(Some("b"), None), "not-owner"),
            ("prepare", own(Some("a"), None), "ok"),
            ("prepare", own(Some("a"), Some("b")), "ok"),
            ("prepare", own(Some("a"), Some("c")), "pending"),
            ("prepare", own(Some("c"), None), "not-owner"),
            ("prepare", own(None, None), "not-owner"),
            ("complete", own(Some("a"), Some("b")), "ok"),
            ("complete", own(Some("a"), None), "no-migration"),
            ("complete", own(Some("a"), Some("c")), "no-migration"),
            ("complete", own(None, Some("b")), "not-owner"),
            ("complete", own(Some("c"), Some("b")), "not-owner"),
            // Starting on "a" (libvirt's `prepare begin`); "await" = a's prepared migration.
            ("start", own(None, None), "ok"),
            ("start", own(Some("a"), None), "ok"),
            ("start", own(None, Some("a")), "ok"),
            ("start", own(Some("b"), None), "runs-elsewhere"),
            ("start", own(Some("b"), Some("c")), "runs-elsewhere"),
            ("start", own(Some("b"), Some("a")), "await"),
        ];
        // Host "a" claims; migrations go from "a" to "b".
        for (op, o, want) in table {
            let got = match *op {
                "claim" => may_claim(&u, "a", o),
                "prepare" => may_prepare(&u, "a", "b", o),
                "start" => match may_start(&u, "a", o) {
                    Ok(Start::AwaitMigration) => {
                        assert_eq!(*want, "await", "start {o:?}");
                        continue;
                    }
                    r => r.map(drop),
                },
                _ => may_complete(&u, "a", "b", o),
            };
            assert_eq!(kind(&got), *want, "{op} {o:?}");
        }
    }
}
