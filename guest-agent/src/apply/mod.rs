//! Appliers: each configuration item kind is applied by its own module behind the
//! [`Applier`] trait. Every write goes under the guest root, atomically, with the right
//! owner and mode, and only when the content differs: a re-push of what is in place
//! touches no file and answers `unchanged`. The files of a push are staged in one
//! [`Batch`] (temporary files written beside them) and made durable together in one
//! commit after the last applier (see `xenchan_basics::commit`); an applier that must have
//! its files in place before it goes on (to reload a service) commits early. The user
//! database (passwd, shadow, group) and sudoers files are still written one at a time,
//! each under its own lock or check.

mod accounts;
pub(crate) mod command;
mod hostname;
mod keys;
mod network;
mod put;
mod run_once;
pub mod sudo;
pub mod time;
mod users;
pub mod write_files;

use std::collections::BTreeMap;

use serde_json::Value;
use xenchan_basics::commit::Batch;
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use crate::options::AgentOptions;
use crate::state::AppliedState;

pub use hostname::HostnameApplier;
pub use keys::{BLOCK_BEGIN, BLOCK_END, render_managed_block};
pub use network::NetworkApplier;
pub use time::TimeApplier;
pub use users::UsersApplier;
pub use write_files::WriteFilesApplier;

/// What an applier may look at besides the document.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext<'a> {
    /// The agent's options (guest root, live hostname...).
    pub opts: &'a AgentOptions,
    /// What was applied before, if anything.
    pub previous: Option<&'a AppliedState>,
    /// The push's files, staged for its one durable commit.
    pub batch: &'a Batch,
}

impl ApplyContext<'_> {
    /// What the applier called `name` saved last time (see [`Outcome::state`]).
    pub fn previous_state(&self, name: &str) -> Option<&Value> {
        self.previous.and_then(|p| p.appliers.get(name))
    }
}

/// What an applier did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// One result per item it owns in the document.
    pub items: Vec<ItemResult>,
    /// Anything it must remember until the next push (what it manages, to undo it when
    /// the document stops asking for it). Saved in `applied.json` under its name and
    /// handed back through [`ApplyContext::previous_state`].
    pub state: Option<Value>,
}

/// Applies one kind of configuration item.
pub trait Applier: Send + Sync + std::fmt::Debug {
    /// The applier's name, the key of its saved state (`hostname`, `users`, `network`).
    fn name(&self) -> &'static str;

    /// Which items of a document (as [`GuestConfig::items`] names them) it owns.
    fn owns(&self, item: &str) -> bool;

    /// Applies the items of `config` it owns, reporting each one. It runs on every push,
    /// also when the document has none of its items (it may have something to undo).
    /// Blocking: the agent calls it off the async runtime.
    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome;
}

/// The appliers of this agent version.
pub fn default_appliers() -> Vec<Box<dyn Applier>> {
    vec![
        Box::new(HostnameApplier),
        Box::new(NetworkApplier),
        Box::new(UsersApplier),
        Box::new(TimeApplier),
        Box::new(WriteFilesApplier),
    ]
}

/// Applies `config` with `appliers`. Returns exactly one result per
/// [`GuestConfig::items`] entry, in that order, and the appliers' states by name.
pub fn apply_config(
    appliers: &[Box<dyn Applier>],
    ctx: &ApplyContext<'_>,
    config: &GuestConfig,
) -> (Vec<ItemResult>, BTreeMap<String, Value>) {
    let wanted = config.items();
    let mut got: BTreeMap<String, ItemResult> = BTreeMap::new();
    let mut states = BTreeMap::new();
    for applier in appliers {
        let outcome = applier.apply(ctx, config);
        for r in outcome.items {
            if applier.owns(&r.item) {
                got.entry(r.item.clone()).or_insert(r);
            }
        }
        if let Some(state) = outcome.state {
            states.insert(applier.name().to_string(), state);
        }
    }
    let items = wanted
        .into_iter()
        .map(|item| {
            got.remove(&item).unwrap_or_else(|| ItemResult {
                reason: Some("no applier in this agent version handles this item".into()),
                item,
                status: ItemStatus::Unsupported,
            })
        })
        .collect();
    (items, states)
}

/// `applied` or `unchanged`.
pub(crate) fn status(changed: bool) -> ItemStatus {
    if changed {
        ItemStatus::Applied
    } else {
        ItemStatus::Unchanged
    }
}
