//! How the broker's values are spelled for the cluster: `[store]` as a
//! [`ClusterConfig`], a lease as its etcd key and back, a cluster error as a store error.

use xenchan_cluster::{ClusterConfig, ClusterError, Timeouts};

use crate::config::Config;
use crate::leases::Lease;
use crate::store::{PrepareRefusal, PutRefusal, StoreError};

/// The cluster configuration of `[store]`; `host` defaults to the machine's hostname.
///
/// # Errors
/// `(key, message)` naming the `[store]` key at fault.
pub fn cluster_config(config: &Config) -> Result<ClusterConfig, (String, String)> {
    let s = &config.store;
    let host = match &s.host {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .ok_or_else(|| {
                (
                    "store.host".to_string(),
                    "unset, and the machine's hostname cannot be read: set it".to_string(),
                )
            })?,
    };
    let ms = std::time::Duration::from_millis;
    let c = ClusterConfig {
        endpoints: s.endpoints.clone(),
        prefix: s.prefix.clone(),
        host,
        timeouts: Timeouts {
            connect: ms(s.timeouts.connect),
            request: ms(s.timeouts.request),
            host_ttl: ms(s.timeouts.host_ttl),
        },
    };
    c.check()
        .map_err(|e| (format!("store.{}", e.field), e.to_string()))?;
    Ok(c)
}

/// The etcd key of a lease (`addr/192.0.2.10`, `host/web1`).
pub fn lease_key(l: &Lease) -> String {
    let kind = match l.kind {
        "address" => "addr",
        "hostname" => "host",
        other => other,
    };
    format!("{kind}/{}", l.value)
}

/// The broker's spelling of a lease key (`address 192.0.2.10`).
pub(super) fn lease_text(key: &str) -> String {
    match key.split_once('/') {
        Some(("addr", v)) => format!("address {v}"),
        Some(("host", v)) => format!("hostname {v}"),
        _ => key.to_string(),
    }
}

/// A cluster error the caller cannot fix: an outage (503 naming it), or a value in etcd
/// this broker did not write.
pub fn store_error(e: ClusterError) -> StoreError {
    match e {
        ClusterError::Corrupt { key, reason } => StoreError::Corrupt {
            domain: key,
            message: reason,
        },
        other => StoreError::Unavailable {
            backend: "etcd",
            source: Box::new(other),
        },
    }
}

/// A start refused by the lock-manager rules as a prepare refusal; any other cluster
/// error as [`store_error`].
pub(super) fn runs_elsewhere(e: ClusterError) -> Result<PrepareRefusal, StoreError> {
    match e {
        ClusterError::RunsElsewhere {
            uuid,
            host,
            owner,
            expires_within,
        } => Ok(PrepareRefusal::RunsElsewhere {
            uuid,
            host,
            owner,
            expires_within,
        }),
        e => Err(store_error(e)),
    }
}

pub(super) fn bad_uuid(u: &str) -> PutRefusal {
    PutRefusal::BadField {
        path: "uuid".into(),
        error: format!("{u:?} is not a VM UUID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_round_trip_to_the_brokers_spelling() {
        for (kind, value, key) in [
            ("address", "192.0.2.10", "addr/192.0.2.10"),
            ("address", "2001:db8::1", "addr/2001:db8::1"),
            ("hostname", "web1.example.com", "host/web1.example.com"),
        ] {
            let l = Lease {
                kind,
                value: value.into(),
                path: "x".into(),
            };
            assert_eq!(lease_key(&l), key);
            assert_eq!(lease_text(key), l.to_string());
            assert!(xenchan_cluster::check_lease(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn store_keys_are_named_in_config_errors() {
        let mut c = Config::default();
        c.store.backend = crate::config::Backend::Etcd;
        c.store.endpoints = vec!["http://127.0.0.1:2379".into()];
        c.store.host = Some("dom0-a".into());
        let cc = cluster_config(&c).unwrap();
        assert_eq!(cc.host, "dom0-a");
        assert_eq!(cc.timeouts.host_ttl, std::time::Duration::from_secs(10));
        c.store.host = None;
        assert!(!cluster_config(&c).unwrap().host.is_empty());
        c.store.prefix = "nope".into();
        assert_eq!(cluster_config(&c).unwrap_err().0, "store.prefix");
    }
}
