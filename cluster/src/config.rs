//! What a broker needs to join a cluster: endpoints, prefix, its own identity, timeouts.

use std::time::Duration;

use crate::error::Invalid;
use crate::keys::{Keyspace, check_host};

/// Timeouts of cluster calls. Every call has a deadline: a broker never waits on etcd
/// longer than `request` for one API answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to one endpoint.
    pub connect: Duration,
    /// Whole-call deadline of one operation, retries of transient errors included.
    pub request: Duration,
    /// TTL of the host's etcd lease: how long after this host stops (crash, partition)
    /// its ownership keys vanish. Keepalives go out every third of it.
    pub host_ttl: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
            host_ttl: Duration::from_secs(10),
        }
    }
}

/// Where the cluster is and who this broker is in it.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://10.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix: several clouds (or tests) can share one etcd under distinct prefixes.
    pub prefix: String,
    /// This broker's identity in the cluster (default: the machine's hostname).
    pub host: String,
    pub timeouts: Timeouts,
}

impl ClusterConfig {
    /// A configuration with the default prefix `/xenchan/` and default timeouts.
    pub fn new(endpoints: Vec<String>, host: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            endpoints,
            prefix: "/xenchan/".to_string(),
            host: host.into(),
            timeouts: Timeouts::default(),
        }
    }

    /// Checks every field; the error names the first wrong one.
    pub fn check(&self) -> Result<Keyspace, Invalid> {
        if self.endpoints.is_empty() {
            return Err(Invalid::new(
                "endpoints",
                "",
                "at least one etcd endpoint is needed",
            ));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() > 256 {
                return Err(Invalid::new(
                    "endpoints",
                    e,
                    "expected a URL like http://127.0.0.1:2379",
                ));
            }
            if e.starts_with("https://") {
                return Err(Invalid::new(
                    "endpoints",
                    e,
                    "TLS to etcd is not supported yet: use http:// on a trusted network",
                ));
            }
        }
        check_host(&self.host)?;
        let t = &self.timeouts;
        for (field, d) in [
            ("timeouts.connect", t.connect),
            ("timeouts.request", t.request),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(field, "0", "must be more than zero"));
            }
        }
        if t.host_ttl < Duration::from_secs(2) {
            return Err(Invalid::new(
                "timeouts.host_ttl",
                &format!("{:?}", t.host_ttl),
                "must be at least 2 s (etcd leases count whole seconds)",
            ));
        }
        Keyspace::new(&self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_fields_are_named() {
        let ok = ClusterConfig::new(vec!["http://127.0.0.1:2379".into()], "dom0-a");
        assert_eq!(ok.check().unwrap().prefix(), "/xenchan/");
        let table: Vec<(&str, ClusterConfig)> = vec![
            (
                "endpoints",
                ClusterConfig {
                    endpoints: vec![],
                    ..ok.clone()
                },
            ),
            (
                "endpoints",
                ClusterConfig {
                    endpoints: vec!["127.0.0.1:2379".into()],
                    ..ok.clone()
                },
            ),
            (
                "endpoints",
                ClusterConfig {
                    endpoints: vec!["https://e:2379".into()],
                    ..ok.clone()
                },
            ),
            (
                "host",
                ClusterConfig {
                    host: "a/b".into(),
                    ..ok.clone()
                },
            ),
            (
                "prefix",
                ClusterConfig {
                    prefix: "xenchan".into(),
                    ..ok.clone()
                },
            ),
            (
                "timeouts.request",
                ClusterConfig {
                    timeouts: Timeouts {
                        request: Duration::ZERO,
                        ..ok.timeouts
                    },
                    ..ok.clone()
                },
            ),
            (
                "timeouts.host_ttl",
                ClusterConfig {
                    timeouts: Timeouts {
                        host_ttl: Duration::from_secs(1),
                        ..ok.timeouts
                    },
                    ..ok.clone()
                },
            ),
        ];
        for (field, cfg) in table {
            assert_eq!(cfg.check().unwrap_err().field, field);
        }
    }
}
