//! One network manager per file, each behind [`Manager`]: how it is detected and known to
//! run, what it reads (render), how its own parser checks a render before anything is
//! written (validate), how a running instance is told (activate), and whether DNS reaches
//! the resolver through it. [`crate::apply`] drives the steps the same way for all.
//!
//! Adding a manager: a file here implementing [`Manager`], its entry in [`MANAGERS`]
//! (the detection order) and its [`Renderer`] variant (the name in options and state).

mod ifupdown;
mod netplan;
mod networkd;
mod nm;
mod none;
mod validate;

use std::path::Path;

use crate::activate::{Changed, Cmd};
use crate::detect::ResolvConf;
use crate::plan::IfacePlan;
use crate::render::{RenderedFile, Renderer};

pub(crate) use validate::Tools;

/// What a manager reads for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rendered {
    /// A file of its own.
    File(RenderedFile),
    /// Its part of the one file shared by all interfaces ([`Manager::assemble`]).
    Section(String),
    /// Nothing: no manager, the live apply does the work.
    Nothing,
}

/// One network manager.
pub(crate) trait Manager: Sync {
    /// Its name in options and state.
    fn renderer(&self) -> Renderer;

    /// Whether the guest root uses it: installed and enabled, or running. Checked in
    /// [`MANAGERS`] order.
    fn in_use(&self, root: &Path) -> bool;

    /// Whether it shows signs of running in this boot (runtime files under `<root>/run`,
    /// a tmpfs that starts empty).
    fn running(&self, root: &Path) -> bool;

    /// Why it would not read our files for this interface, if it would not; nothing is
    /// written then.
    fn preflight(&self, _root: &Path, _plan: &IfacePlan) -> Result<(), String> {
        Ok(())
    }

    /// What it reads for one interface.
    fn render(&self, plan: &IfacePlan) -> Rendered;

    /// The shared file from the interfaces' sections, for managers that render
    /// [`Rendered::Section`].
    fn assemble(&self, _sections: &[&str]) -> Option<RenderedFile> {
        None
    }

    /// Its own parser's verdict on a file before we write it (`Err`: what it said). A
    /// manager without an offline parser, or whose tool is not in `tools`, accepts.
    fn validate(
        &self,
        _tools: &Tools,
        _file: &RenderedFile,
        _plan: Option<&IfacePlan>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// The commands that make a running instance apply what changed, in order.
    fn activate(&self, _changed: &[Changed]) -> Vec<Cmd> {
        Vec::new()
    }

    /// Whether DNS settings in its files reach the resolver, given who owns
    /// `/etc/resolv.conf` (if not, we write that file when nobody else does).
    fn carries_dns(&self, resolv: &ResolvConf) -> bool {
        matches!(resolv, ResolvConf::Symlink(_) | ResolvConf::Generated(_))
    }

    /// DNS settings of the interface it cannot take, said in words.
    fn dns_left_out(&self, _plan: &IfacePlan) -> Option<String> {
        None
    }
}

/// Every manager, in detection order (see docs/NETWORK.md, "Detection order"): netplan
/// first because it generates its backends' files; NetworkManager before networkd because
/// it claims ethernet devices when both are enabled; ifupdown last because its file
/// lingers on systems that moved on.
pub(crate) static MANAGERS: &[&dyn Manager] = &[
    &netplan::Netplan,
    &nm::NetworkManager,
    &networkd::Networkd,
    &ifupdown::Ifupdown,
];

/// The manager behind a renderer name.
pub(crate) fn of(renderer: Renderer) -> &'static dyn Manager {
    MANAGERS
        .iter()
        .copied()
        .find(|m| m.renderer() == renderer)
        .unwrap_or(&none::NoManager)
}

/// The first manager of [`MANAGERS`] the root uses, else none.
pub(crate) fn detect(root: &Path) -> Renderer {
    MANAGERS
        .iter()
        .find(|m| m.in_use(root))
        .map_or(Renderer::None, |m| m.renderer())
}

/// Whether `rel` (or one of `rels`) exists under `root`, symlinks included.
pub(crate) fn any_exists(root: &Path, rels: &[&str]) -> bool {
    rels.iter()
        .any(|r| std::fs::symlink_metadata(root.join(r)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_per_manager() {
        let c = [Changed {
            id: "eth0".into(),
            name: "enX0".into(),
        }];
        let words =
            |r| -> Vec<Vec<String>> { of(r).activate(&c).into_iter().map(|x| x.1).collect() };
        assert_eq!(
            words(Renderer::Networkd),
            vec![
                vec!["networkctl", "reload"],
                vec!["networkctl", "reconfigure", "enX0"]
            ]
        );
        assert_eq!(
            of(Renderer::Networkd).activate(&c)[1].0.as_deref(),
            Some("eth0")
        );
        assert_eq!(
            words(Renderer::NetworkManager)[1],
            vec!["nmcli", "connection", "up", "id", "xenchan-eth0"]
        );
        assert_eq!(words(Renderer::Netplan), vec![vec!["netplan", "apply"]]);
        assert_eq!(
            words(Renderer::Ifupdown),
            vec![vec!["ifdown", "--force", "enX0"], vec!["ifup", "enX0"]]
        );
        assert!(words(Renderer::None).is_empty());
    }

    #[test]
    fn every_renderer_has_one_manager() {
        for r in [
            Renderer::Networkd,
            Renderer::NetworkManager,
            Renderer::Netplan,
            Renderer::Ifupdown,
            Renderer::None,
        ] {
            assert_eq!(of(r).renderer(), r);
        }
        let names: Vec<Renderer> = MANAGERS.iter().map(|m| m.renderer()).collect();
        assert_eq!(
            names,
            [
                Renderer::Netplan,
                Renderer::NetworkManager,
                Renderer::Networkd,
                Renderer::Ifupdown
            ],
            "detection order (docs/NETWORK.md)"
        );
    }
}
