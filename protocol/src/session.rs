//! Session rules as pure functions: version negotiation, nonces, and which received
//! messages a side acts on.
//!
//! The channel gives neither side notice of the other connecting or leaving, echoes the
//! broker's bytes until the guest makes its tty raw, and replays guest bytes written while
//! no broker was connected. These rules make all of that harmless: a message is acted on
//! only when it comes from the peer and belongs to the current session.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::message::{Body, Envelope, Role};

/// The protocol versions this implementation speaks, lowest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// The version a peer speaks when its hello lists none.
pub const IMPLICIT_VERSION: u32 = 1;

/// No version is spoken by both sides.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("no common protocol version (ours: {ours:?}, theirs: {theirs:?})")]
pub struct NoCommonVersion {
    /// What we speak.
    pub ours: Vec<u32>,
    /// What the peer said it speaks.
    pub theirs: Vec<u32>,
}

/// Picks the highest version both sides speak. A peer that lists nothing speaks version 1
/// (like the libxl hotplug `VERSION` operation: silence means the first version).
pub fn negotiate(ours: &[u32], theirs: Option<&[u32]>) -> Result<u32, NoCommonVersion> {
    let implicit = [IMPLICIT_VERSION];
    let theirs = match theirs {
        Some(list) if !list.is_empty() => list,
        _ => &implicit,
    };
    ours.iter()
        .filter(|v| theirs.contains(v))
        .max()
        .copied()
        .ok_or_else(|| NoCommonVersion {
            ours: ours.to_vec(),
            theirs: theirs.to_vec(),
        })
}

/// A session nonce: 8 to 64 lowercase hex digits, chosen at random by the broker for each
/// connection (it has 128 bits when xenchan makes it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nonce(String);

/// A string that is not a valid nonce.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("session nonce must be 8 to 64 lowercase hex digits")]
pub struct BadNonce;

impl Nonce {
    /// A nonce from 16 random bytes (the caller supplies the randomness: no I/O here).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Nonce(hex::encode(bytes))
    }

    /// The nonce as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Nonce {
    type Error = BadNonce;

    fn try_from(s: String) -> Result<Self, BadNonce> {
        let ok = (8..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok { Ok(Nonce(s)) } else { Err(BadNonce) }
    }
}

impl From<Nonce> for String {
    fn from(n: Nonce) -> String {
        n.0
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a side should do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Act on it: it is from the peer and belongs to the current session.
    Accept,
    /// (Agent) a broker hello: a broker has (re)connected; its nonce becomes the session.
    NewSession,
    /// (Broker) an agent hello without a nonce: the agent is announcing itself, perhaps
    /// stale (replayed by QEMU). Never an answer; at most a reason to say hello again.
    Beacon,
    /// Our own bytes echoed back (the guest tty is not raw yet). Ignore.
    OwnEcho,
    /// From another session (an earlier connection, or replayed bytes). Ignore.
    Stale,
    /// A message whose version this side does not speak. Ignore.
    UnknownVersion,
}

/// The session state one side keeps, and the rules it applies to every received message.
#[derive(Debug, Clone)]
pub struct SessionRules {
    role: Role,
    current: Option<Nonce>,
}

impl SessionRules {
    /// Rules for `role` with no session yet.
    pub fn new(role: Role) -> Self {
        SessionRules {
            role,
            current: None,
        }
    }

    /// The side these rules are for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current session nonce, if any.
    pub fn current(&self) -> Option<&Nonce> {
        self.current.as_ref()
    }

    /// Starts (broker: after sending its hello) or adopts (agent: on a broker hello) a
    /// session. Everything from any other session is stale from now on.
    pub fn set_session(&mut self, nonce: Nonce) {
        self.current = Some(nonce);
    }

    /// Forgets the session (the peer said bye, or went silent).
    pub fn clear(&mut self) {
        self.current = None;
    }

    /// Classifies a received message.
    pub fn classify(&self, msg: &Envelope) -> Verdict {
        if msg.from == self.role {
            return Verdict::OwnEcho;
        }
        if !SUPPORTED_VERSIONS.contains(&msg.xenchan) {
            return Verdict::UnknownVersion;
        }
        match (self.role, &msg.body, &msg.session) {
            // A broker hello always wins on the agent: the agent cannot see the host
            // connect, so a hello with a new nonce is how it learns of a new broker.
            (Role::Agent, Body::Hello(_), Some(n)) => {
                if self.current.as_ref() == Some(n) {
                    Verdict::Accept
                } else {
                    Verdict::NewSession
                }
            }
            (Role::Broker, Body::Hello(_), None) => Verdict::Beacon,
            (_, _, Some(n)) if self.current.as_ref() == Some(n) => Verdict::Accept,
            _ => Verdict::Stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Hello;

    fn nonce(b: u8) -> Nonce {
        Nonce::from_bytes([b; 16])
    }

    fn msg(from: Role, session: Option<Nonce>, body: Body) -> Envelope {
        Envelope::new(from, session, body)
    }

    fn hello() -> Body {
        Body::Hello(Hello {
            channel: "org.xenchan.agent.1".into(),
            ..Hello::default()
        })
    }

    #[test]
    fn highest_common_version_wins() {
        assert_eq!(negotiate(&[1, 2, 3], Some(&[2, 3, 4])), Ok(3));
        assert_eq!(negotiate(&[1, 2], Some(&[1])), Ok(1));
    }

    #[test]
    fn silence_means_version_one() {
        assert_eq!(negotiate(&[1, 2], None), Ok(1));
        assert_eq!(negotiate(&[1, 2], Some(&[])), Ok(1));
        let err = negotiate(&[2], None).unwrap_err();
        assert_eq!(err.theirs, vec![1]);
    }

    #[test]
    fn no_common_version_is_an_error_naming_both_lists() {
        let err = negotiate(&[1], Some(&[2, 3])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common protocol version (ours: [1], theirs: [2, 3])"
        );
    }

    #[test]
    fn nonce_validation() {
        assert!(Nonce::try_from("0123abcd".to_string()).is_ok());
        assert!(Nonce::try_from("0123ABCD".to_string()).is_err());
        assert!(Nonce::try_from("abc".to_string()).is_err());
        assert!(Nonce::try_from("g".repeat(8)).is_err());
        assert!(Nonce::try_from("a".repeat(65)).is_err());
        assert_eq!(nonce(0xab).as_str().len(), 32);
    }

    #[test]
    fn own_echo_is_ignored_whatever_the_session() {
        let mut b = SessionRules::new(Role::Broker);
        b.set_session(nonce(1));
        let echoed = msg(Role::Broker, Some(nonce(1)), Body::Ping { id: 1 });
        assert_eq!(b.classify(&echoed), Verdict::OwnEcho);
        let a = SessionRules::new(Role::Agent);
        assert_eq!(
            a.classify(&msg(Role::Agent, None, hello())),
            Verdict::OwnEcho
        );
    }

    #[test]
    fn broker_accepts_only_current_session() {
        let mut b = SessionRules::new(Role::Broker);
        let answer = msg(Role::Agent, Some(nonce(2)), hello());
        assert_eq!(b.classify(&answer), Verdict::Stale);
        b.set_session(nonce(2));
        assert_eq!(b.classify(&answer), Verdict::Accept);
        let old = msg(Role::Agent, Some(nonce(1)), Body::Pong { id: 3 });
        assert_eq!(b.classify(&old), Verdict::Stale);
        let beacon = msg(Role::Agent, None, hello());
        assert_eq!(b.classify(&beacon), Verdict::Beacon);
        let sessionless_result = msg(Role::Agent, None, Body::Pong { id: 1 });
        assert_eq!(b.classify(&sessionless_result), Verdict::Stale);
    }

    #[test]
    fn agent_adopts_new_broker_hello_and_drops_old_session() {
        let mut a = SessionRules::new(Role::Agent);
        let h1 = msg(Role::Broker, Some(nonce(1)), hello());
        assert_eq!(a.classify(&h1), Verdict::NewSession);
        a.set_session(nonce(1));
        assert_eq!(a.classify(&h1), Verdict::Accept);
        let h2 = msg(Role::Broker, Some(nonce(2)), hello());
        assert_eq!(a.classify(&h2), Verdict::NewSession);
        a.set_session(nonce(2));
        let late = msg(Role::Broker, Some(nonce(1)), Body::Ping { id: 9 });
        assert_eq!(a.classify(&late), Verdict::Stale);
        let hello_without_nonce = msg(Role::Broker, None, hello());
        assert_eq!(a.classify(&hello_without_nonce), Verdict::Stale);
    }

    #[test]
    fn unknown_frame_version_is_ignored() {
        let mut a = SessionRules::new(Role::Agent);
        a.set_session(nonce(1));
        let mut m = msg(Role::Broker, Some(nonce(1)), Body::Ping { id: 1 });
        m.xenchan = 7;
        assert_eq!(a.classify(&m), Verdict::UnknownVersion);
    }

    #[test]
    fn cleared_session_makes_everything_stale() {
        let mut a = SessionRules::new(Role::Agent);
        a.set_session(nonce(1));
        a.clear();
        let ping = msg(Role::Broker, Some(nonce(1)), Body::Ping { id: 1 });
        assert_eq!(a.classify(&ping), Verdict::Stale);
        assert!(a.current().is_none());
    }
}
