//! Channel name rules: what can never work (an error) and what works but invites
//! trouble (a "poor" name, with the reason).
//!
//! Two layers, cheapest first:
//!
//! * [`validate_device_name`]: the name becomes a file name, `/dev/xen-channel/<name>`,
//!   made by the udev helper. No registry is needed; it is the check a short-lived
//!   helper can afford.
//! * [`validate_name`]: device-safe *and* writable in an xl domain configuration.
//! * [`poor_reasons`]: well-formed but against the man page's advice (no reverse-DNS
//!   domain part, no version part, odd characters). [`check`](crate::check) adds the
//!   reasons that need the registry (clashes, case variants, other versions).

use std::fmt;

/// The longest channel name accepted, in bytes.
///
/// The name becomes one path component, `/dev/xen-channel/<name>`, and Linux file
/// systems (devtmpfs/tmpfs, ext4, xfs, btrfs) refuse components longer than
/// NAME_MAX = 255 bytes. The other places the name travels are roomier: a xenstore
/// value may hold 4096 bytes and the xl configuration line has no small limit.
pub const MAX_NAME_BYTES: usize = 255;

/// Characters the xl configuration syntax gives a meaning inside a channel spec:
/// `,` separates the `key=value` pairs of `channel = [ "connection=socket, name=..., path=..." ]`,
/// `=` separates key from value, and `"` ends the quoted string.
pub const XL_FORBIDDEN: [char; 3] = [',', '=', '"'];

/// Why a channel name cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing to name a device with.
    #[error("empty name")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("{0} bytes long; a file name under /dev/xen-channel holds at most {MAX_NAME_BYTES}")]
    TooLong(usize),
    /// The bytes are not UTF-8 (only from [`validate_device_name_bytes`]).
    #[error("not valid UTF-8")]
    NotUtf8,
    /// A `/` would turn `/dev/xen-channel/<name>` into a path elsewhere.
    #[error("contains '/', which would make /dev/xen-channel/<name> a path outside that folder")]
    Slash,
    /// `.`, `..` and other dots-only names refer to folders or confuse tools.
    #[error("consists only of dots; `.` and `..` name folders, not devices")]
    DotsOnly,
    /// NUL or another control character.
    #[error("contains control character U+{code:04X} at byte {at}")]
    Control {
        /// Code point.
        code: u32,
        /// Byte offset in the name.
        at: usize,
    },
    /// Whitespace: xl trims it and shells split on it.
    #[error("contains whitespace U+{code:04X} at byte {at}; xl trims it and shells split on it")]
    Whitespace {
        /// Code point.
        code: u32,
        /// Byte offset in the name.
        at: usize,
    },
    /// One of [`XL_FORBIDDEN`].
    #[error("contains '{ch}' at byte {at}, which the xl configuration syntax reads as {meaning}")]
    XlSyntax {
        /// The character.
        ch: char,
        /// Byte offset in the name.
        at: usize,
        /// What xl makes of it.
        meaning: &'static str,
    },
}

/// Checks that a name can safely become `/dev/xen-channel/<name>`.
///
/// Refuses: empty, longer than [`MAX_NAME_BYTES`], containing `/`, made only of
/// dots, containing control characters (NUL included) or whitespace. It does not
/// look at xl syntax: a channel made by another toolstack may carry a `,` and still
/// deserves its device link. Cheap: no allocation, no registry.
pub fn validate_device_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.bytes().all(|b| b == b'.') {
        return Err(NameError::DotsOnly);
    }
    for (at, c) in name.char_indices() {
        if c == '/' {
            return Err(NameError::Slash);
        }
        if c.is_control() {
            return Err(NameError::Control {
                code: u32::from(c),
                at,
            });
        }
        if c.is_whitespace() {
            return Err(NameError::Whitespace {
                code: u32::from(c),
                at,
            });
        }
    }
    Ok(())
}

/// [`validate_device_name`] for the raw bytes read from xenstore; returns the name
/// as `&str` when it is fine.
pub fn validate_device_name_bytes(name: &[u8]) -> Result<&str, NameError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    let name = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    validate_device_name(name)?;
    Ok(name)
}

/// Checks that a name is device-safe ([`validate_device_name`]) and can be written
/// in an xl channel spec (none of [`XL_FORBIDDEN`]). Registry entries must pass it.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    validate_device_name(name)?;
    if let Some((at, ch)) = name.char_indices().find(|(_, c)| XL_FORBIDDEN.contains(c)) {
        let meaning = match ch {
            ',' => "the separator between key=value pairs",
            '=' => "the separator between a key and its value",
            _ => "the end of the quoted channel spec",
        };
        return Err(NameError::XlSyntax { ch, at, meaning });
    }
    Ok(())
}

/// Why a usable name is a poor choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoorReason {
    /// Not in reverse-DNS form `tld.domain.application...`.
    NoDomainPart,
    /// Looks like a forward domain (`example.com.app`); suggest the reversed form.
    ForwardDomain {
        /// The domain as written, e.g. `example.com`.
        written: String,
        /// The reversed prefix, e.g. `com.example`.
        reversed: String,
    },
    /// `tld.domain` then straight to the version: nothing names the application.
    NoApplicationPart,
    /// No trailing numeric version label(s).
    NoVersionPart,
    /// An empty label: `..`, or a leading or trailing dot.
    EmptyLabel,
    /// Upper case in the domain part.
    UppercaseDomain,
    /// Characters outside `A-Z a-z 0-9 . _ -`.
    UnusualChars(String),
    /// Starts with `-`.
    LeadingDash,
    /// Differs only in letter case from a registered name.
    CaseVariant {
        /// The registered name.
        registered: String,
    },
    /// Same name as a registered one apart from the version part.
    OtherVersion {
        /// The registered name.
        registered: String,
    },
}

impl fmt::Display for PoorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDomainPart => f.write_str(
                "no reverse-DNS domain part: xen-pv-channel(7) asks for names that include \
                 a domain you control, e.g. org.example.app.1; short names clash",
            ),
            Self::ForwardDomain { written, reversed } => write!(
                f,
                "`{written}` reads like a forward domain name; reverse it: `{reversed}.`..."
            ),
            Self::NoApplicationPart => f.write_str(
                "nothing after the domain names the application (e.g. org.example.agent.1); \
                 one domain often needs several channels",
            ),
            Self::NoVersionPart => f.write_str(
                "no version part: end the name with a numeric label such as `.1`, and use a \
                 new name when the protocol changes incompatibly",
            ),
            Self::EmptyLabel => f.write_str(
                "empty label (`..`, or a leading or trailing dot); a leading dot also hides \
                 the device file",
            ),
            Self::UppercaseDomain => f.write_str(
                "upper case in the domain part; domains are case-insensitive but channel \
                 names are not, so write the domain in lower case",
            ),
            Self::UnusualChars(chars) => write!(
                f,
                "characters outside A-Z a-z 0-9 . _ - ({chars}) need quoting in shells and \
                 udev rules"
            ),
            Self::LeadingDash => f.write_str("starts with '-', which tools read as an option"),
            Self::CaseVariant { registered } => write!(
                f,
                "differs only in letter case from registered `{registered}`; xl compares \
                 names exactly, people do not"
            ),
            Self::OtherVersion { registered } => write!(
                f,
                "another version of registered `{registered}`; new versions belong to that \
                 name's owner"
            ),
        }
    }
}

/// Splits a name into base and version part: the version is the run of trailing
/// labels made only of ASCII digits (`org.xenproject.guest.clipboard.0.1` ->
/// (`org.xenproject.guest.clipboard`, `Some("0.1")`)).
pub fn split_version(name: &str) -> (&str, Option<&str>) {
    let is_version = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit());
    let mut cut = name.len();
    let mut rest = name;
    while let Some((head, last)) = rest.rsplit_once('.') {
        if !is_version(last) {
            break;
        }
        cut = head.len();
        rest = head;
    }
    if cut == name.len() {
        (name, None)
    } else {
        (&name[..cut], Some(&name[cut + 1..]))
    }
}

/// Top-level domains common enough to spot a name written forward (`example.com.x`).
const COMMON_TLDS: &[&str] = &[
    "com", "org", "net", "io", "dev", "edu", "gov", "info", "biz", "eu", "de", "uk", "fr", "nl",
    "ch", "se", "cz", "us", "jp", "cn",
];

/// Why a name, valid per [`validate_name`], is still a poor choice; empty when
/// it follows the convention. Does not consult the registry.
pub fn poor_reasons(name: &str) -> Vec<PoorReason> {
    let mut reasons = Vec::new();
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        reasons.push(PoorReason::EmptyLabel);
    }
    let (base, version) = split_version(name);
    let base_labels: Vec<&str> = base.split('.').filter(|l| !l.is_empty()).collect();
    let tld_like = |l: &str| {
        l.len() >= 2 && (l.bytes().all(|b| b.is_ascii_alphabetic()) || l.starts_with("xn--"))
    };
    let dns_label = |l: &str| {
        l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let is_common_tld = |l: &str| COMMON_TLDS.contains(&l.to_ascii_lowercase().as_str());
    if base_labels.len() >= 2 && is_common_tld(base_labels[1]) && !is_common_tld(base_labels[0]) {
        reasons.push(PoorReason::ForwardDomain {
            written: format!("{}.{}", base_labels[0], base_labels[1]),
            reversed: format!("{}.{}", base_labels[1], base_labels[0]),
        });
    } else if base_labels.len() < 2 || !tld_like(base_labels[0]) || !dns_label(base_labels[1]) {
        reasons.push(PoorReason::NoDomainPart);
    } else if base_labels.len() == 2 {
        reasons.push(PoorReason::NoApplicationPart);
    }
    if base_labels.len() >= 2
        && base_labels[..2]
            .iter()
            .any(|l| l.bytes().any(|b| b.is_ascii_uppercase()))
    {
        reasons.push(PoorReason::UppercaseDomain);
    }
    if version.is_none() {
        reasons.push(PoorReason::NoVersionPart);
    }
    let mut odd = String::new();
    for c in name.chars() {
        if !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || odd.contains(c)) {
            odd.push(c);
        }
    }
    if !odd.is_empty() {
        reasons.push(PoorReason::UnusualChars(odd));
    }
    if name.starts_with('-') {
        reasons.push(PoorReason::LeadingDash);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(validate_device_name("org.xenchan.agent.1"), Ok(()));
        assert_eq!(validate_device_name(""), Err(NameError::Empty));
        assert_eq!(validate_device_name("a/b"), Err(NameError::Slash));
        assert_eq!(validate_device_name("."), Err(NameError::DotsOnly));
        assert_eq!(validate_device_name(".."), Err(NameError::DotsOnly));
        assert_eq!(validate_device_name("..."), Err(NameError::DotsOnly));
        assert_eq!(
            validate_device_name("a\0b"),
            Err(NameError::Control { code: 0, at: 1 })
        );
        assert_eq!(
            validate_device_name("a b"),
            Err(NameError::Whitespace { code: 0x20, at: 1 })
        );
        assert!(matches!(
            validate_device_name("a\u{a0}b"),
            Err(NameError::Whitespace { code: 0xa0, .. })
        ));
        assert_eq!(validate_device_name(&"a".repeat(255)), Ok(()));
        assert_eq!(
            validate_device_name(&"a".repeat(256)),
            Err(NameError::TooLong(256))
        );
        // xl syntax is not the device's business.
        assert_eq!(validate_device_name("a,b"), Ok(()));
        assert_eq!(validate_device_name_bytes(b"a.b"), Ok("a.b"));
        assert_eq!(
            validate_device_name_bytes(b"a\xffb"),
            Err(NameError::NotUtf8)
        );
    }

    #[test]
    fn xl_syntax() {
        for (name, ch) in [("a,b", ','), ("a=b", '='), ("a\"b", '"')] {
            match validate_name(name) {
                Err(NameError::XlSyntax { ch: got, at: 1, .. }) => assert_eq!(got, ch),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn versions() {
        assert_eq!(split_version("org.a.b.1"), ("org.a.b", Some("1")));
        assert_eq!(
            split_version("org.xenproject.guest.clipboard.0.1"),
            ("org.xenproject.guest.clipboard", Some("0.1"))
        );
        assert_eq!(split_version("org.a.b"), ("org.a.b", None));
        assert_eq!(split_version("org.a.version1"), ("org.a.version1", None));
        assert_eq!(split_version("1.2"), ("1", Some("2")));
        assert_eq!(split_version("org.a.b."), ("org.a.b.", None));
    }

    #[test]
    fn poor() {
        assert_eq!(poor_reasons("org.xenchan.agent.1"), vec![]);
        assert_eq!(poor_reasons("org.xenproject.guest.clipboard.0.1"), vec![]);
        assert_eq!(poor_reasons("org.qemu.guest_agent.0"), vec![]);
        assert_eq!(
            poor_reasons("agent"),
            vec![PoorReason::NoDomainPart, PoorReason::NoVersionPart]
        );
        assert_eq!(
            poor_reasons("ovirt-guest-agent.0"),
            vec![PoorReason::NoDomainPart]
        );
        assert_eq!(
            poor_reasons("com.redhat.rhevm.vdsm"),
            vec![PoorReason::NoVersionPart]
        );
        assert_eq!(
            poor_reasons("org.example.1"),
            vec![PoorReason::NoApplicationPart]
        );
        assert_eq!(
            poor_reasons("example.com.agent.1"),
            vec![PoorReason::ForwardDomain {
                written: "example.com".into(),
                reversed: "com.example".into()
            }]
        );
        assert_eq!(poor_reasons("org..a.b.1"), vec![PoorReason::EmptyLabel]);
        assert!(poor_reasons(".org.a.b.1").contains(&PoorReason::EmptyLabel));
        assert_eq!(
            poor_reasons("Org.Example.a.1"),
            vec![PoorReason::UppercaseDomain]
        );
        assert_eq!(
            poor_reasons("org.a.b$c;d$.1"),
            vec![PoorReason::UnusualChars("$;".into())]
        );
        assert!(poor_reasons("-org.a.b.1").contains(&PoorReason::LeadingDash));
    }
}
