//! No rollback: which pushes an agent accepts, given what it applied.
//!
//! A configuration is named by the store that issued it (its [`Lineage`], random per store
//! and kept in the store) and a generation that store increases. Generations of one
//! lineage are ordered; generations of different lineages are not (a new store, a new
//! history). A stale broker or a restored backup of the store pushes an older generation
//! of the same lineage: the agent refuses it unless the operator forces it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{Applied, ConfigPush};

/// The id of the store that issued a configuration: 1 to 64 ASCII letters, digits, `-`
/// or `_` (xenchan's broker uses 32 lowercase hex digits, 128 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Lineage(String);

/// The longest lineage.
pub const MAX_LINEAGE_LEN: usize = 64;

impl Lineage {
    /// A fresh lineage from 128 bits the caller draws at random.
    pub fn from_bits(bits: u128) -> Self {
        Lineage(format!("{bits:032x}"))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Lineage {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if (1..=MAX_LINEAGE_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Ok(Lineage(s))
        } else {
            Err(format!(
                "a lineage is 1 to {MAX_LINEAGE_LEN} ASCII letters, digits, `-` or `_`"
            ))
        }
    }
}

impl From<Lineage> for String {
    fn from(l: Lineage) -> String {
        l.0
    }
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an agent does with a push, given what it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Apply it: nothing applied yet, a newer or equal generation, another lineage, or a
    /// peer without lineages (revision 1).
    Apply,
    /// Apply it although it is older: the operator forced it.
    Rollback {
        /// The generation applied now.
        applied: u64,
        /// The older generation pushed.
        pushed: u64,
    },
    /// Refuse it (`error{stale-generation}`): an older generation of the applied lineage.
    Stale {
        /// The generation applied now.
        applied: u64,
        /// The older generation pushed.
        pushed: u64,
        /// Their lineage.
        lineage: Lineage,
    },
}

impl Admission {
    /// The refusal's message, for a [`Admission::Stale`].
    pub fn refusal(&self) -> Option<String> {
        match self {
            Admission::Stale {
                applied,
                pushed,
                lineage,
            } => Some(format!(
                "generation {pushed} of lineage {lineage} is older than the applied generation {applied}; \
                 a stale broker or a restored store? the operator can force it"
            )),
            _ => None,
        }
    }
}

/// Decides whether a push may be applied over `applied`.
pub fn admit(applied: Option<&Applied>, push: &ConfigPush) -> Admission {
    let Some(applied) = applied else {
        return Admission::Apply;
    };
    let same_lineage = matches!((&applied.lineage, &push.lineage), (Some(a), Some(p)) if a == p);
    if !same_lineage || push.generation >= applied.generation {
        return Admission::Apply;
    }
    if push.force {
        Admission::Rollback {
            applied: applied.generation,
            pushed: push.generation,
        }
    } else {
        Admission::Stale {
            applied: applied.generation,
            pushed: push.generation,
            lineage: push.lineage.clone().expect("same lineage"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuestConfig;

    fn lin(s: &str) -> Lineage {
        Lineage::try_from(s.to_string()).unwrap()
    }

    fn applied(generation: u64, lineage: Option<&str>) -> Applied {
        Applied {
            generation,
            digest: GuestConfig::default().digest(),
            lineage: lineage.map(lin),
        }
    }

    fn push(generation: u64, lineage: Option<&str>, force: bool) -> ConfigPush {
        let mut p = ConfigPush::new(generation, GuestConfig::default());
        p.lineage = lineage.map(lin);
        p.force = force;
        p
    }

    #[test]
    fn admission_table() {
        use Admission::{Apply, Rollback};
        let stale = |applied, pushed| Admission::Stale {
            applied,
            pushed,
            lineage: lin("a"),
        };
        let cases: Vec<(Option<Applied>, ConfigPush, Admission)> = vec![
            (None, push(1, Some("a"), false), Apply),
            (
                Some(applied(5, Some("a"))),
                push(6, Some("a"), false),
                Apply,
            ),
            (
                Some(applied(5, Some("a"))),
                push(5, Some("a"), false),
                Apply,
            ),
            (
                Some(applied(5, Some("a"))),
                push(4, Some("a"), false),
                stale(5, 4),
            ),
            (
                Some(applied(5, Some("a"))),
                push(4, Some("a"), true),
                Rollback {
                    applied: 5,
                    pushed: 4,
                },
            ),
            // Another store: generations are not comparable.
            (
                Some(applied(5, Some("a"))),
                push(1, Some("b"), false),
                Apply,
            ),
            // A revision-1 broker (no lineage), or state from before lineages.
            (Some(applied(5, Some("a"))), push(1, None, false), Apply),
            (Some(applied(5, None)), push(1, Some("a"), false), Apply),
        ];
        for (i, (a, p, want)) in cases.into_iter().enumerate() {
            assert_eq!(admit(a.as_ref(), &p), want, "case {i}");
        }
    }

    #[test]
    fn the_refusal_names_both_generations() {
        let msg = admit(Some(&applied(9, Some("a"))), &push(3, Some("a"), false))
            .refusal()
            .unwrap();
        assert!(
            msg.contains("generation 3") && msg.contains("generation 9"),
            "{msg}"
        );
    }

    #[test]
    fn lineages_are_bounded_text() {
        assert_eq!(Lineage::from_bits(0xab).as_str().len(), 32);
        for bad in ["", "a b", "x\n", &"a".repeat(65)] {
            assert!(Lineage::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
