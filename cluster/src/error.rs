//! The one error type of cluster calls. A caller (the broker's HTTP layer) maps each variant
//! to an answer: `Unavailable` to 503 naming the outage, `Conflict` to 409 naming the
//! holder, `NotOwner` to 409 naming the owner, `Invalid` to 400 naming the field.

use std::time::Duration;

/// A value from a caller that cannot become (part of) a key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {reason}")]
pub struct Invalid {
    /// Which input (`uuid`, `host`, `lease`, `prefix`, `name`, ...).
    pub field: &'static str,
    /// The offending value, cut to 80 characters.
    pub value: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            field,
            value: value.chars().take(80).collect(),
            reason: reason.into(),
        }
    }
}

/// A cluster call that did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached, has no quorum (no leader), or did not answer before the
    /// call's deadline. Nothing is known to have changed; the call may be retried.
    #[error("etcd unavailable at {endpoints} during {op}: {reason}")]
    Unavailable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The call (`put_desired`, `acquire_leases`, ...).
        op: &'static str,
        /// What was seen last (the transport error, or the deadline that passed).
        reason: String,
        #[source]
        source: Option<etcd_client::Error>,
    },
    /// A lease is held by another VM.
    #[error("lease {lease} is held by VM {holder}")]
    Conflict { lease: String, holder: String },
    /// This host (or the host named in a migration) does not own the domain.
    #[error("domain {uuid} is not owned by {host}: {}", owner_text(.owner.as_deref()))]
    NotOwner {
        uuid: String,
        host: String,
        /// Who owns it now, if anyone.
        owner: Option<String>,
    },
    /// Another host runs the domain (it owns it, bound to its live etcd lease) and no
    /// migration to this host is prepared: starting it here would run one VM twice.
    #[error(
        "domain {uuid} runs on {owner} (its ownership in etcd is bound to {owner}'s live \
         etcd lease): starting it on {host} too would run one VM on two hosts; migrate it \
         (prepare-migrate on {host} first), stop it on {owner}, or, if {owner} is down, start \
         it again once that lease has expired{}",
        expiry_text(*.expires_within)
    )]
    RunsElsewhere {
        uuid: String,
        host: String,
        owner: String,
        /// What is left of the owner's lease, when it could be read.
        expires_within: Option<Duration>,
    },
    /// No migration of the domain to that host is prepared.
    #[error("no migration of domain {uuid} to {to} is prepared{}", incoming_text(.incoming.as_deref()))]
    NoMigration {
        uuid: String,
        to: String,
        /// The destination registered instead, if any.
        incoming: Option<String>,
    },
    /// A migration to another host is already prepared.
    #[error("domain {uuid} is already migrating to {incoming}")]
    MigrationPending { uuid: String, incoming: String },
    /// The host's etcd lease expired (keepalive lost for longer than its TTL): every
    /// ownership key of this host is gone; the caller must claim its domains again.
    #[error("this host's etcd lease expired: its ownership keys are gone; claim its domains again")]
    LeaseLost,
    /// A caller's value is not acceptable.
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    /// A value stored in etcd under our prefix is not what this crate writes.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// etcd refused the request for a reason other than availability (permissions, a
    /// request too large, a compacted revision...).
    #[error("etcd refused {op}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
}

fn owner_text(owner: Option<&str>) -> String {
    owner.map_or_else(|| "nobody owns it".to_string(), |o| format!("{o} owns it"))
}

fn expiry_text(within: Option<Duration>) -> String {
    within.map_or_else(String::new, |d| {
        format!(" (in at most {} s)", d.as_secs().max(1))
    })
}

fn incoming_text(incoming: Option<&str>) -> String {
    incoming.map_or_else(String::new, |i| {
        format!(" (the prepared destination is {i})")
    })
}

impl ClusterError {
    /// Whether the call failed because etcd could not answer (worth a retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable { .. })
    }

    pub(crate) fn timed_out(
        endpoints: &str,
        op: &'static str,
        after: Duration,
        last: Option<etcd_client::Error>,
    ) -> ClusterError {
        // The last transport error is the source (printed by `chain`), not repeated here.
        let reason = match &last {
            Some(_) => format!("no answer within {after:?}, transient errors retried"),
            None => format!("no answer within {after:?}"),
        };
        ClusterError::Unavailable {
            endpoints: endpoints.to_string(),
            op,
            reason,
            source: last,
        }
    }
}

/// Whether an etcd error means "could not reach a quorum now" (retry within the deadline)
/// rather than "refused" (answer the caller).
pub(crate) fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => {
            use tonic::Code;
            matches!(
                s.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unknown
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Cancelled
            ) || s.message().contains("no leader")
                || s.message().contains("leader changed")
        }
        _ => false,
    }
}
