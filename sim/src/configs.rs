//! The configurations the demo and the scenarios push, and the ssh key they use.

use std::path::Path;

use xenchan_protocol::GuestConfig;

/// The ed25519 public key used when `ssh-keygen` is not available (a test key: its private
/// half is not secret; never use it outside the simulator).
pub const FALLBACK_KEY: &str = include_str!("../testdata/ed25519.pub");

/// Makes an ed25519 key pair in `dir` with `ssh-keygen` (`id_ed25519`, no passphrase) and
/// returns the public key line; falls back to [`FALLBACK_KEY`] when `ssh-keygen` is
/// missing or fails. The second value says which.
pub fn demo_key(dir: &Path) -> (String, bool) {
    let key = dir.join("id_ed25519");
    let generated = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "xenchan-sim-demo",
            "-f",
        ])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if generated && let Ok(text) = std::fs::read_to_string(key.with_extension("pub")) {
        return (text.trim().to_string(), true);
    }
    (FALLBACK_KEY.trim().to_string(), false)
}

/// The IPv4 address (CIDR) of domain number `n` (1-based): 10.77.0.0/16, hosts from .10.
pub fn ipv4_for(n: u32) -> String {
    let host = n + 9;
    format!("10.77.{}.{}/16", host / 256, host % 256)
}

/// The IPv6 address (CIDR) of domain number `n`.
pub fn ipv6_for(n: u32) -> String {
    format!("fd00:77::{:x}/64", n + 9)
}

/// The configuration of domain number `n` named `name`: hostname, one interface matched
/// by `mac` with static addresses, a default route, DNS, and `keys` for user `cloud`.
pub fn guest_config(n: u32, name: &str, mac: &str, keys: &[String]) -> GuestConfig {
    let doc = serde_json::json!({
        "hostname": format!("{name}.sim.example"),
        "network": {
            "version": 2,
            "ethernets": {
                "eth0": {
                    "match": { "macaddress": mac },
                    "addresses": [ipv4_for(n), ipv6_for(n)],
                    "routes": [{ "to": "default", "via": "10.77.0.1" }],
                    "nameservers": { "addresses": ["10.77.0.1"], "search": ["sim.example"] }
                }
            }
        },
        "users": [{ "name": "cloud", "ssh_authorized_keys": keys }]
    });
    // The document is built from valid parts; a failure here is a bug in this function.
    serde_json::from_value(doc).expect("the simulator's guest config is valid")
}

/// `count` distinct valid ed25519 public keys (for pushes of a given size). They are
/// syntactically valid; nobody holds their private halves.
pub fn filler_keys(count: usize, tag: &str) -> Vec<String> {
    // An ed25519 key blob: string "ssh-ed25519" + 32 key bytes. Vary the key bytes.
    (0..count)
        .map(|i| {
            let mut blob = Vec::with_capacity(51);
            blob.extend_from_slice(&11u32.to_be_bytes());
            blob.extend_from_slice(b"ssh-ed25519");
            blob.extend_from_slice(&32u32.to_be_bytes());
            let mut key = [0u8; 32];
            for (j, b) in key.iter_mut().enumerate() {
                *b = (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(j as u8)
                    .wrapping_add(tag.len() as u8);
            }
            key[0..8].copy_from_slice(&(i as u64).to_be_bytes());
            blob.extend_from_slice(&key);
            format!("ssh-ed25519 {} {tag}-{i}", base64(&blob))
        })
        .collect()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_valid_and_distinct() {
        let keys = vec![FALLBACK_KEY.trim().to_string()];
        let a = guest_config(1, "vm01", "00:16:3e:00:00:01", &keys);
        let b = guest_config(300, "vm300", "00:16:3e:00:01:2c", &keys);
        assert!(a.validate().is_ok());
        assert!(b.validate().is_ok());
        assert_ne!(a.digest(), b.digest());
        assert_eq!(ipv4_for(300), "10.77.1.53/16");
    }

    #[test]
    fn filler_keys_parse_and_differ() {
        let keys = filler_keys(40, "fill");
        let c = guest_config(1, "vm01", "00:16:3e:00:00:01", &keys);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let mut uniq = keys.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 40);
    }
}
