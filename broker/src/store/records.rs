//! What the store keeps and answers, as named types: the rows a backend returns and the
//! requests and outcomes of its writes. Shared by every backend (SQLite here, the cluster
//! store of issue 19), so nothing in it names a table or a key.

use std::path::PathBuf;
use std::sync::Arc;

use xenchan_protocol::Digest;
use xenchan_protocol::config::GuestConfig;
use xenchan_protocol::message::{Applied, GuestFacts};

use crate::api::types::{CallerView, ItemView, Lifecycle};
use crate::leases::{Lease, LeaseConflict};

/// A domain's desired configuration at one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConfig {
    /// Increases with every change.
    pub generation: u64,
    /// The digest of `config`.
    pub digest: Digest,
    /// The document.
    pub config: GuestConfig,
}

/// The last result an agent sent for a domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastResult {
    /// When it arrived (`None`: no result yet).
    pub at: Option<String>,
    /// Its items.
    pub items: Vec<ItemView>,
}

/// Everything stored about one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainRecord {
    /// The domain.
    pub name: String,
    /// The UUID the operator gave.
    pub uuid: Option<String>,
    /// The UUID the agent reported.
    pub reported_uuid: Option<String>,
    /// The desired configuration, if any.
    pub desired: Option<DesiredConfig>,
    /// What the agent last reported as applied.
    pub applied: Option<Applied>,
    /// The last result.
    pub last_result: LastResult,
    /// The last error.
    pub last_error: Option<String>,
    /// The last facts.
    pub facts: Option<GuestFacts>,
    /// Where the lifecycle endpoints left the domain (`None`: never used for it).
    pub lifecycle: Option<Lifecycle>,
    /// The channel socket the last prepare named, when it is not the default one.
    pub channel_path: Option<PathBuf>,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Its position in the log (grows with every event).
    pub id: u64,
    /// When (RFC 3339).
    pub at: String,
    /// The domain it is about, if any.
    pub domain: Option<String>,
    /// What happened (`config`, `result`, `prepare`...).
    pub kind: String,
    /// The details.
    pub detail: String,
    /// The API caller whose call caused it (`None`: the broker's own doing).
    pub caller: Option<CallerView>,
}

/// Which events [`crate::store::Store::events`] answers: newest first, each field
/// narrowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// `Some(Some(d))`: domain `d`'s; `Some(None)`: the broker's own (no domain).
    pub domain: Option<Option<String>>,
    /// Only this kind.
    pub kind: Option<String>,
    /// At or after this instant (RFC 3339 as recorded, `...mmmZ`).
    pub since: Option<String>,
    /// Before this instant.
    pub until: Option<String>,
    /// Only ids below this (the paging cursor).
    pub before_id: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

impl EventFilter {
    /// Whether `row` passes (all but `limit`).
    pub fn matches(&self, row: &EventRow) -> bool {
        self.domain.as_ref().is_none_or(|d| *d == row.domain)
            && self.kind.as_ref().is_none_or(|k| *k == row.kind)
            && self.since.as_ref().is_none_or(|s| row.at >= *s)
            && self.until.as_ref().is_none_or(|u| row.at < *u)
            && self.before_id.is_none_or(|b| row.id < b)
    }
}

/// One lease held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// `address` or `hostname`.
    pub kind: String,
    /// The canonical value.
    pub value: String,
    /// The domain holding it.
    pub domain: String,
}

/// One generation kept in a domain's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The generation.
    pub generation: u64,
    /// The digest of its document.
    pub digest: String,
}

/// What a PUT asks the store for.
#[derive(Debug, Clone, Copy)]
pub struct PutRequest<'a> {
    /// The domain.
    pub name: &'a str,
    /// Its UUID, if the caller gave one (lowercase).
    pub uuid: Option<&'a str>,
    /// The document.
    pub config: &'a GuestConfig,
    /// The leases it asks for ([`crate::leases::leases_of`]).
    pub leases: &'a [Lease],
    /// `limits.max_domains`.
    pub max_domains: usize,
}

/// What a stored PUT did, with the desired configuration now: shared (`Arc`) because the
/// domain's desired state and every session offering it whole keep this one copy
/// (docs/PERFORMANCE.md).
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// The domain had no desired configuration before.
    Created(Arc<DesiredConfig>),
    /// A new generation replaced the old one.
    Updated(Arc<DesiredConfig>),
    /// The same document (same digest and UUID) was already desired: nothing changed.
    Unchanged(Arc<DesiredConfig>),
}

impl PutOutcome {
    /// The desired configuration now.
    pub fn desired(&self) -> &Arc<DesiredConfig> {
        match self {
            PutOutcome::Created(d) | PutOutcome::Updated(d) | PutOutcome::Unchanged(d) => d,
        }
    }
}

/// Why a PUT was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRefusal {
    /// A lease is held by another domain.
    Lease(LeaseConflict),
    /// The broker already manages `limits.max_domains` domains.
    TooManyDomains(usize),
    /// A request field the backend cannot take (cluster mode: a missing VM UUID).
    BadField {
        /// The field (`uuid`).
        path: String,
        /// What is wrong with it.
        error: String,
    },
}

/// What a stored delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// A desired configuration was removed.
    pub removed: bool,
    /// The leases released (`address 192.0.2.10`).
    pub released: Vec<String>,
}

/// What a lifecycle prepare asks the store for.
#[derive(Debug, Clone, Copy)]
pub struct PrepareRequest<'a> {
    /// The domain.
    pub name: &'a str,
    /// Its UUID, if the caller knows it (lowercase).
    pub uuid: Option<&'a str>,
    /// A channel socket path other than the default one.
    pub channel_path: Option<&'a str>,
    /// Whether hostnames are leases (`leases.hostname`).
    pub hostname_leases: bool,
    /// Whether the domain's agent is connected now (a UUID change is then refused).
    pub connected: bool,
    /// `limits.max_domains`.
    pub max_domains: usize,
    /// Only check (before the prepare hooks run): nothing is written.
    pub check_only: bool,
}

/// Why a lifecycle prepare was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareRefusal {
    /// Another registered domain has this UUID.
    UuidTaken {
        /// The UUID.
        uuid: String,
        /// The domain registered with it.
        holder: String,
    },
    /// The domain is registered with another UUID and its agent is connected.
    UuidChanged {
        /// The UUID recorded for the domain.
        recorded: String,
        /// The UUID asked for.
        asked: String,
    },
    /// A lease of the domain's configuration is held by another domain.
    Lease(LeaseConflict),
    /// The broker already manages `limits.max_domains` domains.
    TooManyDomains(usize),
    /// Cluster mode: another live host runs the domain and no migration to this host is
    /// prepared (the fields of `ClusterError::RunsElsewhere`).
    RunsElsewhere {
        uuid: String,
        host: String,
        /// The host that runs it.
        owner: String,
        /// What is left of the owner's etcd lease, when it could be read.
        expires_within: Option<std::time::Duration>,
    },
}

/// What a stored lifecycle prepare did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The domain was not registered before.
    pub created: bool,
    /// The UUID recorded for the domain now.
    pub uuid: Option<String>,
    /// The leases the domain holds now (`address 192.0.2.10`).
    pub leases: Vec<String>,
}
