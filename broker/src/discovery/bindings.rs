//! Which running xenstore domain each broker domain name is bound to, kept up to date
//! one domid at a time (issue 16: an `@introduceDomain`/`@releaseDomain` costs work for
//! the domains it concerns, not for every domain).
//!
//! Domains are mapped **by UUID** (by name when a domain has no `vm` node): a UUID already
//! bound keeps its name and, while it is still there, its domid (during a local migration
//! the same UUID runs twice, under `<name>` and `<name>--incoming`: one session, to the
//! one already bound). A new UUID takes its lowest domid and that domain's name, unless
//! the name is taken: then it waits, and takes the name when its holder goes away (the
//! lowest domid first among several waiting).
//!
//! Pure: [`Bindings::update`] takes what changed in xenstore and returns what the broker
//! must do ([`Effect`]); the caller carries the effects out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// A running domain with a channel for the broker, as xenstore describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its domain id.
    pub domid: u32,
    /// Its name (`/local/domain/<domid>/name`).
    pub name: String,
    /// Its UUID, lowercase, if xenstore gives one.
    pub uuid: Option<String>,
    /// The socket QEMU listens on for the channel (the backend's `path`).
    pub path: PathBuf,
}

/// One discovered domain mapped onto a broker domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The broker's name for it.
    pub name: String,
    /// The domid its session talks to.
    pub domid: u32,
    /// Its UUID, if xenstore gives one.
    pub uuid: Option<String>,
    /// Its channel socket.
    pub path: PathBuf,
}

/// What the broker must do after an update, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The domain of this name left xenstore: stop its session.
    Vanished(String),
    /// Attach (or re-attach, on a new domid or socket) this binding.
    Attach(Binding),
}

/// The identity of a discovered domain: its UUID, or its name without one.
fn key(f: &Found) -> String {
    match &f.uuid {
        Some(u) => format!("uuid:{u}"),
        None => format!("name:{}", f.name),
    }
}

/// The domains xenstore shows and the names bound to them.
#[derive(Debug, Default)]
pub struct Bindings {
    /// What xenstore shows, by domid.
    found: BTreeMap<u32, Found>,
    /// The domids of each identity.
    groups: HashMap<String, BTreeSet<u32>>,
    /// The binding of each identity that has one.
    bound: HashMap<String, Binding>,
    /// Which identity holds each bound name.
    holders: HashMap<String, String>,
    /// Identities running but without a binding: their name is held by another.
    waiting: BTreeSet<String>,
}

impl Bindings {
    /// The current bindings, by name.
    pub fn bound(&self) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self.bound.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// How many domains xenstore shows.
    #[cfg(test)]
    fn found_len(&self) -> usize {
        self.found.len()
    }

    /// The changes that turn what is known into `snapshot` (every domain xenstore shows
    /// now): domids gone, and domids new or different.
    pub fn diff(&self, snapshot: &[Found]) -> Vec<(u32, Option<Found>)> {
        let now: BTreeMap<u32, &Found> = snapshot.iter().map(|f| (f.domid, f)).collect();
        let mut changes: Vec<(u32, Option<Found>)> = self
            .found
            .keys()
            .filter(|d| !now.contains_key(d))
            .map(|d| (*d, None))
            .collect();
        changes.extend(
            now.into_iter()
                .filter(|(d, f)| self.found.get(d) != Some(*f))
                .map(|(d, f)| (d, Some(f.clone()))),
        );
        changes
    }

    /// Takes `changes` (per domid: what xenstore shows now, `None`: nothing for the
    /// broker) and returns the effects, each binding's name vanishing before another
    /// identity takes it. Costs work for the identities the changes touch, and for the
    /// waiting ones when a name is freed.
    pub fn update(&mut self, changes: Vec<(u32, Option<Found>)>) -> Vec<Effect> {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for (domid, now) in changes {
            if let Some(old) = self.found.remove(&domid) {
                let k = key(&old);
                if let Some(g) = self.groups.get_mut(&k) {
                    g.remove(&domid);
                    if g.is_empty() {
                        self.groups.remove(&k);
                    }
                }
                touched.insert(k);
            }
            if let Some(f) = now {
                let k = key(&f);
                self.groups.entry(k.clone()).or_default().insert(domid);
                self.found.insert(domid, f);
                touched.insert(k);
            }
        }
        let mut effects = Vec::new();
        // Bound identities first, so a newcomer never takes a running domain's name.
        let mut freed = false;
        let rebind: Vec<String> = touched
            .iter()
            .filter(|k| self.bound.contains_key(*k))
            .cloned()
            .collect();
        for k in &rebind {
            let prev = self.bound[k].clone();
            let Some(domids) = self.groups.get(k) else {
                self.bound.remove(k);
                self.holders.remove(&prev.name);
                effects.push(Effect::Vanished(prev.name));
                freed = true;
                continue;
            };
            let domid = if domids.contains(&prev.domid) {
                prev.domid
            } else {
                *domids.first().expect("groups are never empty")
            };
            let f = &self.found[&domid];
            let next = Binding {
                name: prev.name.clone(),
                domid,
                uuid: f.uuid.clone(),
                path: f.path.clone(),
            };
            if next != prev {
                self.bound.insert(k.clone(), next.clone());
                effects.push(Effect::Attach(next));
            }
        }
        let mut candidates: BTreeSet<String> = touched
            .into_iter()
            .filter(|k| !self.bound.contains_key(k))
            .collect();
        if freed {
            candidates.extend(self.waiting.iter().cloned());
        }
        let mut candidates: Vec<(u32, String)> = candidates
            .into_iter()
            .filter_map(|k| {
                if let Some(g) = self.groups.get(&k) {
                    Some((*g.first().expect("groups are never empty"), k))
                } else {
                    self.waiting.remove(&k);
                    None
                }
            })
            .collect();
        // The lowest domid first among newcomers.
        candidates.sort();
        for (domid, k) in candidates {
            let f = &self.found[&domid];
            if let Some(holder) = self.holders.get(&f.name) {
                if self.waiting.insert(k) {
                    tracing::warn!(
                        domain = %f.name,
                        domid,
                        "two running domains claim the name {}; ignoring domid {domid} while {holder} holds it",
                        f.name
                    );
                }
                continue;
            }
            self.waiting.remove(&k);
            let b = Binding {
                name: f.name.clone(),
                domid,
                uuid: f.uuid.clone(),
                path: f.path.clone(),
            };
            self.holders.insert(b.name.clone(), k.clone());
            self.bound.insert(k, b.clone());
            effects.push(Effect::Attach(b));
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn found(domid: u32, name: &str, uuid: Option<&str>) -> Found {
        Found {
            domid,
            name: name.into(),
            uuid: uuid.map(str::to_string),
            path: PathBuf::from(format!("/s/{name}.sock")),
        }
    }

    fn names(b: &Bindings) -> Vec<(String, u32)> {
        b.bound()
            .iter()
            .map(|b| (b.name.clone(), b.domid))
            .collect()
    }

    /// Feeds a whole snapshot, as a rescan does.
    fn snapshot(b: &mut Bindings, found: &[Found]) -> Vec<Effect> {
        let changes = b.diff(found);
        b.update(changes)
    }

    const U1: &str = "00000000-0000-0000-0000-000000000001";
    const U2: &str = "00000000-0000-0000-0000-000000000002";

    #[test]
    fn a_new_domid_with_the_same_uuid_is_the_same_domain() {
        let mut b = Bindings::default();
        snapshot(&mut b, &[found(5, "web1", Some(U1))]);
        assert_eq!(names(&b), vec![("web1".into(), 5)]);
        // Reboot seen in one snapshot: new domid, same UUID and name: re-attached, not
        // vanished.
        let effects = snapshot(&mut b, &[found(9, "web1", Some(U1))]);
        assert_eq!(names(&b), vec![("web1".into(), 9)]);
        assert!(
            effects
                .iter()
                .all(|e| matches!(e, Effect::Attach(b) if b.domid == 9)),
            "{effects:?}"
        );
    }

    #[test]
    fn a_local_migration_keeps_one_session_under_the_bound_name() {
        let mut b = Bindings::default();
        snapshot(&mut b, &[found(5, "web1", Some(U1))]);
        // The incoming copy runs beside the original: the bound domid stays, nothing to do.
        let effects = b.update(vec![(8, Some(found(8, "web1--incoming", Some(U1))))]);
        assert_eq!(names(&b), vec![("web1".into(), 5)]);
        assert!(effects.is_empty(), "{effects:?}");
        // The original is gone; the copy is still called web1--incoming: same name.
        let effects = b.update(vec![(5, None)]);
        assert_eq!(names(&b), vec![("web1".into(), 8)]);
        assert_eq!(effects.len(), 1, "{effects:?}");
    }

    #[test]
    fn names_are_never_shared_and_uuidless_domains_go_by_name() {
        let mut b = Bindings::default();
        snapshot(
            &mut b,
            &[
                found(3, "a", None),
                found(4, "a", Some(U2)),
                found(6, "b", None),
            ],
        );
        // The lowest domid wins a contested name; the other waits.
        assert_eq!(names(&b), vec![("a".into(), 3), ("b".into(), 6)]);
        // A bound domain keeps its name against a newcomer with a lower domid.
        snapshot(&mut b, &[found(1, "b", Some(U1)), found(6, "b", None)]);
        assert_eq!(names(&b), vec![("b".into(), 6)]);
        // When the holder goes, the waiting one takes the name, after it vanished.
        let effects = b.update(vec![(6, None)]);
        assert_eq!(names(&b), vec![("b".into(), 1)]);
        assert_eq!(
            effects.first(),
            Some(&Effect::Vanished("b".into())),
            "{effects:?}"
        );
    }

    #[test]
    fn an_event_for_one_domain_touches_that_domain_only() {
        let mut b = Bindings::default();
        let many: Vec<Found> = (1..=1000)
            .map(|d| found(d, &format!("vm{d}"), None))
            .collect();
        assert_eq!(snapshot(&mut b, &many).len(), 1000);
        let effects = b.update(vec![(1001, Some(found(1001, "vm1001", None)))]);
        assert_eq!(effects.len(), 1, "only the new domain is attached");
        let effects = b.update(vec![(500, None)]);
        assert_eq!(effects, vec![Effect::Vanished("vm500".into())]);
        assert_eq!(b.found_len(), 1000);
    }

    /// The full plan this module replaced (every snapshot mapped anew), kept as the
    /// reference the incremental one must agree with.
    fn full_plan(bound: &HashMap<String, Binding>, found: &[Found]) -> HashMap<String, Binding> {
        let mut groups: BTreeMap<String, Vec<&Found>> = BTreeMap::new();
        for f in found {
            groups.entry(key(f)).or_default().push(f);
        }
        for g in groups.values_mut() {
            g.sort_by_key(|f| f.domid);
        }
        let mut keys: Vec<&String> = groups.keys().collect();
        keys.sort_by_key(|k| (!bound.contains_key(*k), groups[*k][0].domid));
        let mut out = HashMap::new();
        let mut names: HashSet<String> = HashSet::new();
        for k in keys {
            let group = &groups[k];
            let prev = bound.get(k);
            let pick = prev
                .and_then(|b| group.iter().find(|f| f.domid == b.domid))
                .unwrap_or(&group[0]);
            let name = prev.map_or_else(|| pick.name.clone(), |b| b.name.clone());
            if !names.insert(name.clone()) {
                continue;
            }
            out.insert(
                k.clone(),
                Binding {
                    name,
                    domid: pick.domid,
                    uuid: pick.uuid.clone(),
                    path: pick.path.clone(),
                },
            );
        }
        out
    }

    #[test]
    fn one_domain_at_a_time_ends_where_the_full_plan_does() {
        // A deterministic walk of domains coming, going, rebooting and migrating under
        // few names and UUIDs, so that names and UUIDs collide often.
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let uuids = [
            None,
            Some(U1),
            Some(U2),
            Some("00000000-0000-0000-0000-000000000003"),
        ];
        let mut inc = Bindings::default();
        let mut reference: HashMap<String, Binding> = HashMap::new();
        let mut xs: BTreeMap<u32, Found> = BTreeMap::new();
        for step in 0..5000 {
            let domid = u32::try_from(next(12)).unwrap() + 1;
            let change = if xs.contains_key(&domid) && next(3) == 0 {
                xs.remove(&domid);
                None
            } else {
                let f = found(
                    domid,
                    &format!("n{}", next(4)),
                    uuids[usize::try_from(next(4)).unwrap()],
                );
                xs.insert(domid, f.clone());
                Some(f)
            };
            let effects = inc.update(vec![(domid, change)]);
            let snapshot: Vec<Found> = xs.values().cloned().collect();
            reference = full_plan(&reference, &snapshot);
            let mut want: Vec<&Binding> = reference.values().collect();
            want.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(inc.bound(), want, "step {step}");
            // Names vanish before they are taken again.
            let mut attached: HashSet<&str> = HashSet::new();
            for e in &effects {
                match e {
                    Effect::Attach(b) => {
                        attached.insert(&b.name);
                    }
                    Effect::Vanished(n) => assert!(!attached.contains(n.as_str()), "step {step}"),
                }
            }
        }
    }
}
