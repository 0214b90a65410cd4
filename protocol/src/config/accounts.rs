//! The account fields of a `users` entry added by users version 2: supplementary groups,
//! login shell, a sudo rule, a hashed password or a locked one. Plain-text passwords are
//! refused here, at validation, so that one never travels to a guest or lands in a store.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Errors, User, UserName, check_len};

/// Supplementary groups per user.
pub const MAX_GROUPS: usize = 32;
/// Longest sudo rule.
pub const MAX_SUDO_RULE: usize = 1024;
/// Longest password hash.
pub const MAX_HASH: usize = 512;
/// Longest shell path.
pub const MAX_SHELL: usize = 256;

/// A group name: the rules of a user name (Debian's `groupadd` defaults).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        UserName::from_str(s)
            .map(|_| GroupName(s.to_owned()))
            .map_err(|e| e.replace("user name", "group name"))
    }
}

impl TryFrom<String> for GroupName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<GroupName> for String {
    fn from(v: GroupName) -> String {
        v.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The crypt(3) prefixes accepted, strongest first: yescrypt (Debian 11+ default),
/// gost-yescrypt, scrypt, bcrypt, SHA-512, SHA-256. MD5 and DES are refused as broken.
pub const HASH_PREFIXES: [&str; 8] = ["$y$", "$gy$", "$7$", "$2b$", "$2y$", "$2a$", "$6$", "$5$"];

/// A crypt(3) password hash as shadow(5) holds it (`$6$salt$hash`, `$y$...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash(String);

impl PasswordHash {
    /// The hash text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a password hash; the message never repeats the value (it may be a password
/// typed into the wrong field).
pub fn check_hash(s: &str) -> Result<(), String> {
    let hint = "give a crypt(3) hash such as `mkpasswd -m yescrypt` or `openssl passwd -6` prints";
    if !HASH_PREFIXES.iter().any(|p| s.starts_with(p)) {
        return Err(format!(
            "not a supported password hash (it must start with one of {}; plain-text passwords are refused): {hint}",
            HASH_PREFIXES.join(" ")
        ));
    }
    if s.len() > MAX_HASH {
        return Err(format!(
            "password hash is {} bytes long (at most {MAX_HASH})",
            s.len()
        ));
    }
    // crypt(3)'s alphabet plus the separators of its parameter fields; `:` and line
    // breaks would split shadow(5).
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '$' | '.' | '/' | '=' | ',' | '-')))
    {
        return Err(format!(
            "password hash contains {bad:?}, which crypt(3) never produces"
        ));
    }
    let fields = s.split('$').filter(|f| !f.is_empty()).count();
    if fields < 3 {
        return Err(format!("password hash has no salt or no hash part: {hint}"));
    }
    Ok(())
}

impl FromStr for PasswordHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        check_hash(s)?;
        Ok(PasswordHash(s.to_owned()))
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PasswordHash> for String {
    fn from(v: PasswordHash) -> String {
        v.0
    }
}

/// A login shell: an absolute path (that it exists is checked in the guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShellPath(String);

impl ShellPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ShellPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = s.starts_with('/')
            && s.len() <= MAX_SHELL
            && !s.split('/').any(|c| c == "..")
            && s.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if ok {
            Ok(ShellPath(s.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a shell path (an absolute path of at most {MAX_SHELL} printable characters, no `:`, no `..`)",
                s.escape_debug()
            ))
        }
    }
}

impl TryFrom<String> for ShellPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ShellPath> for String {
    fn from(v: ShellPath) -> String {
        v.0
    }
}

/// The right-hand side of a sudoers(5) user specification, as cloud-init's `sudo` takes
/// it: `ALL=(ALL) NOPASSWD:ALL`. The agent writes `<user> <rule>` into its own
/// `/etc/sudoers.d` file and lets `visudo -c` judge the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SudoRule(String);

impl SudoRule {
    /// The rule.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SudoRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("sudo rule is empty (leave the field out for no rule)".into());
        }
        if s.len() > MAX_SUDO_RULE {
            return Err(format!(
                "sudo rule is {} bytes long (at most {MAX_SUDO_RULE})",
                s.len()
            ));
        }
        // One line: a line break would let the rule add other users' specifications, a
        // trailing backslash would join the next line, `#include` lines are not rules.
        if s.chars().any(char::is_control) {
            return Err(
                "sudo rule contains a line break or control character: one rule per user".into(),
            );
        }
        if s.trim_end().ends_with('\\') {
            return Err("sudo rule ends with `\\` (a line continuation)".into());
        }
        if !s.contains('=') {
            return Err(format!(
                "`{}` is not a sudo rule (expected `HOSTS=(RUNAS) COMMANDS`, e.g. `ALL=(ALL) NOPASSWD:ALL`)",
                s.escape_debug()
            ));
        }
        Ok(SudoRule(s.trim().to_owned()))
    }
}

impl TryFrom<String> for SudoRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SudoRule> for String {
    fn from(v: SudoRule) -> String {
        v.0
    }
}

/// A field that is only there to be refused by name (its value is never kept, so a
/// password typed into it is not stored or logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Refused)
    }
}

/// Checks the users-v2 fields of entry `i`.
pub(super) fn validate_user(i: usize, u: &User, errs: &mut Errors) {
    let base = format!("users[{i}]");
    if u.plain_text_passwd.is_some() {
        errs.push(
            format!("{base}.plain_text_passwd"),
            "plain-text passwords are refused (they would be stored and sent in clear); give hashed_passwd, a crypt(3) hash, or lock_passwd: true",
        );
    }
    check_len(
        errs,
        &format!("{base}.groups"),
        u.groups.len(),
        MAX_GROUPS,
        "groups",
    );
    let mut seen = BTreeSet::new();
    for (g, group) in u.groups.iter().enumerate() {
        if !seen.insert(group) {
            errs.push(
                format!("{base}.groups[{g}]"),
                format!("group `{group}` is listed twice"),
            );
        }
        if group.as_str() == u.name.as_str() {
            errs.push(
                format!("{base}.groups[{g}]"),
                format!(
                    "`{group}` is the user's own primary group; list supplementary groups only"
                ),
            );
        }
    }
    if u.lock_passwd == Some(false) && u.hashed_passwd.is_none() {
        errs.push(
            format!("{base}.lock_passwd"),
            "lock_passwd: false needs a hashed_passwd (an account without a password hash cannot be unlocked)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_crypt_formats_only() {
        for ok in [
            "$6$saltsalt$0123456789abcdefABCDEF./",
            "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
            "$5$rounds=5000$salt$hash",
            "$2b$12$abcdefghijklmnopqrstuv",
        ] {
            assert!(check_hash(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("hunter2", "plain-text"),
            ("$1$salt$md5hash", "plain-text"),
            ("$6$salt$ha:sh", "':'"),
            ("$6$", "no salt"),
            ("$6$salt\n$x", "'\\n'"),
        ] {
            let e = check_hash(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "the refusal repeats the value: {e}");
        }
    }

    #[test]
    fn sudo_rules_are_one_line() {
        assert_eq!(
            "ALL=(ALL) NOPASSWD:ALL "
                .parse::<SudoRule>()
                .unwrap()
                .as_str(),
            "ALL=(ALL) NOPASSWD:ALL"
        );
        for bad in [
            "",
            "ALL=(ALL) ALL\nevil ALL=(ALL) ALL",
            "ALL=(ALL) ALL \\",
            "ALL",
        ] {
            assert!(bad.parse::<SudoRule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shells_and_groups() {
        assert!("/bin/bash".parse::<ShellPath>().is_ok());
        for bad in ["bash", "/bin/../bash", "/bin/ba sh", "/bin:x"] {
            assert!(bad.parse::<ShellPath>().is_err(), "{bad}");
        }
        assert!("sudo".parse::<GroupName>().is_ok());
        assert!(
            "Wheel"
                .parse::<GroupName>()
                .unwrap_err()
                .contains("group name")
        );
    }
}

#[cfg(test)]
mod document_tests {
    use crate::GuestConfig;

    fn paths(doc: &str) -> Vec<String> {
        GuestConfig::from_json(doc.as_bytes())
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn plain_text_and_bad_hashes_are_refused_with_their_path() {
        assert_eq!(
            paths(r#"{"users":[{"name":"a","plain_text_passwd":"hunter2"}]}"#),
            ["users[0].plain_text_passwd"]
        );
        let e = GuestConfig::from_json(br#"{"users":[{"name":"a","hashed_passwd":"hunter2"}]}"#)
            .unwrap_err();
        assert_eq!(e.first_path(), "users[0].hashed_passwd");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(
            paths(r#"{"users":[{"name":"a","groups":["sudo","sudo","a"],"lock_passwd":false}]}"#),
            [
                "users[0].groups[1]",
                "users[0].groups[2]",
                "users[0].lock_passwd"
            ]
        );
    }

    #[test]
    fn v2_fields_round_trip_and_v1_digests_do_not_move() {
        let v1 = r#"{"users":[{"name":"cloud","ssh_authorized_keys":[]}]}"#;
        let cfg = GuestConfig::from_json(v1.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(cfg.canonical_json()).unwrap(),
            r#"{"users":[{"name":"cloud","ssh_authorized_keys":[]}]}"#
        );
        let v2 = r#"{"users":[{"name":"cloud","groups":["sudo"],"shell":"/bin/bash","sudo":"ALL=(ALL) NOPASSWD:ALL","hashed_passwd":"$6$salt$abc","lock_passwd":true,"run":"per_instance"}]}"#;
        let cfg = GuestConfig::from_json(v2.as_bytes()).unwrap();
        let again = GuestConfig::from_json(&cfg.canonical_json()).unwrap();
        assert_eq!(cfg, again);
        assert_eq!(cfg.users[0].run, crate::config::RunPolicy::PerInstance);
    }

    #[test]
    fn time_and_files_items_and_paths() {
        let doc = r#"{"time":{"ntp":{"servers":["192.0.2.1"]},"timezone":"UTC"},
            "write_files":[{"path":"/etc/motd","content":"hi\n"}]}"#;
        let cfg = GuestConfig::from_json(doc.as_bytes()).unwrap();
        assert_eq!(cfg.items(), ["time:ntp", "time:timezone", "file:/etc/motd"]);
        assert_eq!(
            paths(r#"{"time":{"ntp":{"servers":["a.example","a.example"]},"timezone":"../x"}}"#),
            ["time.timezone"]
        );
        assert_eq!(
            paths(r#"{"time":{"ntp":{"servers":["a.example","a.example"]}}}"#),
            ["time.ntp.servers[1]"]
        );
        assert_eq!(
            paths(
                r#"{"write_files":[{"path":"/a","content":"x"},{"path":"/a","content":"!","encoding":"base64"}]}"#
            ),
            ["write_files[1].path", "write_files[1].content"]
        );
        assert_eq!(
            paths(r#"{"write_files":[{"path":"/etc/../x"}]}"#),
            ["write_files[0].path"]
        );
        assert_eq!(paths(r#"{"time":{}}"#), ["time"]);
    }
}
