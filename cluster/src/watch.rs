//! Watching the domains a host runs: one etcd watch on the prefix's `domains/` folder,
//! filtered by a pure state machine (`Interest`) that knows which domains this host owns
//! or is about to receive. A PUT on any broker thus reaches the host running the domain,
//! and a host learns when it gains or loses a domain.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use xenchan_basics::Backoff;

use crate::client::Cluster;
use crate::codec::{self, Desired};
use crate::error::ClusterError;
use crate::keys::{DomainKey, Key, Keyspace, Uuid};

/// Something the host running (or receiving) a domain must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A new desired configuration of a domain this host runs or receives.
    Desired { uuid: Uuid, desired: Desired },
    /// Its desired configuration was deleted.
    DesiredDeleted { uuid: Uuid },
    /// This host became the owner (a claim, or a completed migration to here).
    Acquired { uuid: Uuid },
    /// This host no longer owns the domain; `owner` is the new one, if any.
    Lost { uuid: Uuid, owner: Option<String> },
    /// A migration of the domain to this host was prepared.
    Incoming { uuid: Uuid },
    /// The migration to this host ended (completed: `Acquired` came just before; else
    /// cancelled or its preparer's lease expired).
    IncomingEnded { uuid: Uuid },
    /// Nobody owns a domain this host waits for (it runs here while another host owned
    /// it: that host gave it up, or its lease expired): claim it now.
    Orphaned { uuid: Uuid },
    /// A value of a watched domain is not what this crate writes: said, not dropped.
    Corrupt { key: String, reason: String },
}

/// Which domains a host cares about, and the rule turning etcd events into `WatchEvent`s.
#[derive(Debug, Clone)]
pub struct Interest {
    host: String,
    owned: BTreeSet<Uuid>,
    incoming: BTreeSet<Uuid>,
    /// Domains running here that another host owns: their owner's departure is news.
    waiting: BTreeSet<Uuid>,
}

impl Interest {
    pub fn new(host: &str, owned: impl IntoIterator<Item = Uuid>) -> Interest {
        Interest {
            host: host.to_string(),
            owned: owned.into_iter().collect(),
            incoming: BTreeSet::new(),
            waiting: BTreeSet::new(),
        }
    }

    pub fn owned(&self) -> &BTreeSet<Uuid> {
        &self.owned
    }

    /// The domains this host waits to claim.
    pub fn waiting(&self) -> &BTreeSet<Uuid> {
        &self.waiting
    }

    /// The domain runs here but another host owns it: report `Orphaned` when its owner
    /// key goes away. The caller claims once after this call, so that an owner gone
    /// before it is not missed.
    pub fn wait_for(&mut self, uuid: Uuid) {
        if !self.owned.contains(&uuid) {
            self.waiting.insert(uuid);
        }
    }

    /// The domain no longer runs here (released): its owner's departure is no news.
    pub fn stop_waiting(&mut self, uuid: &Uuid) {
        self.waiting.remove(uuid);
    }

    /// Whose desired configurations are followed: the domains this host owns, receives,
    /// or runs while waiting for their owner to go (so that its cache is current when it
    /// claims them).
    fn watches(&self, uuid: &Uuid) -> bool {
        self.owned.contains(uuid) || self.incoming.contains(uuid) || self.waiting.contains(uuid)
    }

    /// One etcd event (`value` is empty for a delete). Pure.
    pub fn apply(
        &mut self,
        keys: &Keyspace,
        put: bool,
        key: &[u8],
        value: &[u8],
    ) -> Option<WatchEvent> {
        let Some(Key::Domain(uuid, what)) = keys.parse(key) else {
            return None;
        };
        let key_text = || String::from_utf8_lossy(key).into_owned();
        let host_value = || codec::decode_host(value);
        match what {
            DomainKey::Owner => {
                let owner = if put {
                    match host_value() {
                        Ok(h) => Some(h),
                        Err(reason) => {
                            return self.watches(&uuid).then(|| WatchEvent::Corrupt {
                                key: key_text(),
                                reason,
                            });
                        }
                    }
                } else {
                    None
                };
                if owner.as_deref() == Some(self.host.as_str()) {
                    self.waiting.remove(&uuid);
                    self.owned
                        .insert(uuid.clone())
                        .then_some(WatchEvent::Acquired { uuid })
                } else if self.owned.remove(&uuid) {
                    Some(WatchEvent::Lost { uuid, owner })
                } else if owner.is_none() && self.waiting.contains(&uuid) {
                    Some(WatchEvent::Orphaned { uuid })
                } else {
                    None
                }
            }
            DomainKey::Incoming => {
                let to_me = put && host_value().is_ok_and(|h| h == self.host);
                if to_me {
                    self.incoming
                        .insert(uuid.clone())
                        .then_some(WatchEvent::Incoming { uuid })
                } else {
                    self.incoming
                        .remove(&uuid)
                        .then_some(WatchEvent::IncomingEnded { uuid })
                }
            }
            DomainKey::Desired if self.watches(&uuid) => {
                if !put {
                    return Some(WatchEvent::DesiredDeleted { uuid });
                }
                Some(match codec::decode_desired(value) {
                    // The deletion marker (`delete_desired`).
                    Ok(desired) if desired.config.is_empty() => WatchEvent::DesiredDeleted { uuid },
                    Ok(desired) => WatchEvent::Desired { uuid, desired },
                    Err(reason) => WatchEvent::Corrupt {
                        key: key_text(),
                        reason,
                    },
                })
            }
            _ => None,
        }
    }
}

/// A running watch; `next` resumes after the last seen revision when the stream breaks.
pub struct Watcher {
    client: Client,
    keys: Keyspace,
    endpoints: String,
    timeout: Duration,
    interest: Interest,
    stream: Option<WatchStream>,
    /// The revision to resume from (0: from now).
    next_revision: i64,
    queue: VecDeque<WatchEvent>,
    backoff: Backoff,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("interest", &self.interest)
            .field("next_revision", &self.next_revision)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Watches the domains this host owns (`owned`, e.g. from its cache) and every domain
    /// it comes to own or receive, from `from_revision` (0: from now; a snapshot's
    /// revision + 1 to miss nothing after it).
    pub fn watch(&self, owned: impl IntoIterator<Item = Uuid>, from_revision: i64) -> Watcher {
        Watcher {
            client: self.client.clone(),
            keys: self.keys.clone(),
            endpoints: self.endpoints.clone(),
            timeout: self.timeouts.request,
            interest: Interest::new(&self.host, owned),
            stream: None,
            next_revision: from_revision,
            queue: VecDeque::new(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        }
    }

    /// The current revision of the store (what a snapshot read now would be at).
    pub async fn revision(&self) -> Result<i64, ClusterError> {
        let dl = self.deadline("revision");
        let (rev, _) = self
            .get_prefix(&dl, &format!("{}hosts/", self.keys.prefix()))
            .await?;
        Ok(rev)
    }
}

impl Watcher {
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// The interest, to add or drop domains this host waits for.
    pub fn interest_mut(&mut self) -> &mut Interest {
        &mut self.interest
    }

    /// The next event. `Unavailable` when etcd cannot be reached to (re)open the watch
    /// within the request timeout; calling again resumes where it stopped, nothing missed
    /// (unless etcd compacted the history meanwhile: then `Etcd` says so, and the caller
    /// reads a fresh snapshot).
    pub async fn next(&mut self) -> Result<WatchEvent, ClusterError> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(e);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.open().await?;
                continue;
            };
            let Ok(Some(resp)) = stream.message().await else {
                // The stream broke (etcd restarted, member lost): reopen from the next
                // revision after a pause.
                self.stream = None;
                tokio::time::sleep(self.backoff.next_delay()).await;
                continue;
            };
            if resp.canceled() {
                self.stream = None;
                if resp.compact_revision() > 0 {
                    return Err(ClusterError::Corrupt {
                        key: self.keys.domains(),
                        reason: format!(
                            "watch history compacted up to revision {} (wanted {}): read a new snapshot",
                            resp.compact_revision(),
                            self.next_revision
                        ),
                    });
                }
                continue;
            }
            self.backoff.reset();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.next_revision = kv.mod_revision() + 1;
                let put = ev.event_type() == EventType::Put;
                if let Some(e) = self.interest.apply(&self.keys, put, kv.key(), kv.value()) {
                    self.queue.push_back(e);
                }
            }
        }
    }

    async fn open(&mut self) -> Result<(), ClusterError> {
        let mut options = WatchOptions::new().with_prefix();
        if self.next_revision > 0 {
            options = options.with_start_revision(self.next_revision);
        }
        let key = self.keys.domains();
        let mut c = self.client.clone();
        match tokio::time::timeout(self.timeout, c.watch(key, Some(options))).await {
            Ok(Ok(stream)) => {
                self.stream = Some(stream);
                Ok(())
            }
            Ok(Err(e)) => {
                tokio::time::sleep(self.backoff.next_delay()).await;
                Err(ClusterError::Unavailable {
                    endpoints: self.endpoints.clone(),
                    op: "watch",
                    reason: "opening the watch failed".to_string(),
                    source: Some(e),
                })
            }
            Err(_) => Err(ClusterError::timed_out(
                &self.endpoints,
                "watch",
                self.timeout,
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_turns_events_into_actions() {
        let ks = Keyspace::new("/x/").unwrap();
        let u = Uuid::parse("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10").unwrap();
        let other = Uuid::parse("00000000-0000-0000-0000-000000000001").unwrap();
        let k = |what| ks.domain(&u, &what).into_bytes();
        let desired = codec::encode_desired(&Desired {
            generation: 2,
            name: "web1".into(),
            config: b"{}".to_vec(),
        });
        let mut i = Interest::new("a", []);
        // (put?, key, value, expected event)
        #[allow(clippy::type_complexity)] // one row per step reads best as a plain tuple
        let steps: Vec<(bool, Vec<u8>, Vec<u8>, Option<&str>)> = vec![
            (true, k(DomainKey::Desired), desired.clone(), None), // not ours yet
            (true, k(DomainKey::Owner), b"a".to_vec(), Some("acquired")),
            (true, k(DomainKey::Owner), b"a".to_vec(), None), // rebind: nothing new
            (
                true,
                k(DomainKey::Desired),
                desired.clone(),
                Some("desired"),
            ),
            (
                true,
                k(DomainKey::Desired),
                b"junk".to_vec(),
                Some("corrupt"),
            ),
            (
                true,
                ks.domain(&other, &DomainKey::Desired).into_bytes(),
                desired.clone(),
                None,
            ),
            (true, k(DomainKey::Applied), b"{}".to_vec(), None),
            (true, k(DomainKey::Incoming), b"b".to_vec(), None), // migrating away
            (true, k(DomainKey::Owner), b"b".to_vec(), Some("lost")),
            (true, k(DomainKey::Desired), desired.clone(), None),
            (
                true,
                k(DomainKey::Incoming),
                b"a".to_vec(),
                Some("incoming"),
            ),
            (
                true,
                k(DomainKey::Desired),
                desired.clone(),
                Some("desired"),
            ),
            (
                false,
                k(DomainKey::Incoming),
                vec![],
                Some("incoming-ended"),
            ),
            (true, k(DomainKey::Owner), b"a".to_vec(), Some("acquired")),
            (
                false,
                k(DomainKey::Desired),
                vec![],
                Some("desired-deleted"),
            ),
            (false, k(DomainKey::Owner), vec![], Some("lost")),
            (false, b"/other/thing".to_vec(), vec![], None),
        ];
        for (n, (put, key, value, want)) in steps.into_iter().enumerate() {
            let got = i.apply(&ks, put, &key, &value).map(|e| match e {
                WatchEvent::Desired { desired, .. } => {
                    assert_eq!(desired.generation, 2);
                    "desired"
                }
                WatchEvent::DesiredDeleted { .. } => "desired-deleted",
                WatchEvent::Acquired { .. } => "acquired",
                WatchEvent::Lost { .. } => "lost",
                WatchEvent::Incoming { .. } => "incoming",
                WatchEvent::IncomingEnded { .. } => "incoming-ended",
                WatchEvent::Orphaned { .. } => "orphaned",
                WatchEvent::Corrupt { .. } => "corrupt",
            });
            assert_eq!(got, want, "step {n}: {}", String::from_utf8_lossy(&key));
        }
        assert!(i.owned().is_empty());
    }

    #[test]
    fn a_waiting_host_learns_when_the_owner_goes() {
        let ks = Keyspace::new("/x/").unwrap();
        let u = Uuid::parse("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10").unwrap();
        let owner = ks.domain(&u, &DomainKey::Owner).into_bytes();
        let desired_key = ks.domain(&u, &DomainKey::Desired).into_bytes();
        let desired = codec::encode_desired(&Desired {
            generation: 4,
            name: "web1".into(),
            config: b"{}".to_vec(),
        });
        let mut i = Interest::new("b", []);
        // Not waiting: another host's departure and its PUTs are no news.
        assert_eq!(i.apply(&ks, false, &owner, &[]), None);
        assert_eq!(i.apply(&ks, true, &desired_key, &desired), None);
        i.wait_for(u.clone());
        // Waiting: the desired configuration is followed, so the cache is current.
        assert!(matches!(
            i.apply(&ks, true, &desired_key, &desired),
            Some(WatchEvent::Desired { .. })
        ));
        // Another owner taking over is not an orphan; its departure is.
        assert_eq!(i.apply(&ks, true, &owner, b"c"), None);
        assert_eq!(
            i.apply(&ks, false, &owner, &[]),
            Some(WatchEvent::Orphaned { uuid: u.clone() })
        );
        // Claimed: no longer waiting, owned.
        assert_eq!(
            i.apply(&ks, true, &owner, b"b"),
            Some(WatchEvent::Acquired { uuid: u.clone() })
        );
        assert!(i.waiting().is_empty());
        // Owned domains are never waited for; released ones stop being.
        i.wait_for(u.clone());
        assert!(i.waiting().is_empty());
        let mut j = Interest::new("b", []);
        j.wait_for(u.clone());
        j.stop_waiting(&u);
        assert_eq!(j.apply(&ks, false, &owner, &[]), None);
    }

    #[test]
    fn an_empty_document_is_a_deletion() {
        let ks = Keyspace::new("/x/").unwrap();
        let u = Uuid::parse("6f1c2b1e-0d3a-4c8e-9a51-2b7e0c4d9f10").unwrap();
        let mut i = Interest::new("a", [u.clone()]);
        let tombstone = codec::encode_desired(&Desired {
            generation: 3,
            name: "web1".into(),
            config: Vec::new(),
        });
        let key = ks.domain(&u, &DomainKey::Desired).into_bytes();
        assert_eq!(
            i.apply(&ks, true, &key, &tombstone),
            Some(WatchEvent::DesiredDeleted { uuid: u })
        );
    }
}
