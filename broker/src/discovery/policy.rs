//! What each discovery source does when a socket is found (attach), when the operator
//! prepares or releases a domain, and when the broker starts (resume): the rules per
//! source, as pure functions over plain values. `domains` holds the state and carries the
//! answers out; a new source is one more variant here, and the exhaustive matches say
//! where it must decide.

use std::path::PathBuf;

use crate::config::{Discovery, Mode};
use crate::domains::{Endpoint, Source};

/// Where this broker's sessions come from: its mode and discovery together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// Listen mode: the broker owns each domain's socket.
    Listen,
    /// Connect mode, sockets found in the socket folder (or named by a prepare).
    SocketDir,
    /// Connect mode, sockets found in xenstore.
    Xenstore,
}

impl Sources {
    /// The sources of a broker configured with `mode` and `discovery`.
    pub fn of(mode: Mode, discovery: Discovery) -> Sources {
        match (mode, discovery) {
            (Mode::Listen, _) => Sources::Listen,
            (Mode::Connect, Discovery::SocketDir) => Sources::SocketDir,
            (Mode::Connect, Discovery::Xenstore) => Sources::Xenstore,
        }
    }
}

/// Whether a socket found by a source gets the domain's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The session is on that very socket already.
    Already,
    /// Not attached (see [`attach`]).
    Refuse,
    /// Start (or restart) the session on it.
    Start,
}

/// The domain, as the attach rule needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attached<'a> {
    /// The socket the session is attached to now.
    pub current: Option<&'a Endpoint>,
    /// The operator released the domain (lifecycle `stopped`).
    pub stopped: bool,
    /// The domid whose session a release stopped (xenstore).
    pub released_domid: Option<u32>,
}

/// Whether `ep` gets the domain's session. `fresh`: the socket just appeared (an
/// event), rather than being seen again by a rescan.
pub fn attach(now: &Attached<'_>, ep: &Endpoint, fresh: bool) -> Attach {
    if now.current == Some(ep) {
        return Attach::Already;
    }
    match ep.source {
        Source::Dir => {
            if now.current.is_some_and(|c| c.source == Source::Prepared) {
                // The operator named another socket for this domain.
                Attach::Refuse
            } else if now.current.is_none() && !fresh && now.stopped {
                // Released, and its socket file is still there: wait for a new one.
                Attach::Refuse
            } else {
                Attach::Start
            }
        }
        Source::Xenstore => {
            if now.current.is_none() && ep.domid.is_some() && now.released_domid == ep.domid {
                // Released; xenstore has not said the VM is gone yet.
                Attach::Refuse
            } else {
                Attach::Start
            }
        }
        // The operator's word (a prepare) and the broker's own socket always win.
        Source::Prepared | Source::Listen => Attach::Start,
    }
}

/// What a prepare does to the domain's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnPrepare {
    /// Listen on the domain's socket.
    Listen,
    /// Connect to the socket the prepare named.
    Connect(PathBuf),
    /// Stop the session on a socket an earlier prepare named (the default one is
    /// discovery's again).
    Detach,
    /// Nothing: discovery attaches it.
    Nothing,
}

/// What a prepare naming `channel_path` (if not the default socket) does.
pub fn on_prepare(
    sources: Sources,
    channel_path: Option<PathBuf>,
    current: Option<Source>,
) -> OnPrepare {
    match sources {
        Sources::Listen => OnPrepare::Listen,
        Sources::SocketDir => match channel_path {
            Some(p) => OnPrepare::Connect(p),
            None if current == Some(Source::Prepared) => OnPrepare::Detach,
            None => OnPrepare::Nothing,
        },
        // xenstore says where the socket is and when the domain runs.
        Sources::Xenstore => OnPrepare::Nothing,
    }
}

/// The domain, as the resume rule needs it.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// A desired configuration is stored.
    pub has_config: bool,
    /// Lifecycle `running` (prepared, not released).
    pub running: bool,
    /// Lifecycle `stopped` (released).
    pub stopped: bool,
    /// The socket the last prepare named, if not the default one.
    pub channel_path: Option<PathBuf>,
}

/// What the broker does at start for a stored domain (before discovery runs).
pub fn on_resume(sources: Sources, d: &Stored) -> OnPrepare {
    match sources {
        Sources::Listen if (d.has_config || d.running) && !d.stopped => OnPrepare::Listen,
        Sources::SocketDir if d.running => d
            .channel_path
            .clone()
            .map_or(OnPrepare::Nothing, OnPrepare::Connect),
        Sources::Listen | Sources::SocketDir | Sources::Xenstore => OnPrepare::Nothing,
    }
}

/// Whether a released domain without a configuration must stay known, because its
/// source would find it again: its socket file is still there (socket folder, asked
/// only then), or xenstore still lists the released domid.
pub fn lingers_after_release(
    sources: Sources,
    socket_exists: impl FnOnce() -> bool,
    released_domid: Option<u32>,
) -> bool {
    match sources {
        Sources::SocketDir => socket_exists(),
        Sources::Xenstore => released_domid.is_some(),
        Sources::Listen => false,
    }
}

#[cfg(test)]
mod tests;
