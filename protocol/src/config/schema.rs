//! The one table of configuration item kinds, their schema versions and, per version, the
//! fields each understands.
//!
//! Both sides compute from it: the broker filters a document down to what an agent
//! announced in its hello ([`filter`] with the agent's [`Capabilities`]), the agent decodes
//! tolerantly (the same [`filter`] with its own capabilities, then a strict parse of what
//! is left), and the control API parses strictly but reports every unknown field at once.
//!
//! A new item kind is one file (`config/<kind>.rs`, holding its types and a
//! `pub(crate) const KIND: Kind`) plus one entry in [`TABLE`]. A new field of an existing
//! kind is a new version: append a [`Node`] to that kind's `versions` (never edit an old
//! one: an agent announcing `users: 1` was built against exactly that tree). Fields added
//! later must be optional and left out of the canonical form when absent, so that a
//! document without them has the digest an older peer computes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FieldError;

/// The shape of one value of the document, as far as versioning cares.
#[derive(Debug)]
pub enum Node {
    /// A value checked by its type's parser (string, number, bool, or a list of those).
    Leaf,
    /// An object with these fields.
    Object(&'static [Field]),
    /// A list whose elements have this shape.
    List(&'static Node),
    /// An object whose keys are labels chosen by the user (`ethernets.<id>`), every value
    /// of this shape.
    Map(&'static Node),
}

/// One named field of an [`Node::Object`].
#[derive(Debug)]
pub struct Field {
    /// The field's name in the document.
    pub name: &'static str,
    /// Its shape.
    pub node: Node,
}

/// Shorthand for table entries.
pub const fn field(name: &'static str, node: Node) -> Field {
    Field { name, node }
}

/// One item kind: a top-level field of the document.
#[derive(Debug)]
pub struct Kind {
    /// The top-level field, which is also the capability's name (`users`).
    pub name: &'static str,
    /// The schema of each version: `versions[0]` is version 1, `versions[1]` version 2...
    pub versions: &'static [Node],
}

impl Kind {
    /// The highest version this build knows.
    pub fn latest(&self) -> u32 {
        u32::try_from(self.versions.len()).expect("a handful of versions")
    }

    /// The tree of `version`, or of the latest known one when `version` is newer than this
    /// build (a newer peer understands at least what we know).
    fn tree(&self, version: u32) -> Option<&'static Node> {
        let i = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(i).or(self.versions.last())
    }
}

const HOSTNAME: Kind = Kind {
    name: "hostname",
    versions: &[Node::Leaf],
};

/// The fields of one `ethernets.<id>` entry in network v1.
macro_rules! ethernet_v1_fields {
    ($($extra:expr),*) => {
        &[
            field("match", Node::Object(&[field("macaddress", Node::Leaf)])),
            field("dhcp4", Node::Leaf),
            field("dhcp6", Node::Leaf),
            field("addresses", Node::Leaf),
            field(
                "routes",
                Node::List(&Node::Object(&[
                    field("to", Node::Leaf),
                    field("via", Node::Leaf),
                    field("metric", Node::Leaf),
                ])),
            ),
            field(
                "nameservers",
                Node::Object(&[field("addresses", Node::Leaf), field("search", Node::Leaf)]),
            ),
            field("mtu", Node::Leaf),
            $($extra),*
        ]
    };
}

const NETWORK: Kind = Kind {
    name: "network",
    versions: &[
        // v1: the first release.
        Node::Object(&[
            field("version", Node::Leaf),
            field("ethernets", Node::Map(&Node::Object(ethernet_v1_fields!()))),
        ]),
        // v2: cloud-init v2 compatibility: `renderer` (a hint) and `gateway4`/`gateway6`.
        // A v1 peer gets the gateways as default routes (`GuestConfig::for_peer`), so only
        // the hint is lost on it.
        Node::Object(&[
            field("version", Node::Leaf),
            field("renderer", Node::Leaf),
            field(
                "ethernets",
                Node::Map(&Node::Object(ethernet_v1_fields!(
                    field("gateway4", Node::Leaf),
                    field("gateway6", Node::Leaf)
                ))),
            ),
        ]),
    ],
};

const USERS: Kind = Kind {
    name: "users",
    versions: &[
        // v1: the first release.
        Node::List(&Node::Object(&[
            field("name", Node::Leaf),
            field("ssh_authorized_keys", Node::Leaf),
            field("create", Node::Leaf),
        ])),
        // v2: accounts (groups, shell, sudo rule, hashed password or locked, run-once).
        // `plain_text_passwd` is in the tree so that it reaches the strict parse, which
        // refuses it by name, instead of being dropped as unknown.
        Node::List(&Node::Object(&[
            field("name", Node::Leaf),
            field("ssh_authorized_keys", Node::Leaf),
            field("create", Node::Leaf),
            field("groups", Node::Leaf),
            field("shell", Node::Leaf),
            field("sudo", Node::Leaf),
            field("hashed_passwd", Node::Leaf),
            field("lock_passwd", Node::Leaf),
            field("plain_text_passwd", Node::Leaf),
            field("run", Node::Leaf),
        ])),
    ],
};

/// Every item kind this build knows. Add a kind here (one line) after writing its file.
pub static TABLE: &[Kind] = &[
    HOSTNAME,
    NETWORK,
    USERS,
    super::time::KIND,
    super::write_files::KIND,
];

/// Item kinds and the schema version of each that a peer can apply, as an agent announces
/// them in its hello (`{"hostname":1,"network":1,"users":1}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub BTreeMap<String, u32>);

impl Capabilities {
    /// What an agent of protocol revision 1 can apply; a hello without capabilities means
    /// exactly this.
    pub fn v1() -> Self {
        Capabilities(
            ["hostname", "network", "users"]
                .into_iter()
                .map(|k| (k.to_string(), 1))
                .collect(),
        )
    }

    /// The latest version of every kind of `table`.
    pub fn of_table(table: &[Kind]) -> Self {
        Capabilities(
            table
                .iter()
                .map(|k| (k.name.to_string(), k.latest()))
                .collect(),
        )
    }

    /// What this build applies: the latest version of every kind of [`TABLE`].
    pub fn ours() -> Self {
        Self::of_table(TABLE)
    }

    /// The version of `kind` the peer applies; `None` when it does not know the kind
    /// (version 0 counts as not knowing it).
    pub fn version(&self, kind: &str) -> Option<u32> {
        self.0.get(kind).copied().filter(|&v| v > 0)
    }

    /// Whether a peer with these capabilities applies every field of every kind of
    /// `table` at its latest version: a document valid for `table` reaches it whole,
    /// nothing to filter or translate.
    pub fn covers(&self, table: &[Kind]) -> bool {
        table
            .iter()
            .all(|k| self.version(k.name).is_some_and(|v| v >= k.latest()))
    }

    /// Adds or replaces one kind (tests, and agents built with optional item kinds).
    #[must_use]
    pub fn with(mut self, kind: &str, version: u32) -> Self {
        self.0.insert(kind.to_string(), version);
        self
    }
}

/// The most `unsupported` entries one filtering reports; the rest are summed up in one
/// last entry, so an answer always fits in a frame whatever the document holds.
pub const MAX_REPORTED: usize = 64;

/// The longest path an entry names; a longer one (labels are user-chosen) is cut.
const MAX_PATH: usize = 256;

/// What [`filter`] keeps and what it drops.
#[derive(Debug, Clone, PartialEq)]
pub struct Filtered {
    /// The document with only what the peer understands.
    pub document: Value,
    /// One entry per dropped item or field (path and reason), in document order, at most
    /// [`MAX_REPORTED`] plus one summary entry (path `.`).
    pub dropped: Vec<FieldError>,
}

/// Keeps of `doc` what a peer with `caps` understands and names everything else.
///
/// `peer` names the peer in the reasons (`agent xenchan-agent 0.1.0`). A top-level field
/// that is no kind of `table` is dropped (the peer cannot know it if we do not); a kind the
/// peer lacks is dropped whole; inside a kind, fields outside the tree of the peer's
/// version are dropped. Values are not checked here: the strict parse that follows does.
/// A `doc` that is not an object is returned as is.
pub fn filter(doc: &Value, caps: &Capabilities, table: &[Kind], peer: &str) -> Filtered {
    let mut out = Dropped::default();
    let document = match doc {
        Value::Object(fields) => {
            let mut kept = Map::new();
            for (name, value) in fields {
                let Some(kind) = table.iter().find(|k| k.name == name) else {
                    out.push(name.clone(), format!("{peer} does not know item `{name}`"));
                    continue;
                };
                let Some(version) = caps.version(name) else {
                    out.push(
                        name.clone(),
                        format!(
                            "{peer} has no `{name}` item; it needs {name} v1 or later (this document's {name} is v{})",
                            kind.latest()
                        ),
                    );
                    continue;
                };
                let Some(tree) = kind.tree(version) else {
                    continue;
                };
                let mut walk = Walk {
                    kind,
                    version,
                    peer,
                    schema_path: Vec::new(),
                    out: &mut out,
                };
                let mut path = name.clone();
                kept.insert(name.clone(), walk.prune(value, tree, &mut path));
            }
            Value::Object(kept)
        }
        other => other.clone(),
    };
    Filtered {
        document,
        dropped: out.finish(),
    }
}

/// Collects dropped entries up to the bound.
#[derive(Default)]
struct Dropped {
    entries: Vec<FieldError>,
    more: usize,
}

impl Dropped {
    fn push(&mut self, path: String, message: String) {
        if self.entries.len() < MAX_REPORTED {
            self.entries.push(FieldError {
                path: bounded(path),
                message,
            });
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<FieldError> {
        if self.more > 0 {
            self.entries.push(FieldError {
                path: ".".into(),
                message: format!("{} more unsupported fields not listed", self.more),
            });
        }
        self.entries
    }
}

fn bounded(mut path: String) -> String {
    if path.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push_str("...");
    }
    path
}

/// Where a field sits in the schema, independent of list indices and map labels.
#[derive(Clone, Copy)]
enum Step {
    Field(&'static str),
    Element,
}

struct Walk<'a> {
    kind: &'a Kind,
    version: u32,
    peer: &'a str,
    schema_path: Vec<Step>,
    out: &'a mut Dropped,
}

impl Walk<'_> {
    fn prune(&mut self, value: &Value, node: &'static Node, path: &mut String) -> Value {
        match (node, value) {
            (Node::Object(fields), Value::Object(map)) => {
                let mut kept = Map::new();
                for (name, v) in map {
                    let len = path.len();
                    let _ = write!(path, ".{name}");
                    if let Some(f) = fields.iter().find(|f| f.name == name) {
                        self.schema_path.push(Step::Field(f.name));
                        kept.insert(name.clone(), self.prune(v, &f.node, path));
                        self.schema_path.pop();
                    } else {
                        let reason = self.reason(name, path, fields);
                        self.out.push(path.clone(), reason);
                    }
                    path.truncate(len);
                }
                Value::Object(kept)
            }
            (Node::List(elem), Value::Array(items)) => {
                self.schema_path.push(Step::Element);
                let kept = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let len = path.len();
                        let _ = write!(path, "[{i}]");
                        let v = self.prune(v, elem, path);
                        path.truncate(len);
                        v
                    })
                    .collect();
                self.schema_path.pop();
                Value::Array(kept)
            }
            (Node::Map(elem), Value::Object(map)) => {
                self.schema_path.push(Step::Element);
                let kept = map
                    .iter()
                    .map(|(label, v)| {
                        let len = path.len();
                        let _ = write!(path, ".{label}");
                        let v = self.prune(v, elem, path);
                        path.truncate(len);
                        (label.clone(), v)
                    })
                    .collect();
                self.schema_path.pop();
                Value::Object(kept)
            }
            // A leaf, or a value of the wrong type: the strict parse names the problem.
            _ => value.clone(),
        }
    }

    /// Why the field `name` (at `path`) is dropped: the first later version that has it,
    /// or that no version does.
    fn reason(&self, name: &str, path: &str, fields: &[Field]) -> String {
        let kind = self.kind.name;
        let has = |tree: &'static Node| {
            node_at(tree, &self.schema_path)
                .is_some_and(|n| matches!(n, Node::Object(fs) if fs.iter().any(|f| f.name == name)))
        };
        let needs = (self.version..self.kind.latest())
            .zip(
                usize::try_from(self.version)
                    .ok()
                    .and_then(|v| self.kind.versions.get(v..))
                    .unwrap_or_default(),
            )
            .find(|(_, tree)| has(tree))
            .map(|(v, _)| v + 1);
        if let Some(v) = needs {
            format!(
                "{} has {kind} v{}; field {path} needs {kind} v{v}",
                self.peer, self.version
            )
        } else {
            let expected: Vec<String> = fields.iter().map(|f| format!("`{}`", f.name)).collect();
            format!(
                "unknown field `{name}` ({} has {kind} v{}), expected one of {}",
                self.peer,
                self.version,
                expected.join(", ")
            )
        }
    }
}

fn node_at(mut node: &'static Node, steps: &[Step]) -> Option<&'static Node> {
    for step in steps {
        node = match (step, node) {
            (Step::Field(name), Node::Object(fields)) => {
                &fields.iter().find(|f| f.name == *name)?.node
            }
            (Step::Element, Node::List(n) | Node::Map(n)) => n,
            _ => return None,
        };
    }
    Some(node)
}

#[cfg(test)]
mod tests;
