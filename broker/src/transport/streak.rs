//! When a connect loop that keeps failing says so in the domain's `last_error`.
//!
//! The loop retries for as long as the domain is attached, and most failures are the
//! normal wait for QEMU (a prepared VM whose socket does not exist yet). An operator must
//! still learn when the wait has become something else: the socket vanished after a
//! session (QEMU exited, or deleted a path another QEMU had bound: a same-host
//! `xl migrate` without its own channel path), or nothing has answered for a while. Named
//! once per streak of failures that lasted [`NAME_AFTER`] (an `xl reboot` is shorter
//! and says nothing; the store is written once, not at every retry); a session that
//! handshakes clears it as any error. Pure: decided on plain values.

use std::io::ErrorKind as IoKind;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long failures last before they are named (QEMU may take that long to start
/// after a prepare, or to come back across a reboot).
pub(crate) const NAME_AFTER: Duration = Duration::from_secs(10);

/// One connect loop's record of its failures.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    /// When the current streak of failures began.
    since: Option<Instant>,
    /// A session ran before this streak.
    after_session: bool,
    /// This streak was named already.
    named: bool,
}

impl Streak {
    /// A connection was made: the streak is over.
    pub(crate) fn connected(&mut self) {
        *self = Streak {
            after_session: true,
            ..Streak::default()
        };
    }

    /// A connect failed at `now` with `kind` (`None`: it timed out). Returns the text
    /// to record as the domain's `last_error`, once per streak.
    pub(crate) fn failed(
        &mut self,
        now: Instant,
        kind: Option<IoKind>,
        path: &Path,
        error: &str,
    ) -> Option<String> {
        let since = *self.since.get_or_insert(now);
        if self.named {
            return None;
        }
        let lasted = now.saturating_duration_since(since);
        if lasted < NAME_AFTER {
            return None;
        }
        let vanished = self.after_session && kind == Some(IoKind::NotFound);
        self.named = true;
        Some(if vanished {
            format!(
                "channel socket {} vanished after the session ended and has been missing \
                 for {} s ({error}) while the domain is attached here; retrying with \
                 backoff. QEMU removes its socket when it exits; on one host, `xl migrate` \
                 without its own channel path for the destination loses it \
                 (docs/CLUSTER.md)",
                path.display(),
                lasted.as_secs()
            )
        } else {
            format!(
                "cannot connect to channel socket {} for {} s ({error}); retrying with \
                 backoff. Is the VM running, and is this the channel's path in its config?",
                path.display(),
                lasted.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_once_per_streak_when_the_socket_vanished_or_failures_last() {
        let p = Path::new("/run/qemu/x.sock");
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let gone = Some(IoKind::NotFound);
        // Before any session: the wait for QEMU is normal until NAME_AFTER.
        let mut s = Streak::default();
        assert_eq!(s.failed(at(0), gone, p, "ENOENT"), None);
        assert_eq!(s.failed(at(9), gone, p, "ENOENT"), None);
        let text = s.failed(at(10), gone, p, "ENOENT").unwrap();
        assert!(
            text.contains("for 10 s") && text.contains("/run/qemu/x.sock"),
            "{text}"
        );
        assert_eq!(s.failed(at(30), gone, p, "ENOENT"), None, "named once");
        // After a session (a reboot's short gap says nothing), a socket still missing
        // after NAME_AFTER is named as vanished.
        s.connected();
        assert_eq!(s.failed(at(31), gone, p, "ENOENT"), None);
        let text = s.failed(at(41), gone, p, "ENOENT").unwrap();
        assert!(
            text.contains("vanished") && text.contains("xl migrate"),
            "{text}"
        );
        assert_eq!(s.failed(at(42), gone, p, "ENOENT"), None);
        // Refused or timed out after a session: named as a failure to connect.
        s.connected();
        let refused = Some(IoKind::ConnectionRefused);
        assert_eq!(s.failed(at(40), refused, p, "ECONNREFUSED"), None);
        let text = s.failed(at(50), None, p, "timed out").unwrap();
        assert!(
            text.contains("cannot connect") && !text.contains("vanished"),
            "{text}"
        );
    }
}
