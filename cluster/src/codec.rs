//! Values stored in etcd, encoded and decoded apart from any I/O. Everything read back from
//! etcd is checked here: another writer under the same prefix (an older version, a hand
//! with etcdctl) must give a `Corrupt` answer naming the key, never a panic or a guess.

use serde::{Deserialize, Serialize};

/// Largest configuration document stored (etcd's default request limit is 1.5 MiB).
pub const MAX_CONFIG: usize = 1024 * 1024;
/// Longest display name of a domain.
pub const MAX_NAME: usize = 256;
const MAGIC: &[u8] = b"xenchan-desired 1\n";
const MAX_HEADER: usize = 64 + MAX_NAME;

/// A domain's desired configuration as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Cluster-wide generation: 1 for the first PUT, one more for each change.
    pub generation: u64,
    /// The display name (the domain's identity is its UUID).
    pub name: String,
    /// The configuration document, opaque to this crate.
    pub config: Vec<u8>,
}

/// What the agent last reported as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The agent instance's lineage (changes when the guest's state is reset).
    pub lineage: String,
    pub generation: u64,
    /// The digest of the applied document.
    pub digest: String,
}

/// Checks a display name: 1 to 256 bytes, no control characters (it is shown in lists
/// and logs, and framed by a newline here).
pub fn check_name(name: &str) -> Result<(), crate::Invalid> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(crate::Invalid::new("name", name, "must be 1 to 256 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(crate::Invalid::new(
            "name",
            name,
            "control characters not allowed",
        ));
    }
    Ok(())
}

/// `xenchan-desired 1\n<generation>\n<name>\n<config bytes>`: a fixed header and the
/// document verbatim, so the document needs no escaping and may be any bytes.
pub fn encode_desired(d: &Desired) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + d.name.len() + d.config.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{}\n{}\n", d.generation, d.name).as_bytes());
    out.extend_from_slice(&d.config);
    out
}

/// Decodes what `encode_desired` wrote; the error says which part is wrong.
pub fn decode_desired(bytes: &[u8]) -> Result<Desired, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("does not start with \"xenchan-desired 1\"")?;
    let head = &rest[..rest.len().min(MAX_HEADER)];
    let gen_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("generation line missing or too long")?;
    let generation = std::str::from_utf8(&head[..gen_end])
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&g| g > 0)
        .ok_or("generation is not a positive integer")?;
    let after = &rest[gen_end + 1..];
    let head = &after[..after.len().min(MAX_NAME + 1)];
    let name_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("name line missing or longer than 256 bytes")?;
    let name = std::str::from_utf8(&head[..name_end]).map_err(|_| "name is not UTF-8")?;
    check_name(name).map_err(|e| e.to_string())?;
    let config = &after[name_end + 1..];
    if config.len() > MAX_CONFIG {
        return Err(format!(
            "document of {} bytes exceeds {MAX_CONFIG}",
            config.len()
        ));
    }
    Ok(Desired {
        generation,
        name: name.to_string(),
        config: config.to_vec(),
    })
}

pub fn encode_applied(a: &Applied) -> Vec<u8> {
    serde_json::to_vec(a).expect("a struct of strings and an integer serialises")
}

pub fn decode_applied(bytes: &[u8]) -> Result<Applied, String> {
    if bytes.len() > 4096 {
        return Err(format!("{} bytes, at most 4096 expected", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A host name stored as an owner or incoming value.
pub fn decode_host(bytes: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(bytes).map_err(|_| "host is not UTF-8".to_string())?;
    crate::keys::check_host(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// A UUID stored as a lease holder.
pub fn decode_uuid(bytes: &[u8]) -> Result<crate::Uuid, String> {
    let s = std::str::from_utf8(bytes).map_err(|_| "UUID is not UTF-8".to_string())?;
    let u = crate::Uuid::parse(s).map_err(|e| e.to_string())?;
    if u.as_str() != s {
        return Err("UUID is not in canonical (lowercase) form".into());
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_round_trips_any_bytes() {
        for config in [
            &b""[..],
            b"{\"hostname\":\"web1\"}",
            b"\n\n\xff\x00",
            &[b'x'; 4096],
        ] {
            let d = Desired {
                generation: 42,
                name: "web1".into(),
                config: config.to_vec(),
            };
            assert_eq!(decode_desired(&encode_desired(&d)).unwrap(), d);
        }
    }

    #[test]
    fn bad_desired_values_say_what_is_wrong() {
        let big = [
            b"xenchan-desired 1\n1\nweb\n".as_slice(),
            &vec![b'x'; MAX_CONFIG + 1],
        ]
        .concat();
        let long_name = format!("xenchan-desired 1\n1\n{}\n{{}}", "n".repeat(300));
        let table: &[(&[u8], &str)] = &[
            (b"", "does not start"),
            (b"xenchan-desired 2\n1\nweb\n{}", "does not start"),
            (b"xenchan-desired 1\n", "generation line"),
            (b"xenchan-desired 1\n0\nweb\n{}", "positive integer"),
            (b"xenchan-desired 1\n-1\nweb\n{}", "positive integer"),
            (b"xenchan-desired 1\n+1\nweb\n{}", "positive integer"),
            (
                b"xenchan-desired 1\n99999999999999999999\nweb\n{}",
                "positive integer",
            ),
            (b"xenchan-desired 1\n1\nweb", "name line"),
            (b"xenchan-desired 1\n1\n\n{}", "1 to 256 bytes"),
            (b"xenchan-desired 1\n1\nw\teb\n{}", "control characters"),
            (b"xenchan-desired 1\n1\n\xff\n{}", "not UTF-8"),
            (long_name.as_bytes(), "name line"),
            (&big, "exceeds"),
        ];
        for (input, want) in table {
            let e = decode_desired(input).unwrap_err();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn applied_round_trips_and_rejects_garbage() {
        let a = Applied {
            lineage: "b3f0".into(),
            generation: 7,
            digest: "sha256:00ff".into(),
        };
        assert_eq!(decode_applied(&encode_applied(&a)).unwrap(), a);
        assert!(
            decode_applied(b"{\"lineage\":\"x\"}")
                .unwrap_err()
                .contains("generation")
        );
        assert!(decode_applied(&[b' '; 5000]).unwrap_err().contains("4096"));
    }

    #[test]
    fn stored_hosts_and_uuids_are_checked() {
        assert_eq!(decode_host(b"dom0-a").unwrap(), "dom0-a");
        assert!(decode_host(b"a/b").is_err());
        assert!(decode_host(b"\xff").is_err());
        let u = "6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10";
        assert_eq!(decode_uuid(u.as_bytes()).unwrap().as_str(), u);
        assert!(decode_uuid(u.to_uppercase().as_bytes()).is_err());
    }
}
