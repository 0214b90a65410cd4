//! Unix socket path bounds, domain names and UUIDs as plain checks over `&str` and
//! `&Path`, for code that keeps the raw value; [`crate::names`] has the newtypes.

use std::path::Path;

use crate::names::{DomainName, SocketPath, VmUuid};
pub use crate::names::{MAX_DOMAIN_NAME, MAX_SOCKET_PATH};

/// Refuses a socket path the kernel cannot bind or connect to, with a message that
/// names the limit (the kernel's own error, "invalid argument", does not).
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    SocketPath::check(path).map_err(|e| e.to_string())
}

/// Checks a domain name: 1-64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
/// The name is a socket file stem and a path component, so nothing else is allowed.
pub fn check_domain_name(name: &str) -> Result<(), String> {
    DomainName::check(name).map_err(|e| e.to_string())
}

/// The domain name of a socket file name (`web1` for `web1.sock`), if it is one.
pub fn domain_of_socket_file(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".sock")?;
    check_domain_name(stem).ok().map(|()| stem)
}

/// A VM UUID in canonical form (8-4-4-4-12 hex digits, lowercase), if `s` is one
/// (surrounding whitespace is ignored; any case is accepted).
pub fn canonical_uuid(s: &str) -> Option<String> {
    s.parse::<VmUuid>().ok().map(String::from)
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
