//! A small blocking rtnetlink client: one request at a time, every answer bounded by a
//! receive timeout.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::links::Link;

/// How long one request may take, answers included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// A dump larger than this is not a guest's routing table.
const MAX_DUMP_MESSAGES: usize = 100_000;

/// The state of a link that live apply may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub mtu: u32,
    pub up: bool,
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    pub net: IpNet,
    pub scope: u8,
}

/// A route of the main table through a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub to: IpNet,
    pub via: Option<IpAddr>,
    /// As the kernel reports it (IPv6 routes added without one get 1024).
    pub metric: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
}

/// A netlink route socket, possibly in another network namespace.
#[derive(Debug)]
pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    /// The state of each link as the last dump ([`Netlink::links`]) saw it, each taken
    /// by the first [`Netlink::link_state`] of its link: an apply that just listed the
    /// links does not ask again (one round trip less), a second look asks the kernel.
    dumped: Vec<(u32, LinkState)>,
}

impl Netlink {
    /// Opens a socket in the caller's namespace, or in the namespace of `netns` (a file
    /// such as `/run/netns/<name>`). A netlink socket belongs to the namespace it was
    /// created in, so it is created on a short-lived thread that enters the namespace;
    /// the caller's threads never change namespace.
    pub(crate) fn open(netns: Option<&Path>) -> io::Result<Netlink> {
        let sock = socket_in(netns, new_socket)?;
        Ok(Netlink {
            sock,
            seq: 0,
            dumped: Vec::new(),
        })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;

        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut out = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel in time",
                ));
            }
            rx.clear();
            match self.sock.recv(&mut rx, 0) {
                Ok(_) => {}
                // The receive timeout (1s) brings us back to the deadline check.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => return Err(e),
            }
            let mut off = 0;
            while off + 16 <= rx.len() {
                let len =
                    u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
                if len < 16 || off + len > rx.len() {
                    break;
                }
                let raw = &rx[off..off + len];
                off += (len + 3) & !3;
                let raw_seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                if raw_seq != seq {
                    continue;
                }
                let Ok(parsed) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                    // An attribute this crate version cannot parse: skip that one entry.
                    tracing::debug!("skipping an rtnetlink message that does not parse");
                    continue;
                };
                match parsed.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        if out.len() >= MAX_DUMP_MESSAGES {
                            return Err(io::Error::other("rtnetlink dump too large"));
                        }
                        out.push(m);
                        // A plain get without an ack gets one answer and nothing else.
                        if flags & (NLM_F_DUMP | NLM_F_ACK) == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }

    /// Every link, with its MAC.
    pub(crate) fn links(&mut self) -> io::Result<Vec<Link>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links = Vec::new();
        self.dumped.clear();
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let link = link_of(&l);
            self.dumped.push((link.index, state_of(&l)));
            links.push(link);
        }
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    /// MTU and up flag of a link.
    pub(crate) fn link_state(&mut self, index: u32) -> io::Result<LinkState> {
        if let Some(i) = self.dumped.iter().position(|(n, _)| *n == index) {
            return Ok(self.dumped.swap_remove(i).1);
        }
        let mut m = LinkMessage::default();
        m.header.index = index;
        let msgs = self.request(RouteNetlinkMessage::GetLink(m), 0)?;
        for m in msgs {
            if let RouteNetlinkMessage::NewLink(l) = m {
                return Ok(state_of(&l));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("link {index} is gone"),
        ))
    }

    pub(crate) fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    pub(crate) fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        m.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Addresses on a link.
    pub(crate) fn addresses(&mut self, index: u32) -> io::Result<Vec<Addr>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 has only IFA_ADDRESS.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push(Addr {
                    net,
                    scope: a.header.scope.into(),
                });
            }
        }
        Ok(out)
    }

    fn addr_msg(index: u32, a: &Addr) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(a.net.addr());
        m.header.prefix_len = a.net.prefix_len();
        m.header.index = index;
        m.header.scope = AddressScope::from(a.scope);
        if a.net.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(a.net.addr()));
        }
        m.attributes.push(AddressAttribute::Address(a.net.addr()));
        m
    }

    pub(crate) fn add_address(&mut self, index: u32, a: &Addr) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::NewAddress(Self::addr_msg(index, a)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub(crate) fn del_address(&mut self, index: u32, a: &Addr) -> io::Result<()> {
        self.ack(RouteNetlinkMessage::DelAddress(Self::addr_msg(index, a)), 0)
    }

    /// Routes of the main table leaving through a link.
    pub(crate) fn routes(&mut self, index: u32) -> io::Result<Vec<Route>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut via = None;
            let mut metric = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => via = route_ip(g),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let fam_default = match r.header.address_family {
                AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
                _ => IpAddr::from([0u8; 4]),
            };
            let Ok(to) = IpNet::new(
                dst.unwrap_or(fam_default),
                r.header.destination_prefix_length,
            ) else {
                continue;
            };
            out.push(Route {
                to,
                via,
                metric,
                protocol: r.header.protocol.into(),
                scope: r.header.scope.into(),
                kind: r.header.kind.into(),
            });
        }
        Ok(out)
    }

    fn route_msg(index: u32, r: &Route, for_delete: bool) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family(r.to.addr());
        m.header.destination_prefix_length = r.to.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        if for_delete {
            // Match whatever scope and protocol the route has, as `ip route del` does.
            m.header.scope = RouteScope::NoWhere;
            m.header.protocol = RouteProtocol::Unspec;
            m.header.kind = RouteType::Unspec;
        } else {
            m.header.scope = RouteScope::from(r.scope);
            m.header.protocol = RouteProtocol::from(r.protocol);
            m.header.kind = RouteType::from(r.kind);
        }
        if r.to.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(r.to.addr())));
        }
        if let Some(g) = r.via {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        m.attributes.push(RouteAttribute::Priority(r.metric));
        m
    }

    pub(crate) fn add_route(&mut self, index: u32, r: &Route) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(Self::route_msg(index, r, false)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub(crate) fn del_route(&mut self, index: u32, r: &Route) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::DelRoute(Self::route_msg(index, r, true)),
            0,
        )
    }
}

/// A link as a `RTM_NEWLINK` message describes it (a dump's entry or a notification).
/// MTU and up flag of a link message.
fn state_of(l: &LinkMessage) -> LinkState {
    let mtu = l
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0);
    LinkState {
        mtu,
        up: l.header.flags.contains(LinkFlags::Up),
    }
}

pub(crate) fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        mac: String::new(),
        index: l.header.index,
        physical: true,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(b) => {
                link.mac = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i
                        && matches!(
                            k,
                            InfoKind::Vlan
                                | InfoKind::Bridge
                                | InfoKind::Bond
                                | InfoKind::MacVlan
                                | InfoKind::MacVtap
                                | InfoKind::IpVlan
                                | InfoKind::IpVtap
                                | InfoKind::Vrf
                        )
                    {
                        link.physical = false;
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// A socket made by `make` in the caller's namespace, or in the namespace of `netns` (a
/// file such as `/run/netns/<name>`). A netlink socket belongs to the namespace it was
/// created in, so it is created on a short-lived thread that enters the namespace; the
/// caller's threads never change namespace. A caller already in that namespace makes it
/// itself: a thread per socket costs more than the rest of a small push.
pub(crate) fn socket_in(
    netns: Option<&Path>,
    make: fn() -> io::Result<Socket>,
) -> io::Result<Socket> {
    let Some(path) = netns else {
        return make();
    };
    if already_in(path) {
        return make();
    }
    let path = path.to_path_buf();
    std::thread::spawn(move || -> io::Result<Socket> {
        let f = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("enter {}: {}", path.display(), e.desc())))?;
        make()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Whether the calling thread's network namespace is the one `path` names: the same
/// nsfs inode (what `ip netns identify` compares). Unknown counts as no.
fn already_in(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn new_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(sock)
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The kernel's words for an errno, without Rust's "(os error N)" suffix.
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_own_namespace_is_recognised_and_other_files_are_not() {
        assert!(already_in(Path::new("/proc/thread-self/ns/net")));
        assert!(!already_in(Path::new("/proc/thread-self/ns/uts")));
        assert!(!already_in(Path::new("/")));
        assert!(!already_in(Path::new("/nonexistent/netns")));
    }

    #[test]
    fn a_thread_in_another_namespace_is_told_apart() {
        use nix::sched::{CloneFlags, unshare};
        let main = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        let inner = std::thread::spawn(move || -> Option<(String, bool, bool)> {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: a new network namespace needs CAP_SYS_ADMIN ({e})");
                return None;
            }
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            // The socket is made here, without a thread, and works in this namespace.
            let sock = socket_in(Some(Path::new(&own)), new_socket);
            Some((
                own.clone(),
                already_in(Path::new(&own)) && sock.is_ok(),
                already_in(Path::new(&main)),
            ))
        });
        let Some((own, in_own, in_main)) = inner.join().expect("thread") else {
            return;
        };
        assert!(in_own, "a thread is in its own namespace ({own})");
        assert!(!in_main, "the thread left the main thread's namespace");
    }

    /// A link's state comes from the dump that just listed it, once; the next look asks
    /// the kernel (which has seen the change made in between).
    #[test]
    fn a_links_state_is_taken_from_the_dump_once_then_asked() {
        use nix::sched::{CloneFlags, unshare};
        let seen = std::thread::spawn(|| -> Option<(u32, u32, u32)> {
            if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: a new network namespace needs CAP_SYS_ADMIN ({e})");
                return None;
            }
            let mut nl = Netlink::open(None).unwrap();
            let lo = nl
                .links()
                .unwrap()
                .into_iter()
                .find(|l| l.name == "lo")
                .unwrap();
            let before = nl.dumped.len();
            let mut other = Netlink::open(None).unwrap();
            other.set_mtu(lo.index, 1400).unwrap();
            let from_dump = nl.link_state(lo.index).unwrap().mtu;
            let asked = nl.link_state(lo.index).unwrap().mtu;
            Some((u32::try_from(before).unwrap(), from_dump, asked))
        });
        let Some((dumped, from_dump, asked)) = seen.join().expect("thread") else {
            return;
        };
        assert_eq!(dumped, 1, "a new namespace has lo only");
        assert_eq!((from_dump, asked), (65536, 1400));
    }
}
