//! Protocol v1 messages.
//!
//! Every message is an [`Envelope`]: the frame marker and protocol version (`xenchan`), the
//! sending side (`from`), the session nonce once a session exists, and a typed [`Body`].
//! On the wire it is one JSON object on one line, and it always begins with
//! [`FRAME_MARKER`] so a receiver can find the start of a message after noise.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::{Capabilities, ConfigError, Digest, FieldError, GuestConfig};
use crate::lineage::Lineage;
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
    /// The item kinds the agent can apply and the schema version of each (agent only;
    /// added in protocol revision 2). Absent means [`Capabilities::v1`]; see
    /// [`Hello::capabilities`]. Entries whose version is not a number are ignored.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_capabilities"
    )]
    pub capabilities: Option<Capabilities>,
}

/// Reads `capabilities` keeping every entry whose version is a `u32` and ignoring the
/// rest: the field is advisory, a malformed entry must not cost the whole hello.
fn lenient_capabilities<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Capabilities>, D::Error> {
    let raw = Option::<std::collections::BTreeMap<String, Value>>::deserialize(d)?;
    Ok(raw.map(|m| {
        Capabilities(
            m.into_iter()
                .filter_map(|(k, v)| Some((k, u32::try_from(v.as_u64()?).ok()?)))
                .collect(),
        )
    }))
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

    /// What the agent can apply: its `capabilities`, or the revision-1 item set when it
    /// sent none.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities.clone().unwrap_or_else(Capabilities::v1)
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
    /// The digest of the document of that generation, as the agent received it (after
    /// the broker filtered it for the agent's capabilities).
    pub digest: Digest,
    /// The store that issued that generation (revision 2); absent when the push carried
    /// none (a revision-1 broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// The broker's push of a domain's desired configuration.
///
/// Decoding is tolerant of the document (see [`PushDecode`]): a frame whose `config` has
/// fields this build does not know, or a bad value, still decodes, so the agent can answer
/// it. Only the envelope fields (`generation`, `digest`, `lineage`, `force`) must be valid.
/// Equality compares what is on the wire, not what decoding left out (`decode`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "WirePush")]
pub struct ConfigPush {
    /// Increases every time the desired configuration of the domain changes.
    pub generation: u64,
    /// The digest of `config` (see [`GuestConfig::digest`]); the agent checks it.
    pub digest: Digest,
    /// The store that issued this generation (revision 2). Generations are comparable
    /// only within one lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The operator's explicit override: apply even if older than what is applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// The document, as far as this build understood it (empty when it could not be
    /// decoded: see `decode`).
    pub config: GuestConfig,
    /// What decoding the document left out or refused; empty for a push built locally.
    #[serde(skip)]
    pub decode: PushDecode,
}

impl PartialEq for ConfigPush {
    fn eq(&self, other: &Self) -> bool {
        (
            self.generation,
            &self.digest,
            &self.lineage,
            self.force,
            &self.config,
        ) == (
            other.generation,
            &other.digest,
            &other.lineage,
            other.force,
            &other.config,
        )
    }
}

impl ConfigPush {
    /// A push of `config` as generation `generation`, with its digest, no lineage.
    pub fn new(generation: u64, config: GuestConfig) -> Self {
        ConfigPush {
            generation,
            digest: config.digest(),
            lineage: None,
            force: false,
            config,
            decode: PushDecode::default(),
        }
    }

    /// The same push issued by the store `lineage`.
    #[must_use]
    pub fn with_lineage(mut self, lineage: Lineage) -> Self {
        self.lineage = Some(lineage);
        self
    }

    /// The same push marked as the operator's override of the generation order.
    #[must_use]
    pub fn forced(mut self) -> Self {
        self.force = true;
        self
    }

    /// The generation, digest and lineage an agent records once it applied this push.
    pub fn applied(&self) -> Applied {
        Applied {
            generation: self.generation,
            digest: self.digest.clone(),
            lineage: self.lineage.clone(),
        }
    }
}

/// What the receiver of a [`ConfigPush`] could not take of its document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushDecode {
    /// Items and fields this build does not know (path and reason): dropped, to be
    /// answered as `unsupported`; the rest of the document is in `config`.
    pub unsupported: Vec<FieldError>,
    /// The document could not be decoded (a bad value, broken rules): nothing of it may
    /// be applied, the answer is an `error{bad-config}` naming the paths.
    pub error: Option<ConfigError>,
}

/// A config frame as it is on the wire, before the document is decoded.
#[derive(Deserialize)]
struct WirePush {
    generation: u64,
    digest: Digest,
    #[serde(default)]
    lineage: Option<Lineage>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    config: Value,
}

impl From<WirePush> for ConfigPush {
    fn from(w: WirePush) -> Self {
        let peer = concat!("this agent (xenchan ", env!("CARGO_PKG_VERSION"), ")");
        let (config, decode) = match GuestConfig::decode_tolerant(&w.config, peer) {
            Ok(t) => (
                t.config,
                PushDecode {
                    unsupported: t.unsupported,
                    error: None,
                },
            ),
            Err(e) => (
                GuestConfig::default(),
                PushDecode {
                    unsupported: Vec::new(),
                    error: Some(e),
                },
            ),
        };
        ConfigPush {
            generation: w.generation,
            digest: w.digest,
            lineage: w.lineage,
            force: w.force,
            config,
            decode,
        }
    }
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

/// Why a side refused. A code this build does not know decodes as
/// [`ErrorCode::Other`], so a newer peer's refusal is still seen, with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The two sides share no protocol version.
    NoCommonVersion,
    /// The broker's channel name is not the device the agent opened.
    ChannelMismatch,
    /// The broker's UUID is not the guest's.
    IdentityMismatch,
    /// The pushed document or its digest is wrong; the message names the field paths.
    BadConfig,
    /// The push is an older generation of the lineage the agent applied, without
    /// `force` (revision 2); the message names both generations.
    StaleGeneration,
    /// A message the receiver did not expect at this point.
    Unexpected,
    /// A code of a newer revision.
    Other,
}

impl ErrorCode {
    const ALL: [ErrorCode; 7] = [
        ErrorCode::NoCommonVersion,
        ErrorCode::ChannelMismatch,
        ErrorCode::IdentityMismatch,
        ErrorCode::BadConfig,
        ErrorCode::StaleGeneration,
        ErrorCode::Unexpected,
        ErrorCode::Other,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoCommonVersion => "no-common-version",
            ErrorCode::ChannelMismatch => "channel-mismatch",
            ErrorCode::IdentityMismatch => "identity-mismatch",
            ErrorCode::BadConfig => "bad-config",
            ErrorCode::StaleGeneration => "stale-generation",
            ErrorCode::Unexpected => "unexpected",
            ErrorCode::Other => "other",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Other))
    }
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
    fn capabilities_keep_the_usable_entries_and_default_to_v1() {
        let h: Hello = serde_json::from_str(
            r#"{"channel":"c","capabilities":{"users":2,"x":"bad","y":-1,"z":4294967296}}"#,
        )
        .unwrap();
        assert_eq!(h.capabilities(), Capabilities::default().with("users", 2));
        let h: Hello = serde_json::from_str(r#"{"channel":"c"}"#).unwrap();
        assert_eq!(h.capabilities(), Capabilities::v1());
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
