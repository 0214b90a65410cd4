//! The simulated xenstore: one in-process server (from `xenchan-xenstore`) with a dom0
//! socket for tools and one socket per running domain, serving as that domain (what the
//! guest's `/dev/xen/xenbus` would be).

use std::path::{Path, PathBuf};

use xenchan_xenstore::server::{ListenerHandle, Server};

use crate::guest::CHANNEL_DEVID;

/// The simulator's xenstore.
#[derive(Debug)]
pub struct Xenstore {
    server: Server,
    dir: PathBuf,
    dom0: ListenerHandle,
}

/// A domain's view of xenstore (its socket); dropping it stops serving the socket.
#[derive(Debug)]
pub struct GuestXenstore {
    listener: ListenerHandle,
}

impl GuestXenstore {
    /// The socket a guest tool connects to (`XENSTORED_PATH`).
    pub fn socket(&self) -> &Path {
        self.listener.path()
    }
}

impl Xenstore {
    /// Starts a store with dom0's socket at `<dir>/xenstore.sock`; guests get
    /// `<dir>/xs-<domid>.sock`.
    pub fn start(dir: &Path) -> Result<Xenstore, xenchan_xenstore::Error> {
        let server = Server::new();
        let dom0 = server.listen(dir.join("xenstore.sock"), 0)?;
        Ok(Xenstore {
            server,
            dir: dir.to_path_buf(),
            dom0,
        })
    }

    /// The dom0 socket.
    pub fn dom0_socket(&self) -> &Path {
        self.dom0.path()
    }

    /// The store, for direct reads in tests.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// What a toolstack does when it creates a domain with one channel: introduce the
    /// domain and write the channel's frontend and backend nodes; then serve the guest's
    /// xenbus socket.
    pub fn create_domain(
        &self,
        domid: u32,
        name: &str,
        uuid: &str,
        channel: &str,
        socket: &Path,
    ) -> Result<GuestXenstore, xenchan_xenstore::Error> {
        self.server.introduce_domain(domid, name, uuid)?;
        self.server
            .add_channel(domid, CHANNEL_DEVID, channel, socket)?;
        let listener = self
            .server
            .listen(self.dir.join(format!("xs-{domid}.sock")), domid)?;
        Ok(GuestXenstore { listener })
    }

    /// What a toolstack does when the domain is gone.
    pub fn destroy_domain(&self, domid: u32, guest: GuestXenstore) {
        drop(guest);
        if let Err(e) = self.server.release_domain(domid) {
            tracing::warn!(domid, error = %e, "xenstore release failed");
        }
    }
}
