//! The xenstore node layout xenchan relies on: the one place that says where
//! a domain's nodes and a channel's frontend and backend nodes live, what is in
//! them and who may write them. The test server writes exactly these
//! ([`crate::server::Server::add_channel`]); the guest helper and the broker's
//! discovery read them with the helpers below. See docs/XENSTORE.md.
//!
//! Channel `i` (0-based, in xl's `channel = [...]` list) is console device
//! `devid = i + 1`; console 0 is the domain's primary console, never a channel.
//!
//! Guest view (`/local/domain/<domid>/device/console/<devid>/`):
//!
//! | node         | value                              | guest may write |
//! |--------------|------------------------------------|-----------------|
//! | (directory)  |                                    | yes (owns it)   |
//! | `name`       | channel name                       | no              |
//! | `type`       | `ioemu`                            | no              |
//! | `output`     | `chardev:libxl-channel<devid>`     | no              |
//! | `limit`      | `1048576`                          | no              |
//! | `backend`    | the backend directory (below)      | yes             |
//! | `backend-id` | `0`                                | yes             |
//! | `state`      | XenbusState (`4` once connected)   | yes             |
//!
//! Dom0 backend (`/local/domain/0/backend/console/<domid>/<devid>/`, readable
//! by the guest, writable only by dom0): `name`, `connection=socket`, `path`
//! (the QEMU socket), `frontend` (the frontend directory), `frontend-id`,
//! `state`, `hotplug-status=connected`.
//!
//! Domain nodes (`/local/domain/<domid>`, read-only to the guest): `name`,
//! `domid`, `vm=/vm/<uuid>`, and the directories `device`, `control`
//! (read-only) and `data` (guest-writable); `/vm/<uuid>/{uuid,name}`.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::path;
use crate::perms::Perms;

/// The toolstack domain, which also runs the console backend (QEMU).
pub const DOM0: u32 = 0;
/// Parent of every domain's console backend directory.
pub const BACKEND_CONSOLE_ROOT: &str = "/local/domain/0/backend/console";
/// `limit` of a channel: QEMU buffers this many bytes of guest output.
pub const CONSOLE_LIMIT: &str = "1048576";
/// `type` of a channel (served by QEMU, not xenconsoled).
pub const CONSOLE_TYPE_IOEMU: &str = "ioemu";
/// `connection` of a socket channel.
pub const CONNECTION_SOCKET: &str = "socket";
/// `hotplug-status` once the backend is up.
pub const HOTPLUG_CONNECTED: &str = "connected";

/// XenbusState values (`xen/include/public/io/xenbus.h`).
pub mod xenbus_state {
    /// Initialising.
    pub const INITIALISING: u32 = 1;
    /// Waiting for the other side.
    pub const INIT_WAIT: u32 = 2;
    /// Initialised.
    pub const INITIALISED: u32 = 3;
    /// Connected: what [`crate::server::Server::add_channel`] writes.
    pub const CONNECTED: u32 = 4;
    /// Closing.
    pub const CLOSING: u32 = 5;
    /// Closed.
    pub const CLOSED: u32 = 6;
}

/// Node names used in the layout.
pub mod key {
    /// Channel name (frontend, read-only to the guest; backend).
    pub const NAME: &str = "name";
    /// Frontend: where QEMU connects the console (`chardev:libxl-channel<devid>`).
    pub const OUTPUT: &str = "output";
    /// Frontend: `ioemu`.
    pub const TYPE: &str = "type";
    /// Frontend: output buffer limit.
    pub const LIMIT: &str = "limit";
    /// Frontend: path of the backend directory.
    pub const BACKEND: &str = "backend";
    /// Frontend: backend domain id.
    pub const BACKEND_ID: &str = "backend-id";
    /// Both sides: XenbusState.
    pub const STATE: &str = "state";
    /// Backend: `socket` (or `pty`).
    pub const CONNECTION: &str = "connection";
    /// Backend: the unix socket QEMU listens on.
    pub const PATH: &str = "path";
    /// Backend: path of the frontend directory.
    pub const FRONTEND: &str = "frontend";
    /// Backend: the guest's domid.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Backend: `connected` once set up.
    pub const HOTPLUG_STATUS: &str = "hotplug-status";
    /// Domain: its domid.
    pub const DOMID: &str = "domid";
    /// Domain: `/vm/<uuid>`.
    pub const VM: &str = "vm";
    /// VM: its UUID.
    pub const UUID: &str = "uuid";
}

/// `/local/domain/<domid>`.
pub fn domain_path(domid: u32) -> String {
    path::domain_base(domid)
}

/// `/vm/<uuid>`.
pub fn vm_path(uuid: &str) -> String {
    format!("/vm/{uuid}")
}

/// `device/console/<devid>`, the frontend directory relative to the guest's
/// home (what sysfs `nodename` holds).
pub fn frontend_rel(devid: u32) -> String {
    format!("device/console/{devid}")
}

/// `/local/domain/<domid>/device/console/<devid>`.
pub fn frontend_path(domid: u32, devid: u32) -> String {
    format!("{}/{}", domain_path(domid), frontend_rel(devid))
}

/// `/local/domain/0/backend/console/<domid>`.
pub fn backend_domain_path(domid: u32) -> String {
    format!("{BACKEND_CONSOLE_ROOT}/{domid}")
}

/// `/local/domain/0/backend/console/<domid>/<devid>`.
pub fn backend_path(domid: u32, devid: u32) -> String {
    format!("{}/{devid}", backend_domain_path(domid))
}

/// `chardev:libxl-channel<devid>`: libxl names the QEMU chardev after the
/// channel's console devid (measured on Xen 4.17: console 1 has
/// `chardev:libxl-channel1`).
pub fn channel_output(devid: u32) -> String {
    format!("chardev:libxl-channel{devid}")
}

/// The console devid in a frontend node name (`device/console/3` -> 3).
pub fn parse_console_devid(nodename: &str) -> Option<u32> {
    let rest = nodename
        .rsplit_once("device/console/")
        .map(|(_, rest)| rest)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// One node to write: path, value, and permissions (`None`: inherit from the
/// parent, as a plain write does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Absolute path.
    pub path: String,
    /// Value.
    pub value: String,
    /// Permissions to set after writing, if any.
    pub perms: Option<Perms>,
}

fn node(path: String, value: impl Into<String>, perms: Option<Perms>) -> NodeSpec {
    NodeSpec {
        path,
        value: value.into(),
        perms,
    }
}

/// The nodes a toolstack writes for a new domain, in write order.
pub fn domain_nodes(domid: u32, name: &str, uuid: &str) -> Vec<NodeSpec> {
    let home = domain_path(domid);
    let vm = vm_path(uuid);
    vec![
        node(home.clone(), "", Some(Perms::read_only_to(domid))),
        node(format!("{home}/{}", key::NAME), name, None),
        node(format!("{home}/{}", key::DOMID), domid.to_string(), None),
        node(format!("{home}/{}", key::VM), vm.clone(), None),
        node(format!("{home}/device"), "", None),
        node(format!("{home}/control"), "", None),
        node(format!("{home}/data"), "", Some(Perms::guest_owned(domid))),
        node(vm.clone(), "", Some(Perms::read_only_to(domid))),
        node(format!("{vm}/{}", key::UUID), uuid, None),
        node(format!("{vm}/{}", key::NAME), name, None),
    ]
}

/// The nodes a toolstack writes for channel console `devid` of `domid`
/// backed by QEMU listening on `socket_path`, in write order (backend first,
/// as libxl does).
pub fn channel_nodes(domid: u32, devid: u32, name: &str, socket_path: &str) -> Vec<NodeSpec> {
    let front = frontend_path(domid, devid);
    let back = backend_path(domid, devid);
    let state = xenbus_state::CONNECTED.to_string();
    let ro = || Some(Perms::read_only_to(domid));
    let at = |dir: &str, key: &str| format!("{dir}/{key}");
    vec![
        // Backend: dom0's, readable by the guest (its frontend driver reads it).
        node(back.clone(), "", Some(Perms::read_only_to(domid))),
        node(at(&back, key::NAME), name, None),
        node(at(&back, key::CONNECTION), CONNECTION_SOCKET, None),
        node(at(&back, key::PATH), socket_path, None),
        node(at(&back, key::FRONTEND), front.clone(), None),
        node(at(&back, key::FRONTEND_ID), domid.to_string(), None),
        node(at(&back, key::STATE), state.clone(), None),
        node(at(&back, key::HOTPLUG_STATUS), HOTPLUG_CONNECTED, None),
        // Frontend: the guest owns the directory and its protocol nodes...
        node(front.clone(), "", Some(Perms::guest_owned(domid))),
        node(at(&front, key::BACKEND), back.clone(), None),
        node(at(&front, key::BACKEND_ID), DOM0.to_string(), None),
        node(at(&front, key::STATE), state, None),
        // ...but cannot change what the toolstack says the channel is.
        node(at(&front, key::NAME), name, ro()),
        node(at(&front, key::TYPE), CONSOLE_TYPE_IOEMU, ro()),
        node(at(&front, key::OUTPUT), channel_output(devid), ro()),
        node(at(&front, key::LIMIT), CONSOLE_LIMIT, ro()),
    ]
}

/// A channel as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendChannel {
    /// Console devid (1 for the first channel).
    pub devid: u32,
    /// Channel name (trustworthy: read-only to the guest).
    pub name: String,
    /// `output` node.
    pub output: Option<String>,
    /// `type` node.
    pub console_type: Option<String>,
    /// `backend` node.
    pub backend: Option<String>,
    /// `state` node.
    pub state: Option<u32>,
}

/// A channel as dom0's backend directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChannel {
    /// The guest's domid.
    pub domid: u32,
    /// Console devid.
    pub devid: u32,
    /// Channel name.
    pub name: String,
    /// `connection` (`socket` for xenchan channels).
    pub connection: Option<String>,
    /// `path`: the unix socket QEMU listens on.
    pub path: Option<String>,
    /// `frontend` node.
    pub frontend: Option<String>,
    /// `state` node.
    pub state: Option<u32>,
    /// `hotplug-status` node.
    pub hotplug_status: Option<String>,
}

/// Reads a node, `None` if it does not exist.
pub fn read_optional(client: &mut Client, path: &str) -> Result<Option<String>> {
    match client.read_string(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `<nodename>/name`, the channel name of a console frontend, where
/// `nodename` is what sysfs reports (`device/console/1`, relative to the
/// caller's domain) or an absolute frontend path.
pub fn read_channel_name(client: &mut Client, nodename: &str) -> Result<String> {
    path::validate(nodename).map_err(|reason| Error::InvalidPath {
        path: nodename.to_owned(),
        reason,
    })?;
    client.read_string(&format!("{nodename}/{}", key::NAME))
}

/// Reads a channel's frontend nodes; `frontend_dir` is relative
/// (`device/console/1`, guest side) or absolute.
pub fn read_frontend(client: &mut Client, frontend_dir: &str) -> Result<FrontendChannel> {
    let devid = parse_console_devid(frontend_dir).ok_or_else(|| Error::InvalidRequest {
        op: crate::wire::Op::Read,
        detail: format!("{frontend_dir} is not a device/console/<devid> path"),
    })?;
    let name = read_channel_name(client, frontend_dir)?;
    let mut opt = |k: &str| read_optional(client, &format!("{frontend_dir}/{k}"));
    Ok(FrontendChannel {
        devid,
        name,
        output: opt(key::OUTPUT)?,
        console_type: opt(key::TYPE)?,
        backend: opt(key::BACKEND)?,
        state: opt(key::STATE)?.and_then(|s| s.trim().parse().ok()),
    })
}

/// Reads one backend directory. A console without a `name` is not a
/// channel (it is a primary console) and reads as ENOENT.
pub fn read_backend(client: &mut Client, domid: u32, devid: u32) -> Result<BackendChannel> {
    let dir = backend_path(domid, devid);
    let name = client.read_string(&format!("{dir}/{}", key::NAME))?;
    let mut opt = |k: &str| read_optional(client, &format!("{dir}/{k}"));
    Ok(BackendChannel {
        domid,
        devid,
        name,
        connection: opt(key::CONNECTION)?,
        path: opt(key::PATH)?,
        frontend: opt(key::FRONTEND)?,
        state: opt(key::STATE)?.and_then(|s| s.trim().parse().ok()),
        hotplug_status: opt(key::HOTPLUG_STATUS)?,
    })
}

/// Every channel backend under [`BACKEND_CONSOLE_ROOT`] (dom0's view), in
/// domid then devid order. Entries that vanish while being read, primary
/// consoles and non-numeric names are skipped.
pub fn list_backends(client: &mut Client) -> Result<Vec<BackendChannel>> {
    let mut out = Vec::new();
    let domids = match client.directory(BACKEND_CONSOLE_ROOT) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut domids: Vec<u32> = domids.iter().filter_map(|d| d.parse().ok()).collect();
    domids.sort_unstable();
    for domid in domids {
        let devids = match client.directory(&backend_domain_path(domid)) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let mut devids: Vec<u32> = devids.iter().filter_map(|d| d.parse().ok()).collect();
        devids.sort_unstable();
        for devid in devids {
            match read_backend(client, domid, devid) {
                Ok(b) => out.push(b),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(frontend_path(5, 1), "/local/domain/5/device/console/1");
        assert_eq!(backend_path(5, 1), "/local/domain/0/backend/console/5/1");
        assert_eq!(channel_output(1), "chardev:libxl-channel1");
        assert_eq!(parse_console_devid("device/console/12"), Some(12));
        assert_eq!(
            parse_console_devid("/local/domain/3/device/console/2"),
            Some(2)
        );
        assert_eq!(parse_console_devid("device/console/"), None);
        assert_eq!(parse_console_devid("device/vif/0"), None);
    }

    #[test]
    fn channel_nodes_are_the_contract() {
        let nodes = channel_nodes(7, 1, "org.xenchan.0", "/run/xenchan/sockets/vm.sock");
        let get = |p: &str| nodes.iter().find(|n| n.path == p).unwrap();
        let f = frontend_path(7, 1);
        assert_eq!(get(&format!("{f}/output")).value, "chardev:libxl-channel1");
        assert_eq!(get(&format!("{f}/type")).value, "ioemu");
        assert_eq!(get(&format!("{f}/limit")).value, "1048576");
        assert_eq!(
            get(&format!("{f}/name")).perms,
            Some(Perms::read_only_to(7))
        );
        assert_eq!(get(&f).perms, Some(Perms::guest_owned(7)));
        let b = backend_path(7, 1);
        assert_eq!(
            get(&format!("{b}/path")).value,
            "/run/xenchan/sockets/vm.sock"
        );
        assert_eq!(get(&format!("{b}/frontend")).value, f);
        assert_eq!(get(&format!("{b}/hotplug-status")).value, "connected");
        for n in &nodes {
            assert_eq!(path::validate(&n.path), Ok(()), "{}", n.path);
        }
    }
}
