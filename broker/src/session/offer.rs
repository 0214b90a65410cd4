//! What a session offers its agent of the desired configuration: the stored document,
//! filtered for the agent's capabilities ([`GuestConfig::for_peer`]), kept until the
//! desired configuration or the capabilities change.
//!
//! Most agents apply every item kind this broker knows; they get the stored document
//! whole, and the offer shares it (`Arc`) with the domain's desired state instead of
//! holding a copy: per configured domain that copy was most of what a session added
//! (a heap profile of the scale benchmark, docs/PERFORMANCE.md).

use std::sync::Arc;

use xenchan_protocol::config::{Capabilities, Digest, FieldError, ForPeer, GuestConfig, schema};
use xenchan_protocol::message::ItemResult;

use crate::store::DesiredConfig;

/// The desired configuration as one agent receives it.
#[derive(Debug, Clone)]
pub(super) struct PeerOffer {
    /// The stored generation and digest it was made from.
    pub(super) source: (u64, String),
    /// The capabilities it was made for.
    caps: Arc<Capabilities>,
    /// The document, its digest and what was left out.
    pub(super) body: OfferBody,
}

/// What an agent is offered of the desired configuration.
#[derive(Debug, Clone)]
pub(super) enum OfferBody {
    /// The stored document, whole: nothing was left out or translated for this agent.
    Whole(Arc<DesiredConfig>),
    /// The document filtered for this agent's capabilities (boxed: the rare case, and
    /// every session's future holds the enum inline).
    Filtered(Box<ForPeer>),
}

impl PeerOffer {
    /// The offer of `cfg` to an agent with `caps` (`peer` names it in what is left out;
    /// `domain` in the log).
    pub(super) fn new(
        cfg: &Arc<DesiredConfig>,
        caps: &Arc<Capabilities>,
        peer: &str,
        domain: &str,
    ) -> PeerOffer {
        PeerOffer {
            source: (cfg.generation, cfg.digest.to_string()),
            caps: Arc::clone(caps),
            body: OfferBody::of(cfg, caps, peer, domain),
        }
    }

    /// Whether this is the offer of `cfg` to an agent with `caps`.
    pub(super) fn is_for(&self, cfg: &DesiredConfig, caps: &Capabilities) -> bool {
        self.source.0 == cfg.generation
            && self.source.1 == cfg.digest.as_str()
            && *self.caps == *caps
    }
}

impl OfferBody {
    fn of(cfg: &Arc<DesiredConfig>, caps: &Capabilities, peer: &str, domain: &str) -> OfferBody {
        // An agent that applies every kind at its latest version (this build's, or a
        // newer one) gets the document whole without filtering it. The digest is checked,
        // not assumed: the agent checks the document against the one it is sent.
        if caps.covers(schema::TABLE) && cfg.config.digest() == cfg.digest {
            return OfferBody::Whole(Arc::clone(cfg));
        }
        match cfg.config.for_peer(caps, peer) {
            // The same document after all: keep none of the copy.
            Ok(f) if f.unsupported.is_empty() && f.digest == cfg.digest => {
                OfferBody::Whole(Arc::clone(cfg))
            }
            Ok(f) => OfferBody::Filtered(Box::new(f)),
            Err(e) => {
                // Only a document built by hand breaks a rule; the API refuses those.
                // Pushed whole, the agent answers for what it does not know.
                tracing::warn!(
                    domain,
                    "cannot filter generation {} for the agent ({e}); it is pushed whole",
                    cfg.generation
                );
                OfferBody::Whole(Arc::clone(cfg))
            }
        }
    }

    pub(super) fn config(&self) -> &GuestConfig {
        match self {
            OfferBody::Whole(d) => &d.config,
            OfferBody::Filtered(f) => &f.config,
        }
    }

    pub(super) fn digest(&self) -> &Digest {
        match self {
            OfferBody::Whole(d) => &d.digest,
            OfferBody::Filtered(f) => &f.digest,
        }
    }

    /// Every item or field left out, with why.
    pub(super) fn unsupported(&self) -> &[FieldError] {
        match self {
            OfferBody::Whole(_) => &[],
            OfferBody::Filtered(f) => &f.unsupported,
        }
    }

    /// The left-out parts as `unsupported` item results, as the broker records them.
    pub(super) fn unsupported_items(&self) -> Vec<ItemResult> {
        match self {
            OfferBody::Whole(_) => Vec::new(),
            OfferBody::Filtered(f) => f.unsupported_items(),
        }
    }
}
