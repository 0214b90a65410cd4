//! The open-file limit. Every session holds a descriptor (two in listen mode: the
//! listener and the connection), so a broker started from a shell (soft RLIMIT_NOFILE
//! usually 1024) stopped connecting at about a thousand domains, each further connect
//! failing with EMFILE. At start the broker raises its soft limit to the hard one (the
//! soft limit stays low by default only for programs using select(), which this one does
//! not) and says at start when even that is below what `limits.max_domains` needs.

use xenchan_api::config::{Config, Mode};

/// Descriptors beside the sessions: the store (database, WAL, shared memory), the
/// lock, inotify, the control socket, the runtime's, hooks' pipes, the etcd client.
pub const RESERVE: u64 = 256;

/// Descriptors `config` may need at most: one per domain (two in listen mode), one per
/// control-API connection, and [`RESERVE`].
pub fn needed(config: &Config) -> u64 {
    let per_domain = match config.mode {
        Mode::Listen => 2,
        Mode::Connect => 1,
    };
    config.limits.max_domains as u64 * per_domain + config.limits.max_connections as u64 + RESERVE
}

/// The warning to log when `limit` descriptors are fewer than `needed`; `None` when they
/// suffice.
pub fn shortfall(limit: u64, needed: u64, max_domains: usize) -> Option<String> {
    (limit < needed).then(|| {
        format!(
            "RLIMIT_NOFILE is {limit}, below the {needed} descriptors limits.max_domains = \
             {max_domains} may need: past about {} sessions, connections fail (EMFILE). \
             Raise the hard limit (systemd: LimitNOFILE=) or lower limits.max_domains",
            limit.saturating_sub(needed - max_domains as u64)
        )
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; the soft limit in force afterwards.
pub fn raise_soft_to_hard() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// At start: raise the soft limit and warn when it is still short.
pub fn check(config: &Config) {
    match raise_soft_to_hard() {
        Ok(limit) => {
            if let Some(w) = shortfall(limit, needed(config), config.limits.max_domains) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::warn!("cannot read or raise RLIMIT_NOFILE: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_counts_sessions_api_connections_and_a_reserve() {
        let mut c = Config::default();
        c.limits.max_domains = 100_000;
        c.limits.max_connections = 64;
        c.mode = Mode::Connect;
        assert_eq!(needed(&c), 100_000 + 64 + RESERVE);
        c.mode = Mode::Listen;
        assert_eq!(needed(&c), 200_000 + 64 + RESERVE);
    }

    #[test]
    fn a_short_limit_is_named_with_what_it_allows() {
        assert_eq!(shortfall(65_536, 20_320, 20_000), None);
        let w = shortfall(20_000, 100_320, 100_000).unwrap();
        assert!(w.contains("RLIMIT_NOFILE is 20000"), "{w}");
        assert!(w.contains("limits.max_domains = 100000"), "{w}");
        // 320 descriptors go to the API and the reserve: 19,680 sessions fit.
        assert!(w.contains("past about 19680 sessions"), "{w}");
        assert!(w.contains("LimitNOFILE="), "{w}");
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit};
        let limit = raise_soft_to_hard().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(limit, soft);
    }
}
