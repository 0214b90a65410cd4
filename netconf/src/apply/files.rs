//! Steps 2 and 3: the manager's files. Rendered per interface (a file of its own, or its
//! section of a shared file), checked by the manager's own parser, written only when they
//! change; then our files that are no longer needed are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tracing::{debug, warn};
use xenchan_basics::chain;
use xenchan_basics::commit::Batch;

use super::Iface;
use crate::files::{self, FileError, Outcome};
use crate::live::Netlink;
use crate::manager::{Manager, Rendered, Tools};
use crate::render::{self, RenderedFile, Renderer};
use crate::state::{NetState, OwnedFile};

/// What step 2 wrote: our files, and each interface's section of a shared file.
pub(super) struct Written {
    pub files: Vec<OwnedFile>,
    pub sections: BTreeMap<String, String>,
}

/// Step 2: preflight, render, validate, write, for every interface still standing. A
/// failed interface keeps its previous files (and its previous part of a shared file).
/// Writes are staged in `batch` (the push's one durable commit).
#[allow(clippy::too_many_arguments)] // the steps' shared context, passed as it is
pub(super) fn write(
    mgr: &dyn Manager,
    root: &Path,
    tools: &Tools,
    go_live: bool,
    ifaces: &mut [Iface],
    prev: &NetState,
    nl: &mut Option<&mut Netlink>,
    batch: &Batch,
) -> Written {
    let mut out = Written {
        files: Vec::new(),
        sections: BTreeMap::new(),
    };
    for it in ifaces.iter_mut().filter(|i| i.ok()) {
        let Some(plan) = it.plan.as_ref() else {
            continue;
        };
        if let Err(why) = mgr.preflight(root, plan) {
            it.fail(why, nl.as_deref_mut());
        }
    }
    let mut shared = false;
    for it in ifaces.iter_mut() {
        let rendered = match (&it.result, &it.plan) {
            (Ok(_), Some(p)) => mgr.render(p),
            // A failed interface keeps its previous part of a shared file.
            _ => match prev
                .interfaces
                .get(&it.id)
                .and_then(|s| s.shared_section.clone())
            {
                Some(sec) if prev.renderer == mgr.renderer() => Rendered::Section(sec),
                _ => continue,
            },
        };
        match rendered {
            Rendered::File(f) => {
                let plan = it.plan.as_ref();
                match mgr
                    .validate(tools, &f, plan)
                    .and_then(|()| write_file(root, &f, batch))
                {
                    Ok(o) => {
                        if o == Outcome::Written {
                            it.changed();
                        }
                        out.files.push(OwnedFile {
                            path: f.path,
                            interface: Some(it.id.clone()),
                        });
                    }
                    Err(e) => it.fail(e, nl.as_deref_mut()),
                }
            }
            Rendered::Section(sec) => {
                shared = true;
                out.sections.insert(it.id.clone(), sec);
            }
            Rendered::Nothing => {
                // Nothing to write and nothing done live: the interface would not be
                // configured at all, which must not read as `unchanged`.
                if !go_live && it.ok() {
                    it.result = Err(
                        "no network manager found in the guest root and live apply is off: \
                         nothing would configure this interface"
                            .into(),
                    );
                }
            }
        }
    }
    if shared && !out.sections.is_empty() {
        write_shared(mgr, root, tools, ifaces, prev, nl, &mut out, batch);
    }
    out
}

/// The one file shared by all interfaces (netplan): validated and written as a whole, so
/// a refusal fails every interface that was still standing.
#[allow(clippy::too_many_arguments)] // the steps' shared context, passed as it is
fn write_shared(
    mgr: &dyn Manager,
    root: &Path,
    tools: &Tools,
    ifaces: &mut [Iface],
    prev: &NetState,
    nl: &mut Option<&mut Netlink>,
    out: &mut Written,
    batch: &Batch,
) {
    let secs: Vec<&str> = out.sections.values().map(String::as_str).collect();
    let Some(f) = mgr.assemble(&secs) else { return };
    match mgr
        .validate(tools, &f, None)
        .and_then(|()| write_file(root, &f, batch))
    {
        Ok(_) => {
            for it in ifaces.iter_mut().filter(|i| i.ok()) {
                let before = prev
                    .interfaces
                    .get(&it.id)
                    .and_then(|s| s.shared_section.as_ref());
                if prev.renderer != mgr.renderer() || before != out.sections.get(&it.id) {
                    it.changed();
                }
            }
            out.files.push(OwnedFile {
                path: f.path,
                interface: None,
            });
        }
        Err(reason) => {
            for it in ifaces.iter_mut().filter(|i| i.ok()) {
                it.fail(reason.clone(), nl.as_deref_mut());
            }
            out.sections.clear();
        }
    }
}

fn write_file(root: &Path, f: &RenderedFile, batch: &Batch) -> Result<Outcome, String> {
    files::write_ours(&root.join(&f.path), f.content.as_bytes(), f.mode, batch)
        .map_err(|e| chain(&e))
}

/// Step 3: files of ours that are no longer needed are removed, unless they belong to an
/// interface whose item failed (it keeps its previous state). Returns the files of the
/// previous state that stay ours.
pub(super) fn prune(
    root: &Path,
    renderer: Renderer,
    ifaces: &mut [Iface],
    prev: &NetState,
    written: &Written,
    batch: &Batch,
) -> Vec<OwnedFile> {
    let failed: BTreeSet<String> = ifaces
        .iter()
        .filter(|i| !i.ok())
        .map(|i| i.id.clone())
        .collect();
    let shared_failed = renderer == Renderer::Netplan
        && !ifaces.is_empty()
        && ifaces.iter().all(|i| !i.ok())
        && written.sections.is_empty();
    let mut kept = Vec::new();
    for f in &prev.files {
        if written.files.iter().any(|n| n.path == f.path) {
            continue;
        }
        if !f.is_safe() || !is_ours_by_name(&f.path) {
            warn!(path = %f.path.display(), "ignoring a file in the saved state that is not one of ours");
            continue;
        }
        let keep = match &f.interface {
            Some(id) => failed.contains(id),
            None => shared_failed,
        };
        if keep {
            kept.push(f.clone());
            continue;
        }
        match files::remove_ours(&root.join(&f.path), batch) {
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
                warn!(error = %chain(&e), "cannot remove a file we no longer need; will retry");
                kept.push(f.clone());
            }
        }
    }
    kept
}

/// Our files are named `xenchan-*`, `10-xenchan-*` or `90-xenchan.yaml`, or are
/// `etc/resolv.conf`; a saved state naming anything else is not trusted.
fn is_ours_by_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(render::is_our_file_name)
}
