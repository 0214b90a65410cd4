//! The `[store]` section of `broker.toml`: which backend keeps the broker's state.
//!
//! `backend = "sqlite"` (the default) is the embedded store under `state_dir`, as before.
//! `backend = "etcd"` is cluster mode (docs/CLUSTER.md): desired configurations, leases,
//! applied state and ownership live in etcd, shared by every broker of the cloud, and the
//! SQLite file under `state_dir` is this broker's cache and journal of the domains it runs.
//! The checks here are those that need no etcd client (the API crate does not build one);
//! the broker checks the same values again with the cluster crate's rules at start.

use serde::{Deserialize, Serialize};

/// Which store backend the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The embedded SQLite store (single host).
    #[default]
    Sqlite,
    /// etcd (v3 API), shared by the brokers of a cluster; SQLite as the local cache.
    Etcd,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (default) or `etcd`.
    pub backend: Backend,
    /// etcd client URLs (`http://10.0.0.1:2379`); `backend = "etcd"` needs at least one.
    /// TLS (`https://`) is not supported yet.
    pub endpoints: Vec<String>,
    /// Key prefix in etcd: several clouds (or test runs) can share one etcd.
    pub prefix: String,
    /// This broker's identity in the cluster. Unset: the machine's hostname. Set it when
    /// several brokers share one machine (tests, the simulator's `--hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Deadlines of etcd calls, in milliseconds.
    pub timeouts: StoreTimeouts,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            endpoints: Vec::new(),
            prefix: "/xenchan/".to_string(),
            host: None,
            timeouts: StoreTimeouts::default(),
        }
    }
}

/// `[store.timeouts]`, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreTimeouts {
    /// TCP connect to one etcd endpoint.
    pub connect: u64,
    /// One etcd call, retries of transient errors included: past it the API answers 503
    /// naming the outage. Keep it below `timeouts.request`.
    pub request: u64,
    /// TTL of this host's etcd lease: how long after this broker stops (crash,
    /// partition) the domains it runs can be taken by another host. At least 2000, whole
    /// seconds (etcd counts leases in seconds).
    pub host_ttl: u64,
}

impl Default for StoreTimeouts {
    fn default() -> Self {
        StoreTimeouts {
            connect: 2000,
            request: 5000,
            host_ttl: 10_000,
        }
    }
}

/// Checks `[store]`; the error is `(key, message)`.
pub fn check_store(s: &StoreConfig, api_request_ms: u64) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    if s.backend == Backend::Sqlite {
        if !s.endpoints.is_empty() {
            return bad(
                "store.endpoints",
                "etcd endpoints are set but store.backend is \"sqlite\"; set backend = \"etcd\" \
                 for cluster mode or remove them"
                    .into(),
            );
        }
        return Ok(());
    }
    if s.endpoints.is_empty() {
        return bad(
            "store.endpoints",
            "backend = \"etcd\" needs at least one endpoint (http://host:2379)".into(),
        );
    }
    for e in &s.endpoints {
        if e.starts_with("https://") {
            return bad(
                "store.endpoints",
                format!("{e}: TLS to etcd is not supported yet; use http:// on a trusted network"),
            );
        }
        let rest = e.strip_prefix("http://").unwrap_or("");
        if rest.is_empty() || rest.contains(char::is_whitespace) || e.len() > 256 {
            return bad(
                "store.endpoints",
                format!("{e:?} is not an etcd URL like http://127.0.0.1:2379"),
            );
        }
    }
    if !s.prefix.starts_with('/')
        || s.prefix.len() > 128
        || s.prefix.chars().any(|c| !c.is_ascii_graphic())
    {
        return bad(
            "store.prefix",
            format!(
                "{:?}: must start with '/' and be at most 128 bytes of printable ASCII without spaces",
                s.prefix
            ),
        );
    }
    if let Some(h) = &s.host
        && (h.is_empty()
            || h.len() > 253
            || h.chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))))
    {
        return bad(
            "store.host",
            format!("{h:?}: 1 to 253 letters, digits, '.', '-' or '_'"),
        );
    }
    let t = &s.timeouts;
    for (key, v) in [
        ("store.timeouts.connect", t.connect),
        ("store.timeouts.request", t.request),
    ] {
        if v == 0 || v > 3_600_000 {
            return bad(key, format!("{v} ms is out of range 1-3600000"));
        }
    }
    if t.host_ttl < 2000 || t.host_ttl > 3_600_000 || !t.host_ttl.is_multiple_of(1000) {
        return bad(
            "store.timeouts.host_ttl",
            format!(
                "{} ms: must be whole seconds from 2000 to 3600000 (etcd leases count seconds)",
                t.host_ttl
            ),
        );
    }
    if t.request >= api_request_ms {
        return bad(
            "store.timeouts.request",
            format!(
                "{} ms must be below timeouts.request ({api_request_ms} ms): otherwise an etcd \
                 outage answers 408 instead of 503 naming it",
                t.request
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd() -> StoreConfig {
        StoreConfig {
            backend: Backend::Etcd,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..StoreConfig::default()
        }
    }

    #[test]
    fn each_wrong_value_names_its_key() {
        assert_eq!(check_store(&StoreConfig::default(), 8000), Ok(()));
        assert_eq!(check_store(&etcd(), 8000), Ok(()));
        let with = |f: &dyn Fn(&mut StoreConfig)| {
            let mut s = etcd();
            f(&mut s);
            s
        };
        let table: Vec<(StoreConfig, &str, &str)> = vec![
            (
                with(&|s| s.endpoints.clear()),
                "store.endpoints",
                "at least one",
            ),
            (
                with(&|s| s.endpoints = vec!["https://e:2379".into()]),
                "store.endpoints",
                "TLS",
            ),
            (
                with(&|s| s.endpoints = vec!["127.0.0.1:2379".into()]),
                "store.endpoints",
                "etcd URL",
            ),
            (
                StoreConfig {
                    endpoints: vec!["http://e:2379".into()],
                    ..StoreConfig::default()
                },
                "store.endpoints",
                "sqlite",
            ),
            (with(&|s| s.prefix = "x/".into()), "store.prefix", "'/'"),
            (
                with(&|s| s.host = Some("a/b".into())),
                "store.host",
                "letters",
            ),
            (
                with(&|s| s.timeouts.host_ttl = 1500),
                "store.timeouts.host_ttl",
                "whole seconds",
            ),
            (
                with(&|s| s.timeouts.request = 0),
                "store.timeouts.request",
                "range",
            ),
            (
                with(&|s| s.timeouts.request = 9000),
                "store.timeouts.request",
                "below timeouts.request",
            ),
        ];
        for (s, key, says) in table {
            let (k, msg) = check_store(&s, 8000).unwrap_err();
            assert_eq!(k, key, "{msg}");
            assert!(msg.contains(says), "{key}: {msg}");
        }
    }
}
