//! Appliers: each configuration item kind is applied by its own module behind the
//! [`Applier`] trait. Every write goes under the guest root, atomically (temporary file in
//! the same folder, fsync, rename, fsync the folder), with the right owner and mode, and
//! only when the content differs: a re-push of what is in place touches no file and
//! answers `unchanged`.

mod accounts;
mod hostname;
mod keys;
mod network;
mod users;

use std::collections::BTreeMap;

use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use crate::options::AgentOptions;
use crate::state::AppliedState;

pub use hostname::HostnameApplier;
pub use keys::{BLOCK_BEGIN, BLOCK_END, render_managed_block};
pub use network::{NETWORK_UNSUPPORTED, NetworkApplier};
pub use users::UsersApplier;

/// What an applier may look at besides the document.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext<'a> {
    /// The agent's options (guest root, live hostname...).
    pub opts: &'a AgentOptions,
    /// What was applied before, if anything.
    pub previous: Option<&'a AppliedState>,
}

/// Applies one kind of configuration item.
pub trait Applier: Send + Sync + std::fmt::Debug {
    /// Which items of `config` (as [`GuestConfig::items`] names them) this applier owns.
    fn owns(&self, item: &str) -> bool;

    /// Applies the items of `config` this applier owns and reports each one. Blocking:
    /// the agent calls it off the async runtime.
    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Vec<ItemResult>;
}

/// The appliers of this agent version.
pub fn default_appliers() -> Vec<Box<dyn Applier>> {
    vec![
        Box::new(HostnameApplier),
        Box::new(NetworkApplier),
        Box::new(UsersApplier),
    ]
}

/// Applies `config` with `appliers` and returns exactly one result per
/// [`GuestConfig::items`] entry, in that order.
pub fn apply_config(
    appliers: &[Box<dyn Applier>],
    ctx: &ApplyContext<'_>,
    config: &GuestConfig,
) -> Vec<ItemResult> {
    let wanted = config.items();
    let mut got: BTreeMap<String, ItemResult> = BTreeMap::new();
    // Every applier runs, even with none of its items present: one that managed something
    // before may have to undo it (the keys of a user dropped from the document).
    for applier in appliers {
        for r in applier.apply(ctx, config) {
            got.entry(r.item.clone()).or_insert(r);
        }
    }
    wanted
        .into_iter()
        .map(|item| {
            got.remove(&item).unwrap_or_else(|| ItemResult {
                reason: Some("no applier in this agent version handles this item".into()),
                item,
                status: ItemStatus::Unsupported,
            })
        })
        .collect()
}

/// `applied` or `unchanged`.
pub(crate) fn status(changed: bool) -> ItemStatus {
    if changed {
        ItemStatus::Applied
    } else {
        ItemStatus::Unchanged
    }
}
