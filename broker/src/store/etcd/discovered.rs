//! Domains that discovery finds running here without a lifecycle call (socket-folder
//! discovery, xenstore discovery): they take part in ownership as a prepared domain
//! does. A socket appearing is a start (claim the domain, or wait for the host that owns
//! it to give it up); its socket vanishing is a stop (give ownership up), unless a
//! lifecycle prepare governs the domain (then `release` is the stop).
//!
//! The identity claimed is never the guest's word: it is the UUID this broker recorded
//! for the domain's name (an operator's `PUT ...?uuid=`, a prepare), or the one xenstore
//! gives for the running domain (dom0's own). The agent's hello must then report it.

use xenchan_cluster::Uuid;

use super::{EtcdStore, SyncRequest};

impl EtcdStore {
    /// Discovery attached a session for `name` (not prepared here). `discovered`: the
    /// UUID xenstore gives, if any.
    pub(crate) fn found_running(&self, name: &str, discovered: Option<&str>) {
        let from_xenstore = discovered.and_then(|u| Uuid::parse(u).ok());
        if let Some(u) = &from_xenstore
            && self.uuid_of(name).is_none()
        {
            self.remember_uuid(name, u);
        }
        let Some(uuid) = from_xenstore.or_else(|| self.uuid_of(name)) else {
            tracing::info!(
                domain = name,
                "running here with no known VM UUID: not claimed in etcd (PUT its configuration with ?uuid=, or prepare it)"
            );
            return;
        };
        self.ask_sync(SyncRequest::Wait(uuid));
    }

    /// Discovery saw the socket of `name` (not prepared here) go away: the domain stopped
    /// here. The watch gives ownership up unless the VM still runs here under another
    /// session (a same-host migration's other half).
    pub(crate) fn stopped_running(&self, name: &str) {
        if let Some(uuid) = self.uuid_of(name) {
            self.ask_sync(SyncRequest::Gone(uuid));
        }
    }
}
