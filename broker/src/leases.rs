//! Leases: which addresses and hostnames a configuration takes, and when a domain may
//! take them. Pure rules over plain values; a store backend only persists the lease rows
//! and answers "who holds this one" ([`first_conflict`]'s lookup), so every backend (the
//! SQLite store, the cluster store of issue 19) applies exactly the same rule.

use std::fmt;

use xenchan_protocol::config::GuestConfig;

/// One lease a configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `address` or `hostname`.
    pub kind: &'static str,
    /// The canonical value (an IP address without prefix; a lowercase hostname).
    pub value: String,
    /// Where in the document it comes from.
    pub path: String,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.value)
    }
}

/// A lease held by another domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConflict {
    /// The lease asked for.
    pub lease: Lease,
    /// Who holds it.
    pub holder: String,
}

impl fmt::Display for LeaseConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is leased to domain {}", self.lease, self.holder)
    }
}

/// The leases a configuration asks for: every static address, and the hostname when
/// `hostname_leases` is on (`leases.hostname`). Hostnames compare without case (DNS
/// does); addresses lose their prefix length (two domains on different subnets still
/// cannot share an address).
pub fn leases_of(config: &GuestConfig, hostname_leases: bool) -> Vec<Lease> {
    let mut out = Vec::new();
    if hostname_leases && let Some(h) = &config.hostname {
        out.push(Lease {
            kind: "hostname",
            value: h.as_str().to_ascii_lowercase(),
            path: "hostname".into(),
        });
    }
    if let Some(net) = &config.network {
        for (id, eth) in &net.ethernets {
            for (i, a) in eth.addresses.iter().enumerate() {
                out.push(Lease {
                    kind: "address",
                    value: a.0.addr().to_string(),
                    path: format!("network.ethernets.{id}.addresses[{i}]"),
                });
            }
        }
    }
    out
}

/// The first lease in `wanted` that a domain other than `name` holds, in document order
/// (so the error names the first field at fault). `holder_of` tells who holds a lease
/// now (`None`: free); a domain re-taking its own leases is no conflict.
pub fn first_conflict<E>(
    name: &str,
    wanted: &[Lease],
    mut holder_of: impl FnMut(&Lease) -> Result<Option<String>, E>,
) -> Result<Option<LeaseConflict>, E> {
    for lease in wanted {
        if let Some(holder) = holder_of(lease)?
            && holder != name
        {
            return Ok(Some(LeaseConflict {
                lease: lease.clone(),
                holder,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
