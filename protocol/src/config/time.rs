//! The `time` item kind: NTP servers for the guest's own time service and the time zone.
//!
//! ```json
//! { "time": { "ntp": { "servers": ["ntp1.example.com", "192.0.2.123"],
//!                      "pools": ["2.debian.pool.ntp.org"] },
//!             "timezone": "Europe/Berlin" } }
//! ```
//!
//! Items: `time:ntp` and `time:timezone`. Whether the zone exists is checked in the guest
//! (its `/usr/share/zoneinfo`); here only its spelling.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Errors, Hostname, check_len};

/// Servers (and pools) per document.
pub const MAX_NTP_SOURCES: usize = 16;
/// Longest zone name (the longest in tzdata is 32).
pub const MAX_TZ: usize = 64;

/// Time settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// NTP sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Ntp>,
    /// IANA time zone (`Europe/Berlin`, `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<Timezone>,
}

/// NTP sources, cloud-init's `ntp` shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    /// Single servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<NtpSource>,
    /// Pool names (each resolving to several servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<NtpSource>,
}

/// An NTP server: a host name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NtpSource(String);

impl NtpSource {
    /// The name or address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NtpSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NtpSource(ip.to_string()));
        }
        Hostname::from_str(s)
            .map(|h| NtpSource(h.as_str().to_ascii_lowercase()))
            .map_err(|e| format!("not an IP address, and {e}"))
    }
}

impl TryFrom<String> for NtpSource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<NtpSource> for String {
    fn from(v: NtpSource) -> String {
        v.0
    }
}

impl fmt::Display for NtpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IANA zone name: `Area/Location` components of letters, digits, `_`, `-`, `+`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timezone(String);

impl Timezone {
    /// The zone name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Timezone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TZ
            && s.split('/').all(|c| {
                !c.is_empty()
                    && !c.starts_with(['.', '-'])
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '+'))
            });
        if ok {
            Ok(Timezone(s.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a time zone name (IANA form such as `Europe/Berlin` or `UTC`)",
                s.escape_debug()
            ))
        }
    }
}

impl TryFrom<String> for Timezone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Timezone> for String {
    fn from(v: Timezone) -> String {
        v.0
    }
}

impl fmt::Display for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Time {
    /// The items this part asks for: `time:ntp`, `time:timezone`.
    pub fn items(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ntp.is_some() {
            out.push("time:ntp".to_string());
        }
        if self.timezone.is_some() {
            out.push("time:timezone".to_string());
        }
        out
    }
}

/// Checks the `time` part.
pub(super) fn validate(time: &Time, errs: &mut Errors) {
    if time.ntp.is_none() && time.timezone.is_none() {
        errs.push(
            "time",
            "neither ntp nor timezone is given (leave `time` out instead)",
        );
    }
    if let Some(ntp) = &time.ntp {
        let n = ntp.servers.len() + ntp.pools.len();
        if n == 0 {
            errs.push("time.ntp", "no servers and no pools");
        }
        check_len(errs, "time.ntp", n, MAX_NTP_SOURCES, "servers and pools");
        let mut seen = std::collections::BTreeMap::new();
        for (field, list) in [("servers", &ntp.servers), ("pools", &ntp.pools)] {
            for (i, s) in list.iter().enumerate() {
                let path = format!("time.ntp.{field}[{i}]");
                if let Some(prev) = seen.insert(s, path.clone()) {
                    errs.push(path, format!("`{s}` is already given at {prev}"));
                }
            }
        }
    }
}

/// The `time` item in the schema table ([`super::schema::TABLE`]).
pub(crate) const KIND: super::schema::Kind = {
    use super::schema::{Kind, Node, field};
    Kind {
        name: "time",
        versions: &[Node::Object(&[
            field(
                "ntp",
                Node::Object(&[field("servers", Node::Leaf), field("pools", Node::Leaf)]),
            ),
            field("timezone", Node::Leaf),
        ])],
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_sources() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert!(ok.parse::<Timezone>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../etc/shadow",
            "Europe/../../x",
            "/UTC",
            "Europe//Berlin",
            "Europe/Berlin ",
            ".hidden",
        ] {
            assert!(bad.parse::<Timezone>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "NTP1.Example.com".parse::<NtpSource>().unwrap().as_str(),
            "ntp1.example.com"
        );
        assert_eq!(
            "2001:DB8::1".parse::<NtpSource>().unwrap().as_str(),
            "2001:db8::1"
        );
        assert!(
            "ntp server"
                .parse::<NtpSource>()
                .unwrap_err()
                .contains("not an IP address")
        );
    }
}
