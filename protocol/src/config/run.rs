//! When an item runs: on every push (`always`, the default: the guest follows the
//! document) or once per VM instance (`per_instance`, cloud-init's frequency of the same
//! name: the instance is the VM UUID, so a clone with a new UUID runs it once more).

use serde::{Deserialize, Serialize};

/// How often an item is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPolicy {
    /// On every push (what is applied follows the document).
    #[default]
    Always,
    /// Once per VM instance; later pushes on the same instance leave it alone.
    PerInstance,
}

impl RunPolicy {
    /// Whether this is the default (left out of the canonical form, so documents
    /// without the field keep their digest).
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
    pub fn is_always(&self) -> bool {
        *self == RunPolicy::Always
    }

    /// The text form.
    pub fn as_str(self) -> &'static str {
        match self {
            RunPolicy::Always => "always",
            RunPolicy::PerInstance => "per_instance",
        }
    }
}
