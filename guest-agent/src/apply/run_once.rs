//! Per-instance items: which items already ran on this VM instance.
//!
//! The instance is the VM UUID (cloud-init's instance-id); without one, the content of
//! `/etc/machine-id` (cleared by `xenchan-agent seal`, so a clone made from a sealed
//! template gets a fresh one). A record made on another instance is dropped: a clone
//! runs its `per_instance` items once.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xenchan_protocol::ItemStatus;
use xenchan_protocol::config::RunPolicy;

/// The instance id of the guest at `root`.
pub(crate) fn instance_id(root: &Path) -> String {
    if let Some(uuid) = crate::identity::read_vm_uuid(root) {
        return uuid;
    }
    let mut id = String::new();
    if let Ok(f) = std::fs::File::open(root.join("etc/machine-id")) {
        let _ = f.take(128).read_to_string(&mut id);
    }
    let id = id.trim();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("machine-id:{id}")
    } else {
        "unknown".to_string()
    }
}

/// The per-instance record an applier keeps in its state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunOnce {
    /// The instance the record is about.
    pub instance: String,
    /// Items that ran (applied or unchanged) on it.
    #[serde(default)]
    pub done: BTreeSet<String>,
}

impl RunOnce {
    /// The record for `instance`: the previous one if it is about the same instance,
    /// else an empty one.
    pub(crate) fn for_instance(previous: Option<RunOnce>, instance: &str) -> RunOnce {
        match previous {
            Some(p) if p.instance == instance => p,
            _ => RunOnce {
                instance: instance.to_string(),
                done: BTreeSet::new(),
            },
        }
    }

    /// Whether `item` is to be skipped now.
    pub(crate) fn skip(&self, policy: RunPolicy, item: &str) -> bool {
        policy == RunPolicy::PerInstance && self.done.contains(item)
    }

    /// Notes the outcome of `item`: a per-instance item that did not fail is done.
    pub(crate) fn record(&mut self, policy: RunPolicy, item: &str, status: ItemStatus) {
        if policy == RunPolicy::PerInstance && !status.is_failure() {
            self.done.insert(item.to_string());
        }
    }

    /// Keeps only the items still in the document (one dropped and added again runs
    /// again).
    pub(crate) fn retain(&mut self, items: &BTreeSet<String>) {
        self.done.retain(|i| items.contains(i));
    }

    /// The reason given for a skipped item.
    pub(crate) fn skipped_reason(&self) -> String {
        format!(
            "per_instance: already applied on instance {}",
            self.instance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_instance_and_again_on_a_clone() {
        let mut r = RunOnce::for_instance(None, "a");
        assert!(!r.skip(RunPolicy::PerInstance, "file:/x"));
        r.record(RunPolicy::PerInstance, "file:/x", ItemStatus::Failed);
        assert!(
            !r.skip(RunPolicy::PerInstance, "file:/x"),
            "a failure is retried"
        );
        r.record(RunPolicy::PerInstance, "file:/x", ItemStatus::Applied);
        r.record(RunPolicy::Always, "file:/y", ItemStatus::Applied);
        assert!(r.skip(RunPolicy::PerInstance, "file:/x"));
        assert!(!r.skip(RunPolicy::Always, "file:/x"));
        assert!(!r.skip(RunPolicy::PerInstance, "file:/y"));
        let same = RunOnce::for_instance(Some(r.clone()), "a");
        assert!(same.skip(RunPolicy::PerInstance, "file:/x"));
        let clone = RunOnce::for_instance(Some(r), "b");
        assert!(!clone.skip(RunPolicy::PerInstance, "file:/x"));
    }

    #[test]
    fn instance_is_the_uuid_else_the_machine_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(instance_id(dir.path()), "unknown");
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        assert_eq!(
            instance_id(dir.path()),
            "machine-id:0123456789abcdef0123456789abcdef"
        );
        std::fs::create_dir_all(dir.path().join("sys/hypervisor")).unwrap();
        std::fs::write(
            dir.path().join("sys/hypervisor/uuid"),
            "4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b\n",
        )
        .unwrap();
        assert_eq!(
            instance_id(dir.path()),
            "4d1f0a2b-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
        );
    }
}
