//! The session's rule, as a pure function: from what the agent reported, what is
//! desired and what this session has done so far, what to do now and which state the
//! domain is in. The I/O driver ([`super`]) gathers the inputs, calls [`decide`] after
//! every event that may change the answer, and carries the decision out; nothing here
//! touches a socket, the store or a clock, so every branch is tested on plain values.
//!
//! [`Want::offer`] is the configuration *as this agent receives it*: filtered for the
//! capabilities of its hello (`GuestConfig::for_peer`), whose digest differs from the
//! stored one when something was left out. The agent's applied state is compared with
//! the offer, never with the store, so an old agent is not pushed the same document
//! again and again.
//!
//! What may make the broker push: the desired configuration changed, the agent reported
//! another applied state (hello), or the operator asked. A result never does: once the
//! agent answered a push ([`Progress::answered`]) that configuration is not pushed again
//! unasked, whatever the answer said.

use crate::api::types::DomainState;

/// A configuration by its generation and digest: one desired, offered, in flight,
/// refused or applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer<'a> {
    /// Its generation.
    pub generation: u64,
    /// Its digest (`sha256:<hex>`).
    pub digest: &'a str,
}

/// Why nothing may be pushed in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// No common version (error sent).
    Version,
    /// The agent refused our channel or our identity; the state to show.
    Refused(DomainState),
}

/// The outcome of the last result the broker knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastResult {
    /// The generation it is for.
    pub generation: u64,
    /// Its digest (empty when only the stored items are known).
    pub digest: String,
    /// No item failed (`unsupported` items do not count: pushing again would not
    /// change them).
    pub ok: bool,
}

/// What the agent has told this session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agent<'a> {
    /// The agent answered hello and no hello is awaited: decisions may act.
    pub ready: bool,
    /// A reason not to push at all in this session.
    pub block: Option<Block>,
    /// The VM UUID it reports (lowercase).
    pub uuid: Option<&'a str>,
    /// What it reports as applied (hello or the last result).
    pub applied: Option<Offer<'a>>,
}

/// What the operator wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want<'a> {
    /// The desired configuration, as this agent would receive it; `None`: nothing to push.
    pub offer: Option<Offer<'a>>,
    /// The VM UUID the operator recorded for the domain (`PUT ?uuid=`, prepare): the agent
    /// must report exactly this one (fail closed: reporting none is a mismatch too).
    pub recorded_uuid: Option<&'a str>,
    /// The VM UUID discovery found (xenstore): an agent reporting another one is refused;
    /// one reporting none is accepted (it may have no way to read it).
    pub discovered_uuid: Option<&'a str>,
    /// Bumped by each `POST .../push`.
    pub force: u64,
}

/// Why the agent refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A bad document (`bad-config`), or one that fits in no frame.
    Bad,
    /// An older generation of the lineage it applied (`stale-generation`).
    Stale,
}

/// What this session has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress<'a> {
    /// The push waiting for its result.
    pub in_flight: Option<Offer<'a>>,
    /// A configuration the agent refused, and why: not pushed again until the desired
    /// config changes or a push is forced.
    pub refused: Option<(Offer<'a>, Refusal)>,
    /// The configuration whose push the agent answered with a result in this session:
    /// not pushed again unasked, whatever the result said (a result never causes a push).
    pub answered: Option<Offer<'a>>,
    /// The last `force` this session acted on.
    pub force_seen: u64,
    /// The last result known.
    pub last_result: Option<&'a LastResult>,
    /// The identity mismatch was already recorded and told to the agent.
    pub identity_flagged: bool,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The handshake is not done: nothing to do, the state stays.
    NotReady,
    /// Nothing may be pushed in this session; show this state.
    Blocked(DomainState),
    /// The agent is not the VM the domain is: nothing is pushed. `first`: record the
    /// error and tell the agent (once per hello).
    RefuseIdentity {
        /// Not flagged yet.
        first: bool,
    },
    /// No configuration is desired.
    Idle,
    /// The desired configuration is on its way; wait for its result.
    AwaitResult,
    /// The agent applied the desired configuration and no item failed.
    Configured,
    /// The agent applied the desired configuration and an item failed (it retries).
    Degraded,
    /// The agent refused the desired configuration; it is not pushed again unasked.
    Refused(Refusal),
    /// Push the desired configuration.
    Push {
        /// An operator asked for it although the agent may have it.
        forced: bool,
    },
}

impl Decision {
    /// The domain state this decision shows, `None` when the state stays as it is.
    pub fn state(self) -> Option<DomainState> {
        Some(match self {
            Decision::NotReady => return None,
            Decision::Blocked(s) => s,
            Decision::RefuseIdentity { .. } => DomainState::IdentityMismatch,
            Decision::Idle => DomainState::Idle,
            Decision::AwaitResult | Decision::Push { .. } => DomainState::Pushing,
            Decision::Configured => DomainState::Configured,
            Decision::Degraded => DomainState::Degraded,
            Decision::Refused(Refusal::Bad) => DomainState::Error,
            Decision::Refused(Refusal::Stale) => DomainState::StaleGeneration,
        })
    }

    /// Whether the agent's identity was found acceptable on the way to this decision
    /// (so a mismatch flagged earlier is cleared).
    pub fn identity_passed(self) -> bool {
        !matches!(
            self,
            Decision::NotReady | Decision::Blocked(_) | Decision::RefuseIdentity { .. }
        )
    }
}

/// Whether the agent's UUID is the domain's. A UUID the operator recorded fails closed:
/// the agent must report that very one, and an agent reporting none is not trusted with
/// the configuration (it could be any VM). A UUID only discovery found is checked when
/// the agent reports one. Nothing known: any agent.
pub fn identity_matches(
    recorded: Option<&str>,
    discovered: Option<&str>,
    reported: Option<&str>,
) -> bool {
    let same = |w: &str| reported.is_some_and(|a| w.eq_ignore_ascii_case(a));
    match (recorded, discovered, reported) {
        (Some(w), _, _) | (None, Some(w), Some(_)) => same(w),
        _ => true,
    }
}

/// The decision, in order: handshake, blocks, identity, then the configuration.
pub fn decide(agent: &Agent<'_>, want: &Want<'_>, progress: &Progress<'_>) -> Decision {
    if !agent.ready {
        return Decision::NotReady;
    }
    if let Some(b) = agent.block {
        return Decision::Blocked(match b {
            Block::Version => DomainState::VersionMismatch,
            Block::Refused(s) => s,
        });
    }
    if !identity_matches(want.recorded_uuid, want.discovered_uuid, agent.uuid) {
        return Decision::RefuseIdentity {
            first: !progress.identity_flagged,
        };
    }
    let Some(offer) = want.offer else {
        return Decision::Idle;
    };
    if progress.in_flight == Some(offer) {
        // An earlier push of this very config is on its way: a second one would only
        // queue behind it in the guest's ring.
        return Decision::AwaitResult;
    }
    let forced = want.force > progress.force_seen;
    if (agent.applied == Some(offer) || progress.answered == Some(offer)) && !forced {
        // Degraded only when an item failed in the last result of this generation;
        // without one (a hello after a broker restart) the agent's word that it applied
        // it.
        let ok = match progress.last_result {
            Some(r) if r.generation == offer.generation => r.ok,
            _ => true,
        };
        return if ok {
            Decision::Configured
        } else {
            Decision::Degraded
        };
    }
    if let Some((refused, why)) = progress.refused
        && refused == offer
        && !forced
    {
        return Decision::Refused(why);
    }
    Decision::Push { forced }
}

#[cfg(test)]
mod tests;
