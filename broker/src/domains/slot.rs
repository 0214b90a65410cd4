//! A session's mutable view of its domain's in-memory entry.

use xenchan_protocol::message::GuestFacts;

use super::Slot;
use crate::api::types::{DomainState, ItemView};

#[derive(Debug)]
pub struct SlotMut<'a>(pub(super) &'a mut Slot);

impl SlotMut<'_> {
    /// Sets the state.
    pub fn state(&mut self, s: DomainState) {
        self.0.state = s;
    }
    /// Sets whether a session is up.
    pub fn connected(&mut self, c: bool) {
        self.0.connected = c;
    }
    /// Sets what the agent reports as applied, and its UUID.
    pub fn applied(&mut self, applied: Option<(u64, String)>, uuid: Option<String>) {
        self.0.applied = applied;
        if uuid.is_some() {
            self.0.reported_uuid = uuid;
        }
    }
    /// Sets the items of a result and when it arrived.
    pub fn result(&mut self, items: Vec<ItemView>, at: String) {
        self.0.items = items;
        self.0.last_result_at = Some(at);
    }
    /// Sets the facts.
    pub fn facts(&mut self, f: GuestFacts) {
        self.0.facts = Some(f);
    }
    /// The items of the last result.
    pub fn items(&self) -> &[ItemView] {
        &self.0.items
    }
}
