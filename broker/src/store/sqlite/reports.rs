//! What sessions report (applied state, results, facts, errors), the event log, and
//! the reads.

use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension, params};
use xenchan_protocol::message::{Applied, ApplyResult, GuestFacts};
use xenchan_protocol::{Digest, ItemStatus};

use super::{Db, exec, sql_int, status_from_str};
use crate::api::types::{CallerView, ItemView, Lifecycle};
use crate::clock::now_rfc3339;
use crate::store::{
    DesiredConfig, DomainRecord, EventFilter, EventRow, HistoryRow, LastResult, LeaseRow,
    StoreError,
};

impl Db {
    /// Every stored domain, by name.
    pub fn load_all(&mut self) -> Result<Vec<DomainRecord>, StoreError> {
        let names: Vec<String> = self
            .conn
            .prepare("SELECT name FROM domains ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(r) = self.get(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One domain.
    pub fn get(&mut self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT uuid, reported_uuid, desired_generation, desired_digest, config,
                        applied_generation, applied_digest, last_error, facts, last_result_at,
                        lifecycle, channel_path
                 FROM domains WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            uuid,
            reported_uuid,
            dgen,
            ddigest,
            config,
            agen,
            adigest,
            err,
            facts,
            at,
            lifecycle,
            channel_path,
        )) = row
        else {
            return Ok(None);
        };
        let corrupt = |message: String| StoreError::Corrupt {
            domain: name.to_string(),
            message,
        };
        let desired = match (dgen, ddigest, config) {
            (Some(g), Some(d), Some(c)) => Some(DesiredConfig {
                generation: g as u64,
                digest: Digest::try_from(d).map_err(corrupt)?,
                config: serde_json::from_str(&c).map_err(|e| corrupt(e.to_string()))?,
            }),
            _ => None,
        };
        let facts = match facts {
            Some(f) => Some(serde_json::from_str(&f).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        };
        let items = self
            .conn
            .prepare_cached(
                "SELECT item, status, reason, generation FROM items WHERE name = ?1 ORDER BY rowid",
            )?
            .query_map([name], |r| {
                Ok(ItemView {
                    item: r.get(0)?,
                    status: status_from_str(&r.get::<_, String>(1)?),
                    reason: r.get(2)?,
                    generation: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        let applied = match agen.zip(adigest) {
            Some((g, d)) => Some(Applied {
                generation: g as u64,
                digest: Digest::try_from(d).map_err(corrupt)?,
                lineage: None,
            }),
            None => None,
        };
        Ok(Some(DomainRecord {
            name: name.to_string(),
            uuid,
            reported_uuid,
            desired,
            applied,
            last_result: LastResult { at, items },
            last_error: err,
            facts,
            lifecycle: lifecycle.as_deref().and_then(Lifecycle::from_str_opt),
            channel_path: channel_path.map(PathBuf::from),
        }))
    }

    fn ensure_row(tx: &Connection, name: &str, now: &str) -> Result<(), StoreError> {
        exec(
            tx,
            "INSERT OR IGNORE INTO domains(name, updated_at) VALUES (?1, ?2)",
            params![name, now],
        )?;
        Ok(())
    }

    /// Records what the agent says it has applied (from its hello).
    pub fn record_applied(
        &mut self,
        name: &str,
        applied: Option<&Applied>,
        reported_uuid: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(
            &tx,
            "UPDATE domains SET applied_generation = ?2, applied_digest = ?3,
                reported_uuid = coalesce(?4, reported_uuid), updated_at = ?5 WHERE name = ?1",
            params![
                name,
                applied.map(|a| sql_int(a.generation)),
                applied.map(|a| a.digest.as_str()),
                reported_uuid,
                now
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a result: the items, the applied generation and when. Durable before it
    /// returns; returns the time it recorded.
    pub fn record_result(
        &mut self,
        name: &str,
        result: &ApplyResult,
    ) -> Result<String, StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        for item in &result.items {
            exec(
                &tx,
                "INSERT OR REPLACE INTO items(name, item, status, reason, generation, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    item.item,
                    item.status.as_str(),
                    item.reason,
                    sql_int(result.generation),
                    now
                ],
            )?;
        }
        exec(
            &tx,
            "UPDATE domains SET applied_generation = ?2, applied_digest = ?3,
                last_result_at = ?4, updated_at = ?4 WHERE name = ?1",
            params![
                name,
                sql_int(result.generation),
                result.digest.as_str(),
                now
            ],
        )?;
        let failed = result
            .items
            .iter()
            .filter(|i| i.status == ItemStatus::Failed)
            .count();
        self.insert_event(
            &tx,
            Some(name),
            "result",
            &format!(
                "generation {} items {} failed {failed}",
                result.generation,
                result.items.len()
            ),
        )?;
        tx.commit()?;
        self.after_event();
        Ok(now)
    }

    /// Records the guest's facts.
    pub fn record_facts(&mut self, name: &str, facts: &GuestFacts) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let json = serde_json::to_string(facts).expect("facts serialise");
        let tx = self.tx()?;
        Self::ensure_row(&tx, name, &now)?;
        exec(
            &tx,
            "UPDATE domains SET facts = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, json, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets or clears the domain's last error (only for domains with a row).
    pub fn set_error(&mut self, name: &str, error: Option<&str>) -> Result<(), StoreError> {
        exec(
            &self.conn,
            "UPDATE domains SET last_error = ?2 WHERE name = ?1",
            params![name, error],
        )?;
        if let Some(e) = error {
            self.insert_event(&self.conn, Some(name), "error", e)?;
            self.after_event();
        }
        Ok(())
    }

    /// Appends to the event log.
    pub fn event(
        &mut self,
        domain: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.insert_event(&self.conn, domain, kind, detail)?;
        self.after_event();
        Ok(())
    }

    /// The last `n` events, newest last.
    pub fn recent_events(&mut self, n: usize) -> Result<Vec<EventRow>, StoreError> {
        let mut rows = self.events(&EventFilter {
            domain: None,
            kind: None,
            since: None,
            until: None,
            before_id: None,
            limit: n,
        })?;
        rows.reverse();
        Ok(rows)
    }

    /// The events `filter` asks for, newest first.
    pub fn events(&mut self, filter: &EventFilter) -> Result<Vec<EventRow>, StoreError> {
        // One statement for every combination: an absent filter is a NULL that passes.
        // `?2` says whether `?1` filters (a NULL domain is the broker's own events).
        let (by_domain, domain) = match &filter.domain {
            Some(d) => (true, d.as_deref()),
            None => (false, None),
        };
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, at, domain, kind, detail, caller_uid, caller_pid, caller_comm
                 FROM events
                 WHERE (?2 = 0 OR domain IS ?1)
                   AND (?3 IS NULL OR kind = ?3)
                   AND (?4 IS NULL OR at >= ?4)
                   AND (?5 IS NULL OR at < ?5)
                   AND (?6 IS NULL OR id < ?6)
                 ORDER BY id DESC LIMIT ?7",
            )?
            .query_map(
                params![
                    domain,
                    by_domain,
                    filter.kind,
                    filter.since,
                    filter.until,
                    filter.before_id.map(sql_int),
                    sql_int(filter.limit)
                ],
                |r| {
                    let uid: Option<i64> = r.get(5)?;
                    Ok(EventRow {
                        id: r.get::<_, i64>(0)?.cast_unsigned(),
                        at: r.get(1)?,
                        domain: r.get(2)?,
                        kind: r.get(3)?,
                        detail: r.get(4)?,
                        caller: uid.map(|uid| CallerView {
                            uid: u32::try_from(uid).unwrap_or(u32::MAX),
                            pid: r.get::<_, Option<i32>>(6).ok().flatten(),
                            comm: r.get::<_, Option<String>>(7).ok().flatten(),
                        }),
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The leases held, by kind and value.
    pub fn leases(&mut self) -> Result<Vec<LeaseRow>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT kind, value, domain FROM leases ORDER BY kind, value")?
            .query_map([], |r| {
                Ok(LeaseRow {
                    kind: r.get(0)?,
                    value: r.get(1)?,
                    domain: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    /// Generations kept in the history of `name`, oldest first.
    pub fn history(&mut self, name: &str) -> Result<Vec<HistoryRow>, StoreError> {
        Ok(self
            .conn
            .prepare("SELECT generation, digest FROM history WHERE name = ?1 ORDER BY generation")?
            .query_map([name], |r| {
                Ok(HistoryRow {
                    generation: r.get::<_, i64>(0)? as u64,
                    digest: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }
}
