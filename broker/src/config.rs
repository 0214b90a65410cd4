//! The broker's configuration file (`/etc/xenchan/broker.toml`). The schema, defaults and
//! validation are the config-file contract in `xenchan_api::config` (the simulator and
//! tests write the file without depending on the daemon); this module re-exports them and
//! adds what needs the host.

use std::path::PathBuf;

pub use xenchan_api::config::*;

/// Where the broker looks for xenstore (needs the xenstore crate, which the API crate does
/// not depend on).
pub trait XenstoreCandidates {
    /// Where xenstore is tried, in order: `xenstore_path` if set, else libxenstore's
    /// rules: `$XENSTORED_PATH` alone if set, else `$XENSTORED_RUNDIR/socket` (default
    /// `/var/run/xenstored/socket`, i.e. `/run/xenstored/socket`), `/dev/xen/xenbus`,
    /// `/proc/xen/xenbus`.
    fn xenstore_candidates(&self) -> Vec<PathBuf>;
}

impl XenstoreCandidates for Config {
    fn xenstore_candidates(&self) -> Vec<PathBuf> {
        match &self.xenstore_path {
            Some(p) => vec![p.clone()],
            None => xenchan_xenstore::default_paths(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn xenstore_candidates_follow_the_key_then_libxenstore() {
        let c = Config::parse("xenstore_path = \"/tmp/xs.sock\"", Path::new("b.toml")).unwrap();
        assert_eq!(c.xenstore_candidates(), vec![PathBuf::from("/tmp/xs.sock")]);
        // Unset: libxenstore's candidates, ending with the xenbus device.
        let d = Config::default().xenstore_candidates();
        assert!(
            d.iter().any(|p| p.ends_with("xenbus")) || d.len() == 1,
            "{d:?}"
        );
    }
}
