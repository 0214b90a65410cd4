//! Live apply over rtnetlink: MTU, link up, addresses and routes of one interface, with
//! a journal of every change so that a failure puts the interface back as it was.

mod netlink;
mod watch;

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

pub(crate) use netlink::Netlink;
use netlink::{Addr, Route, describe};
pub use watch::{Drained, LinkChanges, LinkWatch};

use crate::links::Link;
use crate::plan::IfacePlan;
use crate::state::{IfaceState, LiveRoute};

/// RTPROT_KERNEL: routes the kernel derives from addresses; they come back with them.
const PROTO_KERNEL: u8 = 2;
/// RTPROT_STATIC: what we add (an administrator's route).
const PROTO_STATIC: u8 = 4;
/// RTN_UNICAST.
const RTN_UNICAST: u8 = 1;
/// RT_SCOPE_UNIVERSE.
const SCOPE_UNIVERSE: u8 = 0;
/// RT_SCOPE_LINK.
const SCOPE_LINK: u8 = 253;

/// One change to the running kernel.
#[derive(Debug, Clone)]
enum Step {
    SetMtu { from: u32, to: u32 },
    SetUp,
    DelRoute(Route),
    AddAddr(Addr),
    DelAddr(Addr),
    AddRoute(Route),
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::SetMtu { from, to } => format!("mtu {from} -> {to}"),
            Step::SetUp => "link up".into(),
            Step::DelRoute(r) => format!("remove route {}", route_text(r)),
            Step::AddAddr(a) => format!("address {}", a.net),
            Step::DelAddr(a) => format!("remove address {}", a.net),
            Step::AddRoute(r) => format!("route {}", route_text(r)),
        }
    }

    fn run(&self, nl: &mut Netlink, index: u32) -> io::Result<()> {
        match self {
            Step::SetMtu { to, .. } => nl.set_mtu(index, *to),
            Step::SetUp => nl.set_up(index, true),
            Step::DelRoute(r) => nl.del_route(index, r),
            Step::AddAddr(a) => nl.add_address(index, a),
            Step::DelAddr(a) => nl.del_address(index, a),
            Step::AddRoute(r) => nl.add_route(index, r),
        }
    }

    fn undo(&self, nl: &mut Netlink, index: u32) -> io::Result<()> {
        match self {
            Step::SetMtu { from, .. } => nl.set_mtu(index, *from),
            Step::SetUp => nl.set_up(index, false),
            Step::DelRoute(r) => nl.add_route(index, r),
            Step::AddAddr(a) => nl.del_address(index, a),
            Step::DelAddr(a) => nl.add_address(index, a),
            Step::AddRoute(r) => nl.del_route(index, r),
        }
    }

    /// How the undo is reported: `mtu`, `link state`, `address X`, `route Y`.
    fn undo_label(&self) -> (&'static str, String) {
        match self {
            Step::SetMtu { .. } => ("mtu", String::new()),
            Step::SetUp => ("link state", String::new()),
            Step::AddAddr(a) | Step::DelAddr(a) => ("addresses", a.net.to_string()),
            Step::AddRoute(r) | Step::DelRoute(r) => ("routes", route_text(r)),
        }
    }
}

fn route_text(r: &Route) -> String {
    let mut s = r.to.to_string();
    if let Some(g) = r.via {
        let _ = write!(s, " via {g}");
    }
    let _ = write!(s, " metric {}", r.metric);
    s
}

/// What the interface looked like before we touched it.
#[derive(Debug, Clone)]
struct Snapshot {
    addrs: Vec<Addr>,
    routes: Vec<Route>,
}

/// The changes made to one interface, kept until the rest of its item succeeded.
#[derive(Debug)]
pub(crate) struct Journal {
    index: u32,
    done: Vec<Step>,
    snapshot: Snapshot,
}

/// A successful live apply.
#[derive(Debug)]
pub(crate) struct Applied {
    /// Whether anything changed.
    pub changed: bool,
    /// How to undo it.
    pub journal: Journal,
    /// Addresses of the plan that are ours (we added them now or before).
    pub addresses: Vec<IpNet>,
    /// Routes of the plan that are ours.
    pub routes: Vec<LiveRoute>,
}

fn effective_metric(r: &LiveRoute) -> u32 {
    // The kernel stores IPv6 routes added without a metric at 1024 (IP6_RT_PRIO_USER).
    r.metric.unwrap_or(if r.via.is_ipv6() { 1024 } else { 0 })
}

fn to_route(r: &LiveRoute) -> Route {
    Route {
        to: r.to,
        via: Some(r.via),
        metric: effective_metric(r),
        protocol: PROTO_STATIC,
        scope: SCOPE_UNIVERSE,
        kind: RTN_UNICAST,
    }
}

fn same_route(k: &Route, r: &LiveRoute) -> bool {
    k.to == r.to && k.via == Some(r.via) && k.metric == effective_metric(r)
}

fn addr_scope(net: &IpNet) -> u8 {
    match net.addr() {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => SCOPE_LINK,
        _ => SCOPE_UNIVERSE,
    }
}

/// Brings the interface to the plan. On failure, everything done is undone and the
/// error says which step failed and what was rolled back.
pub(crate) fn apply_iface(
    nl: &mut Netlink,
    link: &Link,
    plan: &IfacePlan,
    prev: Option<&IfaceState>,
    fail_at: Option<usize>,
) -> Result<Applied, String> {
    let index = link.index;
    let read = |what: &str, e: io::Error| {
        format!("cannot read the {what} of {}: {}", link.name, describe(&e))
    };
    let state = nl.link_state(index).map_err(|e| read("state", e))?;
    let addrs = nl.addresses(index).map_err(|e| read("addresses", e))?;
    let routes = nl.routes(index).map_err(|e| read("routes", e))?;
    let snapshot = Snapshot {
        addrs: addrs.clone(),
        routes: routes.clone(),
    };

    let prev_addrs: &[IpNet] = prev.map_or(&[], |p| &p.live_addresses);
    let prev_routes: &[LiveRoute] = prev.map_or(&[], |p| &p.live_routes);
    let want_addrs: Vec<IpNet> = plan.addrs().copied().collect();
    let want_routes: Vec<LiveRoute> = plan.routes().copied().collect();

    let mut steps = Vec::new();
    if let Some(mtu) = plan.mtu
        && mtu != state.mtu
    {
        steps.push(Step::SetMtu {
            from: state.mtu,
            to: mtu,
        });
    }
    if !state.up {
        steps.push(Step::SetUp);
    }
    // Ours from before and no longer wanted: removed. Others' are never touched.
    for r in prev_routes.iter().filter(|r| !want_routes.contains(r)) {
        if let Some(k) = routes.iter().find(|k| same_route(k, r)) {
            steps.push(Step::DelRoute(*k));
        }
    }
    // Old addresses go before new ones: deleting the primary address of a subnet also
    // deletes its secondaries (net.ipv4.conf.*.promote_secondaries is off by default), so
    // a new address in the same subnet added first would vanish with the old one.
    for a in prev_addrs.iter().filter(|a| !want_addrs.contains(a)) {
        if let Some(k) = addrs.iter().find(|k| k.net == *a) {
            steps.push(Step::DelAddr(*k));
        }
    }
    for a in &want_addrs {
        if !addrs.iter().any(|k| k.net == *a) {
            steps.push(Step::AddAddr(Addr {
                net: *a,
                scope: addr_scope(a),
            }));
        }
    }
    for r in &want_routes {
        if !routes.iter().any(|k| same_route(k, r)) {
            steps.push(Step::AddRoute(to_route(r)));
        }
    }

    let mut journal = Journal {
        index,
        done: Vec::new(),
        snapshot,
    };
    for (i, step) in steps.iter().enumerate() {
        let result = if fail_at == Some(i) {
            Err(io::Error::other("injected failure (test hook)"))
        } else {
            step.run(nl, index)
        };
        if let Err(e) = result {
            let undone = rollback(nl, journal);
            return Err(format!("{}: {}; {undone}", step.describe(), describe(&e)));
        }
        journal.done.push(step.clone());
    }

    // Deleting an address also drops the routes through it, wanted ones included: put
    // them back, and check that every wanted address is really there before saying so.
    if !want_routes.is_empty() && steps.iter().any(|s| matches!(s, Step::DelAddr(_))) {
        let now = nl.routes(index).map_err(|e| read("routes", e))?;
        let repairs: Vec<Step> = want_routes
            .iter()
            .filter(|r| !now.iter().any(|k| same_route(k, r)))
            .map(|r| Step::AddRoute(to_route(r)))
            .collect();
        for step in repairs {
            if let Err(e) = step.run(nl, index) {
                let undone = rollback(nl, journal);
                return Err(format!("{}: {}; {undone}", step.describe(), describe(&e)));
            }
            journal.done.push(step.clone());
            steps.push(step);
        }
    }
    if !steps.is_empty() {
        let now = nl.addresses(index).map_err(|e| read("addresses", e))?;
        if let Some(a) = want_addrs
            .iter()
            .find(|a| !now.iter().any(|k| k.net == **a))
        {
            let undone = rollback(nl, journal);
            return Err(format!(
                "address {a} is missing from {} after applying; {undone}",
                link.name
            ));
        }
    }

    let added_addrs: Vec<IpNet> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AddAddr(a) => Some(a.net),
            _ => None,
        })
        .collect();
    let added_routes: Vec<Route> = steps
        .iter()
        .filter_map(|s| match s {
            Step::AddRoute(r) => Some(*r),
            _ => None,
        })
        .collect();
    Ok(Applied {
        changed: !steps.is_empty(),
        journal,
        addresses: want_addrs
            .iter()
            .filter(|a| added_addrs.contains(a) || prev_addrs.contains(a))
            .copied()
            .collect(),
        routes: want_routes
            .iter()
            .filter(|r| added_routes.iter().any(|k| same_route(k, r)) || prev_routes.contains(r))
            .copied()
            .collect(),
    })
}

/// Undoes a journal (newest first), then puts back any address or route of the snapshot
/// that is still missing (removing an address also drops the routes through it).
/// Returns what was rolled back, for the item's reason.
// Taken by value: a journal is undone once, never reused.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn rollback(nl: &mut Netlink, journal: Journal) -> String {
    let index = journal.index;
    let mut undone: Vec<(&'static str, Vec<String>)> = Vec::new();
    let mut problems = Vec::new();
    for step in journal.done.iter().rev() {
        let (label, item) = step.undo_label();
        match step.undo(nl, index) {
            Ok(()) => match undone.iter_mut().find(|(l, _)| *l == label) {
                Some((_, items)) => items.push(item),
                None => undone.push((label, vec![item])),
            },
            Err(e) => problems.push(format!(
                "undoing {} failed: {}",
                step.describe(),
                describe(&e)
            )),
        }
    }
    if let Ok(now) = nl.addresses(index) {
        for a in &journal.snapshot.addrs {
            if !now.iter().any(|k| k.net == a.net)
                && let Err(e) = nl.add_address(index, a)
            {
                problems.push(format!(
                    "restoring address {} failed: {}",
                    a.net,
                    describe(&e)
                ));
            }
        }
    }
    if let Ok(now) = nl.routes(index) {
        for r in &journal.snapshot.routes {
            let missing = !now
                .iter()
                .any(|k| k.to == r.to && k.via == r.via && k.metric == r.metric);
            if missing
                && r.protocol != PROTO_KERNEL
                && r.kind == RTN_UNICAST
                && let Err(e) = nl.add_route(index, r)
            {
                problems.push(format!(
                    "restoring route {} failed: {}",
                    route_text(r),
                    describe(&e)
                ));
            }
        }
    }
    let mut s = if undone.is_empty() {
        "nothing to roll back".to_string()
    } else {
        let parts: Vec<String> = undone
            .iter()
            .map(|(label, items)| {
                let items: Vec<&String> = items.iter().filter(|i| !i.is_empty()).collect();
                if items.is_empty() {
                    (*label).to_string()
                } else {
                    format!(
                        "{label} [{}]",
                        items
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            })
            .collect();
        format!("rolled back {}", join_and(&parts))
    };
    for p in problems {
        s.push_str("; ");
        s.push_str(&p);
    }
    s
}

fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}
