//! At start, before any broker is heard from: put back the network configuration that
//! only ever lived in the running kernel. With no network manager, the agent set the
//! addresses, routes and MTU over rtnetlink, and a reboot took them away; the applied
//! state lists them, and nothing else would bring them back.

use std::collections::BTreeSet;

use tracing::{info, warn};
use xenchan_netconf::{LiveMode, NetState, Restored};

use crate::links::BootRestore;
use crate::options::AgentOptions;
use crate::state::AppliedState;

/// The live-only network state to restore, if any: the agent configures a running
/// kernel (root `/` or a namespace), live apply is not switched off, and the applied
/// state says no manager's files carry the configuration.
pub(crate) fn live_only_state(
    opts: &AgentOptions,
    applied: Option<&AppliedState>,
) -> Option<NetState> {
    let live = (opts.is_live_root() || opts.network.netns.is_some())
        && opts.network.live != LiveMode::Never;
    if !live {
        return None;
    }
    let value = applied?.appliers.get("network")?;
    let state: NetState = serde_json::from_value(value.clone())
        .map_err(|e| warn!(error = %e, "ignoring unreadable saved network state"))
        .ok()?;
    xenchan_netconf::is_live_only(&state).then_some(state)
}

/// Restores `state` (blocking work on another thread, bounded by the apply deadline)
/// and returns what is left to restore when its interface appears.
pub(crate) async fn restore(opts: &AgentOptions, state: NetState) -> BootRestore {
    let netns = opts.network.netns.clone();
    let deadline = opts.timing.apply_timeout;
    let all: BTreeSet<String> = state.interfaces.values().map(|i| i.mac.clone()).collect();
    let st = state.clone();
    let done = tokio::time::timeout(
        deadline,
        tokio::task::spawn_blocking(move || {
            xenchan_netconf::restore_live(netns.as_deref(), &st, None)
        }),
    )
    .await;
    let waiting = match done {
        Ok(Ok(Ok(outcomes))) => {
            let mut missing = BTreeSet::new();
            for o in outcomes {
                match o {
                    Restored::Done { id, changed } => {
                        info!(interface = %id, changed, "live-only network configuration restored at start");
                    }
                    Restored::Missing { id, mac } => {
                        info!(interface = %id, %mac, "no interface with this MAC yet; restoring it when it appears");
                        missing.insert(mac);
                    }
                    Restored::Failed { id, reason } => {
                        warn!(interface = %id, %reason, "cannot restore the live-only network configuration");
                    }
                }
            }
            missing
        }
        Ok(Ok(Err(e))) => {
            warn!(error = %e, "cannot restore the live-only network configuration");
            all
        }
        Ok(Err(e)) => {
            warn!(error = %e, "restoring the live-only network configuration failed internally");
            all
        }
        Err(_) => {
            warn!(
                ?deadline,
                "restoring the live-only network configuration took too long"
            );
            BTreeSet::new()
        }
    };
    BootRestore { state, waiting }
}
