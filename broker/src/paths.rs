//! Unix socket path bounds, domain names and UUIDs.

use std::path::Path;

/// Longest unix socket path: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest domain name.
pub const MAX_DOMAIN_NAME: usize = 64;

/// Refuses a socket path the kernel cannot bind or connect to, with a message that
/// names the limit (the kernel's own error, "invalid argument", does not).
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is {len} bytes long; unix sockets allow at most {MAX_SOCKET_PATH} (108 with the terminating NUL)",
            path.display()
        ));
    }
    Ok(())
}

/// Checks a domain name: 1-64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
/// The name is a socket file stem and a path component, so nothing else is allowed.
pub fn check_domain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DOMAIN_NAME {
        return Err(format!(
            "domain name must be 1-{MAX_DOMAIN_NAME} characters (got {})",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "domain name `{}` must not start with `.`",
            name.escape_debug()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "domain name `{}` contains {c:?} (allowed: letters, digits, `_`, `.`, `-`)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The domain name of a socket file name (`web1` for `web1.sock`), if it is one.
pub fn domain_of_socket_file(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".sock")?;
    check_domain_name(stem).ok().map(|()| stem)
}

/// A VM UUID in canonical form (8-4-4-4-12 hex digits, lowercase), if `s` is one
/// (surrounding whitespace is ignored; any case is accepted).
pub fn canonical_uuid(s: &str) -> Option<String> {
    let v = s.trim().to_ascii_lowercase();
    let ok = v.len() == 36
        && v.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        for ok in ["web1", "a", "A_b-c.d", &"x".repeat(64)] {
            assert!(check_domain_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65), "a\0"] {
            assert!(check_domain_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn socket_files() {
        assert_eq!(domain_of_socket_file("web1.sock"), Some("web1"));
        assert_eq!(domain_of_socket_file("web1.sock.tmp"), None);
        assert_eq!(domain_of_socket_file(".x.sock"), None);
        assert_eq!(domain_of_socket_file(".sock"), None);
        assert_eq!(domain_of_socket_file("notes.txt"), None);
    }

    #[test]
    fn uuids() {
        assert_eq!(
            canonical_uuid(" 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0\n").as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        for bad in [
            "",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
        ] {
            assert_eq!(canonical_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn socket_path_limit() {
        assert!(check_socket_path(Path::new(&format!("/{}", "a".repeat(106)))).is_ok());
        let e = check_socket_path(Path::new(&format!("/{}", "a".repeat(107)))).unwrap_err();
        assert!(e.contains("108 bytes") && e.contains("107"), "{e}");
    }
}
