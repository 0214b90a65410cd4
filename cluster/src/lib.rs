//! xenchan-cluster: the cluster primitives a broker's etcd backend is a thin adapter over.
//!
//! Every broker of a cloud connects to the same etcd (v3 API) and keeps there what must be
//! cluster-wide: desired configurations with a cluster-wide generation, the leases
//! (addresses, hostnames) of VMs, what each agent last applied, and which host runs each
//! domain. A domain's identity is its VM UUID; its name is for display only.
//!
//! # Keyspace
//!
//! Everything lives under one prefix (default `/xenchan/`, configurable so that several
//! clouds or tests share one etcd):
//!
//! | key | value | bound to |
//! | --- | --- | --- |
//! | `<prefix>domains/<uuid>/desired` | `xenchan-desired 1\n<generation>\n<name>\n<document>` | nothing (survives hosts) |
//! | `<prefix>domains/<uuid>/applied` | JSON `{"lineage","generation","digest"}` | nothing |
//! | `<prefix>domains/<uuid>/owner` | host running the domain | the owner's host lease |
//! | `<prefix>domains/<uuid>/incoming` | destination of a prepared migration | the preparer's host lease |
//! | `<prefix>domains/<uuid>/leases/<lease>` | empty (the VM's index of its leases) | nothing |
//! | `<prefix>leases/<lease>` | UUID of the VM holding it (`addr/192.0.2.10`, `host/web1`) | nothing (the VM holds it, not a host) |
//! | `<prefix>hosts/<host>` | host name (liveness) | the host's lease |
//!
//! UUIDs are stored lowercase; host names are letters, digits, `.`, `-`, `_`; lease strings
//! are printable ASCII without empty, `.` or `..` segments, so no input can alias a key.
//!
//! # Guarantees (each shown by a test against a real etcd in `tests/`)
//!
//! - a desired PUT is a compare-and-swap on the key's mod revision: concurrent PUTs through
//!   different brokers each get a distinct generation, none lost (`desired_cas`);
//! - a VM's leases are taken in one transaction, only when every key is absent or already
//!   the VM's; a race between two VMs has exactly one winner and the loser is told the
//!   holder (`lease_race`);
//! - ownership keys vanish when the owning host's etcd lease is revoked or its keepalives
//!   stop for the TTL (`host_loss`);
//! - migration follows libvirt's lock-manager rules: prepare while the source owns,
//!   complete only while the source still owns, cancel leaves the source owning, leases
//!   untouched throughout (`migration`);
//! - an unreachable etcd gives `Unavailable` within the request timeout, and the same
//!   client works again after etcd restarts (`outage`); a 3-member etcd losing one member
//!   mid-run loses no acknowledged write (`quorum`).
//!
//! Every call has a deadline (`Timeouts::request`); transient failures are retried with
//! backoff inside it. TLS to etcd is not supported yet.

mod client;
mod codec;
mod config;
mod desired;
mod error;
mod keys;
mod leases;
mod lineage;
pub mod local;
mod ownership;
mod watch;

pub use client::{Cluster, HostLease};
pub use codec::{
    Applied, Desired, MAX_CONFIG, MAX_NAME, decode_applied, decode_desired, encode_applied,
    encode_desired,
};
pub use config::{ClusterConfig, Timeouts};
pub use desired::{DomainPut, DomainRead, PutOutcome, next_generation};
pub use error::{ClusterError, Invalid};
pub use keys::{DomainKey, Key, Keyspace, Uuid, check_host, check_lease};
pub use leases::{LeaseChange, LeasePlan, MAX_LEASES, plan_leases};
pub use ownership::{
    APPLIED_BATCH, Ownership, Start, may_claim, may_complete, may_prepare, may_start,
};
pub use watch::{Interest, WatchEvent, Watcher};
