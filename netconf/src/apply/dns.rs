//! Step 4, the `dns` item: through the manager's files when DNS reaches the resolver
//! that way, else `/etc/resolv.conf` when nothing manages it. Also puts back the original
//! resolv.conf when ours is no longer needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::warn;
use xenchan_basics::chain;
use xenchan_basics::commit::Batch;
use xenchan_protocol::config::{Ethernet, InterfaceId};
use xenchan_protocol::{ItemResult, ItemStatus};

use super::Iface;
use crate::detect::{self, ResolvConf};
use crate::files::{self, Outcome};
use crate::manager::Manager;
use crate::plan::IfacePlan;
use crate::render;
use crate::state::{NetState, ResolvState};

/// Where a resolv.conf we replaced is kept, to be put back later.
const RESOLV_BACKUP: &str = "etc/resolv.conf.xenchan-orig";

/// The `dns` item's result (none when the document has no DNS settings), our
/// resolv.conf's state, and the settings as text (to tell `applied` from `unchanged`).
pub(super) struct Dns {
    pub result: Option<ItemResult>,
    pub resolv_state: Option<ResolvState>,
    pub text: Option<String>,
}

/// The `dns` item: through the manager's files, or `/etc/resolv.conf` when nothing
/// manages it. Also puts back the original resolv.conf when ours is no longer needed.
pub(super) fn apply(
    root: &Path,
    mgr: &dyn Manager,
    wanted: bool,
    ifaces: &[Iface],
    ethernets: &BTreeMap<InterfaceId, Ethernet>,
    prev: &NetState,
    batch: &Batch,
) -> Dns {
    let (result, resolv_state, text) = decide(root, mgr, wanted, ifaces, ethernets, prev, batch);
    Dns {
        result,
        resolv_state,
        text,
    }
}

type Outcome3 = (Option<ItemResult>, Option<ResolvState>, Option<String>);

fn decide(
    root: &Path,
    mgr: &dyn Manager,
    wanted: bool,
    ifaces: &[Iface],
    ethernets: &BTreeMap<InterfaceId, Ethernet>,
    prev: &NetState,
    batch: &Batch,
) -> Outcome3 {
    let renderer = mgr.renderer();
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
    let manager_does_it = mgr.carries_dns(&status);
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
        match restore_resolv(root, rs, batch) {
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
                    Some(ItemResult::failed(item, chain(&e))),
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
        return match files::write_ours(&path, f.content.as_bytes(), f.mode, batch) {
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
                Some(ItemResult::failed(item, chain(&e))),
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
    let left_out: Vec<String> = all.iter().filter_map(|p| mgr.dns_left_out(p)).collect();
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
fn restore_resolv(root: &Path, rs: &ResolvState, batch: &Batch) -> Result<(), String> {
    let path = root.join("etc/resolv.conf");
    match &rs.backup {
        Some(b) if crate::state::safe_relative(b) && root.join(b).exists() => {
            files::rename(&root.join(b), &path).map_err(|e| chain(&e))
        }
        _ => files::remove_ours(&path, batch)
            .map(drop)
            .map_err(|e| chain(&e)),
    }
}
