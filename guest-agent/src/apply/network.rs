//! Network and DNS configuration: not implemented in this agent version. The applier
//! exists so that the items are answered `unsupported` with a reason, and so that a real
//! implementation slots in behind the same trait later.

use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use super::{Applier, ApplyContext, Outcome};

/// The reason given for every `network:<id>` and `dns` item.
pub const NETWORK_UNSUPPORTED: &str =
    "network configuration is not implemented in this agent version";

/// Answers `network:<id>` and `dns` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkApplier;

impl Applier for NetworkApplier {
    fn name(&self) -> &'static str {
        "network"
    }

    fn owns(&self, item: &str) -> bool {
        item == "dns" || item.starts_with("network:")
    }

    fn apply(&self, _ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let items = config
            .items()
            .into_iter()
            .filter(|i| self.owns(i))
            .map(|item| ItemResult {
                item,
                status: ItemStatus::Unsupported,
                reason: Some(NETWORK_UNSUPPORTED.into()),
            })
            .collect();
        Outcome { items, state: None }
    }
}
