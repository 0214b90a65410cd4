//! Network and DNS: `network:<id>` and `dns` items, applied by the `xenchan-netconf`
//! crate (renderers for the guest's network manager, live apply over rtnetlink with
//! rollback). This module only maps the agent's options onto it and keeps its state.

use std::path::Path;

use tracing::warn;
use xenchan_netconf::{LiveMode, NetOptions, NetState};
use xenchan_protocol::GuestConfig;

use super::{Applier, ApplyContext, Outcome};

/// Applies `network:<id>` and `dns` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkApplier;

impl NetworkApplier {
    fn options(ctx: &ApplyContext<'_>) -> NetOptions {
        let opts = ctx.opts;
        let net = &opts.network;
        // Live apply acts on the interfaces of the namespace the agent runs in; under an
        // image root those are not the guest's, so it is off there whatever was asked.
        let live = if opts.is_live_root() || net.netns.is_some() {
            net.live
        } else {
            LiveMode::Never
        };
        NetOptions {
            root: opts.root.clone(),
            renderer: net.renderer,
            live,
            sysfs: if opts.is_live_root() {
                Path::new("/sys").to_path_buf()
            } else {
                opts.guest_path("sys")
            },
            netns: net.netns.clone(),
            ..NetOptions::with_root(opts.root.clone())
        }
    }
}

impl Applier for NetworkApplier {
    fn name(&self) -> &'static str {
        "network"
    }

    fn owns(&self, item: &str) -> bool {
        item == "dns" || item.starts_with("network:")
    }

    fn apply(&self, ctx: &ApplyContext<'_>, config: &GuestConfig) -> Outcome {
        let previous: Option<NetState> = ctx.previous_state(self.name()).and_then(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| warn!(error = %e, "ignoring unreadable saved network state"))
                .ok()
        });
        let (items, state) =
            xenchan_netconf::apply_in(&Self::options(ctx), config, previous.as_ref(), ctx.batch);
        let state = serde_json::to_value(&state)
            .map_err(|e| warn!(error = %e, "cannot save the network state"))
            .ok();
        Outcome { items, state }
    }
}
