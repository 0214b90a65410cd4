//! The libvirt hook's configuration file, `/etc/xenchan/hook.toml` (docs/OPERATING.md,
//! "The libvirt hook").
//!
//! libvirtd runs hooks with only `LC_ALL`, `PATH` and `HOME` in the environment, so the
//! hook cannot be configured through libvirtd's environment: its settings live in this
//! conffile. Parsing is pure (text in, settings or an error naming the key out) so that
//! the hook's choices are table-tested and fuzzed apart from any I/O.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::LIBVIRT_HOOK_DEADLINE_MS;

/// Where the hook looks for its settings.
pub const DEFAULT_PATH: &str = "/etc/xenchan/hook.toml";

/// Largest hook.toml read; a bigger file is malformed (the real one is a few lines).
pub const MAX_SIZE: usize = 64 * 1024;

/// What the hook does with a problem that is not the broker's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnProblem {
    /// Warn (stderr and syslog) and let libvirt go on with the start.
    Continue,
    /// Exit non-zero: libvirt aborts the start with the hook's stderr.
    Abort,
}

/// The hook's settings. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// The broker's control socket.
    pub socket: PathBuf,
    /// The channel name that marks a domain as ours.
    pub channel: String,
    /// Seconds the whole hook may take (1-120); above the broker's `timeouts.request`.
    pub deadline: u64,
    /// At `prepare begin`, when the broker cannot be reached (no socket, refused, no
    /// answer in time, 5xx other than 504).
    pub on_unreachable: OnProblem,
    /// At `prepare begin`, when the domain XML cannot be read.
    pub on_bad_xml: OnProblem,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            socket: PathBuf::from(crate::defaults::CONTROL_SOCKET),
            channel: xenchan_protocol::DEFAULT_CHANNEL.to_string(),
            deadline: LIBVIRT_HOOK_DEADLINE_MS / 1000,
            on_unreachable: OnProblem::Continue,
            on_bad_xml: OnProblem::Continue,
        }
    }
}

/// A hook.toml that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: `{key}`: {message}")]
pub struct HookConfigError {
    /// The file.
    pub path: PathBuf,
    /// The key that is wrong (dotted), or `-` when the file as a whole is.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl HookConfig {
    /// Parses and checks hook.toml text; `origin` names it in errors.
    ///
    /// # Errors
    /// The key that is unknown, of the wrong type or out of range.
    pub fn parse(text: &str, origin: &Path) -> Result<HookConfig, HookConfigError> {
        let bad = |key: &str, message: String| HookConfigError {
            path: origin.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if text.len() > MAX_SIZE {
            return Err(bad("-", format!("larger than {MAX_SIZE} bytes")));
        }
        let c: HookConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            // serde names an unknown key in its message; for a bad value the span points
            // into the line that sets it.
            let key = unknown_key(&message)
                .or_else(|| e.span().and_then(|s| key_at(text, s.start)))
                .unwrap_or_else(|| "-".to_string());
            bad(&key, message)
        })?;
        if !c.socket.is_absolute() {
            return Err(bad(
                "socket",
                format!("{} is not an absolute path", c.socket.display()),
            ));
        }
        crate::paths::check_socket_path(&c.socket).map_err(|e| bad("socket", e))?;
        if c.channel.is_empty()
            || c.channel.len() > 255
            || c.channel
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace() || ch == '/')
        {
            return Err(bad(
                "channel",
                format!(
                    "`{}` is not a channel name (1-255 characters, no whitespace, control characters or `/`)",
                    c.channel.escape_debug()
                ),
            ));
        }
        if !(1..=120).contains(&c.deadline) {
            return Err(bad(
                "deadline",
                format!("{} is out of range 1-120 (seconds)", c.deadline),
            ));
        }
        Ok(c)
    }
}

/// The key in serde's "unknown field `x`, expected ..." message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The key set on the line that holds byte `at` (`key = value`).
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    // `key = value`, or a table header `[key]` where a value was expected.
    let key = line
        .split('=')
        .next()?
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!key.is_empty() && key.chars().all(bare)).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HookConfig, HookConfigError> {
        HookConfig::parse(text, Path::new("hook.toml"))
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, HookConfig::default());
        assert_eq!(c.socket, Path::new("/run/xenchan/broker.sock"));
        assert_eq!(c.channel, "org.xenchan.agent.1");
        assert_eq!(c.deadline, 10);
        assert_eq!(c.on_unreachable, OnProblem::Continue);
        assert_eq!(c.on_bad_xml, OnProblem::Continue);
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let shipped = include_str!("../../packaging/broker/hook.toml");
        assert_eq!(parse(shipped).unwrap(), HookConfig::default());
        // Every key is shown, commented out.
        for key in [
            "socket",
            "channel",
            "deadline",
            "on_unreachable",
            "on_bad_xml",
        ] {
            let shown = format!("\n#{key} = ");
            assert!(shipped.contains(&shown), "{key} is not shown in hook.toml");
        }
    }

    #[test]
    fn settings_are_read() {
        let c = parse(
            "socket = \"/srv/x/broker.sock\"\nchannel = \"org.example.1\"\ndeadline = 20\n\
             on_unreachable = \"abort\"\non_bad_xml = \"abort\"\n",
        )
        .unwrap();
        assert_eq!(c.socket, Path::new("/srv/x/broker.sock"));
        assert_eq!(c.channel, "org.example.1");
        assert_eq!(c.deadline, 20);
        assert_eq!(c.on_unreachable, OnProblem::Abort);
        assert_eq!(c.on_bad_xml, OnProblem::Abort);
    }

    #[test]
    fn a_malformed_file_names_the_key() {
        for (text, key, says) in [
            ("socket = \"relative\"", "socket", "not an absolute path"),
            ("dedline = 3", "dedline", "unknown field"),
            ("deadline = \"ten\"", "deadline", "invalid type"),
            ("x = 1\ndeadline = 0", "x", "unknown field"),
            ("deadline = 0", "deadline", "out of range 1-120"),
            ("deadline = 121", "deadline", "out of range"),
            ("deadline = -1", "deadline", "invalid value"),
            (
                "on_unreachable = \"ignore\"",
                "on_unreachable",
                "unknown variant",
            ),
            ("  on_bad_xml = true", "on_bad_xml", "wanted string"),
            ("channel = \"a b\"", "channel", "not a channel name"),
            ("channel = \"\"", "channel", "not a channel name"),
            ("deadline = 5\ndeadline = 6", "deadline", "duplicate"),
            ("[socket]", "socket", "invalid type"),
            ("this is not toml", "-", ""),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
            assert!(e.to_string().starts_with("hook.toml: `"), "{e}");
        }
        let long = format!("socket = \"/{}\"", "s".repeat(200));
        assert_eq!(parse(&long).unwrap_err().key, "socket");
        let huge = "#".repeat(MAX_SIZE + 1);
        assert!(parse(&huge).unwrap_err().message.contains("larger than"));
    }
}
