//! What keeps the guest's network as the document says between pushes: which MACs the
//! failed interface items wait for (applied again when such a link appears, see
//! [`crate::LinkWatch`]), and putting back at boot what only ever lived in the running
//! kernel (no manager's files carry it).

use std::collections::BTreeSet;
use std::path::Path;

use tracing::{info, warn};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use crate::links;
use crate::live::{self, Netlink};
use crate::plan::IfacePlan;
use crate::render::Renderer;
use crate::state::{IfaceState, NetState};

/// MACs of the document's interfaces whose `network:<id>` item failed in `results`:
/// what a link appearing may fix (an interface the guest does not have yet, hotplugged
/// later). Items that applied, or are absent from `results`, wait for nothing.
pub fn waiting_macs(config: &GuestConfig, results: &[ItemResult]) -> BTreeSet<String> {
    let Some(net) = &config.network else {
        return BTreeSet::new();
    };
    net.ethernets
        .iter()
        .filter(|(id, _)| {
            let item = format!("network:{}", id.as_str());
            results
                .iter()
                .any(|r| r.item == item && r.status == ItemStatus::Failed)
        })
        .map(|(_, eth)| eth.matches.macaddress.as_str().to_string())
        .collect()
}

/// Whether `state` describes a configuration that exists only in the running kernel:
/// no manager's files were written (renderer `none`) and something was set live. Such
/// addresses and routes vanish at reboot and nothing but us brings them back.
pub fn is_live_only(state: &NetState) -> bool {
    state.renderer == Renderer::None
        && state
            .interfaces
            .values()
            .any(|i| !i.live_addresses.is_empty() || !i.live_routes.is_empty())
}

/// What [`restore_live`] did for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Addresses, routes and MTU were put back (`true`) or were all there (`false`).
    Done {
        /// The document's label.
        id: String,
        /// Whether anything changed.
        changed: bool,
    },
    /// No link has the interface's MAC (yet): wait for it to appear.
    Missing {
        /// The document's label.
        id: String,
        /// The MAC it is chosen by.
        mac: String,
    },
    /// The kernel refused; everything done for this interface was rolled back.
    Failed {
        /// The document's label.
        id: String,
        /// Which step failed and what was rolled back.
        reason: String,
    },
}

/// Puts back what `state` says we set live (addresses, routes, MTU, link up) on each
/// interface found by MAC, in the caller's namespace or `netns`, blocking. Idempotent:
/// what is there is left alone, and nothing is removed (the wanted set is exactly what
/// the state lists as ours). `only` limits it to interfaces with these MACs.
pub fn restore_live(
    netns: Option<&Path>,
    state: &NetState,
    only: Option<&BTreeSet<String>>,
) -> Result<Vec<Restored>, String> {
    let mut nl = Netlink::open(netns).map_err(|e| format!("cannot open rtnetlink: {e}"))?;
    let found = nl
        .links()
        .map_err(|e| format!("cannot list interfaces over rtnetlink: {e}"))?;
    let mut out = Vec::new();
    for (id, iface) in &state.interfaces {
        if iface.live_addresses.is_empty() && iface.live_routes.is_empty() {
            continue;
        }
        if only.is_some_and(|o| !o.contains(&iface.mac)) {
            continue;
        }
        let Ok(link) = links::find_by_mac(&found, &iface.mac) else {
            out.push(Restored::Missing {
                id: id.clone(),
                mac: iface.mac.clone(),
            });
            continue;
        };
        let plan = plan_of(id, &link.name, iface);
        match live::apply_iface(&mut nl, link, &plan, Some(iface), None) {
            Ok(a) => {
                if a.changed {
                    info!(interface = %id, link = %link.name, "live addresses restored");
                }
                out.push(Restored::Done {
                    id: id.clone(),
                    changed: a.changed,
                });
            }
            Err(reason) => {
                warn!(interface = %id, link = %link.name, %reason, "cannot restore live addresses");
                out.push(Restored::Failed {
                    id: id.clone(),
                    reason,
                });
            }
        }
    }
    Ok(out)
}

/// The plan that brings an interface back to what we set live, and nothing else.
fn plan_of(id: &str, name: &str, s: &IfaceState) -> IfacePlan {
    let (addrs4, addrs6) = s.live_addresses.iter().partition(|a| a.addr().is_ipv4());
    let (routes4, routes6) = s.live_routes.iter().partition(|r| r.via.is_ipv4());
    IfacePlan {
        id: id.to_string(),
        mac: s.mac.clone(),
        name: name.to_string(),
        dhcp4: false,
        dhcp6: false,
        addrs4,
        addrs6,
        routes4,
        routes6,
        dns: Vec::new(),
        search: Vec::new(),
        mtu: s.live_mtu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> GuestConfig {
        GuestConfig::from_json(
            br#"{"network":{"version":2,"ethernets":{
                "a":{"match":{"macaddress":"00:16:3e:00:00:0a"},"addresses":["192.0.2.10/24"]},
                "b":{"match":{"macaddress":"00:16:3e:00:00:0b"},"addresses":["192.0.2.11/24"]}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn waiting_macs_are_those_of_failed_interface_items() {
        type Case<'a> = (&'a [(&'a str, ItemStatus)], &'a [&'a str]);
        let cases: [Case<'_>; 4] = [
            (&[], &[]),
            (
                &[
                    ("network:a", ItemStatus::Applied),
                    ("network:b", ItemStatus::Unchanged),
                ],
                &[],
            ),
            (
                &[
                    ("network:a", ItemStatus::Failed),
                    ("network:b", ItemStatus::Applied),
                    ("dns", ItemStatus::Failed),
                ],
                &["00:16:3e:00:00:0a"],
            ),
            (
                &[
                    ("network:a", ItemStatus::Failed),
                    ("network:b", ItemStatus::Failed),
                ],
                &["00:16:3e:00:00:0a", "00:16:3e:00:00:0b"],
            ),
        ];
        for (results, want) in cases {
            let results: Vec<ItemResult> = results
                .iter()
                .map(|(i, s)| ItemResult::new(*i, *s))
                .collect();
            let got: Vec<String> = waiting_macs(&doc(), &results).into_iter().collect();
            assert_eq!(got, want, "{results:?}");
        }
        assert!(waiting_macs(&GuestConfig::default(), &[]).is_empty());
    }

    #[test]
    fn live_only_means_no_manager_and_something_set_live() {
        let mut s = NetState::default();
        assert!(!is_live_only(&s), "nothing set live");
        s.interfaces.insert(
            "a".into(),
            IfaceState {
                mac: "00:16:3e:00:00:0a".into(),
                live_addresses: vec!["192.0.2.10/24".parse().unwrap()],
                ..IfaceState::default()
            },
        );
        assert!(is_live_only(&s));
        s.renderer = Renderer::Networkd;
        assert!(!is_live_only(&s), "the manager's files bring it back");
    }

    #[test]
    fn the_restore_plan_is_exactly_what_was_set_live() {
        let s = IfaceState {
            mac: "00:16:3e:00:00:0a".into(),
            name: "old".into(),
            live_addresses: vec![
                "192.0.2.10/24".parse().unwrap(),
                "2001:db8::10/64".parse().unwrap(),
            ],
            live_routes: vec![crate::LiveRoute {
                to: "0.0.0.0/0".parse().unwrap(),
                via: "192.0.2.1".parse().unwrap(),
                metric: None,
            }],
            live_mtu: Some(1400),
            ..IfaceState::default()
        };
        let p = plan_of("a", "eth1", &s);
        assert_eq!(p.name, "eth1");
        assert_eq!(p.addrs().count(), 2);
        assert_eq!(p.addrs4.len(), 1);
        assert_eq!(p.routes4.len(), 1);
        assert!(p.routes6.is_empty() && !p.dhcp4 && !p.has_dns());
        assert_eq!(p.mtu, Some(1400));
    }
}
