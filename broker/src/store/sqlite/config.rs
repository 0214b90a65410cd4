//! The API's writes: desired configurations, leases, the lifecycle.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use xenchan_protocol::config::GuestConfig;

use super::{Db, exec, row, sql_int};
use crate::clock::now_rfc3339;
use crate::leases::{Lease, LeaseConflict, first_conflict, leases_of};
use crate::store::{
    Deleted, DesiredConfig, PrepareRefusal, PrepareRequest, Prepared, PutOutcome, PutRefusal,
    PutRequest, StoreError,
};

impl Db {
    /// The first lease in `wanted` that a domain other than `name` holds.
    pub fn lease_conflict(
        &self,
        name: &str,
        wanted: &[Lease],
    ) -> Result<Option<LeaseConflict>, StoreError> {
        lease_conflict(&self.conn, name, wanted)
    }

    /// Stores a new desired configuration (prepare): re-checks the leases, bumps the
    /// generation, records it in the history and replaces the domain's leases, all in one
    /// transaction.
    pub fn put_config(
        &mut self,
        req: &PutRequest<'_>,
    ) -> Result<Result<PutOutcome, PutRefusal>, StoreError> {
        self.put_config_with(req, None)
    }

    /// Caches a configuration at the generation the cluster store gave it (etcd mode):
    /// no lease check (etcd granted them; a cached row of another domain is stale and
    /// gives way), no domain limit (checked before etcd was written).
    pub fn put_config_at(
        &mut self,
        req: &PutRequest<'_>,
        generation: u64,
    ) -> Result<PutOutcome, StoreError> {
        match self.put_config_with(req, Some(generation))? {
            Ok(o) => Ok(o),
            Err(r) => Err(StoreError::Corrupt {
                domain: req.name.to_string(),
                message: format!("the cache refused a configuration etcd accepted: {r:?}"),
            }),
        }
    }

    fn put_config_with(
        &mut self,
        req: &PutRequest<'_>,
        forced: Option<u64>,
    ) -> Result<Result<PutOutcome, PutRefusal>, StoreError> {
        let PutRequest {
            name,
            uuid,
            config,
            leases,
            max_domains,
        } = *req;
        let digest = config.digest();
        let now = now_rfc3339();
        let history = self.history;
        let tx = self.tx()?;
        if forced.is_some() {
            for l in leases {
                exec(
                    &tx,
                    "DELETE FROM leases WHERE kind = ?1 AND value = ?2 AND domain != ?3",
                    params![l.kind, l.value, name],
                )?;
            }
        } else if let Some(c) = lease_conflict(&tx, name, leases)? {
            return Ok(Err(PutRefusal::Lease(c)));
        }
        let current: Option<(Option<i64>, Option<String>, Option<String>)> = row(
            &tx,
            "SELECT desired_generation, desired_digest, uuid FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
        let had_desired = matches!(current, Some((Some(_), Some(_), _)));
        if let Some((Some(g), Some(d), old_uuid)) = &current
            && d == digest.as_str()
            && (uuid.is_none() || uuid == old_uuid.as_deref())
            && forced.is_none_or(|f| sql_int(f) == *g)
        {
            // Same document: keep the generation, so the agent is not asked again.
            replace_leases(&tx, name, leases, &now)?;
            tx.commit()?;
            return Ok(Ok(PutOutcome::Unchanged(Arc::new(DesiredConfig {
                generation: *g as u64,
                digest,
                config: config.clone(),
            }))));
        }
        if current.is_none() && forced.is_none() {
            let count: i64 = row(&tx, "SELECT count(*) FROM domains", [], |r| r.get(0))?;
            if count as usize >= max_domains {
                return Ok(Err(PutRefusal::TooManyDomains(max_domains)));
            }
        }
        let last: i64 = row(
            &tx,
            "SELECT last FROM generations WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
        let generation = forced.map_or(last + 1, sql_int);
        exec(
            &tx,
            "INSERT INTO generations(name, last) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET last = max(last, excluded.last)",
            params![name, generation],
        )?;
        let json = String::from_utf8(config.canonical_json()).expect("JSON is UTF-8");
        exec(
            &tx,
            "INSERT OR REPLACE INTO history(name, generation, digest, config, uuid, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, generation, digest.as_str(), json, uuid, now],
        )?;
        exec(
            &tx,
            "DELETE FROM history WHERE name = ?1 AND generation <= ?2",
            params![name, generation - sql_int(history)],
        )?;
        exec(&tx,
            "INSERT INTO domains(name, uuid, desired_generation, desired_digest, config, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET
                uuid = coalesce(excluded.uuid, domains.uuid),
                desired_generation = excluded.desired_generation,
                desired_digest = excluded.desired_digest,
                config = excluded.config,
                updated_at = excluded.updated_at",
            params![name, uuid, generation, digest.as_str(), json, now],
        )?;
        replace_leases(&tx, name, leases, &now)?;
        self.insert_event(
            &tx,
            Some(name),
            "config",
            &format!("generation {generation} {digest}"),
        )?;
        tx.commit()?;
        self.after_event();
        let d = Arc::new(DesiredConfig {
            generation: generation as u64,
            digest,
            config: config.clone(),
        });
        Ok(Ok(if had_desired {
            PutOutcome::Updated(d)
        } else {
            PutOutcome::Created(d)
        }))
    }

    /// Removes the desired configuration and releases the domain's leases (remove +
    /// unprepare). Keeps the row (applied state, facts) when `keep_row`, i.e. while a
    /// session to the domain is up. Returns whether a configuration was removed and the
    /// leases released.
    pub fn delete_config(&mut self, name: &str, keep_row: bool) -> Result<Deleted, StoreError> {
        let tx = self.tx()?;
        let released: Vec<String> = tx
            .prepare("SELECT kind, value FROM leases WHERE domain = ?1 ORDER BY kind, value")?
            .query_map([name], |r| {
                Ok(format!(
                    "{} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ))
            })?
            .collect::<Result<_, _>>()?;
        exec(&tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
        let removed = row(
            &tx,
            "SELECT desired_generation IS NOT NULL FROM domains WHERE name = ?1",
            [name],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false);
        if keep_row {
            exec(
                &tx,
                "UPDATE domains SET desired_generation = NULL, desired_digest = NULL,
                    config = NULL, uuid = NULL, updated_at = ?2 WHERE name = ?1",
                params![name, now_rfc3339()],
            )?;
        } else {
            exec(&tx, "DELETE FROM domains WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        }
        if removed || !released.is_empty() {
            self.insert_event(&tx, Some(name), "delete", &released.join(", "))?;
        }
        tx.commit()?;
        self.after_event();
        Ok(Deleted { removed, released })
    }

    /// Drops the row of a domain that has no desired configuration (its socket went
    /// away, so nothing about it matters any more).
    pub fn forget_unconfigured(&mut self, name: &str) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let n = exec(
            &tx,
            "DELETE FROM domains WHERE name = ?1 AND desired_generation IS NULL
                AND coalesce(lifecycle, '') != 'running'",
            [name],
        )?;
        if n > 0 {
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The lifecycle prepare: registers the domain (no configuration needed), records
    /// its UUID and channel path, takes or confirms the leases of its configuration and
    /// marks it running, in one transaction. Idempotent.
    pub fn prepare(
        &mut self,
        req: &PrepareRequest<'_>,
    ) -> Result<Result<Prepared, PrepareRefusal>, StoreError> {
        let now = now_rfc3339();
        let tx = self.tx()?;
        let name = req.name;
        let current: Option<(Option<String>, Option<String>)> = row(
            &tx,
            "SELECT uuid, config FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        if let Some(u) = req.uuid {
            let holder: Option<String> = row(
                &tx,
                "SELECT name FROM domains WHERE uuid = ?1 AND name != ?2 ORDER BY name LIMIT 1",
                params![u, name],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(holder) = holder {
                return Ok(Err(PrepareRefusal::UuidTaken {
                    uuid: u.to_string(),
                    holder,
                }));
            }
            if let Some((Some(old), _)) = &current
                && old != u
                && req.connected
            {
                return Ok(Err(PrepareRefusal::UuidChanged {
                    recorded: old.clone(),
                    asked: u.to_string(),
                }));
            }
        }
        if current.is_none() {
            let count: i64 = row(&tx, "SELECT count(*) FROM domains", [], |r| r.get(0))?;
            if count as usize >= req.max_domains {
                return Ok(Err(PrepareRefusal::TooManyDomains(req.max_domains)));
            }
        }
        // The leases belong to the stored configuration (read here, inside the
        // transaction, so a PUT that raced with the prepare hooks is what counts).
        let leases = match current.as_ref().and_then(|c| c.1.as_deref()) {
            Some(json) => {
                let config: GuestConfig =
                    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
                        domain: name.to_string(),
                        message: e.to_string(),
                    })?;
                leases_of(&config, req.hostname_leases)
            }
            None => Vec::new(),
        };
        if let Some(c) = lease_conflict(&tx, name, &leases)? {
            return Ok(Err(PrepareRefusal::Lease(c)));
        }
        if req.check_only {
            return Ok(Ok(Prepared {
                created: current.is_none(),
                uuid: req
                    .uuid
                    .map(str::to_string)
                    .or_else(|| current.and_then(|c| c.0)),
                leases: leases.iter().map(ToString::to_string).collect(),
            }));
        }
        replace_leases(&tx, name, &leases, &now)?;
        exec(
            &tx,
            "INSERT INTO domains(name, uuid, lifecycle, channel_path, updated_at)
             VALUES (?1, ?2, 'running', ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET
                uuid = coalesce(excluded.uuid, domains.uuid),
                lifecycle = 'running',
                channel_path = excluded.channel_path,
                updated_at = excluded.updated_at",
            params![name, req.uuid, req.channel_path, now],
        )?;
        let uuid: Option<String> = row(
            &tx,
            "SELECT uuid FROM domains WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        let held: Vec<String> = leases.iter().map(ToString::to_string).collect();
        self.insert_event(
            &tx,
            Some(name),
            "prepare",
            &format!(
                "uuid {} leases [{}]",
                uuid.as_deref().unwrap_or("-"),
                held.join(", ")
            ),
        )?;
        tx.commit()?;
        self.after_event();
        Ok(Ok(Prepared {
            created: current.is_none(),
            uuid,
            leases: held,
        }))
    }

    /// The lifecycle release of a stopped VM: the running marker goes; the desired
    /// configuration and its leases stay (they are the orchestrator's). A domain with no
    /// configuration is forgotten. Returns whether the domain was marked running, or
    /// `None` if the store does not know it. Idempotent.
    pub fn release(&mut self, name: &str) -> Result<Option<bool>, StoreError> {
        let tx = self.tx()?;
        let row: Option<(bool, Option<String>)> = row(
            &tx,
            "SELECT desired_generation IS NOT NULL, lifecycle FROM domains WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        let Some((configured, lifecycle)) = row else {
            return Ok(None);
        };
        let was_running = lifecycle.as_deref() == Some("running");
        if configured {
            exec(
                &tx,
                "UPDATE domains SET lifecycle = 'stopped', updated_at = ?2 WHERE name = ?1",
                params![name, now_rfc3339()],
            )?;
        } else {
            exec(&tx, "DELETE FROM domains WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM items WHERE name = ?1", [name])?;
            exec(&tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
        }
        self.insert_event(
            &tx,
            Some(name),
            "release",
            if configured {
                "stopped; configuration kept"
            } else {
                "stopped; forgotten (no configuration)"
            },
        )?;
        tx.commit()?;
        self.after_event();
        Ok(Some(was_running))
    }
}

/// [`first_conflict`] over the lease rows.
fn lease_conflict(
    conn: &Connection,
    name: &str,
    wanted: &[Lease],
) -> Result<Option<LeaseConflict>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT domain FROM leases WHERE kind = ?1 AND value = ?2")?;
    first_conflict(name, wanted, |l| {
        stmt.query_row(params![l.kind, l.value], |r| r.get(0))
            .optional()
            .map_err(StoreError::from)
    })
}

fn replace_leases(
    tx: &Connection,
    name: &str,
    leases: &[Lease],
    now: &str,
) -> Result<(), StoreError> {
    exec(tx, "DELETE FROM leases WHERE domain = ?1", [name])?;
    for l in leases {
        exec(
            tx,
            "INSERT OR REPLACE INTO leases(kind, value, domain, path, since) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![l.kind, l.value, name, l.path, now],
        )?;
    }
    Ok(())
}
