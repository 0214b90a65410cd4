//! The entry point: decide the renderer and whether to go live, configure each interface,
//! write and prune our files, then DNS; report one result per item.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};
use xenchan_protocol::{GuestConfig, ItemResult, ItemStatus};

use crate::activate;
use crate::detect::{self, ResolvConf};
use crate::files::{self, FileError, Outcome};
use crate::links::{self, Link, LinkError};
use crate::live::{self, Journal, Netlink};
use crate::options::{LiveMode, NetOptions, RendererChoice};
use crate::plan::IfacePlan;
use crate::render::{self, Renderer};
use crate::state::{IfaceState, NetState, OwnedFile, ResolvState};

/// Where a resolv.conf we replaced is kept, to be put back later.
const RESOLV_BACKUP: &str = "etc/resolv.conf.xenchan-orig";

/// How one interface is doing while its item is worked out.
#[derive(Debug)]
struct Iface {
    id: String,
    /// `Err(reason)` once the item failed.
    result: Result<bool, String>,
    plan: Option<IfacePlan>,
    journal: Option<Journal>,
    live: Option<(Vec<ipnet::IpNet>, Vec<crate::state::LiveRoute>)>,
    /// The files are in place but the running manager did not take them.
    reload_error: Option<String>,
}

impl Iface {
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

/// Applies the `network:<id>` and `dns` items of `config` to the guest, blocking.
///
/// Returns one result per such item, in [`GuestConfig::items`] order, and the state to
/// persist and hand back next time (`previous`): the files we own and what we set live.
/// Nothing listed in `previous` that the new configuration still needs is touched
/// needlessly: a re-apply of the same configuration writes no file and answers
/// `unchanged`.
pub fn apply(
    opts: &NetOptions,
    config: &GuestConfig,
    previous: Option<&NetState>,
) -> (Vec<ItemResult>, NetState) {
    let prev = previous.cloned().unwrap_or_default();
    let empty = BTreeMap::new();
    let ethernets = config.network.as_ref().map_or(&empty, |n| &n.ethernets);
    let root = opts.root.as_path();

    let renderer = match opts.renderer {
        RendererChoice::Auto => detect::detect_renderer(root),
        RendererChoice::Networkd => Renderer::Networkd,
        RendererChoice::NetworkManager => Renderer::NetworkManager,
        RendererChoice::Netplan => Renderer::Netplan,
        RendererChoice::Ifupdown => Renderer::Ifupdown,
        RendererChoice::None => Renderer::None,
    };
    let go_live = match opts.live {
        LiveMode::Always => true,
        LiveMode::Never => false,
        LiveMode::Auto => renderer == Renderer::None || !detect::manager_running(root, renderer),
    };
    info!(%renderer, live = go_live, interfaces = ethernets.len(), "applying network configuration");

    // The kernel's view when going live (and the namespace's, with a netns), sysfs else.
    let mut nl = None;
    let links: Result<Vec<Link>, String> = if go_live || opts.netns.is_some() {
        match Netlink::open(opts.netns.as_deref()) {
            Ok(mut n) => {
                let l = n.links().map_err(|e| files::chain(&LinkError::Netlink(e)));
                nl = Some(n);
                l
            }
            Err(e) => Err(format!("cannot open rtnetlink: {e}")),
        }
    } else {
        links::links_from_sysfs(&opts.sysfs).map_err(|e| files::chain(&e))
    };
    let nl_live = if go_live { nl.as_mut() } else { None };
    let mut nl_live = nl_live;

    // 1. Find each interface by MAC; go live.
    let mut ifaces: Vec<Iface> = Vec::new();
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

    // 2. The manager's files.
    let mut new_files: Vec<OwnedFile> = Vec::new();
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    if renderer == Renderer::Ifupdown
        && let Some(why) = ifupdown_not_sourcing(root)
    {
        for it in ifaces.iter_mut().filter(|i| i.ok()) {
            it.fail(why.clone(), nl_live.as_deref_mut());
        }
    }
    if renderer == Renderer::Ifupdown {
        for it in ifaces.iter_mut().filter(|i| i.ok()) {
            let name = it.plan.as_ref().map_or("", |p| p.name.as_str());
            if !render::ifupdown_safe_name(name) {
                let why = format!(
                    "interface name {name:?} cannot be written into an ifupdown file safely \
                     (letters, digits, `_`, `-`, `.`, `@` only)"
                );
                it.fail(why, nl_live.as_deref_mut());
            }
        }
    }
    match renderer {
        Renderer::Networkd | Renderer::NetworkManager | Renderer::Ifupdown => {
            for it in ifaces.iter_mut().filter(|i| i.ok()) {
                let Some(f) = it
                    .plan
                    .as_ref()
                    .and_then(|p| render::interface_file(renderer, p))
                else {
                    continue;
                };
                match files::write_ours(&root.join(&f.path), f.content.as_bytes(), f.mode) {
                    Ok(o) => {
                        if o == Outcome::Written {
                            it.changed();
                        }
                        new_files.push(OwnedFile {
                            path: f.path,
                            interface: Some(it.id.clone()),
                        });
                    }
                    Err(e) => it.fail(files::chain(&e), nl_live.as_deref_mut()),
                }
            }
        }
        Renderer::Netplan => {
            // One file for all: a failed interface keeps its previous part.
            for it in &ifaces {
                let sec = match (&it.result, &it.plan) {
                    (Ok(_), Some(p)) => Some(render::netplan_section(p)),
                    _ => prev
                        .interfaces
                        .get(&it.id)
                        .and_then(|s| s.shared_section.clone()),
                };
                if let Some(sec) = sec {
                    sections.insert(it.id.clone(), sec);
                }
            }
            if !sections.is_empty() {
                let secs: Vec<&str> = sections.values().map(String::as_str).collect();
                let f = render::netplan_file(&secs);
                match files::write_ours(&root.join(&f.path), f.content.as_bytes(), f.mode) {
                    Ok(_) => {
                        for it in ifaces.iter_mut().filter(|i| i.ok()) {
                            let before = prev
                                .interfaces
                                .get(&it.id)
                                .and_then(|s| s.shared_section.as_ref());
                            if prev.renderer != Renderer::Netplan || before != sections.get(&it.id)
                            {
                                it.changed();
                            }
                        }
                        new_files.push(OwnedFile {
                            path: f.path,
                            interface: None,
                        });
                    }
                    Err(e) => {
                        let reason = files::chain(&e);
                        for it in ifaces.iter_mut().filter(|i| i.ok()) {
                            it.fail(reason.clone(), nl_live.as_deref_mut());
                        }
                        sections.clear();
                    }
                }
            }
        }
        Renderer::None => {
            // Nothing to write and nothing done live: the interface would not be
            // configured at all, which must not read as `unchanged`.
            if !go_live {
                for it in ifaces.iter_mut().filter(|i| i.ok()) {
                    it.result = Err(
                        "no network manager found in the guest root and live apply is off: \
                         nothing would configure this interface"
                            .into(),
                    );
                }
            }
        }
    }

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

    // 3. Files of ours that are no longer needed: removed, unless they belong to an
    // interface whose item failed (it keeps its previous state).
    let failed: BTreeSet<String> = ifaces
        .iter()
        .filter(|i| !i.ok())
        .map(|i| i.id.clone())
        .collect();
    let netplan_failed = renderer == Renderer::Netplan
        && !ifaces.is_empty()
        && ifaces.iter().all(|i| !i.ok())
        && sections.is_empty();
    let mut kept: Vec<OwnedFile> = Vec::new();
    for f in &prev.files {
        if new_files.iter().any(|n| n.path == f.path) {
            continue;
        }
        if !f.is_safe() || !is_ours_by_name(&f.path) {
            warn!(path = %f.path.display(), "ignoring a file in the saved state that is not one of ours");
            continue;
        }
        let keep = match &f.interface {
            Some(id) => failed.contains(id),
            None => netplan_failed,
        };
        if keep {
            kept.push(f.clone());
            continue;
        }
        match files::remove_ours(&root.join(&f.path)) {
            Ok(removed) => {
                debug!(path = %f.path.display(), removed, "dropped a file we no longer need");
                if removed
                    && let Some(id) = &f.interface
                    && let Some(it) = ifaces.iter_mut().find(|i| &i.id == id)
                {
                    it.changed();
                }
            }
            Err(FileError::NotOurs(p)) => {
                warn!(path = %p.display(), "a file we wrote lost its marker: leaving it alone and forgetting it");
            }
            Err(e) => {
                warn!(error = %files::chain(&e), "cannot remove a file we no longer need; will retry");
                kept.push(f.clone());
            }
        }
    }

    // 3b. A running manager picks up what changed.
    if opts.reload
        && opts.netns.is_none()
        && root == Path::new("/")
        && renderer != Renderer::None
        && detect::manager_running(root, renderer)
    {
        reload(renderer, &mut ifaces);
    }

    // 4. DNS.
    let dns_item = config.items().iter().any(|i| i == "dns");
    let (dns_result, resolv_state, dns_text) =
        apply_dns(root, renderer, dns_item, &ifaces, ethernets, &prev);

    // 5. Results and the new state. Live changes of successful items are kept (their
    // journals are simply dropped).
    let mut state = NetState {
        renderer,
        files: new_files,
        interfaces: BTreeMap::new(),
        resolv_conf: resolv_state,
        dns: dns_text,
    };
    state.files.extend(kept);
    let mut results = Vec::new();
    for it in &ifaces {
        let item = format!("network:{}", it.id);
        match (&it.result, &it.plan) {
            (Ok(changed), Some(plan)) => {
                let prev_i = prev.interfaces.get(&it.id);
                let (live_addresses, live_routes) = it.live.clone().unwrap_or_else(|| {
                    prev_i.map_or_else(Default::default, |p| {
                        (p.live_addresses.clone(), p.live_routes.clone())
                    })
                });
                state.interfaces.insert(
                    it.id.clone(),
                    IfaceState {
                        mac: plan.mac.clone(),
                        name: plan.name.clone(),
                        shared_section: sections.get(&it.id).cloned(),
                        pending_reload: it.reload_error.is_some(),
                        live_addresses,
                        live_routes,
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
    if let Some(r) = dns_result {
        results.push(r);
    }
    (results, state)
}

/// Runs the manager's commands for the interfaces that changed. A failing command marks
/// the interfaces it was for (all, for a global one) and stops there.
fn reload(renderer: Renderer, ifaces: &mut [Iface]) {
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
    for (owner, cmd) in activate::commands(renderer, &changed) {
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

/// Our files are named `xenchan-*`, `10-xenchan-*` or `90-xenchan.yaml`, or are
/// `etc/resolv.conf`; a saved state naming anything else is not trusted.
fn is_ours_by_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(render::is_our_file_name)
}

/// Why ifupdown would not read our files, if it would not: `/etc/network/interfaces` must
/// `source` (or `source-directory`) `/etc/network/interfaces.d`. We do not edit that file:
/// it is not ours.
fn ifupdown_not_sourcing(root: &Path) -> Option<String> {
    let p = root.join("etc/network/interfaces");
    let text = match files::read_regular(&p) {
        Ok(Some((b, _))) => String::from_utf8_lossy(&b).into_owned(),
        Ok(None) => String::new(),
        Err(e) => return Some(files::chain(&e)),
    };
    let sources = text.lines().any(|l| {
        let l = l.trim_start();
        (l.starts_with("source ") || l.starts_with("source-directory "))
            && l.contains("/etc/network/interfaces.d")
    });
    if sources {
        None
    } else {
        Some(
            "/etc/network/interfaces does not read /etc/network/interfaces.d \
             (add `source /etc/network/interfaces.d/*`); nothing written"
                .to_string(),
        )
    }
}

type DnsOutcome = (Option<ItemResult>, Option<ResolvState>, Option<String>);

/// The `dns` item: through the manager's files, or `/etc/resolv.conf` when nothing
/// manages it. Also puts back the original resolv.conf when ours is no longer needed.
fn apply_dns(
    root: &Path,
    renderer: Renderer,
    wanted: bool,
    ifaces: &[Iface],
    ethernets: &BTreeMap<xenchan_protocol::config::InterfaceId, xenchan_protocol::config::Ethernet>,
    prev: &NetState,
) -> DnsOutcome {
    // Every interface's DNS settings, whatever happened to the interface: resolv.conf is
    // global and does not depend on a link being there.
    let all: Vec<IfacePlan> = ethernets
        .iter()
        .filter(|(_, e)| e.nameservers.is_some())
        .map(|(id, e)| IfacePlan::new(id.as_str(), "", e))
        .collect();
    let text = wanted.then(|| {
        let refs: Vec<&IfacePlan> = all.iter().collect();
        render::resolv_conf(&refs).content
    });
    let status = detect::resolv_conf_status(root);
    let manager_does_it = match renderer {
        Renderer::NetworkManager => true,
        Renderer::Networkd | Renderer::Netplan | Renderer::Ifupdown => {
            matches!(status, ResolvConf::Symlink(_) | ResolvConf::Generated(_))
        }
        Renderer::None => false,
    };
    let we_write = wanted
        && !manager_does_it
        && matches!(
            status,
            ResolvConf::Missing | ResolvConf::Ours | ResolvConf::Unmanaged
        );

    // Ours but no longer needed: put the original back.
    let mut resolv_state = prev.resolv_conf.clone();
    if !we_write
        && let Some(rs) = &prev.resolv_conf
        && status == ResolvConf::Ours
    {
        match restore_resolv(root, rs) {
            Ok(()) => resolv_state = None,
            Err(e) => warn!(error = %e, "cannot put the original resolv.conf back; will retry"),
        }
    } else if !we_write && status != ResolvConf::Ours {
        resolv_state = None;
    }
    if !wanted {
        return (None, resolv_state, None);
    }

    let item = "dns";
    if we_write {
        let refs: Vec<&IfacePlan> = all.iter().collect();
        let f = render::resolv_conf(&refs);
        let path = root.join(&f.path);
        if status == ResolvConf::Unmanaged {
            let backup = root.join(RESOLV_BACKUP);
            if !backup.exists()
                && let Err(e) = files::rename(&path, &backup)
            {
                return (
                    Some(ItemResult::failed(item, files::chain(&e))),
                    resolv_state,
                    prev.dns.clone(),
                );
            }
            // An existing backup is the original from an earlier take-over: keep it.
            // The file in place now is the unmanaged one; replace it wholesale.
            if path.exists() {
                let _ = std::fs::remove_file(&path);
            }
            resolv_state = Some(ResolvState {
                backup: Some(PathBuf::from(RESOLV_BACKUP)),
            });
        } else if resolv_state.is_none() {
            resolv_state = Some(ResolvState { backup: None });
        }
        return match files::write_ours(&path, f.content.as_bytes(), f.mode) {
            Ok(o) => (
                Some(ItemResult::new(
                    item,
                    if o == Outcome::Written {
                        ItemStatus::Applied
                    } else {
                        ItemStatus::Unchanged
                    },
                )),
                resolv_state,
                text,
            ),
            Err(e) => (
                Some(ItemResult::failed(item, files::chain(&e))),
                resolv_state,
                prev.dns.clone(),
            ),
        };
    }
    if !manager_does_it {
        let who = match &status {
            ResolvConf::Symlink(t) => format!("a symlink to {}", t.display()),
            ResolvConf::Generated(g) => format!("generated by {g}"),
            _ => "managed elsewhere".into(),
        };
        return (
            Some(ItemResult::failed(
                item,
                format!(
                    "/etc/resolv.conf is {who}, and there is no network manager ({renderer}) to hand the DNS settings to"
                ),
            )),
            resolv_state,
            prev.dns.clone(),
        );
    }
    // Through the manager: the settings ride in each interface's configuration.
    let failed: Vec<String> = ifaces
        .iter()
        .filter(|i| {
            ethernets
                .iter()
                .any(|(id, e)| id.as_str() == i.id && e.nameservers.is_some())
        })
        .filter_map(|i| i.result.as_ref().err().map(|_| format!("`{}`", i.id)))
        .collect();
    if !failed.is_empty() {
        return (
            Some(ItemResult::failed(
                item,
                format!(
                    "the DNS settings of interface {} were not applied (see its item)",
                    failed.join(", ")
                ),
            )),
            resolv_state,
            prev.dns.clone(),
        );
    }
    let changed = text != prev.dns || prev.renderer != renderer || prev.resolv_conf.is_some();
    let left_out: Vec<String> = if renderer == Renderer::NetworkManager {
        all.iter().filter_map(render::nm_dns_left_out).collect()
    } else {
        Vec::new()
    };
    if !left_out.is_empty() {
        // The rest is in the keyfiles; what NetworkManager cannot take is said, not hidden.
        return (
            Some(ItemResult {
                item: item.to_string(),
                status: ItemStatus::Unsupported,
                reason: Some(left_out.join("; ")),
            }),
            resolv_state,
            text,
        );
    }
    (
        Some(ItemResult::new(
            item,
            if changed {
                ItemStatus::Applied
            } else {
                ItemStatus::Unchanged
            },
        )),
        resolv_state,
        text,
    )
}

/// Puts the resolv.conf we replaced back (or removes ours if there was none).
fn restore_resolv(root: &Path, rs: &ResolvState) -> Result<(), String> {
    let path = root.join("etc/resolv.conf");
    match &rs.backup {
        Some(b) if crate::state::safe_relative(b) && root.join(b).exists() => {
            files::rename(&root.join(b), &path).map_err(|e| files::chain(&e))
        }
        _ => files::remove_ours(&path)
            .map(drop)
            .map_err(|e| files::chain(&e)),
    }
}
