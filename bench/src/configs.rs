//! The documents the measurements push.

use xenchan_protocol::GuestConfig;

/// The user whose keys are pushed (its home is in the temporary guest root).
pub const USER: &str = "cloud";

/// The interface label in the documents; the interface itself is found by MAC.
pub const IFACE: &str = "eth0";

/// The address variant `v` (0 or 1) of the latency documents, in CIDR form. The two are
/// in different subnets: replacing the primary address of a subnet by another in the same
/// subnet loses the new one on kernels with `promote_secondaries=0` (see
/// docs/PERFORMANCE.md, "Findings").
pub fn latency_address(v: u64) -> String {
    if v.is_multiple_of(2) {
        "198.51.100.10/24".into()
    } else {
        "203.0.113.10/24".into()
    }
}

/// The hostname of variant `v`.
pub fn latency_hostname(v: u64) -> String {
    format!(
        "bench-{}.example.net",
        if v.is_multiple_of(2) { "a" } else { "b" }
    )
}

/// The three ssh keys of variant `v`.
pub fn latency_keys(v: u64) -> Vec<String> {
    xenchan_sim::configs::filler_keys(
        3,
        if v.is_multiple_of(2) {
            "bench-a"
        } else {
            "bench-b"
        },
    )
}

/// The end-to-end document of variant `v` (0 or 1): a hostname, one address on the
/// interface with `mac`, three ssh keys for [`USER`]. The two variants differ in every
/// item, so alternating them makes every push really change the guest.
pub fn latency_config(v: u64, mac: &str) -> GuestConfig {
    let doc = serde_json::json!({
        "hostname": latency_hostname(v),
        "network": {
            "version": 2,
            "ethernets": {
                IFACE: {
                    "match": { "macaddress": mac },
                    "addresses": [latency_address(v)],
                }
            }
        },
        "users": [{ "name": USER, "ssh_authorized_keys": latency_keys(v) }]
    });
    serde_json::from_value(doc).expect("the latency document is valid")
}

/// The document of scale domain `i` (1-based): the simulator demo's (hostname, two
/// addresses, a route, DNS, one key), with addresses unique per domain (they are leases).
pub fn scale_config(i: usize, name: &str, key: &str) -> GuestConfig {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    xenchan_sim::configs::guest_config(n, name, &xenchan_sim::guest::mac_for(n), &[key.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_variants_are_valid_and_differ_in_every_item() {
        let a = latency_config(0, "00:16:3e:00:00:01");
        let b = latency_config(1, "00:16:3e:00:00:01");
        assert!(a.validate().is_ok());
        assert!(b.validate().is_ok());
        assert_eq!(a.items(), vec!["hostname", "network:eth0", "user:cloud"]);
        assert_ne!(a.hostname, b.hostname);
        assert_ne!(a.network, b.network);
        assert_ne!(a.users, b.users);
        assert_eq!(a.users[0].ssh_authorized_keys.len(), 3);
    }

    #[test]
    fn scale_documents_do_not_share_leases() {
        let key = xenchan_sim::configs::FALLBACK_KEY.trim();
        let a = scale_config(1, "d00001", key);
        let b = scale_config(10_000, "d10000", key);
        assert!(a.validate().is_ok() && b.validate().is_ok());
        assert_ne!(a.network, b.network);
    }
}
