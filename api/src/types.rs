//! The control API's JSON documents (docs/API.md). The server, the [`Client`] and the
//! `xenchan` CLI share these types.
//!
//! [`Client`]: crate::client::Client

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xenchan_protocol::ItemStatus;
use xenchan_protocol::config::{FieldError, GuestConfig};
use xenchan_protocol::message::GuestFacts;

/// Where a domain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainState {
    /// No channel socket (yet): the domain is configured but not running, or not
    /// reachable.
    Pending,
    /// The socket exists; the broker is connecting (or waiting to reconnect).
    Connecting,
    /// Connected; hello sent, waiting for the agent's answer.
    Handshaking,
    /// A configuration was pushed; waiting for its result.
    Pushing,
    /// The agent applied the desired configuration: every item applied, unchanged or
    /// unsupported (an item the guest has no way to apply; see the items).
    Configured,
    /// The agent's last result for the desired configuration has at least one failed
    /// item (`unsupported` items do not count); `last_error` names them. The agent
    /// retries failed items and reports each retry: the state clears when every item is
    /// applied, unchanged or unsupported. Was `failed` before revision 2 of the
    /// protocol (still accepted when read).
    #[serde(alias = "failed")]
    Degraded,
    /// The agent stopped answering (no hello within the deadline, or three missed
    /// pongs).
    Unresponsive,
    /// The agent reported a VM UUID other than the domain's; nothing is pushed.
    IdentityMismatch,
    /// The agent speaks no protocol version the broker speaks; nothing is pushed.
    VersionMismatch,
    /// The agent refused the desired generation as older than the one it applied from
    /// this store's lineage (a restored store, a stale broker); `last_error` names both
    /// generations. Not pushed again until the configuration changes or an operator
    /// forces it (`POST .../push?force=true`).
    StaleGeneration,
    /// Something else went wrong (see `last_error`).
    Error,
    /// Connected to an agent, and no configuration is desired for the domain.
    Idle,
}

impl DomainState {
    /// Every state, in the order above.
    pub const ALL: [DomainState; 12] = [
        DomainState::Pending,
        DomainState::Connecting,
        DomainState::Handshaking,
        DomainState::Pushing,
        DomainState::Configured,
        DomainState::Degraded,
        DomainState::Unresponsive,
        DomainState::IdentityMismatch,
        DomainState::VersionMismatch,
        DomainState::StaleGeneration,
        DomainState::Error,
        DomainState::Idle,
    ];

    /// The wire name (`identity-mismatch`).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Pending => "pending",
            DomainState::Connecting => "connecting",
            DomainState::Handshaking => "handshaking",
            DomainState::Pushing => "pushing",
            DomainState::Configured => "configured",
            DomainState::Degraded => "degraded",
            DomainState::Unresponsive => "unresponsive",
            DomainState::IdentityMismatch => "identity-mismatch",
            DomainState::VersionMismatch => "version-mismatch",
            DomainState::StaleGeneration => "stale-generation",
            DomainState::Error => "error",
            DomainState::Idle => "idle",
        }
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the lifecycle endpoints (`prepare`, `release`) left a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// Prepared: the VM is starting or running.
    Running,
    /// Released: the VM stopped.
    Stopped,
}

impl Lifecycle {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Stopped => "stopped",
        }
    }

    /// Parses the wire name.
    pub fn from_str_opt(s: &str) -> Option<Lifecycle> {
        match s {
            "running" => Some(Lifecycle::Running),
            "stopped" => Some(Lifecycle::Stopped),
            _ => None,
        }
    }
}

/// The last result the agent reported for one configuration item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemView {
    /// `hostname`, `network:<id>`, `dns`, `user:<name>`.
    pub item: String,
    /// What happened to it.
    pub status: ItemStatus,
    /// Why, for `failed` and `unsupported`.
    pub reason: Option<String>,
    /// The generation this result is for.
    pub generation: u64,
}

/// One domain as the API shows it (`GET /v1/domains/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainView {
    /// The domain (socket file stem).
    pub name: String,
    /// The VM UUID the agent must report: the one recorded with `PUT ...?uuid=` or
    /// `prepare`, else the one xenstore gives (`discovery = "xenstore"`).
    pub uuid: Option<String>,
    /// The VM UUID the agent reported in its last hello.
    pub reported_uuid: Option<String>,
    /// Where the domain stands.
    pub state: DomainState,
    /// The generation of the desired configuration (absent: none desired).
    pub desired_generation: Option<u64>,
    /// Its digest.
    pub desired_digest: Option<String>,
    /// The generation the agent last reported as applied.
    pub applied_generation: Option<u64>,
    /// Its digest.
    pub applied_digest: Option<String>,
    /// The last result per item.
    pub items: Vec<ItemView>,
    /// The last error (refused identity, timeouts, agent errors...).
    pub last_error: Option<String>,
    /// What the agent last reported about the guest.
    pub facts: Option<GuestFacts>,
    /// Whether a session to the agent is up right now.
    pub connected: bool,
    /// When the last result arrived (RFC 3339, UTC).
    pub last_result_at: Option<String>,
    /// The desired configuration.
    pub config: Option<GuestConfig>,
    /// Where the lifecycle endpoints left the domain (`null`: never used for it).
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// The channel socket the broker connects to (or listens on), when known.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The Xen domain id the session is attached to (`discovery = "xenstore"`).
    #[serde(default)]
    pub domid: Option<u32>,
    /// Set while the domain has run out of one of its budgets (`[limits]`,
    /// docs/BROKER.md "Budgets"): the broker reads its socket no faster than the budget
    /// refills. `null`: within every budget.
    #[serde(default)]
    pub throttled: Option<Throttled>,
    /// Notification hook runs of this domain dropped since the broker started: past its
    /// own queue bound (`limits.hook_queue_per_domain`), its hooks budget, or as the
    /// domain with the most queued when every queue together was full. Another domain's
    /// flood never counts here.
    #[serde(default)]
    pub hooks_dropped: u64,
}

/// Why a domain is throttled (`DomainView::throttled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttled {
    /// The budget it ran out of: `frames`, `writes`, `pushes` or `hooks`.
    pub budget: String,
    /// Since when (RFC 3339, UTC).
    pub since: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the broker answers.
    pub status: String,
    /// Domains known (configured or with a socket).
    pub domains: u64,
    /// Sessions running (one per socket).
    pub sessions: u64,
    /// Where this broker stands with etcd in cluster mode (`[store] backend = "etcd"`);
    /// absent with the embedded store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// A cluster-mode broker and its etcd cluster (`GET /v1/health`, `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// This broker's name in the cluster (`store.host`).
    pub host: String,
    /// The etcd endpoints it uses.
    pub endpoints: Vec<String>,
    /// Whether it has joined the cluster. A broker started while etcd was unreachable
    /// serves the domains of its local cache and refuses writes (503) until it joins.
    pub joined: bool,
    /// Why it has not joined yet (the reason its 503s give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_joined: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, in one sentence.
    pub error: String,
    /// The configuration field at fault (400 on a config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Every problem found in a refused configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The other domain holding a lease (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl ApiError {
    /// An error with only a message.
    pub fn msg(error: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            path: None,
            errors: Vec::new(),
            domain: None,
        }
    }
}

/// `DELETE /v1/domains/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    /// The domain.
    pub name: String,
    /// Whether a configuration was removed (false: there was none; still a success).
    pub removed: bool,
    /// The leases released (`address 192.0.2.10`, `hostname web1`).
    pub released: Vec<String>,
}

/// The kind of a channel named in a prepare request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// A Xen PV channel (console backend served by QEMU).
    #[default]
    Xen,
    /// A virtio-serial port (KVM).
    Virtio,
}

/// One channel of a domain, as the libvirt hook sees it in the domain's XML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The channel name (`org.xenchan.agent.1`); others than the broker's are ignored.
    pub name: String,
    /// The unix socket QEMU listens on; `null`: the default `<socket_dir>/<name>.sock`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `xen` (default) or `virtio`.
    #[serde(rename = "type", default)]
    pub kind: ChannelKind,
}

/// `POST /v1/domains/{name}/prepare`: what the libvirt hook knows when a VM starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// The VM's UUID, if known; recorded for the domain (lowercase).
    #[serde(default)]
    pub uuid: Option<String>,
    /// The VM's channels.
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
}

/// `POST /v1/domains/{name}/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResult {
    /// The domain.
    pub name: String,
    /// Whether something was released (a running marker or a session); false for an
    /// unknown or already released domain (still a success).
    pub released: bool,
}

/// A role on the control socket (docs/API.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GET calls: domains, events, health, metrics.
    ReadOnly,
    /// Every call.
    Operator,
}

impl Role {
    /// The wire name (`read-only`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of a 403: the role the call needs and who asked. Read as an [`ApiError`] it
/// is the `error` sentence (the other fields are ignored there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forbidden {
    /// What went wrong, in one sentence (names the role and the uid).
    pub error: String,
    /// The role the call needs.
    pub role: Role,
    /// The caller's uid.
    pub uid: u32,
}

/// Who made the API call that caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerView {
    /// The caller's uid (`SO_PEERCRED`).
    pub uid: u32,
    /// Its process id at the time of the call.
    pub pid: Option<i32>,
    /// Its command name (`/proc/<pid>/comm`), when the broker could read it.
    pub comm: Option<String>,
}

/// One entry of the event log (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Its position in the log (grows with every event).
    pub id: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The domain it is about (`null`: the broker itself, e.g. `start`).
    pub domain: Option<String>,
    /// What happened (`config`, `delete`, `prepare`, `release`, `result`, `error`...).
    pub kind: String,
    /// The details.
    pub detail: String,
    /// The API caller that caused it (`null`: the broker's own doing, e.g. a result
    /// from a guest).
    #[serde(default)]
    pub caller: Option<CallerView>,
}

/// `GET /v1/events`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// The events.
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; `null`: this was the last one.
    pub next_cursor: Option<String>,
}

/// `GET /v1/domains` with paging: one page, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPage {
    /// The domains.
    pub domains: Vec<DomainView>,
    /// Pass as `cursor` for the next page (the `x-next-cursor` header); `null`: this was
    /// the last one.
    pub next_cursor: Option<String>,
}

/// `POST /v1/domains/{uuid}/migrate/prepare`: optional body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigratePrepareRequest {
    /// The domain's name on this host (libvirt's); default: the name of its desired
    /// configuration in etcd. Needed when etcd has none.
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer of `POST /v1/domains/{uuid}/migrate/{prepare,complete,cancel}`: where the
/// domain's ownership stands after the call (cluster mode, docs/CLUSTER.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationView {
    /// The VM UUID (lowercase).
    pub uuid: String,
    /// The domain's name on this host, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This broker's host (`[store] host`).
    pub host: String,
    /// The host owning the domain after the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The prepared destination after the call, if a migration is still prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<String>,
    /// Whether the call changed anything (false: it had been done already).
    pub changed: bool,
}

/// One item of `PUT /v1/domains` (the bulk PUT): what `PUT /v1/domains/{name}/config
/// [?uuid=]` takes, in one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkItem {
    /// The domain.
    pub name: String,
    /// The VM UUID to record (the single PUT's `?uuid=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The configuration document (docs/PROTOCOL.md), validated as the single PUT does.
    pub config: serde_json::Value,
}

impl BulkItem {
    /// An item for `config`.
    pub fn new(name: impl Into<String>, uuid: Option<String>, config: &GuestConfig) -> BulkItem {
        BulkItem {
            name: name.into(),
            uuid,
            config: serde_json::to_value(config).expect("a GuestConfig always serialises"),
        }
    }
}

/// What a bulk PUT did with one of its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BulkOutcome {
    /// The domain had no configuration (a single PUT's 201).
    Created,
    /// A new generation replaced the configuration.
    Updated,
    /// The same document again: nothing changed, nothing is pushed.
    Unchanged,
}

/// The answer for one item of a bulk PUT: what the single PUT of it would have answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkItemResult {
    /// The item's position in the request (from 0).
    pub index: usize,
    /// The domain (`null` when the item named none usable).
    pub name: Option<String>,
    /// The VM UUID given with it (lowercase), if any.
    #[serde(default)]
    pub uuid: Option<String>,
    /// The status the single PUT would have answered: 201, 200, or an error status
    /// (docs/API.md, "Errors").
    pub status: u16,
    /// On success: created, updated or unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<BulkOutcome>,
    /// On success: the desired generation now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// On success: the digest of the desired configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// On failure: what went wrong, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On failure: the field at fault (as in [`ApiError::path`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// On failure: every problem of a refused configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// On failure: the other domain (a lease or UUID held elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl BulkItemResult {
    /// Whether the item's configuration is stored (2xx).
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `PUT /v1/domains`: one result per item, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    /// Items stored (created, updated or unchanged).
    pub succeeded: usize,
    /// Items refused.
    pub failed: usize,
    /// Per item.
    pub results: Vec<BulkItemResult>,
}
