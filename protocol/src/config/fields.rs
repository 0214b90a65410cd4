//! Field types of the configuration document. Each one parses strictly, explains a
//! refusal in words an operator understands, and serialises to one canonical text so that
//! equal configurations have equal digests.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, PublicKey, public::KeyData};

/// Declares a string newtype that is parsed with `$parse` and serialised as its canonical
/// text, through serde's `try_from`/`into`.
macro_rules! text_field {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The canonical text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_field!(
    /// A host name: RFC 1123 labels, FQDN allowed, at most 253 characters, no trailing dot.
    Hostname
);
text_field!(
    /// A DNS search domain (same rules as [`Hostname`]).
    DomainName
);
text_field!(
    /// A unicast MAC address, lowercase and colon-separated.
    MacAddr
);
text_field!(
    /// A local user name as Debian's `useradd` accepts by default.
    UserName
);
text_field!(
    /// An interface label in the document (`eth0`, `lan`...): letters, digits, `_`, `-`.
    InterfaceId
);
text_field!(
    /// An OpenSSH public key line, `type base64 [comment]`, re-serialised by a real parser.
    SshKey
);

fn check_dns_name(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > 253 {
        return Err(format!(
            "{what} is {} characters long (at most 253)",
            s.len()
        ));
    }
    if s.ends_with('.') {
        return Err(format!("{what} `{s}` ends with a dot"));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(format!("{what} `{s}` has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!(
                "{what} `{s}` has a label of {} characters (at most 63)",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{what} `{}` contains {bad:?} (only letters, digits, `-` and `.` are allowed)",
                s.escape_debug()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{what} `{s}` has a label that starts or ends with `-`"
            ));
        }
    }
    Ok(())
}

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_dns_name(s, "hostname")?;
        if s.split('.')
            .next_back()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "hostname `{s}` ends in an all-numeric label (it would read as an address)"
            ));
        }
        Ok(Hostname(s.to_owned()))
    }
}

impl FromStr for DomainName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_dns_name(s, "domain name")?;
        Ok(DomainName(s.to_ascii_lowercase()))
    }
}

impl Hostname {
    /// The first label (`web1` of `web1.example.com`).
    pub fn short(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{}` is not a MAC address (expected six hex pairs separated by `:`, e.g. 00:16:3e:12:34:56)",
                s.escape_debug()
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let mut octets = [0u8; 6];
        for (o, p) in octets.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if octets[0] & 1 == 1 {
            return Err(format!(
                "`{s}` is a multicast MAC address; an interface has a unicast one"
            ));
        }
        if octets == [0; 6] {
            return Err(format!("`{s}` is the all-zero MAC address"));
        }
        Ok(MacAddr(s.to_ascii_lowercase()))
    }
}

impl MacAddr {
    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        let mut o = [0u8; 6];
        for (i, p) in self.0.split(':').enumerate() {
            o[i] = u8::from_str_radix(p, 16).unwrap_or_default();
        }
        o
    }

    /// Whether this is a Xen vif MAC (the 00:16:3e prefix).
    pub fn is_xen(&self) -> bool {
        self.0.starts_with("00:16:3e:")
    }
}

impl FromStr for UserName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_first = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if s.is_empty() || s.len() > 32 || !ok_first || !ok_rest {
            return Err(format!(
                "`{}` is not a valid user name (1-32 characters: lowercase letters, digits, `_`, `-`, starting with a letter or `_`)",
                s.escape_debug()
            ));
        }
        Ok(UserName(s.to_owned()))
    }
}

impl FromStr for InterfaceId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(InterfaceId(s.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a valid interface id (1-32 letters, digits, `_` or `-`)",
                s.escape_debug()
            ))
        }
    }
}

/// Key lines are refused above this size (a 16384-bit RSA key is about 2.8 KiB).
pub const MAX_SSH_KEY_LEN: usize = 8 * 1024;
/// RSA keys below this size are refused (OpenSSH refuses them too since 8.x defaults).
pub const MIN_RSA_BITS: usize = 2048;

impl FromStr for SshKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > MAX_SSH_KEY_LEN {
            return Err(format!(
                "ssh key is {} bytes long (at most {MAX_SSH_KEY_LEN})",
                s.len()
            ));
        }
        if s.contains(['\n', '\r', '\0']) {
            return Err("ssh key contains a line break or NUL: one key per entry".into());
        }
        let trimmed = s.trim();
        let first = trimmed.split_ascii_whitespace().next().unwrap_or("");
        if first.is_empty() {
            return Err("ssh key is empty".into());
        }
        let key = PublicKey::from_openssh(trimmed).map_err(|e| {
            if Algorithm::new(first).is_err() || first.contains(['=', '"', ',']) {
                format!(
                    "ssh key must start with its type (e.g. ssh-ed25519); `{}` is not a key type (options such as command= are not accepted)",
                    first.escape_debug()
                )
            } else {
                format!("ssh key of type {first} does not parse: {e}")
            }
        })?;
        match key.key_data() {
            KeyData::Ed25519(_)
            | KeyData::Ecdsa(_)
            | KeyData::SkEd25519(_)
            | KeyData::SkEcdsaSha2NistP256(_) => {}
            KeyData::Rsa(rsa) => {
                let bits = rsa.n.as_positive_bytes().map_or(0, |b| b.len() * 8);
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "ssh-rsa key has {bits} bits (at least {MIN_RSA_BITS})"
                    ));
                }
            }
            KeyData::Dsa(_) => {
                return Err("ssh-dss keys are refused (OpenSSH no longer accepts them)".into());
            }
            _ => return Err(format!("ssh key type {first} is not supported")),
        }
        let canonical = key
            .to_openssh()
            .map_err(|e| format!("ssh key cannot be re-encoded: {e}"))?;
        Ok(SshKey(canonical))
    }
}

impl SshKey {
    /// The key without its comment (`type base64`): what identifies it.
    pub fn material(&self) -> &str {
        let mut it = self.0.splitn(3, ' ');
        let kind = it.next().unwrap_or("");
        let data = it.next().unwrap_or("");
        &self.0[..kind.len() + 1 + data.len()]
    }
}

/// An address in CIDR form (`10.0.0.5/24`, `2001:db8::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.contains('/') {
            return Err(format!(
                "`{}` has no prefix length (write it in CIDR form, e.g. 10.0.0.5/24)",
                s.escape_debug()
            ));
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!(
                "`{}` is not an address in CIDR form (e.g. 10.0.0.5/24 or 2001:db8::5/64)",
                s.escape_debug()
            )
        })?;
        Ok(Cidr(net))
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.0.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a route goes: `default` or a network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RouteTarget {
    /// The default route of the `via` address's family.
    Default,
    /// A network.
    Net(IpNet),
}

impl TryFrom<String> for RouteTarget {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "default" {
            return Ok(RouteTarget::Default);
        }
        let net: IpNet = s.parse().map_err(|_| {
            format!(
                "route target `{}` is neither `default` nor a network in CIDR form",
                s.escape_debug()
            )
        })?;
        if net.trunc() != net {
            return Err(format!(
                "route target `{s}` has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(RouteTarget::Net(net))
    }
}

impl From<RouteTarget> for String {
    fn from(t: RouteTarget) -> String {
        match t {
            RouteTarget::Default => "default".into(),
            RouteTarget::Net(n) => n.to_string(),
        }
    }
}

/// Whether two addresses are of the same family.
pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_LINE: &str = include_str!("../../testdata/ed25519.pub");
    const ED25519: &str = ED25519_LINE.trim_ascii_end();

    #[test]
    fn hostnames() {
        for ok in ["web1", "web-1.example.com", "a", "x1.y2", &"a".repeat(63)] {
            assert!(ok.parse::<Hostname>().is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("-web", "starts or ends"),
            ("web-", "starts or ends"),
            ("web_1", "contains '_'"),
            ("a..b", "empty label"),
            ("web.", "ends with a dot"),
            ("web 1", "contains ' '"),
            ("10.0.0.1", "all-numeric"),
        ] {
            let err = bad.parse::<Hostname>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(
            "a".repeat(64)
                .parse::<Hostname>()
                .unwrap_err()
                .contains("label of 64")
        );
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(long.parse::<Hostname>().unwrap_err().contains("255"));
        assert_eq!(
            "web1.example.com".parse::<Hostname>().unwrap().short(),
            "web1"
        );
    }

    #[test]
    fn macs() {
        let m: MacAddr = "00:16:3E:AA:bb:01".parse().unwrap();
        assert_eq!(m.as_str(), "00:16:3e:aa:bb:01");
        assert!(m.is_xen());
        assert_eq!(m.octets(), [0, 0x16, 0x3e, 0xaa, 0xbb, 1]);
        for bad in [
            "00:16:3e:aa:bb",
            "00-16-3e-aa-bb-01",
            "0:16:3e:aa:bb:01",
            "zz:16:3e:aa:bb:01",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(
            "01:00:5e:00:00:01"
                .parse::<MacAddr>()
                .unwrap_err()
                .contains("multicast")
        );
        assert!(
            "00:00:00:00:00:00"
                .parse::<MacAddr>()
                .unwrap_err()
                .contains("all-zero")
        );
    }

    #[test]
    fn user_names() {
        for ok in ["cloud", "_svc", "a-b_c9", &"u".repeat(32)] {
            assert!(ok.parse::<UserName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Cloud",
            "9lives",
            "a b",
            "a:b",
            "../etc",
            &"u".repeat(33),
        ] {
            assert!(bad.parse::<UserName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            "10.0.0.5/24".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.5/24"
        );
        assert_eq!(
            "2001:DB8::5/64".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::5/64"
        );
        assert!(
            "10.0.0.5"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("no prefix length")
        );
        assert!(
            "10.0.0.5/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("CIDR form")
        );
        assert!("fe80::1/129".parse::<Cidr>().is_err());
    }

    #[test]
    fn route_targets() {
        assert_eq!(
            RouteTarget::try_from("default".to_string()),
            Ok(RouteTarget::Default)
        );
        assert!(RouteTarget::try_from("10.1.0.0/16".to_string()).is_ok());
        assert!(
            RouteTarget::try_from("10.1.2.3/16".to_string())
                .unwrap_err()
                .contains("did you mean 10.1.0.0/16")
        );
        assert!(RouteTarget::try_from("nowhere".to_string()).is_err());
    }

    #[test]
    fn ssh_keys_are_parsed_and_reserialised() {
        let k: SshKey = format!("  {ED25519}  ").parse().unwrap();
        assert_eq!(k.as_str(), ED25519);
        assert_eq!(k.material(), &ED25519[..ED25519.rfind(' ').unwrap()]);
        let no_comment = &ED25519[..ED25519.rfind(' ').unwrap()];
        assert_eq!(no_comment.parse::<SshKey>().unwrap().as_str(), no_comment);
    }

    #[test]
    fn ssh_key_refusals_say_why() {
        let cases = [
            (
                format!("command=\"/bin/sh\" {ED25519}"),
                "options such as command=",
            ),
            (format!("no-pty,{ED25519}"), "not a key type"),
            (format!("{ED25519}\nssh-ed25519 AAAA"), "line break"),
            ("ssh-ed25519 AAAAnotbase64!!".to_string(), "does not parse"),
            ("ssh-ed25519".to_string(), "does not parse"),
            (String::new(), "empty"),
            ("x".repeat(9000), "at most"),
            // A truncated ed25519 key: right type name, wrong length of key data.
            (ED25519[..60].to_string(), "does not parse"),
        ];
        for (input, why) in cases {
            let err = input.parse::<SshKey>().unwrap_err();
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }
}
