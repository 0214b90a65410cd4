//! What must hold after any scenario, judged from what crossed each channel (the tap), the
//! guest roots and the agent processes, not from either end's own account.

use std::collections::HashMap;

use xenchan_protocol::message::Body;
use xenchan_protocol::{GuestConfig, Role};

use crate::domain::Domain;
use crate::tap::Dir;

/// One verdict.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Why not (or a note).
    pub detail: String,
}

impl Check {
    /// A verdict.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }

    /// A check that holds when `problems` is empty.
    pub fn from_problems(name: impl Into<String>, problems: &[String]) -> Check {
        Check::new(name, problems.is_empty(), problems.join("; "))
    }
}

/// The broker pushed a generation the agent had reported applied (a push is due only when
/// the applied generation or digest differs).
///
/// Judged per session from the guest's side: when the agent's first answer in a session
/// (to the broker's hello with a new nonce) reports `(generation, digest)`, no config with
/// that pair may reach the guest in that session. Later answers in the same session are
/// not used: on a slow channel a push the broker sent earlier, for good reasons, may still
/// be on its way when they are written.
pub fn needless_pushes(d: &Domain) -> Vec<String> {
    d.with_channel(|ch| {
        let mut first: HashMap<String, Option<(u64, String)>> = HashMap::new();
        let mut out = Vec::new();
        for e in ch.tap.events() {
            let Some(session) = e.msg.session.as_ref().map(ToString::to_string) else {
                continue;
            };
            match (e.dir, e.msg.from, &e.msg.body) {
                (Dir::ToHost, Role::Agent, Body::Hello(h)) => {
                    first.entry(session).or_insert_with(|| {
                        h.applied
                            .as_ref()
                            .map(|a| (a.generation, a.digest.as_str().to_string()))
                    });
                }
                (Dir::ToGuest, Role::Broker, Body::Config(c)) => {
                    let key = (c.generation, c.digest.as_str().to_string());
                    if first.get(&session).is_some_and(|f| f.as_ref() == Some(&key)) {
                        out.push(format!(
                            "{}: generation {} pushed in session {session} (boot {}) although the agent's answer to its hello reported it applied",
                            d.name(),
                            c.generation,
                            e.boot
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    })
}

/// An item reported `applied` (the guest changed) twice for the same generation: the
/// agent applied something twice.
pub fn double_applies(d: &Domain) -> Vec<String> {
    d.with_channel(|ch| {
        let mut seen: HashMap<(u64, String), usize> = HashMap::new();
        for e in ch.tap.events() {
            if e.dir != Dir::ToHost || e.msg.from != Role::Agent {
                continue;
            }
            if let Some((generation, items)) = e.applied_items() {
                for item in items {
                    *seen.entry((generation, item.to_string())).or_default() += 1;
                }
            }
        }
        let mut out: Vec<String> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|((g, item), n)| {
                format!("{}: {item} of generation {g} applied {n} times", d.name())
            })
            .collect();
        out.sort();
        out
    })
}

/// Config frames for generation `generation` that reached the guest.
pub fn pushes_of(d: &Domain, generation: u64) -> usize {
    d.with_channel(|ch| {
        ch.tap.count(|e| {
            e.dir == Dir::ToGuest && e.config_generation().is_some_and(|(g, _)| g == generation)
        })
    })
}

/// Config frames that reached the guest during boot `boot`.
pub fn pushes_in_boot(d: &Domain, boot: u32) -> usize {
    d.with_channel(|ch| {
        ch.tap
            .count(|e| e.boot == boot && e.dir == Dir::ToGuest && e.config_generation().is_some())
    })
}

/// Broker messages echoed back by the guest's tty during boot `boot`.
pub fn echoes_in_boot(d: &Domain, boot: u32) -> usize {
    d.with_channel(|ch| {
        ch.tap
            .count(|e| e.boot == boot && e.dir == Dir::ToHost && e.msg.from == Role::Broker)
    })
}

/// Agents that exited without being asked to (crashes).
pub fn agent_crashes(d: &Domain) -> Vec<String> {
    d.unexpected_agent_exits()
        .into_iter()
        .map(|e| {
            format!(
                "{}: agent pid {} (boot {}) exited on its own with {}",
                d.name(),
                e.pid,
                e.boot,
                e.status
                    .map_or_else(|| "unknown status".into(), |s| s.to_string())
            )
        })
        .collect()
}

/// The guest root holds what `config` asks for: `etc/hostname` (the short name), each
/// address in networkd's files, and the users' keys in their `authorized_keys`.
pub fn guest_files(d: &Domain, config: &GuestConfig) -> Vec<String> {
    let mut out = Vec::new();
    let root = d.root();
    if let Some(h) = &config.hostname {
        let want = h.short();
        match std::fs::read_to_string(root.join("etc/hostname")) {
            Ok(text) if text.trim() == want => {}
            Ok(text) => out.push(format!(
                "{}: etc/hostname is {:?}, want {want:?}",
                d.name(),
                text.trim()
            )),
            Err(e) => out.push(format!("{}: etc/hostname: {e}", d.name())),
        }
    }
    if let Some(net) = &config.network {
        // The simulator runs the agent with the networkd renderer.
        let dir = root.join("etc/systemd/network");
        let text: String = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        for eth in net.ethernets.values() {
            for a in &eth.addresses {
                let a = a.0.to_string();
                if !text.contains(&format!("Address={a}")) {
                    out.push(format!(
                        "{}: address {a} not in {}",
                        d.name(),
                        dir.display()
                    ));
                }
            }
        }
    }
    for u in &config.users {
        let path = root.join(format!("home/{}/.ssh/authorized_keys", u.name.as_str()));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let missing = u
            .ssh_authorized_keys
            .iter()
            .filter(|k| !text.contains(k.material()))
            .count();
        if missing > 0 {
            out.push(format!(
                "{}: {missing} of {} keys of {} missing from {}",
                d.name(),
                u.ssh_authorized_keys.len(),
                u.name.as_str(),
                path.display()
            ));
        }
    }
    out
}

/// Keys of `config`'s users found in the guest's `authorized_keys` files.
pub fn keys_present(d: &Domain, config: &GuestConfig) -> (usize, usize) {
    let mut found = 0;
    let mut total = 0;
    for u in &config.users {
        let path = d
            .root()
            .join(format!("home/{}/.ssh/authorized_keys", u.name.as_str()));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for k in &u.ssh_authorized_keys {
            total += 1;
            if text.contains(k.material()) {
                found += 1;
            }
        }
    }
    (found, total)
}

/// The standard checks for one domain that should hold `config`.
pub fn domain_checks(d: &Domain, config: Option<&GuestConfig>) -> Vec<Check> {
    let mut v = vec![
        Check::from_problems(
            format!("{}: no needless push", d.name()),
            &needless_pushes(d),
        ),
        Check::from_problems(
            format!("{}: nothing applied twice", d.name()),
            &double_applies(d),
        ),
        Check::from_problems(
            format!("{}: agent never crashed", d.name()),
            &agent_crashes(d),
        ),
    ];
    if let Some(c) = config {
        v.push(Check::from_problems(
            format!("{}: guest files match the config", d.name()),
            &guest_files(d, c),
        ));
    }
    v
}

/// `xenchan_pushes_total` in a broker's `/metrics` text: configurations it pushed.
pub fn pushes_total(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("xenchan_pushes_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Config frames that reached the guest, in all its boots.
pub fn config_frames(d: &Domain) -> usize {
    d.with_channel(|ch| {
        ch.tap
            .count(|e| e.dir == Dir::ToGuest && e.config_generation().is_some())
    })
}

/// Generations that reached the guest more than once (a push repeated, by one broker or
/// by two hosts' brokers).
pub fn repeated_pushes(d: &Domain) -> Vec<String> {
    d.with_channel(|ch| {
        let mut seen: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
        for e in ch.tap.events() {
            if e.dir == Dir::ToGuest
                && let Some((g, _)) = e.config_generation()
            {
                *seen.entry(g).or_default() += 1;
            }
        }
        seen.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(g, n)| format!("{}: generation {g} pushed {n} times", d.name()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_total_is_read_from_the_metrics_text() {
        let text = "# HELP xenchan_pushes_total Configurations pushed.\n\
                    # TYPE xenchan_pushes_total counter\n\
                    xenchan_pushes_total 7\n\
                    xenchan_pushes_totalx 9\n";
        assert_eq!(pushes_total(text), Some(7));
        assert_eq!(pushes_total("xenchan_results_total 3\n"), None);
        assert_eq!(pushes_total("xenchan_pushes_total many\n"), None);
    }
}
