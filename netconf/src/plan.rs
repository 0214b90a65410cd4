//! The document's interfaces in the shape every renderer and the live applier work from:
//! addresses and routes split by family, default routes made explicit.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xenchan_protocol::config::{Ethernet, RouteTarget};

use crate::state::LiveRoute;

/// One interface to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfacePlan {
    /// The document's label (`eth0`, `lan`...), used in our file names.
    pub id: String,
    /// Lowercase, colon-separated.
    pub mac: String,
    /// Kernel name, resolved by MAC (needed by ifupdown; informative elsewhere).
    pub name: String,
    pub dhcp4: bool,
    pub dhcp6: bool,
    pub addrs4: Vec<IpNet>,
    pub addrs6: Vec<IpNet>,
    pub routes4: Vec<LiveRoute>,
    pub routes6: Vec<LiveRoute>,
    /// DNS servers in document order.
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
}

impl IfacePlan {
    pub(crate) fn new(id: &str, name: &str, eth: &Ethernet) -> IfacePlan {
        let mut p = IfacePlan {
            id: id.to_string(),
            mac: eth.matches.macaddress.as_str().to_string(),
            name: name.to_string(),
            dhcp4: eth.dhcp4,
            dhcp6: eth.dhcp6,
            addrs4: Vec::new(),
            addrs6: Vec::new(),
            routes4: Vec::new(),
            routes6: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
            mtu: eth.mtu,
        };
        for a in &eth.addresses {
            match a.0 {
                IpNet::V4(_) => p.addrs4.push(a.0),
                IpNet::V6(_) => p.addrs6.push(a.0),
            }
        }
        // gateway4/gateway6 (cloud-init v2) are default routes: one list for everyone.
        for r in &eth.all_routes() {
            let to = match r.to {
                RouteTarget::Net(n) => n,
                RouteTarget::Default => default_net(r.via),
            };
            let lr = LiveRoute {
                to,
                via: r.via,
                metric: r.metric,
            };
            if r.via.is_ipv4() {
                p.routes4.push(lr);
            } else {
                p.routes6.push(lr);
            }
        }
        if let Some(ns) = &eth.nameservers {
            p.dns.clone_from(&ns.addresses);
            p.search = ns.search.iter().map(|d| d.as_str().to_string()).collect();
        }
        p
    }

    /// Every address, IPv4 first.
    pub(crate) fn addrs(&self) -> impl Iterator<Item = &IpNet> {
        self.addrs4.iter().chain(&self.addrs6)
    }

    /// Every route, IPv4 first.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &LiveRoute> {
        self.routes4.iter().chain(&self.routes6)
    }

    pub(crate) fn has_dns(&self) -> bool {
        !self.dns.is_empty() || !self.search.is_empty()
    }
}

/// `0.0.0.0/0` or `::/0`, by the gateway's family.
pub(crate) fn default_net(via: IpAddr) -> IpNet {
    if via.is_ipv4() {
        IpNet::V4(Ipv4Net::default())
    } else {
        IpNet::V6(Ipv6Net::default())
    }
}
