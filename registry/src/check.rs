//! Judging a name against the rules and the registry.

use std::fmt;
use std::path::Path;

use crate::XENCHAN_CHANNEL;
use crate::name::{NameError, PoorReason, poor_reasons, split_version, validate_name};
use crate::registry::{Origin, Registered, Registry};

/// How a name relates to a registered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// The very same name is registered.
    Same,
    /// The name is a label prefix of a registered name (`org.a` vs `org.a.b`).
    PrefixOf,
    /// A registered name is a label prefix of the name (`org.a.b` vs `org.a`).
    Extends,
}

/// A registered entry the name clashes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// How they clash.
    pub kind: ConflictKind,
    /// The registered entry.
    pub registered: Registered,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let other = self.registered.entry.name();
        let relation = match self.kind {
            ConflictKind::Same => "is registered".to_owned(),
            ConflictKind::PrefixOf => format!("is a prefix of registered `{other}`"),
            ConflictKind::Extends => format!("extends registered `{other}`"),
        };
        let first_line = self
            .registered
            .entry
            .description()
            .lines()
            .next()
            .unwrap_or_default();
        write!(
            f,
            "{relation} ({}): {first_line} [contact: {}]",
            self.registered.location(),
            self.registered.entry.contact().replace('\n', " ")
        )
    }
}

/// The verdict on a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Well-formed, follows the convention, clashes with nothing.
    Ok,
    /// Usable, but against the convention; the reasons say why.
    Poor(Vec<PoorReason>),
    /// Registered already, or prefix-related to a registered name.
    Clash(Vec<Conflict>),
    /// Cannot be used at all.
    Invalid(NameError),
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The name checked.
    pub name: String,
    /// What to make of it; the worst finding wins (invalid, then clash, then poor).
    pub verdict: Verdict,
}

impl Check {
    /// True for [`Verdict::Ok`].
    pub fn is_ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.escape_debug();
        match &self.verdict {
            Verdict::Ok => write!(
                f,
                "ok: `{name}` follows the naming convention and is not registered"
            ),
            Verdict::Invalid(e) => write!(f, "invalid: `{name}` {e}"),
            Verdict::Poor(reasons) => {
                write!(f, "poor: `{name}` can be used, but:")?;
                for r in reasons {
                    write!(f, "\n  - {r}")?;
                }
                Ok(())
            }
            Verdict::Clash(conflicts) => {
                write!(f, "clash: `{name}`")?;
                for c in conflicts {
                    write!(f, "\n  - {c}")?;
                }
                Ok(())
            }
        }
    }
}

/// Judges `name` as a name for a new program: may it be taken?
///
/// A name already registered is a [`Verdict::Clash`] (use
/// [`Registry::lookup`] to ask who owns a name). So is a name that is a label
/// prefix of a registered one or extends one. Comparisons are exact and
/// case-sensitive, as xl's; a name differing only in case, or only in its version
/// part, from a registered one is [`Verdict::Poor`].
pub fn check(registry: &Registry, name: &str) -> Check {
    let verdict = judge(registry, name);
    Check {
        name: name.to_owned(),
        verdict,
    }
}

fn judge(registry: &Registry, name: &str) -> Verdict {
    if let Err(e) = validate_name(name) {
        return Verdict::Invalid(e);
    }
    let mut conflicts = Vec::new();
    if let Some(same) = registry.get(name) {
        conflicts.push(Conflict {
            kind: ConflictKind::Same,
            registered: same.clone(),
        });
    }
    conflicts.extend(registry.extensions_of(name).map(|r| Conflict {
        kind: ConflictKind::PrefixOf,
        registered: r.clone(),
    }));
    conflicts.extend(registry.prefixes_of(name).map(|r| Conflict {
        kind: ConflictKind::Extends,
        registered: r.clone(),
    }));
    if !conflicts.is_empty() {
        return Verdict::Clash(conflicts);
    }
    let mut reasons = poor_reasons(name);
    let (base, version) = split_version(name);
    for other in registry.entries() {
        let other = other.name();
        if other.eq_ignore_ascii_case(name) {
            reasons.push(PoorReason::CaseVariant {
                registered: other.to_owned(),
            });
        } else if version.is_some() {
            let (other_base, other_version) = split_version(other);
            if other_version.is_some() && other_base == base {
                reasons.push(PoorReason::OtherVersion {
                    registered: other.to_owned(),
                });
            }
        }
    }
    if reasons.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Poor(reasons)
    }
}

/// Warnings for a broker or agent to log when it starts with channel `name`,
/// reading local entries from `registry_dir` (default
/// [`DEFAULT_REGISTRY_DIR`](crate::DEFAULT_REGISTRY_DIR)). Empty when all is well.
///
/// Never fails: an unreadable local registry becomes a warning and the check goes
/// on against the built-in entries. A name registered locally is taken to be the
/// operator's own choice; a built-in name other than xenchan's is another
/// program's channel.
pub fn startup_check(name: &str, registry_dir: &Path) -> Vec<String> {
    let shown = name.escape_debug().to_string();
    let mut out = Vec::new();
    if let Err(e) = validate_name(name) {
        out.push(format!("channel name `{shown}` is invalid: {e}"));
        return out;
    }
    let registry = match Registry::load(&[registry_dir]) {
        Ok((registry, warnings)) => {
            out.extend(warnings.iter().map(|w| format!("channel registry: {w}")));
            registry
        }
        Err(e) => {
            out.push(format!(
                "channel registry: {}; checking against the built-in entries only",
                crate::error_chain(&e)
            ));
            Registry::builtin()
        }
    };
    if let Some(registered) = registry.get(name) {
        if registered.origin == Origin::Builtin && name != XENCHAN_CHANNEL {
            let what = registered
                .entry
                .description()
                .lines()
                .next()
                .unwrap_or_default();
            out.push(format!(
                "channel name `{shown}` is registered to another program ({what}); its agent \
                 may be the one answering on this channel"
            ));
        }
        return out;
    }
    out.push(format!(
        "channel name `{shown}` is not registered (built-in registry or {}); register it with \
         `xenchan registry add --name {shown} --contact ... --description ...` so that others \
         avoid it",
        registry_dir.display()
    ));
    match check(&registry, name).verdict {
        Verdict::Clash(conflicts) => {
            for c in conflicts {
                out.push(format!("channel name `{shown}` {c}"));
            }
        }
        Verdict::Poor(reasons) => {
            for r in reasons {
                out.push(format!("channel name `{shown}` is a poor choice: {r}"));
            }
        }
        Verdict::Ok | Verdict::Invalid(_) => {}
    }
    out
}
