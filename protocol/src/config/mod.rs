//! The guest configuration document (docs/PROTOCOL.md, "The configuration document").
//!
//! Its shape follows cloud-init where it fits, so users can reuse what they have: the
//! `network` part is netplan / cloud-init network-config version 2 (`ethernets` matched by
//! MAC), `users` takes cloud-config's `ssh_authorized_keys`.
//!
//! ```json
//! {
//!   "hostname": "web1.example.com",
//!   "network": {
//!     "version": 2,
//!     "ethernets": {
//!       "eth0": {
//!         "match": { "macaddress": "00:16:3e:12:34:56" },
//!         "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
//!         "routes": [{ "to": "default", "via": "192.0.2.1", "metric": 100 }],
//!         "nameservers": { "addresses": ["192.0.2.53"], "search": ["example.com"] },
//!         "mtu": 1500
//!       }
//!     }
//!   },
//!   "users": [{ "name": "cloud", "ssh_authorized_keys": ["ssh-ed25519 AAAA... alice"] }]
//! }
//! ```
//!
//! Parsing rejects unknown fields and bad values with the path of the field
//! (`network.ethernets.eth0.addresses[1]`); [`GuestConfig::validate`] then checks the rules
//! that span fields and reports every violation, each with its path.

pub mod accounts;
mod fields;
pub mod run;
pub mod schema;
pub mod time;
pub mod write_files;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub use schema::{Capabilities, Filtered};

pub use accounts::{GroupName, PasswordHash, Refused, ShellPath, SudoRule};
pub use fields::{
    Cidr, DomainName, Hostname, InterfaceId, MAX_SSH_KEY_LEN, MIN_RSA_BITS, MacAddr, RouteTarget,
    SshKey, UserName,
};
pub use run::RunPolicy;
pub use time::{Ntp, NtpSource, Time, Timezone};
pub use write_files::{ContentEncoding, FileMode, FileOwner, FilePath, WriteFile};

/// Bounds on list sizes; a document is also bounded by the frame limit.
pub mod limits {
    /// Interfaces per document.
    pub const INTERFACES: usize = 32;
    /// Addresses per interface.
    pub const ADDRESSES: usize = 64;
    /// Routes per interface.
    pub const ROUTES: usize = 128;
    /// DNS servers per interface.
    pub const NAMESERVERS: usize = 8;
    /// Search domains per interface.
    pub const SEARCH: usize = 32;
    /// Users per document.
    pub const USERS: usize = 64;
    /// Keys per user.
    pub const KEYS: usize = 256;
    /// Smallest MTU (IPv4 minimum).
    pub const MTU_MIN: u32 = 68;
    /// Smallest MTU of a link carrying IPv6.
    pub const MTU_MIN_V6: u32 = 1280;
    /// Largest MTU.
    pub const MTU_MAX: u32 = 65535;
}

/// The configuration of one guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Host name (FQDN allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// Network configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Users and their ssh keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// NTP servers and time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Files to write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
}

/// Network configuration, netplan version 2 shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Must be 2.
    pub version: u8,
    /// cloud-init / netplan `renderer`: which manager the author prefers. A hint: the
    /// guest uses it when that manager is enabled there, its detected manager otherwise
    /// (docs/NETWORK.md, "cloud-init v2 compatibility").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renderer: Option<RendererHint>,
    /// Ethernet interfaces by label.
    #[serde(default)]
    pub ethernets: BTreeMap<InterfaceId, Ethernet>,
}

/// The values of netplan's `renderer` key that a guest can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RendererHint {
    /// systemd-networkd.
    #[serde(rename = "networkd")]
    Networkd,
    /// NetworkManager.
    NetworkManager,
}

impl fmt::Display for RendererHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RendererHint::Networkd => "networkd",
            RendererHint::NetworkManager => "NetworkManager",
        })
    }
}

/// One ethernet interface, chosen by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ethernet {
    /// Which interface this is.
    #[serde(rename = "match")]
    pub matches: Match,
    /// DHCP for IPv4.
    #[serde(default)]
    pub dhcp4: bool,
    /// DHCP (or SLAAC-driven DHCPv6) for IPv6.
    #[serde(default)]
    pub dhcp6: bool,
    /// Static addresses in CIDR form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// Routes, including default routes (`to: default`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// cloud-init v2 (deprecated in netplan) IPv4 default gateway: the same as a route
    /// `{to: default, via: <gateway4>}`, see [`Ethernet::all_routes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<Ipv4Addr>,
    /// cloud-init v2 IPv6 default gateway, like `gateway4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// DNS servers and search domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
    /// Link MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Ethernet {
    /// `routes` followed by the default routes `gateway4` and `gateway6` stand for, which
    /// is what every renderer and the live applier configure. Validation refuses a
    /// gateway next to an explicit default route of its family, so nothing is lost or
    /// doubled.
    pub fn all_routes(&self) -> Vec<Route> {
        let mut all = self.routes.clone();
        let gateways = [self.gateway4.map(IpAddr::V4), self.gateway6.map(IpAddr::V6)];
        all.extend(gateways.into_iter().flatten().map(|via| Route {
            to: RouteTarget::Default,
            via,
            metric: None,
        }));
        all
    }
}

/// How an interface is recognised: by MAC only, never by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The interface's MAC address.
    pub macaddress: MacAddr,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination.
    pub to: RouteTarget,
    /// Gateway.
    pub via: IpAddr,
    /// Route metric (lower wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameservers {
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<DomainName>,
}

/// A user's ssh access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Local user name.
    pub name: UserName,
    /// Keys for the managed block of `~name/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<SshKey>,
    /// Create the user if missing (otherwise a missing user is a failed item).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
    /// Supplementary groups (users v2); missing groups are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupName>,
    /// Login shell (users v2); it must exist in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<ShellPath>,
    /// sudoers(5) rule for the user, `ALL=(ALL) NOPASSWD:ALL` (users v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<SudoRule>,
    /// crypt(3) password hash (users v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_passwd: Option<PasswordHash>,
    /// Lock the password (`!` before the hash; ssh keys still work) (users v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
    /// Always refused at validation; here so the refusal names the field and says why.
    #[serde(default, skip_serializing)]
    pub plain_text_passwd: Option<accounts::Refused>,
    /// Every push, or once per VM instance (users v2).
    #[serde(default, skip_serializing_if = "RunPolicy::is_always")]
    pub run: RunPolicy,
}

/// One problem in a document, at a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where (`network.ethernets.eth0.mtu`); `.` for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A document that was refused, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    /// The problems, in document order; never empty.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// The path of the first problem.
    pub fn first_path(&self) -> &str {
        self.errors.first().map_or(".", |e| e.path.as_str())
    }
}

/// The SHA-256 of a document's canonical form, as `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of bytes that are already a canonical form ([`GuestConfig::canonical_json`]):
    /// lets a holder of stored canonical bytes compare without parsing them.
    pub fn of_canonical(canonical: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(canonical))))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Digest(s))
        } else {
            Err("digest must be `sha256:` and 64 lowercase hex digits".into())
        }
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl GuestConfig {
    /// Parses and validates a JSON document strictly (the control API's parse): every
    /// field this build does not know is reported, all in one answer, then bad values
    /// with their path, then the rules that span fields.
    pub fn from_json(bytes: &[u8]) -> Result<GuestConfig, ConfigError> {
        Self::from_document(parse_value(bytes)?)
    }

    /// [`GuestConfig::from_json`] for a document already parsed as JSON (one item of the
    /// control API's bulk PUT, parsed with its array): the same checks, without parsing
    /// or serialising the document again.
    pub fn from_document(value: Value) -> Result<GuestConfig, ConfigError> {
        if !value.is_object() {
            return Err(ConfigError::one(".", "the document must be a JSON object"));
        }
        let filtered = schema::filter(
            &value,
            &Capabilities::ours(),
            schema::TABLE,
            concat!("xenchan ", env!("CARGO_PKG_VERSION")),
        );
        if !filtered.dropped.is_empty() {
            return Err(ConfigError {
                errors: filtered.dropped,
            });
        }
        Self::from_value(value)
    }

    /// Parses and validates a document already read as JSON, without the table check
    /// (unknown fields are still refused, the first one only).
    pub fn from_value(value: Value) -> Result<GuestConfig, ConfigError> {
        if !value.is_object() {
            return Err(ConfigError::one(".", "the document must be a JSON object"));
        }
        let cfg: GuestConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let path = if path.is_empty() || path == "?" {
                ".".to_string()
            } else {
                path
            };
            ConfigError::one(path, json_error_message(&inner))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Decodes a document the way an agent does (tolerant): fields and items this build
    /// does not know are dropped and named in [`Tolerant::unsupported`], the rest is
    /// parsed strictly. Fails only when what is left has a bad value or breaks a rule.
    pub fn decode_tolerant(doc: &Value, peer: &str) -> Result<Tolerant, ConfigError> {
        Self::decode_tolerant_with(doc, &Capabilities::ours(), schema::TABLE, peer)
    }

    /// [`GuestConfig::decode_tolerant`] against a given table and capabilities (tests add
    /// kinds of their own).
    pub fn decode_tolerant_with(
        doc: &Value,
        caps: &Capabilities,
        table: &[schema::Kind],
        peer: &str,
    ) -> Result<Tolerant, ConfigError> {
        let filtered = schema::filter(doc, caps, table, peer);
        let config = Self::from_value(filtered.document)?;
        Ok(Tolerant {
            config,
            unsupported: filtered.dropped,
        })
    }

    /// What a peer with `caps` gets of this document (the broker's side): the filtered
    /// document, its digest (the one the agent checks and reports as applied) and one
    /// `unsupported` entry per item or field left out, with the reason.
    ///
    /// # Errors
    /// Only when `self` was built by hand and breaks a rule ([`GuestConfig::validate`]).
    pub fn for_peer(&self, caps: &Capabilities, peer: &str) -> Result<ForPeer, ConfigError> {
        let lowered;
        let mut doc = self;
        // A peer of network v1 has no `gateway4`/`gateway6`, but a default route means the
        // same: translate rather than drop them.
        if caps.version("network").is_some_and(|v| v < 2) {
            lowered = self.with_gateways_as_routes();
            doc = &lowered;
        }
        let value = serde_json::to_value(doc).expect("a GuestConfig always serialises");
        let filtered = schema::filter(&value, caps, schema::TABLE, peer);
        // Dropping fields from a valid document leaves a valid one: every field a version
        // adds is optional, and the rules that span fields only get fewer inputs.
        let config = Self::from_value(filtered.document)?;
        let digest = config.digest();
        Ok(ForPeer {
            config,
            digest,
            unsupported: filtered.dropped,
        })
    }

    /// The same document with every `gateway4`/`gateway6` turned into the default route it
    /// stands for ([`Ethernet::all_routes`]).
    #[must_use]
    pub fn with_gateways_as_routes(&self) -> GuestConfig {
        let mut c = self.clone();
        if let Some(net) = &mut c.network {
            for eth in net.ethernets.values_mut() {
                eth.routes = eth.all_routes();
                eth.gateway4 = None;
                eth.gateway6 = None;
            }
        }
        c
    }

    /// The canonical form: compact JSON, fields in a fixed order, interfaces sorted by
    /// label, every value in its canonical text. Two documents that mean the same have the
    /// same canonical form.
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a GuestConfig always serialises")
    }

    /// The digest of the canonical form.
    pub fn digest(&self) -> Digest {
        Digest::of_canonical(&self.canonical_json())
    }

    /// Checks the rules that span fields; reports every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Errors::default();
        if let Some(net) = &self.network {
            validate_network(net, &mut errs);
        }
        validate_users(&self.users, &mut errs);
        if let Some(time) = &self.time {
            time::validate(time, &mut errs);
        }
        write_files::validate(&self.write_files, &mut errs);
        errs.finish()
    }

    /// The configuration items this document asks for, in a stable order, as the agent
    /// reports them: `hostname`, `network:<id>`..., `dns`, `user:<name>`...
    pub fn items(&self) -> Vec<String> {
        let mut items = Vec::new();
        if self.hostname.is_some() {
            items.push("hostname".to_string());
        }
        if let Some(net) = &self.network {
            items.extend(net.ethernets.keys().map(|id| format!("network:{id}")));
            if net.ethernets.values().any(|e| e.nameservers.is_some()) {
                items.push("dns".to_string());
            }
        }
        items.extend(self.users.iter().map(|u| format!("user:{}", u.name)));
        items.extend(self.time.iter().flat_map(Time::items));
        items.extend(self.write_files.iter().map(WriteFile::item));
        items
    }
}

/// A document decoded tolerantly ([`GuestConfig::decode_tolerant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tolerant {
    /// What this build understood of the document.
    pub config: GuestConfig,
    /// Every item or field left out, with its path and why.
    pub unsupported: Vec<FieldError>,
}

/// A document as filtered for one peer ([`GuestConfig::for_peer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForPeer {
    /// The document to send.
    pub config: GuestConfig,
    /// Its digest: what the peer checks, and reports as applied.
    pub digest: Digest,
    /// Every item or field left out, with its path and why.
    pub unsupported: Vec<FieldError>,
}

impl ForPeer {
    /// The left-out parts as `unsupported` item results, as the broker records them.
    pub fn unsupported_items(&self) -> Vec<crate::message::ItemResult> {
        self.unsupported
            .iter()
            .map(|e| crate::message::ItemResult {
                item: e.path.clone(),
                status: crate::message::ItemStatus::Unsupported,
                reason: Some(e.message.clone()),
            })
            .collect()
    }
}

/// Reads a document as JSON: an object, with syntax errors named.
fn parse_value(bytes: &[u8]) -> Result<Value, ConfigError> {
    // serde accepts a JSON array for a struct (fields by position); a document is an
    // object, always.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ConfigError::one(".", "the document must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ConfigError::one(".", json_error_message(&e)))
}

fn json_error_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let msg = e.to_string();
    // serde_json appends " at line L column C"; keep it only for syntax errors where it
    // is the useful part.
    match e.classify() {
        Category::Syntax | Category::Eof => msg,
        Category::Data | Category::Io => match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        },
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { errors: self.0 })
        }
    }
}

fn check_len(errs: &mut Errors, path: &str, len: usize, max: usize, what: &str) {
    if len > max {
        errs.push(path, format!("{len} {what} (at most {max})"));
    }
}

fn validate_network(net: &Network, errs: &mut Errors) {
    if net.version != 2 {
        errs.push(
            "network.version",
            format!("version {} is not supported (only 2)", net.version),
        );
    }
    check_len(
        errs,
        "network.ethernets",
        net.ethernets.len(),
        limits::INTERFACES,
        "interfaces",
    );
    let mut macs: BTreeMap<&MacAddr, &InterfaceId> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (id, eth) in &net.ethernets {
        let base = format!("network.ethernets.{id}");
        if let Some(other) = macs.insert(&eth.matches.macaddress, id) {
            errs.push(
                format!("{base}.match.macaddress"),
                format!(
                    "MAC {} is also matched by interface `{other}`",
                    eth.matches.macaddress
                ),
            );
        }
        check_len(
            errs,
            &format!("{base}.addresses"),
            eth.addresses.len(),
            limits::ADDRESSES,
            "addresses",
        );
        for (i, a) in eth.addresses.iter().enumerate() {
            let path = format!("{base}.addresses[{i}]");
            if let Some(prev) = addrs.insert(a.0.addr(), path.clone()) {
                errs.push(
                    &path,
                    format!("address {} is already given at {prev}", a.0.addr()),
                );
            }
            if a.0.addr().is_multicast() || a.0.addr().is_unspecified() {
                errs.push(&path, format!("{a} is not a unicast address"));
            }
        }
        check_len(
            errs,
            &format!("{base}.routes"),
            eth.routes.len(),
            limits::ROUTES,
            "routes",
        );
        for (i, r) in eth.routes.iter().enumerate() {
            if let RouteTarget::Net(n) = r.to
                && !fields::same_family(n.addr(), r.via)
            {
                errs.push(
                    format!("{base}.routes[{i}].via"),
                    format!("gateway {} is not of the family of {n}", r.via),
                );
            }
        }
        validate_gateways(eth, &base, errs);
        if let Some(ns) = &eth.nameservers {
            check_len(
                errs,
                &format!("{base}.nameservers.addresses"),
                ns.addresses.len(),
                limits::NAMESERVERS,
                "servers",
            );
            check_len(
                errs,
                &format!("{base}.nameservers.search"),
                ns.search.len(),
                limits::SEARCH,
                "search domains",
            );
        }
        if let Some(mtu) = eth.mtu {
            let has_v6 = eth.dhcp6 || eth.addresses.iter().any(|a| a.0.addr().is_ipv6());
            let min = if has_v6 {
                limits::MTU_MIN_V6
            } else {
                limits::MTU_MIN
            };
            if !(min..=limits::MTU_MAX).contains(&mtu) {
                let why = if has_v6 {
                    " (the link carries IPv6)"
                } else {
                    ""
                };
                errs.push(
                    format!("{base}.mtu"),
                    format!("MTU {mtu} is out of range {min}-{}{why}", limits::MTU_MAX),
                );
            }
        }
    }
}

/// `gateway4`/`gateway6` are default routes; next to an explicit default route of the
/// same family one of the two would be lost, so both paths are named.
fn validate_gateways(eth: &Ethernet, base: &str, errs: &mut Errors) {
    let gateways = [
        ("gateway4", eth.gateway4.map(IpAddr::V4)),
        ("gateway6", eth.gateway6.map(IpAddr::V6)),
    ];
    for (key, gw) in gateways {
        let Some(gw) = gw else { continue };
        for (i, r) in eth.routes.iter().enumerate() {
            let default_of_family = match r.to {
                RouteTarget::Default => fields::same_family(r.via, gw),
                RouteTarget::Net(n) => n.prefix_len() == 0 && fields::same_family(n.addr(), gw),
            };
            if default_of_family {
                errs.push(
                    format!("{base}.{key}"),
                    format!(
                        "gateway {gw} conflicts with the default route at {base}.routes[{i}] \
                         (via {}): keep one of them",
                        r.via
                    ),
                );
            }
        }
    }
}

fn validate_users(users: &[User], errs: &mut Errors) {
    check_len(errs, "users", users.len(), limits::USERS, "users");
    let mut names = BTreeSet::new();
    for (i, u) in users.iter().enumerate() {
        if !names.insert(&u.name) {
            errs.push(
                format!("users[{i}].name"),
                format!("user `{}` is listed twice", u.name),
            );
        }
        check_len(
            errs,
            &format!("users[{i}].ssh_authorized_keys"),
            u.ssh_authorized_keys.len(),
            limits::KEYS,
            "keys",
        );
        let mut seen = BTreeSet::new();
        for (k, key) in u.ssh_authorized_keys.iter().enumerate() {
            if !seen.insert(key.material()) {
                errs.push(
                    format!("users[{i}].ssh_authorized_keys[{k}]"),
                    "the same key is listed twice",
                );
            }
        }
        accounts::validate_user(i, u, errs);
    }
}

#[cfg(test)]
mod tests;
