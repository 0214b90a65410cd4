//! Xenstore path rules (docs/misc/xenstore.txt).
//!
//! Paths are `/`-separated; absolute ones start with `/`. Allowed bytes are
//! ASCII alphanumerics and `-/_@`. Doubled slashes and a trailing slash (except
//! the root `/`) are forbidden, so is the empty path. Absolute paths are at
//! most 3072 bytes, relative ones 2048. Relative paths are taken relative to
//! the caller's `/local/domain/<domid>`. Watches may also name the special
//! paths `@introduceDomain` and `@releaseDomain`.

use crate::wire::{ABS_PATH_MAX, REL_PATH_MAX};

/// Special watch path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Special watch path fired when a domain is released (dies).
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// What is wrong with a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The empty string is not a path.
    #[error("path is empty")]
    Empty,
    /// Longer than xenstore allows.
    #[error("path is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the offending path.
        len: usize,
        /// The limit that applies (absolute or relative).
        max: usize,
    },
    /// A byte outside `[A-Za-z0-9-/_@]`.
    #[error("byte {byte:#04x} at offset {offset} is not allowed (only A-Z a-z 0-9 - / _ @)")]
    BadByte {
        /// The offending byte.
        byte: u8,
        /// Its offset in the path.
        offset: usize,
    },
    /// `//` somewhere in the path.
    #[error("path contains an empty component (//)")]
    DoubleSlash,
    /// A trailing `/` on anything but the root.
    #[error("path ends with /")]
    TrailingSlash,
    /// A special `@...` path where only a node path is allowed.
    #[error("special @ paths are only valid for watches")]
    Special,
}

fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'/' | b'_' | b'@')
}

/// Checks a node path (absolute or relative) as the client sends it.
pub fn validate(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes[0] == b'@' {
        return Err(PathError::Special);
    }
    let max = if bytes[0] == b'/' {
        ABS_PATH_MAX
    } else {
        REL_PATH_MAX
    };
    if bytes.len() > max {
        return Err(PathError::TooLong {
            len: bytes.len(),
            max,
        });
    }
    if let Some((offset, &byte)) = bytes.iter().enumerate().find(|(_, b)| !allowed(**b)) {
        return Err(PathError::BadByte { byte, offset });
    }
    if path == "/" {
        return Ok(());
    }
    if path.contains("//") {
        return Err(PathError::DoubleSlash);
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash);
    }
    Ok(())
}

/// Checks a watch path: a node path, or any `@...` special name.
pub fn validate_watch(path: &str) -> Result<(), PathError> {
    if let Some(rest) = path.strip_prefix('@') {
        if path.len() > ABS_PATH_MAX {
            return Err(PathError::TooLong {
                len: path.len(),
                max: ABS_PATH_MAX,
            });
        }
        if let Some((offset, &byte)) = rest
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !allowed(**b))
        {
            return Err(PathError::BadByte {
                byte,
                offset: offset + 1,
            });
        }
        return Ok(());
    }
    validate(path)
}

/// `/local/domain/<domid>`, the base of a domain's relative paths.
pub fn domain_base(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Makes a validated node path absolute for a caller in domain `domid`.
/// The result is checked against the absolute length limit.
pub fn absolute(path: &str, domid: u32) -> Result<String, PathError> {
    validate(path)?;
    if path.starts_with('/') {
        return Ok(path.to_owned());
    }
    let abs = format!("{}/{path}", domain_base(domid));
    if abs.len() > ABS_PATH_MAX {
        return Err(PathError::TooLong {
            len: abs.len(),
            max: ABS_PATH_MAX,
        });
    }
    Ok(abs)
}

/// True if `child` is `parent` or below it (xenstore's definition of child:
/// every path is a child of itself and of `/`).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return child.starts_with('/');
    }
    match child.strip_prefix(parent) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// The parent of an absolute path (`/a/b` -> `/a`, `/a` -> `/`); `None` for `/`.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component of an absolute path (`/a/b` -> `b`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Joins an absolute directory and a child name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_paths() {
        for p in [
            "/",
            "/local/domain/0",
            "device/console/1/name",
            "a-b_c@d",
            "/vm/1234-abcd",
        ] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn rejects_bad_paths_with_reason() {
        assert_eq!(validate(""), Err(PathError::Empty));
        assert_eq!(validate("/a//b"), Err(PathError::DoubleSlash));
        assert_eq!(validate("/a/"), Err(PathError::TrailingSlash));
        assert_eq!(
            validate("/a b"),
            Err(PathError::BadByte {
                byte: b' ',
                offset: 2
            })
        );
        assert_eq!(
            validate("/a.b"),
            Err(PathError::BadByte {
                byte: b'.',
                offset: 2
            })
        );
        assert_eq!(validate("@introduceDomain"), Err(PathError::Special));
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert!(matches!(
            validate(&long),
            Err(PathError::TooLong {
                max: ABS_PATH_MAX,
                ..
            })
        ));
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert!(matches!(
            validate(&rel),
            Err(PathError::TooLong {
                max: REL_PATH_MAX,
                ..
            })
        ));
    }

    #[test]
    fn watch_paths_allow_specials() {
        assert_eq!(validate_watch(INTRODUCE_DOMAIN), Ok(()));
        assert_eq!(validate_watch(RELEASE_DOMAIN), Ok(()));
        assert_eq!(validate_watch("/a"), Ok(()));
        assert!(validate_watch("@a b").is_err());
    }

    #[test]
    fn relative_paths_resolve_against_domain() {
        assert_eq!(
            absolute("device/console/1", 7).unwrap(),
            "/local/domain/7/device/console/1"
        );
        assert_eq!(absolute("/x", 7).unwrap(), "/x");
    }

    #[test]
    fn child_relation_matches_xenstore() {
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(is_child("/a", "/"));
        assert!(!is_child("/ab", "/a"));
        assert!(!is_child("/a", "/a/b"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
