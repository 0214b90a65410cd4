//! `xenchan-sim demo`: a broker, N domains and their agents, a config for each through
//! the control API, progress while they come up, a table at the end, and where to look.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xenchan_api::client::Client;
use xenchan_api::types::{DomainState, DomainView};
use xenchan_protocol::ItemStatus;

use crate::checks;
use crate::configs;
use crate::scenario::{self, Params, Report, Scenario};
use crate::world::Sim;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Domains to start.
    pub domains: usize,
    /// Hosts (1: one broker, embedded store; N >= 2: N brokers on a local etcd).
    pub hosts: usize,
    /// What to play.
    pub scenario: Scenario,
    /// Bound on each wait.
    pub deadline: Duration,
    /// Wait for Enter before cleaning up (to inspect the running system).
    pub pause: bool,
    /// The folder is kept at the end.
    pub keep: bool,
}

/// How the demo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoEnd {
    /// Every check held.
    Ok,
    /// A check failed or a wait ran out.
    Failed,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    xenchan_basics::signal::shutdown().await;
}

/// Runs the demo in `sim` (fresh: no broker, no domains). Prints to stdout.
pub async fn run(sim: &mut Sim, opts: &DemoOptions) -> DemoEnd {
    let dir = sim.dir().to_path_buf();
    let (key, generated) = configs::demo_key(&dir);
    if opts.hosts > 1 {
        println!(
            "xenchan-sim demo: {} domain(s) on {} hosts (one etcd), scenario {}",
            opts.domains, opts.hosts, opts.scenario
        );
    } else {
        println!(
            "xenchan-sim demo: {} domain(s), scenario {}",
            opts.domains, opts.scenario
        );
    }
    println!("  {}", opts.scenario.about());
    println!("  folder      {}", dir.display());
    println!(
        "  ssh key     {}",
        if generated {
            format!(
                "{} (made with ssh-keygen)",
                dir.join("id_ed25519.pub").display()
            )
        } else {
            "the built-in test key (ssh-keygen not found)".to_string()
        }
    );
    println!();
    let started = Instant::now();
    let log_start = started;
    let mut params = Params::new(opts.domains);
    params.keys = vec![key];
    params.deadline = opts.deadline;
    params.hosts = opts.hosts;
    params.log = Arc::new(move |s: &str| {
        println!("{:>7.2}s  == {s}", log_start.elapsed().as_secs_f64());
    });
    let control = if opts.hosts > 1 {
        crate::cluster::control_socket(&dir, 1)
    } else {
        dir.join("broker.sock")
    };
    // One broker, or each host's (their control sockets are known before they start).
    let watched: Vec<(String, Client)> = if opts.hosts > 1 {
        (1..=opts.hosts)
            .map(|i| {
                (
                    crate::cluster::host_name(i),
                    Client::new(crate::cluster::control_socket(&dir, i)),
                )
            })
            .collect()
    } else {
        vec![(String::new(), Client::new(&control))]
    };
    let (stop_progress, stopped) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(show_progress(watched, started, stopped));
    let outcome = scenario::run(opts.scenario, sim, &params).await;
    let _ = stop_progress.send(());
    let _ = progress.await;
    println!();
    let report = match outcome {
        Ok(r) => Some(r),
        Err(e) => {
            println!("the scenario could not finish: {:#}", anyhow::Error::new(e));
            None
        }
    };
    let views = match &report {
        Some(r) => r.views.clone(),
        None => Client::new(&control).list().await.unwrap_or_default(),
    };
    print_table(sim, &views, report.as_ref());
    let ok = report.as_ref().is_some_and(Report::ok);
    if let Some(r) = &report {
        print_checks(r);
    }
    print_paths(sim, &control);
    let interactive = opts.pause && std::io::stdin().is_terminal();
    if !opts.keep && !interactive {
        println!("  (all removed on exit: run with --keep to inspect them afterwards)");
    }
    println!(
        "\n{} in {:.1} s",
        if ok { "demo passed" } else { "demo FAILED" },
        started.elapsed().as_secs_f64()
    );
    if interactive {
        println!("everything is still running: press Enter (or Ctrl-C) to stop and clean up");
        let enter = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        });
        tokio::select! {
            _ = enter => {}
            () = interrupted() => {}
        }
    }
    if ok { DemoEnd::Ok } else { DemoEnd::Failed }
}

/// Prints each domain's state changes as the API shows them, until `stop` (then once more).
/// With several hosts (labelled), each broker's view is shown as `name@host`, leaving out
/// the domains a broker only caches (pending, not connected: a PUT went through it).
async fn show_progress(
    brokers: Vec<(String, Client)>,
    started: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut last: BTreeMap<String, (DomainState, bool)> = BTreeMap::new();
    let mut last_round = false;
    loop {
        for (host, client) in &brokers {
            let Ok(list) = client.list().await else {
                continue;
            };
            let list: Vec<DomainView> = if host.is_empty() {
                list
            } else {
                list.into_iter()
                    .filter_map(|mut v| {
                        v.name = format!("{}@{host}", v.name);
                        let shown = last.contains_key(&v.name);
                        (shown || v.connected || v.state != DomainState::Pending).then_some(v)
                    })
                    .collect()
            };
            let suffix = if host.is_empty() {
                String::new()
            } else {
                format!("@{host}")
            };
            let mut changes: Vec<String> = Vec::new();
            for v in &list {
                let now = (v.state, v.connected);
                if last.get(&v.name) != Some(&now) {
                    let from = last
                        .get(&v.name)
                        .map_or_else(String::new, |(s, _)| format!("{s} -> "));
                    let link = if v.connected { "" } else { " (not connected)" };
                    changes.push(format!("{}: {from}{}{link}", v.name, v.state));
                    last.insert(v.name.clone(), now);
                }
            }
            let gone: Vec<String> = last
                .keys()
                .filter(|n| n.ends_with(&suffix))
                .filter(|n| !list.iter().any(|v| &v.name == *n))
                .cloned()
                .collect();
            for n in gone {
                changes.push(format!("{n}: removed"));
                last.remove(&n);
            }
            let t = started.elapsed().as_secs_f64();
            // Many domains: one line per poll with the counts; few: one line per change.
            if changes.len() > 6 {
                println!(
                    "{t:>7.2}s  {}",
                    crate::wait::summary(&list)
                        .split("; e.g.")
                        .next()
                        .unwrap_or("")
                );
            } else {
                for c in changes {
                    println!("{t:>7.2}s  {c}");
                }
            }
        }
        if last_round {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut stop => last_round = true,
        }
    }
}

fn print_table(sim: &Sim, views: &[DomainView], report: Option<&Report>) {
    let mut rows: Vec<[String; 6]> = vec![[
        "DOMAIN".into(),
        "STATE".into(),
        "HOSTNAME (guest files)".into(),
        "ADDRESSES (item status)".into(),
        "KEYS".into(),
        "SOCKET->RESULT".into(),
    ]];
    let mut unsupported_note = false;
    for d in sim.domains() {
        let name = d.name();
        let v = views.iter().find(|v| v.name == name);
        let state = v.map_or_else(|| "-".to_string(), |v| v.state.to_string());
        let host = guest_hostname(d.root().path());
        let config = report
            .and_then(|r| r.configs.get(name))
            .or_else(|| v.and_then(|v| v.config.as_ref()));
        let mut addrs: Vec<String> = config
            .and_then(|c| c.network.as_ref())
            .map(|n| {
                n.ethernets
                    .values()
                    .flat_map(|e| e.addresses.iter().map(|a| a.0.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(item) = v.and_then(|v| v.items.iter().find(|i| i.item.starts_with("network:")))
        {
            if item.status == ItemStatus::Unsupported {
                unsupported_note = true;
            }
            addrs.push(format!("({})", item.status.as_str()));
        }
        let keys = config.map_or_else(
            || "-".to_string(),
            |c| {
                let (found, total) = checks::keys_present(d, c);
                format!("{found}/{total}")
            },
        );
        let timing = match (
            d.socket_since_wall(),
            v.and_then(|v| v.last_result_at.as_deref())
                .and_then(parse_rfc3339),
        ) {
            (Some(sock), Some(res)) if res >= sock => {
                format!(
                    "{:.2} s",
                    res.duration_since(sock).unwrap_or_default().as_secs_f64()
                )
            }
            _ => "-".into(),
        };
        let label = match sim.host_of(name) {
            Some(i) => format!("{name}@{}", sim.hosts()[i].name),
            None => name.to_string(),
        };
        rows.push([label, state, host, addrs.join(" "), keys, timing]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        println!("{}", line.trim_end());
    }
    if unsupported_note {
        println!(
            "\nnote: this agent answers network items `unsupported` (it cannot apply them in this guest root);\n\
             the broker keeps such a domain `configured`: only a failed item makes it `failed`."
        );
    }
}

/// The guest's host name as its files say: the FQDN of the `127.0.1.1` line of
/// `etc/hosts` when there is one, else `etc/hostname`.
fn guest_hostname(root: &std::path::Path) -> String {
    let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
    let fqdn = hosts
        .lines()
        .filter_map(|l| l.strip_prefix("127.0.1.1"))
        .find_map(|rest| rest.split_whitespace().next().map(str::to_string));
    fqdn.unwrap_or_else(|| {
        std::fs::read_to_string(root.join("etc/hostname"))
            .map_or_else(|_| "-".into(), |s| s.trim().to_string())
    })
}

fn print_checks(r: &Report) {
    let failed: Vec<_> = r.checks.iter().filter(|c| !c.ok).collect();
    println!(
        "\nchecks: {} of {} held",
        r.checks.len() - failed.len(),
        r.checks.len()
    );
    // With many domains, list only the scenario's own checks and any failure.
    let summarised = r.checks.len() > 40;
    if summarised
        && r.checks
            .iter()
            .all(|c| c.ok || !c.name.starts_with(scenario::PREFIX))
    {
        println!(
            "  ok   every domain: configured in the API, guest files match, no needless push, nothing applied twice, agent never crashed"
        );
    }
    for c in &r.checks {
        let per_domain = c.name.starts_with(scenario::PREFIX) && summarised;
        if c.ok && per_domain {
            continue;
        }
        let mark = if c.ok { "ok  " } else { "FAIL" };
        if c.ok || c.detail.is_empty() {
            println!("  {mark} {}", c.name);
        } else {
            println!("  {mark} {}: {}", c.name, c.detail);
        }
    }
}

fn print_paths(sim: &Sim, control: &std::path::Path) {
    let dir = sim.dir();
    let first: Option<PathBuf> = sim.domains().next().map(|d| d.root().path().to_path_buf());
    println!("\nwhere to look:");
    if let Some(root) = first {
        println!("  guest root        {}", root.display());
        println!(
            "  applied files     {0}/etc/hostname, {0}/etc/hosts, {0}/home/cloud/.ssh/authorized_keys",
            root.display()
        );
        println!(
            "  network files     {0}/etc/systemd/network/, {0}/etc/resolv.conf",
            root.display()
        );
        println!(
            "  agent state       {}/var/lib/xenchan-agent/applied.json",
            root.display()
        );
    }
    println!("  guest roots       {}/guests/<domain>/", dir.display());
    println!(
        "  logs              {}/logs/ (broker.log, <domain>.agent.log, <domain>.hotplug.log, <domain>.channel.log)",
        dir.display()
    );
    if sim.hosts().is_empty() {
        println!("  broker config     {}/broker.toml", dir.display());
    } else {
        println!(
            "  hosts             {}/h<i>/ (broker.toml, broker.sock, sockets/, broker-state/); logs/broker-h<i>.log",
            dir.display()
        );
        if let Some(c) = sim.cluster() {
            println!(
                "  etcd              {} prefix {}",
                c.etcd.client_url,
                crate::cluster::ETCD_PREFIX
            );
        }
    }
    println!(
        "  control API       curl --unix-socket {} http://xenchan/v1/domains",
        control.display()
    );
}

/// Parses the API's RFC 3339 UTC timestamps (`2026-01-02T03:04:05.678Z`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-').map(str::parse::<i64>);
    let year = date_parts.next()?.ok()?;
    let month = date_parts.next()?.ok()?;
    let day = date_parts.next()?.ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut time_parts = hms.splitn(3, ':').map(str::parse::<i64>);
    let hours = time_parts.next()?.ok()?;
    let minutes = time_parts.next()?.ok()?;
    let seconds = time_parts.next()?.ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let value: u32 = digits.parse().ok()?;
        value * 10u32.pow(9 - digits.len() as u32)
    };
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hours * 3600 + minutes * 60 + seconds;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps() {
        let t = parse_rfc3339("2026-11-21T08:56:38.328Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_795_251_398_328
        );
        let t = parse_rfc3339("1970-01-01T00:00:01Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1);
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
