//! The names the control API takes, validated once where they enter: a [`DomainName`] is a
//! socket file stem and a path component, a [`VmUuid`] is canonical, a [`SocketPath`] fits
//! in `sun_path`. Each parses with `FromStr`/`TryFrom`, prints with `Display` and goes
//! through serde as its string, so a bad value is refused with its reason wherever it
//! comes from (command line, JSON body, query string, configuration file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest unix socket path: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest domain name.
pub const MAX_DOMAIN_NAME: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidName {
    /// Empty or longer than [`MAX_DOMAIN_NAME`].
    #[error("domain name must be 1-{MAX_DOMAIN_NAME} characters (got {0})")]
    DomainLength(usize),
    /// Starts with a dot (a hidden file, `.` or `..`).
    #[error("domain name `{0}` must not start with `.`")]
    DomainDot(String),
    /// Holds a character outside `[A-Za-z0-9_.-]`.
    #[error("domain name `{name}` contains {bad:?} (allowed: letters, digits, `_`, `.`, `-`)")]
    DomainChar {
        /// The name, escaped for printing.
        name: String,
        /// The first character refused.
        bad: char,
    },
    /// Not 8-4-4-4-12 hex digits.
    #[error("`{0}` is not a VM UUID (8-4-4-4-12 hex digits)")]
    Uuid(String),
    /// Too long for `sun_path`.
    #[error(
        "socket path {} is {len} bytes long; unix sockets allow at most {MAX_SOCKET_PATH} (108 with the terminating NUL)",
        path.display()
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
}

/// A domain name: 1-64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Checks `name` without taking it.
    pub fn check(name: &str) -> Result<(), InvalidName> {
        if name.is_empty() || name.len() > MAX_DOMAIN_NAME {
            return Err(InvalidName::DomainLength(name.len()));
        }
        if name.starts_with('.') {
            return Err(InvalidName::DomainDot(name.escape_debug().to_string()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(InvalidName::DomainChar {
                name: name.escape_debug().to_string(),
                bad,
            });
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain's channel socket in `socket_dir` (`<socket_dir>/<name>.sock`).
    pub fn socket_in(&self, socket_dir: &Path) -> PathBuf {
        socket_dir.join(format!("{}.sock", self.0))
    }
}

impl TryFrom<String> for DomainName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, InvalidName> {
        Self::check(&s)?;
        Ok(DomainName(s))
    }
}

impl TryFrom<&str> for DomainName {
    type Error = InvalidName;
    fn try_from(s: &str) -> Result<Self, InvalidName> {
        Self::check(s)?;
        Ok(DomainName(s.to_owned()))
    }
}

impl FromStr for DomainName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        Self::try_from(s)
    }
}

impl From<DomainName> for String {
    fn from(n: DomainName) -> String {
        n.0
    }
}

impl AsRef<str> for DomainName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM UUID in canonical form: 8-4-4-4-12 lowercase hex digits. Parsing accepts any case
/// and surrounding whitespace (what `xl` and libvirt print), and stores the canonical form
/// so that two spellings of one UUID compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmUuid(String);

impl VmUuid {
    /// The canonical form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmUuid {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        let v = s.trim().to_ascii_lowercase();
        let ok = v.len() == 36
            && v.char_indices().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        if ok {
            Ok(VmUuid(v))
        } else {
            Err(InvalidName::Uuid(s.escape_debug().to_string()))
        }
    }
}

impl TryFrom<String> for VmUuid {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, InvalidName> {
        s.parse()
    }
}

impl TryFrom<&str> for VmUuid {
    type Error = InvalidName;
    fn try_from(s: &str) -> Result<Self, InvalidName> {
        s.parse()
    }
}

impl From<VmUuid> for String {
    fn from(u: VmUuid) -> String {
        u.0
    }
}

impl fmt::Display for VmUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unix socket path the kernel can bind and connect to (at most [`MAX_SOCKET_PATH`]
/// bytes). The kernel's own error for a longer one, "invalid argument", names nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "PathBuf", into = "PathBuf")]
pub struct SocketPath(PathBuf);

impl SocketPath {
    /// Checks `path` without taking it.
    pub fn check(path: &Path) -> Result<(), InvalidName> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(InvalidName::SocketPathTooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        Ok(())
    }

    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl TryFrom<PathBuf> for SocketPath {
    type Error = InvalidName;
    fn try_from(p: PathBuf) -> Result<Self, InvalidName> {
        Self::check(&p)?;
        Ok(SocketPath(p))
    }
}

impl TryFrom<&Path> for SocketPath {
    type Error = InvalidName;
    fn try_from(p: &Path) -> Result<Self, InvalidName> {
        Self::check(p)?;
        Ok(SocketPath(p.to_path_buf()))
    }
}

impl FromStr for SocketPath {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        Self::try_from(Path::new(s))
    }
}

impl From<SocketPath> for PathBuf {
    fn from(p: SocketPath) -> PathBuf {
        p.0
    }
}

impl AsRef<Path> for SocketPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for ok in ["web1", "a", "A_b-c.d", "a..b", &"x".repeat(64)] {
            let n: DomainName = ok.parse().unwrap();
            assert_eq!(n.to_string(), ok);
        }
        let cases: [(&str, InvalidName); 7] = [
            ("", InvalidName::DomainLength(0)),
            (&"x".repeat(65), InvalidName::DomainLength(65)),
            (".hidden", InvalidName::DomainDot(".hidden".into())),
            ("..", InvalidName::DomainDot("..".into())),
            (
                "a/b",
                InvalidName::DomainChar {
                    name: "a/b".into(),
                    bad: '/',
                },
            ),
            (
                "a b",
                InvalidName::DomainChar {
                    name: "a b".into(),
                    bad: ' ',
                },
            ),
            (
                "a\0",
                InvalidName::DomainChar {
                    name: "a\\0".into(),
                    bad: '\0',
                },
            ),
        ];
        for (bad, want) in cases {
            assert_eq!(bad.parse::<DomainName>(), Err(want), "{bad:?}");
        }
        // Multi-byte: the length is in bytes, the character named is the first refused.
        let e = "é".parse::<DomainName>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain name `é` contains 'é' (allowed: letters, digits, `_`, `.`, `-`)"
        );
    }

    #[test]
    fn domain_name_serde_refuses_bad_names_with_the_reason() {
        let n: DomainName = serde_json::from_str("\"web1\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"web1\"");
        let e = serde_json::from_str::<DomainName>("\"../etc\"").unwrap_err();
        assert!(e.to_string().contains("must not start with `.`"), "{e}");
        assert_eq!(
            n.socket_in(Path::new("/run/s")),
            Path::new("/run/s/web1.sock")
        );
    }

    #[test]
    fn uuids_are_canonical() {
        let u: VmUuid = " 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0\n".parse().unwrap();
        assert_eq!(u.as_str(), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(
            u,
            VmUuid::try_from("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap()
        );
        for bad in [
            "",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f00",
            "0f1e2d3c+4b5a-6978-8796-a5b4c3d2e1f0",
        ] {
            assert_eq!(
                bad.parse::<VmUuid>(),
                Err(InvalidName::Uuid(bad.into())),
                "{bad}"
            );
        }
        let e = serde_json::from_str::<VmUuid>("\"nope\"").unwrap_err();
        assert!(e.to_string().contains("not a VM UUID"), "{e}");
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            "\"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\""
        );
    }

    #[test]
    fn socket_path_limit() {
        let fits = format!("/{}", "a".repeat(106));
        let p: SocketPath = fits.parse().unwrap();
        assert_eq!(p.to_string(), fits);
        let long = format!("/{}", "a".repeat(107));
        let e = long.parse::<SocketPath>().unwrap_err();
        assert_eq!(
            e,
            InvalidName::SocketPathTooLong {
                path: long.clone().into(),
                len: 108
            }
        );
        assert!(
            e.to_string().contains("108 bytes") && e.to_string().contains("107"),
            "{e}"
        );
        let e = serde_json::from_str::<SocketPath>(&format!("\"{long}\"")).unwrap_err();
        assert!(e.to_string().contains("unix sockets allow"), "{e}");
    }
}
