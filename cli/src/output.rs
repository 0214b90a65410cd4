//! Human-readable output: aligned tables and key/value blocks.

use std::fmt::Write as _;
use std::io::{self, Write};

use xenchan_api::types::{DomainState, DomainView, EventView, Health};

/// Writes rows as left-aligned columns separated by two spaces.
fn table(out: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = width[i]);
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Control characters from a guest must not reach the operator's terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn short_error(e: Option<&String>) -> String {
    match e {
        None => "-".into(),
        Some(e) => {
            let e = clean(e);
            if e.chars().count() > 60 {
                format!("{}...", e.chars().take(57).collect::<String>())
            } else {
                e
            }
        }
    }
}

/// `xenchan events`: oldest first, as a log reads.
pub fn event_table(out: &mut dyn Write, events: &[EventView], header: bool) -> io::Result<()> {
    let mut rows = Vec::new();
    if header {
        if events.is_empty() {
            return writeln!(out, "no events");
        }
        rows.push(
            ["ID", "AT", "DOMAIN", "KIND", "CALLER", "DETAIL"]
                .map(String::from)
                .to_vec(),
        );
    }
    for e in events.iter().rev() {
        let caller = e.caller.as_ref().map_or_else(
            || "-".to_string(),
            |c| {
                let mut s = format!("uid {}", c.uid);
                if let Some(comm) = &c.comm {
                    let _ = write!(s, " {}", clean(comm));
                }
                if let Some(pid) = c.pid {
                    let _ = write!(s, "[{pid}]");
                }
                s
            },
        );
        rows.push(vec![
            e.id.to_string(),
            e.at.clone(),
            e.domain.as_deref().map_or_else(|| "-".to_string(), clean),
            clean(&e.kind),
            caller,
            clean(&e.detail),
        ]);
    }
    table(out, &rows)
}

/// `xenchan domain list`.
pub fn domain_table(out: &mut dyn Write, list: &[DomainView]) -> io::Result<()> {
    if list.is_empty() {
        return writeln!(out, "no domains");
    }
    let mut rows = vec![
        [
            "NAME",
            "STATE",
            "CONNECTED",
            "DESIRED",
            "APPLIED",
            "LAST RESULT",
            "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in list {
        rows.push(vec![
            d.name.clone(),
            d.state.to_string(),
            if d.connected { "yes" } else { "no" }.into(),
            opt(d.desired_generation),
            opt(d.applied_generation),
            opt(d.last_result_at.as_ref()),
            short_error(d.last_error.as_ref()),
        ]);
    }
    table(out, &rows)
}

/// `xenchan domain get`.
pub fn domain(out: &mut dyn Write, d: &DomainView) -> io::Result<()> {
    let gen_digest = |g: Option<u64>, dg: Option<&String>| match g {
        Some(g) => format!("generation {g} ({})", opt(dg)),
        None => "-".into(),
    };
    let mut rows = vec![
        vec!["name:".into(), d.name.clone()],
        vec![
            "state:".into(),
            format!(
                "{}{}",
                d.state,
                if d.connected { " (connected)" } else { "" }
            ),
        ],
        vec!["uuid:".into(), opt(d.uuid.as_ref())],
        vec![
            "reported uuid:".into(),
            opt(d.reported_uuid.as_ref().map(|u| clean(u))),
        ],
        vec![
            "desired:".into(),
            gen_digest(d.desired_generation, d.desired_digest.as_ref()),
        ],
        vec![
            "applied:".into(),
            gen_digest(d.applied_generation, d.applied_digest.as_ref()),
        ],
        vec!["last result:".into(), opt(d.last_result_at.as_ref())],
        vec![
            "last error:".into(),
            opt(d.last_error.as_ref().map(|e| clean(e))),
        ],
    ];
    if let Some(t) = &d.throttled {
        rows.push(vec![
            "throttled:".into(),
            clean(&format!("over its {} budget since {}", t.budget, t.since)),
        ]);
    }
    if d.hooks_dropped > 0 {
        rows.push(vec![
            "hooks dropped:".into(),
            format!(
                "{} notification hook runs (its queue bound or hooks budget; the broker log names each spell)",
                d.hooks_dropped
            ),
        ]);
    }
    if let Some(f) = &d.facts {
        rows.push(vec![
            "guest:".into(),
            clean(&format!(
                "{} | kernel {} | hostname {} | {}",
                if f.os.is_empty() { "?" } else { &f.os },
                if f.kernel.is_empty() { "?" } else { &f.kernel },
                if f.hostname.is_empty() {
                    "?"
                } else {
                    &f.hostname
                },
                f.agent
            )),
        ]);
        for i in &f.interfaces {
            rows.push(vec![
                String::new(),
                clean(&format!(
                    "{} {} {} mtu {}{}",
                    i.name,
                    i.mac,
                    i.addresses.join(","),
                    i.mtu,
                    if i.up { "" } else { " (down)" }
                )),
            ]);
        }
    }
    table(out, &rows)?;
    if !d.items.is_empty() {
        writeln!(out, "items:")?;
        let mut rows = vec![
            ["  ITEM", "STATUS", "GENERATION", "REASON"]
                .map(String::from)
                .to_vec(),
        ];
        for i in &d.items {
            rows.push(vec![
                format!("  {}", clean(&i.item)),
                i.status.as_str().into(),
                i.generation.to_string(),
                opt(i.reason.as_ref().map(|r| clean(r))),
            ]);
        }
        table(out, &rows)?;
    }
    Ok(())
}

/// `xenchan status`.
pub fn status(out: &mut dyn Write, h: &Health, list: &[DomainView]) -> io::Result<()> {
    writeln!(
        out,
        "broker {}: {} domains, {} sessions",
        h.status, h.domains, h.sessions
    )?;
    if let Some(c) = &h.cluster {
        let endpoints = c.endpoints.join(",");
        if c.joined {
            writeln!(out, "cluster: host {} on etcd {endpoints}, joined", c.host)?;
        } else {
            writeln!(
                out,
                "cluster: host {} on etcd {endpoints}, NOT joined: {}\n  (the domains of the local cache are served; writes are refused until it joins)",
                c.host,
                c.not_joined.as_deref().unwrap_or("no reason given")
            )?;
        }
    }
    let mut rows = Vec::new();
    for s in DomainState::ALL {
        let n = list.iter().filter(|d| d.state == s).count();
        if n > 0 {
            rows.push(vec![format!("  {s}"), n.to_string()]);
        }
    }
    table(out, &rows)?;
    let troubled: Vec<&DomainView> = list
        .iter()
        .filter(|d| {
            matches!(
                d.state,
                DomainState::Degraded
                    | DomainState::Unresponsive
                    | DomainState::StaleGeneration
                    | DomainState::IdentityMismatch
                    | DomainState::VersionMismatch
                    | DomainState::Error
            )
        })
        .collect();
    if !troubled.is_empty() {
        writeln!(out, "needing attention:")?;
        let rows: Vec<Vec<String>> = troubled
            .iter()
            .map(|d| {
                vec![
                    format!("  {}", d.name),
                    d.state.to_string(),
                    short_error(d.last_error.as_ref()),
                ]
            })
            .collect();
        table(out, &rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenchan_api::types::ClusterHealth;

    fn status_text(h: &Health) -> String {
        let mut out = Vec::new();
        status(&mut out, h, &[]).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_names_the_cluster_and_a_broker_that_has_not_joined() {
        let mut h = Health {
            status: "ok".into(),
            domains: 2,
            sessions: 1,
            cluster: None,
        };
        assert_eq!(status_text(&h), "broker ok: 2 domains, 1 sessions\n");
        h.cluster = Some(ClusterHealth {
            host: "dom0-a".into(),
            endpoints: vec!["http://10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()],
            joined: true,
            not_joined: None,
        });
        assert!(
            status_text(&h).contains(
                "cluster: host dom0-a on etcd http://10.0.0.1:2379,http://10.0.0.2:2379, joined\n"
            ),
            "{}",
            status_text(&h)
        );
        h.cluster = Some(ClusterHealth {
            joined: false,
            not_joined: Some("etcd was unreachable when this broker started".into()),
            ..h.cluster.take().unwrap()
        });
        let text = status_text(&h);
        assert!(
            text.contains("NOT joined: etcd was unreachable when this broker started")
                && text.contains("writes are refused until it joins"),
            "{text}"
        );
    }
}
