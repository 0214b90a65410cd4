//! Protocol v1 messages.
//!
//! Every message is an [`Envelope`]: the frame marker and protocol version (`xenchan`), the
//! sending side (`from`), the session nonce once a session exists, and a typed [`Body`].
//! On the wire it is one JSON object on one line, and it always begins with
//! [`FRAME_MARKER`] so a receiver can find the start of a message after noise.

use serde::{Deserialize, Serialize};

use crate::config::{Digest, GuestConfig};
use crate::session::Nonce;

/// Every frame starts with these bytes; the decoder resynchronises on them.
pub const FRAME_MARKER: &[u8] = b"{\"xenchan\":";

/// Which side sent a message. A side ignores messages that claim to be from itself: on a
/// tty that is not raw yet, the guest echoes the broker's own bytes back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The dom0 side (xenchan-broker).
    Broker,
    /// The guest side (xenchan-agent).
    Agent,
}

impl Role {
    /// The other side.
    #[must_use]
    pub fn peer(self) -> Role {
        match self {
            Role::Broker => Role::Agent,
            Role::Agent => Role::Broker,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Broker => "broker",
            Role::Agent => "agent",
        })
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Frame marker and the protocol version this message is written in. Declared first so
    /// that serialisation starts with [`FRAME_MARKER`].
    pub xenchan: u32,
    /// The sending side.
    pub from: Role,
    /// The session nonce the broker chose; absent only in an agent's beacon hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Nonce>,
    /// What the message says.
    #[serde(flatten)]
    pub body: Body,
}

impl Envelope {
    /// A v1 message from `from` in `session`.
    pub fn new(from: Role, session: Option<Nonce>, body: Body) -> Self {
        Envelope {
            xenchan: 1,
            from,
            session,
            body,
        }
    }

    /// The message type as it appears on the wire (`"hello"`, `"config"`, ...).
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

/// The message bodies of protocol v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Opens a session (broker, with a fresh nonce), answers it (agent, with that nonce) or
    /// announces an agent that has no session yet (agent beacon, no nonce).
    Hello(Hello),
    /// The desired configuration (broker to agent).
    Config(ConfigPush),
    /// What the agent did with a [`Body::Config`] (agent to broker).
    Result(ApplyResult),
    /// Keepalive request; either side may send it.
    Ping {
        /// Echoed in the matching pong.
        id: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The id of the ping this answers.
        id: u64,
    },
    /// The sender is closing the session on purpose.
    Bye {
        /// Why, for logs.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// What the agent sees in the guest (agent to broker, after each session start).
    Facts(GuestFacts),
    /// A refusal that ends or blocks the session (no common version, wrong channel...).
    Error(ErrorReport),
}

impl Body {
    /// The wire name of this body's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Hello(_) => "hello",
            Body::Config(_) => "config",
            Body::Result(_) => "result",
            Body::Ping { .. } => "ping",
            Body::Pong { .. } => "pong",
            Body::Bye { .. } => "bye",
            Body::Facts(_) => "facts",
            Body::Error(_) => "error",
        }
    }
}

/// The hello of either side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the sender speaks. Absent means `[1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<u32>>,
    /// The channel name. The broker says which channel it connected to; the agent says
    /// which channel its device is (it must be the same).
    pub channel: String,
    /// The broker's name for the domain (broker only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The VM's UUID: what the broker knows (broker), or what the guest reads from
    /// `/sys/hypervisor/uuid` (agent). Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Software and version of the sender, for logs (e.g. `xenchan-agent 0.1.0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub software: String,
    /// The configuration the agent has applied (agent only; absent if none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// Which run of the agent process answers (agent only): random, chosen once when the
    /// process starts, the same in all its hellos. Two answers with the same instance
    /// come from a process that still has every message it was sent, so a push still on
    /// its way to it is not lost; a different instance means the agent restarted and lost
    /// whatever was in flight. Absent from agents that predate it (then a broker treats
    /// every answer as possibly coming from a restarted agent). See [`Hello::instance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The longest agent instance a receiver takes into account ([`Hello::instance`]).
pub const MAX_INSTANCE_LEN: usize = 64;

impl Hello {
    /// The agent's instance if it is usable: 1 to [`MAX_INSTANCE_LEN`] ASCII letters,
    /// digits, `-` or `_`. Anything else counts as absent (the decoder never refuses a
    /// hello for it: the field is advisory).
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref().filter(|i| {
            (1..=MAX_INSTANCE_LEN).contains(&i.len())
                && i.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }

    /// A fresh agent instance: 16 lowercase hex digits (64 bits) from `bits`, which the
    /// caller draws at random when the process starts.
    pub fn new_instance(bits: u64) -> String {
        format!("{bits:016x}")
    }
}

/// A generation and the digest of its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The broker's generation counter for the domain's desired configuration.
    pub generation: u64,
    /// The digest of the document of that generation.
    pub digest: Digest,
}

/// The broker's push of a domain's desired configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPush {
    /// Increases every time the desired configuration of the domain changes.
    pub generation: u64,
    /// The digest of `config` (see [`GuestConfig::digest`]); the agent checks it.
    pub digest: Digest,
    /// The document.
    pub config: GuestConfig,
}

/// The agent's answer to a [`ConfigPush`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// The generation this answers.
    pub generation: u64,
    /// The digest of the document that was applied.
    pub digest: Digest,
    /// One entry per configuration item.
    pub items: Vec<ItemResult>,
}

impl ApplyResult {
    /// True when every item was applied or already in place (none failed, none
    /// unsupported).
    pub fn all_ok(&self) -> bool {
        self.items
            .iter()
            .all(|i| matches!(i.status, ItemStatus::Applied | ItemStatus::Unchanged))
    }

    /// True when no item failed. An `unsupported` item is not a failure: the guest has
    /// no way to apply it (no network manager, say), and trying again would not change
    /// that; the guest is as configured as it can be.
    pub fn none_failed(&self) -> bool {
        self.items.iter().all(|i| !i.status.is_failure())
    }
}

/// The outcome of one configuration item (`hostname`, `user:cloud`, `network:eth0`, `dns`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Which item.
    pub item: String,
    /// What happened to it.
    pub status: ItemStatus,
    /// Why, for `failed` and `unsupported`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ItemResult {
    /// An item with no reason attached.
    pub fn new(item: impl Into<String>, status: ItemStatus) -> Self {
        ItemResult {
            item: item.into(),
            status,
            reason: None,
        }
    }

    /// A failed item with its reason.
    pub fn failed(item: impl Into<String>, reason: impl Into<String>) -> Self {
        ItemResult {
            item: item.into(),
            status: ItemStatus::Failed,
            reason: Some(reason.into()),
        }
    }
}

/// The status of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// The item changed the guest.
    Applied,
    /// The guest already matched; nothing was touched.
    Unchanged,
    /// The item could not be applied; the guest keeps its previous state for it.
    Failed,
    /// The agent does not know how to apply this item here.
    Unsupported,
}

impl ItemStatus {
    /// Whether this status is a failure (`failed`; not `unsupported`).
    pub fn is_failure(self) -> bool {
        self == ItemStatus::Failed
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Applied => "applied",
            ItemStatus::Unchanged => "unchanged",
            ItemStatus::Failed => "failed",
            ItemStatus::Unsupported => "unsupported",
        }
    }
}

/// What the agent reports about the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFacts {
    /// Agent software and version.
    pub agent: String,
    /// Operating system (`PRETTY_NAME` of os-release).
    #[serde(default)]
    pub os: String,
    /// Kernel release.
    #[serde(default)]
    pub kernel: String,
    /// The guest's current hostname.
    #[serde(default)]
    pub hostname: String,
    /// The guest's network interfaces.
    #[serde(default)]
    pub interfaces: Vec<InterfaceFacts>,
    /// The guest's ssh host keys (public halves), so that dom0 can print known_hosts
    /// lines and a first ssh needs no trust on first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<HostKeyFacts>,
}

/// One ssh host key of the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyFacts {
    /// `algorithm base64`, as in a known_hosts line (no comment).
    pub key: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// One network interface as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceFacts {
    /// Kernel name (`eth0`).
    pub name: String,
    /// MAC address, lowercase, colon-separated.
    #[serde(default)]
    pub mac: String,
    /// Addresses in CIDR form.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// MTU.
    #[serde(default)]
    pub mtu: u32,
    /// Whether the link is administratively up.
    #[serde(default)]
    pub up: bool,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

/// Why a side refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The two sides share no protocol version.
    NoCommonVersion,
    /// The broker's channel name is not the device the agent opened.
    ChannelMismatch,
    /// The broker's UUID is not the guest's.
    IdentityMismatch,
    /// The pushed document or its digest is wrong.
    BadConfig,
    /// A message the receiver did not expect at this point.
    Unexpected,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(statuses: &[ItemStatus]) -> ApplyResult {
        ApplyResult {
            generation: 1,
            digest: Digest::try_from(format!("sha256:{}", "0".repeat(64))).unwrap(),
            items: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| ItemResult::new(format!("user:u{i}"), *s))
                .collect(),
        }
    }

    #[test]
    fn unsupported_is_neither_ok_nor_a_failure() {
        use ItemStatus::{Applied, Failed, Unchanged, Unsupported};
        let r = result(&[Applied, Unchanged, Unsupported]);
        assert!(r.none_failed());
        assert!(!r.all_ok());
        let r = result(&[Applied, Unsupported, Failed]);
        assert!(!r.none_failed());
        let r = result(&[Applied, Unchanged]);
        assert!(r.none_failed() && r.all_ok());
        assert!(result(&[]).none_failed());
    }
}
