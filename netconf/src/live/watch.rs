//! Link and address notifications over rtnetlink (the `RTNLGRP_LINK`,
//! `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR` multicast groups), for a caller that
//! waits for an interface named by MAC to appear and wants to know when the guest's
//! network changed.
//!
//! The socket is non-blocking and has no runtime of its own: the caller polls its
//! descriptor (the agent registers it with tokio) and calls [`LinkWatch::drain`] when it
//! is readable. A drain reads at most a budget of datagrams and folds every event into
//! one [`LinkChanges`] (MACs that appeared, whether anything changed): a flood of events
//! costs one summary, never one reaction per event.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::netlink::{Netlink, link_of, socket_in};

/// `RTNLGRP_LINK`: links added, removed or changed.
const RTNLGRP_LINK: u32 = 1;
/// `RTNLGRP_IPV4_IFADDR`.
const RTNLGRP_IPV4_IFADDR: u32 = 5;
/// `RTNLGRP_IPV6_IFADDR`.
const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// Links remembered at most (a guest has a handful; a namespace full of veths is
/// still far below this). Past it the table is rebuilt from a dump.
const MAX_KNOWN: usize = 4096;
/// The receive buffer of one datagram (the kernel sends at most a page-sized
/// notification, dumps use 32 KiB).
const DATAGRAM: usize = 64 * 1024;

/// What happened since the last drain, folded into one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChanges {
    /// MACs (lowercase, colon-separated) of links that appeared, or whose MAC changed
    /// to this one. A link that merely changed state (up, down, renamed) is not here.
    pub appeared: BTreeSet<String>,
    /// A link or address was added, removed or changed (the guest's facts may differ).
    pub changed: bool,
    /// The kernel dropped notifications (`ENOBUFS`): the link table was rebuilt from a
    /// dump, and `appeared` holds what the dump showed new, but addresses may have
    /// changed unseen.
    pub overflowed: bool,
}

impl LinkChanges {
    /// Folds `other` into `self` (the caller keeps one summary until it acts on it).
    pub fn merge(&mut self, other: LinkChanges) {
        // Bounded by the number of links the watch knows about.
        if self.appeared.len() < MAX_KNOWN {
            self.appeared.extend(other.appeared);
        }
        self.changed |= other.changed;
        self.overflowed |= other.overflowed;
    }

    /// Nothing happened.
    pub fn is_empty(&self) -> bool {
        self.appeared.is_empty() && !self.changed && !self.overflowed
    }
}

/// The outcome of one [`LinkWatch::drain`].
#[derive(Debug, Default)]
pub struct Drained {
    /// What happened.
    pub changes: LinkChanges,
    /// The budget ran out before the socket was empty: drain again (after yielding).
    pub more: bool,
}

/// A subscription to link and address notifications in one network namespace.
#[derive(Debug)]
pub struct LinkWatch {
    sock: Socket,
    netns: Option<std::path::PathBuf>,
    /// Interface index to MAC of every link seen, to tell a link that appeared from one
    /// that changed.
    known: BTreeMap<u32, String>,
    buf: Vec<u8>,
}

impl LinkWatch {
    /// Subscribes to notifications in the caller's namespace or in `netns` (a file such
    /// as `/run/netns/<name>`), then lists the links present: they count as already
    /// there, not as appearing. Subscribing first means no link can appear unseen in
    /// between.
    pub fn open(netns: Option<&Path>) -> io::Result<LinkWatch> {
        let sock = socket_in(netns, subscribed_socket)?;
        let mut w = LinkWatch {
            sock,
            netns: netns.map(Path::to_path_buf),
            known: BTreeMap::new(),
            buf: Vec::with_capacity(DATAGRAM),
        };
        w.resync()?;
        Ok(w)
    }

    /// Reads what is waiting, at most `budget` datagrams, without blocking. An error is
    /// the socket's (a closed or broken socket); `ENOBUFS` is not one: it means the
    /// kernel dropped notifications, and the link table is rebuilt from a dump.
    pub fn drain(&mut self, budget: usize) -> io::Result<Drained> {
        let mut out = Drained::default();
        for _ in 0..budget {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {
                    let buf = std::mem::take(&mut self.buf);
                    self.absorb(&buf, &mut out.changes);
                    self.buf = buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.changes.overflowed = true;
                    out.changes.changed = true;
                    let before = std::mem::take(&mut self.known);
                    self.resync()?;
                    out.changes.appeared.extend(appeared(&before, &self.known));
                }
                Err(e) => return Err(e),
            }
        }
        out.more = true;
        Ok(out)
    }

    /// Whether a link with `mac` is present, as far as the notifications tell.
    pub fn has_mac(&self, mac: &str) -> bool {
        self.known.values().any(|m| m == mac)
    }

    /// Rebuilds the link table from a dump (on a separate request socket: the
    /// subscribed one carries notifications only).
    fn resync(&mut self) -> io::Result<()> {
        let links = Netlink::open(self.netns.as_deref())?.links()?;
        self.known = links
            .into_iter()
            .take(MAX_KNOWN)
            .map(|l| (l.index, l.mac))
            .collect();
        Ok(())
    }

    /// Folds one datagram's notifications into `changes`.
    fn absorb(&mut self, rx: &[u8], changes: &mut LinkChanges) {
        for raw in messages(rx) {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                // An attribute this crate version cannot parse: something changed.
                changes.changed = true;
                continue;
            };
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            match m {
                RouteNetlinkMessage::NewLink(l) => {
                    changes.changed = true;
                    let link = link_of(&l);
                    let new = self.known.get(&link.index) != Some(&link.mac);
                    if new && !link.mac.is_empty() {
                        changes.appeared.insert(link.mac.clone());
                    }
                    if self.known.len() < MAX_KNOWN || self.known.contains_key(&link.index) {
                        self.known.insert(link.index, link.mac);
                    }
                }
                RouteNetlinkMessage::DelLink(l) => {
                    changes.changed = true;
                    self.known.remove(&l.header.index);
                }
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
                    changes.changed = true;
                }
                _ => {}
            }
        }
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// MACs of links in `after` that are new or whose MAC differs from `before`.
fn appeared(before: &BTreeMap<u32, String>, after: &BTreeMap<u32, String>) -> Vec<String> {
    after
        .iter()
        .filter(|(i, m)| !m.is_empty() && before.get(i) != Some(m))
        .map(|(_, m)| m.clone())
        .collect()
}

/// The netlink messages of one datagram (each `nlmsghdr` with its payload); a
/// truncated or malformed tail is dropped.
fn messages(rx: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > rx.len() {
            return None;
        }
        let len = u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
        if len < 16 || off + len > rx.len() {
            return None;
        }
        let raw = &rx[off..off + len];
        off += (len + 3) & !3;
        Some(raw)
    })
}

fn subscribed_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    for g in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
        sock.add_membership(g)?;
    }
    sock.set_non_blocking(true)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u32, &str)]) -> BTreeMap<u32, String> {
        entries
            .iter()
            .map(|(i, m)| (*i, (*m).to_string()))
            .collect()
    }

    #[test]
    fn appeared_is_new_indices_and_changed_macs_only() {
        type Case<'a> = (&'a [(u32, &'a str)], &'a [&'a str]);
        let before = table(&[(1, "00:00:00:00:00:00"), (2, "00:16:3e:00:00:01")]);
        let cases: [Case<'_>; 5] = [
            // Nothing new.
            (&[(1, "00:00:00:00:00:00"), (2, "00:16:3e:00:00:01")], &[]),
            // A new link.
            (
                &[(2, "00:16:3e:00:00:01"), (3, "00:16:3e:00:00:02")],
                &["00:16:3e:00:00:02"],
            ),
            // A link whose MAC was changed to the one waited for.
            (&[(2, "00:16:3e:00:00:09")], &["00:16:3e:00:00:09"]),
            // Gone links are not "appeared".
            (&[], &[]),
            // A link without a MAC (a tunnel) never matches.
            (&[(7, "")], &[]),
        ];
        for (after, want) in cases {
            assert_eq!(appeared(&before, &table(after)), want, "{after:?}");
        }
    }

    #[test]
    fn messages_splits_and_stops_at_a_bad_length() {
        let mut rx = Vec::new();
        for len in [16u32, 20] {
            let mut m = vec![0u8; len as usize];
            m[..4].copy_from_slice(&len.to_ne_bytes());
            rx.extend_from_slice(&m);
        }
        assert_eq!(messages(&rx).map(<[u8]>::len).collect::<Vec<_>>(), [16, 20]);
        // A header claiming more than there is ends the walk.
        let mut bad = rx.clone();
        bad[16..20].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 1);
        assert_eq!(messages(&[0u8; 10]).count(), 0);
    }

    #[test]
    fn merge_folds_summaries() {
        let mut a = LinkChanges::default();
        assert!(a.is_empty());
        a.merge(LinkChanges {
            appeared: ["00:16:3e:00:00:01".to_string()].into(),
            changed: true,
            overflowed: false,
        });
        a.merge(LinkChanges {
            appeared: ["00:16:3e:00:00:02".to_string()].into(),
            changed: false,
            overflowed: true,
        });
        assert_eq!(a.appeared.len(), 2);
        assert!(a.changed && a.overflowed && !a.is_empty());
    }
}
