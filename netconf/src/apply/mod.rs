//! The entry point, as steps the same for every manager ([`crate::manager::Manager`]):
//! choose the manager and whether to go live; find each interface by MAC and apply it
//! live; render, validate with the manager's own parser, and write its files
//! ([`files`]); prune files no longer needed; tell a running manager; DNS ([`dns`]);
//! report one result per item.

mod dns;
mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use xenchan_basics::chain;
use xenchan_basics::commit::Batch;
use xenchan_protocol::config::{Ethernet, InterfaceId};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use crate::activate;
use crate::detect;
use crate::links::{self, Link, LinkError};
use crate::live::{self, Journal, Netlink};
use crate::manager::{self, Manager, Tools};
use crate::options::{LiveMode, NetOptions, RendererChoice};
use crate::plan::IfacePlan;
use crate::render::Renderer;
use crate::state::{IfaceState, LiveRoute, NetState};

/// How one interface is doing while its item is worked out.
#[derive(Debug)]
struct Iface {
    id: String,
    /// `Ok(changed)`, or `Err(reason)` once the item failed.
    result: Result<bool, String>,
    plan: Option<IfacePlan>,
    journal: Option<Journal>,
    live: Option<(Vec<ipnet::IpNet>, Vec<LiveRoute>)>,
    /// The files are in place but the running manager did not take them.
    reload_error: Option<String>,
}

impl Iface {
    /// Fails the item; what was done live for it is rolled back.
    fn fail(&mut self, reason: String, nl: Option<&mut Netlink>) {
        let mut reason = reason;
        if let (Some(j), Some(nl)) = (self.journal.take(), nl) {
            let undone = live::rollback(nl, j);
            reason = format!("{reason}; live changes: {undone}");
        }
        self.result = Err(reason);
    }

    fn ok(&self) -> bool {
        self.result.is_ok()
    }

    fn changed(&mut self) {
        if let Ok(c) = &mut self.result {
            *c = true;
        }
    }
}

/// Applies the `network:<id>` and `dns` items of `config` to the guest, blocking, its
/// files made durable in one commit before it returns (see [`apply_in`]). A commit that
/// fails fails every item that changed something, naming the file and the step.
pub fn apply(
    opts: &NetOptions,
    config: &GuestConfig,
    previous: Option<&NetState>,
) -> (Vec<ItemResult>, NetState) {
    let batch = Batch::new();
    let (mut results, state) = apply_in(opts, config, previous, &batch);
    if let Err(e) = batch.commit() {
        fail_changed(&mut results, &chain(&e));
    }
    (results, state)
}

/// Every `applied` item becomes `failed`: its files did not all reach the disk.
pub fn fail_changed(results: &mut [ItemResult], why: &str) {
    for r in results
        .iter_mut()
        .filter(|r| r.status == ItemStatus::Applied)
    {
        *r = ItemResult::failed(
            r.item.clone(),
            format!("the changed files could not be put in place: {why}"),
        );
    }
}

/// Applies the `network:<id>` and `dns` items of `config` to the guest, blocking; the
/// files it writes or removes are staged in `batch`, which the caller commits (with the
/// other files of the push). When the running network manager must be told, the batch
/// is committed first, so that the manager reads the new files.
///
/// Returns one result per such item, in [`GuestConfig::items`] order, and the state to
/// persist and hand back next time (`previous`): the files we own and what we set live.
/// Nothing listed in `previous` that the new configuration still needs is touched
/// needlessly: a re-apply of the same configuration writes no file and answers
/// `unchanged`.
pub fn apply_in(
    opts: &NetOptions,
    config: &GuestConfig,
    previous: Option<&NetState>,
    batch: &Batch,
) -> (Vec<ItemResult>, NetState) {
    let prev = previous.cloned().unwrap_or_default();
    let empty = BTreeMap::new();
    let ethernets = config.network.as_ref().map_or(&empty, |n| &n.ethernets);
    let root = opts.root.as_path();

    let renderer = choose(opts, config);
    let mgr = manager::of(renderer);
    let go_live = match opts.live {
        LiveMode::Always => true,
        LiveMode::Never => false,
        LiveMode::Auto => renderer == Renderer::None || !mgr.running(root),
    };
    info!(%renderer, live = go_live, interfaces = ethernets.len(), "applying network configuration");

    let (mut nl, links) = open_links(opts, go_live);
    let mut nl_live = if go_live { nl.as_mut() } else { None };

    let mut ifaces = locate(ethernets, &links, go_live, &mut nl_live, &prev, opts);
    let tools = Tools::new(
        opts.tools
            .clone()
            .or_else(|| (root == Path::new("/")).then(|| PathBuf::from("/"))),
    );
    let written = files::write(
        mgr,
        root,
        &tools,
        go_live,
        &mut ifaces,
        &prev,
        &mut nl_live,
        batch,
    );

    // An earlier reload failed: do it again even if the files are unchanged.
    for it in &mut ifaces {
        if prev
            .interfaces
            .get(&it.id)
            .is_some_and(|p| p.pending_reload)
        {
            it.changed();
        }
    }
    let kept = files::prune(root, renderer, &mut ifaces, &prev, &written, batch);

    if opts.reload
        && opts.netns.is_none()
        && root == Path::new("/")
        && renderer != Renderer::None
        && mgr.running(root)
    {
        // The manager reads the files: they go in place (durably) before it is told.
        match batch.commit() {
            Ok(_) => reload(mgr, &mut ifaces),
            Err(e) => {
                let why = format!("the changed files could not be put in place: {}", chain(&e));
                for it in ifaces.iter_mut().filter(|i| matches!(i.result, Ok(true))) {
                    it.fail(why.clone(), nl_live.as_deref_mut());
                }
            }
        }
    }

    let dns_item = config.items().iter().any(|i| i == "dns");
    let dns = dns::apply(root, mgr, dns_item, &ifaces, ethernets, &prev, batch);

    let mut state = NetState {
        renderer,
        files: written.files,
        interfaces: BTreeMap::new(),
        resolv_conf: dns.resolv_state,
        dns: dns.text,
    };
    state.files.extend(kept);
    let mut results = report(&ifaces, &written.sections, &prev, &mut state);
    results.extend(dns.result);
    (results, state)
}

/// The manager: forced by the options, else the document's `renderer` hint when the
/// guest uses that manager, else detected.
fn choose(opts: &NetOptions, config: &GuestConfig) -> Renderer {
    match opts.renderer {
        RendererChoice::Auto => {
            detect::choose_renderer(&opts.root, config.network.as_ref().and_then(|n| n.renderer))
        }
        RendererChoice::Networkd => Renderer::Networkd,
        RendererChoice::NetworkManager => Renderer::NetworkManager,
        RendererChoice::Netplan => Renderer::Netplan,
        RendererChoice::Ifupdown => Renderer::Ifupdown,
        RendererChoice::None => Renderer::None,
    }
}

/// The kernel's view of the links when going live (and the namespace's, with a netns),
/// sysfs else.
fn open_links(opts: &NetOptions, go_live: bool) -> (Option<Netlink>, Result<Vec<Link>, String>) {
    if go_live || opts.netns.is_some() {
        match Netlink::open(opts.netns.as_deref()) {
            Ok(mut n) => {
                let l = n.links().map_err(|e| chain(&LinkError::Netlink(e)));
                (Some(n), l)
            }
            Err(e) => (None, Err(format!("cannot open rtnetlink: {e}"))),
        }
    } else {
        (
            None,
            links::links_from_sysfs(&opts.sysfs).map_err(|e| chain(&e)),
        )
    }
}

/// Step 1: each interface found by MAC and planned; applied live when asked.
fn locate(
    ethernets: &BTreeMap<InterfaceId, Ethernet>,
    links: &Result<Vec<Link>, String>,
    go_live: bool,
    nl_live: &mut Option<&mut Netlink>,
    prev: &NetState,
    opts: &NetOptions,
) -> Vec<Iface> {
    let mut ifaces = Vec::new();
    for (id, eth) in ethernets {
        let mut it = Iface {
            id: id.as_str().to_string(),
            result: Ok(false),
            plan: None,
            journal: None,
            live: None,
            reload_error: None,
        };
        let mac = eth.matches.macaddress.as_str();
        match links
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|ls| links::find_by_mac(ls, mac).cloned())
        {
            Err(reason) => it.result = Err(reason),
            Ok(link) => {
                let plan = IfacePlan::new(id.as_str(), &link.name, eth);
                if go_live {
                    match nl_live.as_deref_mut() {
                        None => it.result = Err("rtnetlink is not available".into()),
                        Some(nl) => match live::apply_iface(
                            nl,
                            &link,
                            &plan,
                            prev.interfaces.get(id.as_str()),
                            opts.fail_after_step,
                        ) {
                            Ok(a) => {
                                it.result = Ok(a.changed);
                                it.journal = Some(a.journal);
                                it.live = Some((a.addresses, a.routes));
                            }
                            Err(reason) => {
                                it.result = Err(format!("live apply failed: {reason}"));
                            }
                        },
                    }
                }
                it.plan = Some(plan);
            }
        }
        ifaces.push(it);
    }
    ifaces
}

/// Runs the manager's commands for the interfaces that changed. A failing command marks
/// the interfaces it was for (all, for a global one) and stops there.
fn reload(mgr: &dyn Manager, ifaces: &mut [Iface]) {
    let changed: Vec<activate::Changed> = ifaces
        .iter()
        .filter(|i| matches!(i.result, Ok(true)))
        .filter_map(|i| {
            i.plan.as_ref().map(|p| activate::Changed {
                id: i.id.clone(),
                name: p.name.clone(),
            })
        })
        .collect();
    if changed.is_empty() {
        return;
    }
    for (owner, cmd) in mgr.activate(&changed) {
        info!(command = %cmd.join(" "), "asking the network manager to apply");
        if let Err(e) = activate::run(&cmd) {
            warn!(error = %e, "the network manager did not apply our configuration");
            for it in ifaces.iter_mut().filter(|i| matches!(i.result, Ok(true))) {
                if owner.as_ref().is_none_or(|o| *o == it.id) {
                    it.reload_error = Some(e.clone());
                }
            }
            if owner.is_none() {
                return;
            }
        }
    }
}

/// The last step: one result per interface, in order, and each interface's new state (a
/// failed one keeps its previous state). Live changes of successful items are kept
/// (their journals are simply dropped).
fn report(
    ifaces: &[Iface],
    sections: &BTreeMap<String, String>,
    prev: &NetState,
    state: &mut NetState,
) -> Vec<ItemResult> {
    let mut results = Vec::new();
    for it in ifaces {
        let item = format!("network:{}", it.id);
        match (&it.result, &it.plan) {
            (Ok(changed), Some(plan)) => {
                let prev_i = prev.interfaces.get(&it.id);
                let (live_addresses, live_routes, live_mtu) = match &it.live {
                    Some((a, r)) => (a.clone(), r.clone(), plan.mtu),
                    None => prev_i.map_or_else(Default::default, |p| {
                        (p.live_addresses.clone(), p.live_routes.clone(), p.live_mtu)
                    }),
                };
                state.interfaces.insert(
                    it.id.clone(),
                    IfaceState {
                        mac: plan.mac.clone(),
                        name: plan.name.clone(),
                        shared_section: sections.get(&it.id).cloned(),
                        pending_reload: it.reload_error.is_some(),
                        live_addresses,
                        live_routes,
                        live_mtu,
                    },
                );
                if let Some(e) = &it.reload_error {
                    results.push(ItemResult::failed(
                        item,
                        format!("configuration written, but the manager did not apply it: {e}"),
                    ));
                    continue;
                }
                results.push(ItemResult::new(
                    item,
                    if *changed {
                        ItemStatus::Applied
                    } else {
                        ItemStatus::Unchanged
                    },
                ));
            }
            (Err(reason), _) => {
                if let Some(p) = prev.interfaces.get(&it.id) {
                    state.interfaces.insert(it.id.clone(), p.clone());
                }
                results.push(ItemResult::failed(item, reason.clone()));
            }
            (Ok(_), None) => {
                results.push(ItemResult::failed(item, "internal: no plan"));
            }
        }
    }
    results
}
