//! The `write_files` item kind, cloud-init's shape: one entry per file.
//!
//! ```json
//! { "write_files": [
//!     { "path": "/etc/motd", "content": "hello\n" },
//!     { "path": "/srv/app/key.bin", "content": "AAEC", "encoding": "base64",
//!       "owner": "app:app", "permissions": "0600", "run": "per_instance" } ] }
//! ```
//!
//! Items: `file:<path>`. The path's spelling, the content's encoding and the sizes are
//! checked here; which folders may be written is the agent's choice (its allow list).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64ct::{Base64, Encoding as _};
use serde::{Deserialize, Serialize};

use super::run::RunPolicy;
use super::{Errors, check_len};

/// Files per document.
pub const MAX_FILES: usize = 64;
/// Bytes of one file (after decoding).
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Bytes of all files together (after decoding). The frame bound of the channel
/// (64 KiB by default) is usually the tighter one.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;
/// Longest path.
pub const MAX_PATH: usize = 1024;

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Absolute, normalised path in the guest.
    pub path: FilePath,
    /// The content, as `encoding` says.
    #[serde(default)]
    pub content: String,
    /// How `content` is encoded.
    #[serde(default, skip_serializing_if = "ContentEncoding::is_text")]
    pub encoding: ContentEncoding,
    /// `user:group` (names or numbers); default `root:root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<FileOwner>,
    /// Octal mode as text (`"0644"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<FileMode>,
    /// Every push, or once per VM instance.
    #[serde(default, skip_serializing_if = "RunPolicy::is_always")]
    pub run: RunPolicy,
}

impl WriteFile {
    /// The bytes to write (the document is validated: base64 decodes).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self.encoding {
            ContentEncoding::Text => Ok(self.content.as_bytes().to_vec()),
            ContentEncoding::Base64 => decode_base64(&self.content),
        }
    }

    /// The mode bits (default 0644).
    pub fn mode(&self) -> u32 {
        self.permissions.as_ref().map_or(0o644, |m| m.0)
    }

    /// The item name, `file:<path>`.
    pub fn item(&self) -> String {
        format!("file:{}", self.path)
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    // Line breaks are common in base64 pasted from tools (`base64` wraps at 76).
    let joined: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    Base64::decode_vec(&joined).map_err(|e| format!("content is not valid base64 ({e})"))
}

/// How the content is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentEncoding {
    /// UTF-8 text, written as is.
    #[default]
    #[serde(rename = "text")]
    Text,
    /// Standard base64 (padded); `b64` is accepted as cloud-init spells it.
    #[serde(rename = "base64", alias = "b64")]
    Base64,
}

impl ContentEncoding {
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
    fn is_text(&self) -> bool {
        *self == ContentEncoding::Text
    }
}

/// An absolute guest path: `/` separated, no empty, `.` or `..` component, no trailing
/// `/`, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FilePath(String);

impl FilePath {
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components after the leading `/`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

impl FromStr for FilePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{}` {why}", s.escape_debug()));
        if !s.starts_with('/') {
            return bad("is not an absolute path");
        }
        if s.len() > MAX_PATH {
            return Err(format!(
                "path is {} bytes long (at most {MAX_PATH})",
                s.len()
            ));
        }
        if s.chars().any(char::is_control) {
            return bad("contains a control character");
        }
        if s == "/" || s.ends_with('/') {
            return bad("names a folder, not a file");
        }
        for c in s[1..].split('/') {
            match c {
                "" => return bad("has an empty component (`//`)"),
                "." | ".." => return bad("has a `.` or `..` component"),
                c if c.len() > 255 => return bad("has a component longer than 255 bytes"),
                _ => {}
            }
        }
        Ok(FilePath(s.to_owned()))
    }
}

impl TryFrom<String> for FilePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FilePath> for String {
    fn from(v: FilePath) -> String {
        v.0
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `user:group`, each a name or a number; `user` alone means the group of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileOwner {
    /// User name or uid.
    pub user: String,
    /// Group name or gid.
    pub group: String,
}

impl FromStr for FileOwner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (user, group) = s.split_once(':').unwrap_or((s, s));
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        };
        if ok(user) && ok(group) {
            Ok(FileOwner {
                user: user.to_owned(),
                group: group.to_owned(),
            })
        } else {
            Err(format!(
                "`{}` is not an owner (expected `user:group`, names or numbers)",
                s.escape_debug()
            ))
        }
    }
}

impl TryFrom<String> for FileOwner {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FileOwner> for String {
    fn from(v: FileOwner) -> String {
        format!("{}:{}", v.user, v.group)
    }
}

/// Permission bits given as octal text (`"0644"`, `"600"`), at most `07777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(pub u32);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 && !digits.is_empty() && digits.len() <= 5 => Ok(FileMode(m)),
            _ => Err(format!(
                "`{}` is not a mode (octal text such as \"0644\", at most 07777)",
                s.escape_debug()
            )),
        }
    }
}

impl TryFrom<String> for FileMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FileMode> for String {
    fn from(v: FileMode) -> String {
        format!("{:04o}", v.0)
    }
}

/// Checks the `write_files` list: count, sizes, encodings, duplicates.
pub(super) fn validate(files: &[WriteFile], errs: &mut Errors) {
    check_len(errs, "write_files", files.len(), MAX_FILES, "files");
    let mut total = 0usize;
    let mut paths = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let base = format!("write_files[{i}]");
        if let Some(prev) = paths.insert(&f.path, i) {
            errs.push(
                format!("{base}.path"),
                format!("`{}` is already written by write_files[{prev}]", f.path),
            );
        }
        match f.bytes() {
            Ok(b) => {
                total += b.len();
                if b.len() > MAX_FILE_BYTES {
                    errs.push(
                        format!("{base}.content"),
                        format!("{} bytes (at most {MAX_FILE_BYTES} per file)", b.len()),
                    );
                }
            }
            Err(e) => errs.push(format!("{base}.content"), e),
        }
    }
    if total > MAX_TOTAL_BYTES {
        errs.push(
            "write_files",
            format!("{total} bytes in all (at most {MAX_TOTAL_BYTES})"),
        );
    }
}

/// The `write_files` item in the schema table ([`super::schema::TABLE`]).
pub(crate) const KIND: super::schema::Kind = {
    use super::schema::{Kind, Node, field};
    Kind {
        name: "write_files",
        versions: &[Node::List(&Node::Object(&[
            field("path", Node::Leaf),
            field("content", Node::Leaf),
            field("encoding", Node::Leaf),
            field("owner", Node::Leaf),
            field("permissions", Node::Leaf),
            field("run", Node::Leaf),
        ]))],
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!("/etc/motd".parse::<FilePath>().is_ok());
        for bad in [
            "etc/motd",
            "/",
            "/etc/",
            "/etc//motd",
            "/etc/../shadow",
            "/etc/./x",
            "/etc/a\nb",
        ] {
            assert!(bad.parse::<FilePath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owners_and_modes() {
        let o: FileOwner = "app:www-data".parse().unwrap();
        assert_eq!((o.user.as_str(), o.group.as_str()), ("app", "www-data"));
        let o: FileOwner = "1000".parse().unwrap();
        assert_eq!(o.group, "1000");
        assert!("root:".parse::<FileOwner>().is_err());
        assert_eq!("0600".parse::<FileMode>().unwrap().0, 0o600);
        assert_eq!(String::from("755".parse::<FileMode>().unwrap()), "0755");
        for bad in ["", "0888", "17777", "rw-r--r--"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64_content_decodes_with_line_breaks() {
        let f: WriteFile =
            serde_json::from_str(r#"{"path":"/srv/x","content":"aGVs\nbG8=","encoding":"b64"}"#)
                .unwrap();
        assert_eq!(f.bytes().unwrap(), b"hello");
        let bad = WriteFile {
            content: "***".into(),
            ..f
        };
        assert!(bad.bytes().unwrap_err().contains("base64"));
    }
}
