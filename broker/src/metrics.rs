//! Counters for `GET /metrics` (Prometheus text format 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use xenchan_protocol::{DecodeStats, ItemStatus};

use crate::api::types::DomainState;
use crate::budget::Budget;

/// Kinds of errors counted in `xenchan_errors_total{kind=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting to a socket failed (refused, missing...).
    Connect,
    /// No hello from the agent in time.
    HelloTimeout,
    /// No result in time.
    ResultTimeout,
    /// Writing to the channel failed or timed out.
    Write,
    /// Reading from the channel failed.
    Read,
    /// The agent reported another VM's UUID.
    IdentityMismatch,
    /// No common protocol version.
    VersionMismatch,
    /// The agent sent an error message.
    AgentError,
    /// Three pings went unanswered.
    Unresponsive,
    /// A store operation failed.
    Store,
    /// A hook failed, timed out or could not run.
    Hook,
    /// A socket path was unusable (too long, bad name).
    SocketPath,
    /// A second connection to a listening socket was refused.
    ExtraConnection,
    /// Something else.
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 14] = [
        ErrorKind::Connect,
        ErrorKind::HelloTimeout,
        ErrorKind::ResultTimeout,
        ErrorKind::Write,
        ErrorKind::Read,
        ErrorKind::IdentityMismatch,
        ErrorKind::VersionMismatch,
        ErrorKind::AgentError,
        ErrorKind::Unresponsive,
        ErrorKind::Store,
        ErrorKind::Hook,
        ErrorKind::SocketPath,
        ErrorKind::ExtraConnection,
        ErrorKind::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::HelloTimeout => "hello_timeout",
            ErrorKind::ResultTimeout => "result_timeout",
            ErrorKind::Write => "write",
            ErrorKind::Read => "read",
            ErrorKind::IdentityMismatch => "identity_mismatch",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::AgentError => "agent_error",
            ErrorKind::Unresponsive => "unresponsive",
            ErrorKind::Store => "store",
            ErrorKind::Hook => "hook",
            ErrorKind::SocketPath => "socket_path",
            ErrorKind::ExtraConnection => "extra_connection",
            ErrorKind::Other => "other",
        }
    }
}

/// Why a frame was dropped (`xenchan_frames_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A result for no push in flight and neither the applied nor the desired config.
    ResultNotAsked,
    /// A result that changes no item's status.
    ResultUnchanged,
    /// Facts equal to the stored ones.
    FactsUnchanged,
    /// Facts replaced by later ones inside the same interval.
    FactsCoalesced,
    /// An agent error refusing no push in flight, or repeating the last one.
    ErrorNotAsked,
}

impl DropReason {
    /// Every reason, in the metric's order.
    pub const ALL: [DropReason; 5] = [
        DropReason::ResultNotAsked,
        DropReason::ResultUnchanged,
        DropReason::FactsUnchanged,
        DropReason::FactsCoalesced,
        DropReason::ErrorNotAsked,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ResultNotAsked => "result_not_asked",
            DropReason::ResultUnchanged => "result_unchanged",
            DropReason::FactsUnchanged => "facts_unchanged",
            DropReason::FactsCoalesced => "facts_coalesced",
            DropReason::ErrorNotAsked => "error_not_asked",
        }
    }
}

/// What a session wrote to the store (`xenchan_session_writes_total{kind}`): with
/// [`DropReason`], how a guest's traffic turns into store load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionWrite {
    /// The applied state of a hello.
    Applied,
    /// A result.
    Result,
    /// Facts.
    Facts,
    /// An error (the agent's `error` frame, or one the session met).
    Error,
}

impl SessionWrite {
    const ALL: [SessionWrite; 4] = [
        SessionWrite::Applied,
        SessionWrite::Result,
        SessionWrite::Facts,
        SessionWrite::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SessionWrite::Applied => "applied",
            SessionWrite::Result => "result",
            SessionWrite::Facts => "facts",
            SessionWrite::Error => "error",
        }
    }
}

const SKIP_REASONS: [&str; 8] = [
    "at_command",
    "nul",
    "invalid_utf8",
    "noise",
    "bad_checksum",
    "invalid",
    "too_deep",
    "oversize",
];

fn skip_counts(s: &DecodeStats) -> [u64; 8] {
    [
        s.at_commands,
        s.nul,
        s.invalid_utf8,
        s.noise,
        s.bad_checksum,
        s.invalid,
        s.too_deep,
        s.oversize,
    ]
}

const ITEM_STATUSES: [ItemStatus; 4] = [
    ItemStatus::Applied,
    ItemStatus::Unchanged,
    ItemStatus::Failed,
    ItemStatus::Unsupported,
];

/// The broker's counters. Monotonic; shared by every task.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicU64,
    pushes: AtomicU64,
    results: AtomicU64,
    item_results: [AtomicU64; 4],
    frames: AtomicU64,
    skipped: [AtomicU64; 8],
    errors: [AtomicU64; 14],
    dropped: [AtomicU64; 5],
    session_writes: [AtomicU64; 4],
    hooks_ok: AtomicU64,
    hooks_failed: AtomicU64,
    hooks_dropped: AtomicU64,
    /// Times a domain became throttled, by budget ([`Budget::ALL`] order).
    throttled_total: [AtomicU64; 4],
    /// Domains throttled right now (set before each render).
    throttled_now: AtomicU64,
    api_requests: AtomicU64,
    /// The store's durable commits (set before each render; the store counts them).
    store_commits: AtomicU64,
    /// Whether the store counts its commits (the SQLite backend does).
    store_counts_commits: std::sync::atomic::AtomicBool,
    xenstore_connected: AtomicU64,
    xenstore_connections: AtomicU64,
    /// xenstore requests of discovery: for watch events, and for full rescans.
    xenstore_requests_event: AtomicU64,
    xenstore_requests_rescan: AtomicU64,
    /// Watch events discovery handled, and full rescans it made.
    xenstore_events: AtomicU64,
    xenstore_rescans: AtomicU64,
}

impl Metrics {
    /// A connection to a domain socket was made.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A config was pushed.
    pub fn push(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A result arrived with these item statuses.
    pub fn result(&self, statuses: impl IntoIterator<Item = ItemStatus>) {
        self.results.fetch_add(1, Ordering::Relaxed);
        for s in statuses {
            if let Some(i) = ITEM_STATUSES.iter().position(|x| *x == s) {
                self.item_results[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds what a codec decoded and skipped since `before`.
    pub fn decoded(&self, before: &DecodeStats, now: &DecodeStats) {
        self.frames
            .fetch_add(now.frames.saturating_sub(before.frames), Ordering::Relaxed);
        for (i, (b, n)) in skip_counts(before)
            .into_iter()
            .zip(skip_counts(now))
            .enumerate()
        {
            if n > b {
                self.skipped[i].fetch_add(n - b, Ordering::Relaxed);
            }
        }
    }

    /// A valid frame was dropped for `reason` (not asked for, or nothing new).
    pub fn dropped(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A session wrote `kind` to the store.
    pub fn session_write(&self, kind: SessionWrite) {
        let i = SessionWrite::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.session_writes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An error of `kind` happened.
    pub fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// How many errors of `kind` happened.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[i].load(Ordering::Relaxed)
    }

    /// A hook ran: ok or not.
    pub fn hook(&self, ok: bool) {
        if ok {
            self.hooks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.hooks_failed.fetch_add(1, Ordering::Relaxed);
            self.error(ErrorKind::Hook);
        }
    }

    /// A background hook run was dropped (queue full).
    pub fn hook_dropped(&self) {
        self.hooks_dropped.fetch_add(1, Ordering::Relaxed);
        self.error(ErrorKind::Hook);
    }

    /// A domain became throttled on `budget`.
    pub fn throttled(&self, budget: Budget) {
        let i = Budget::ALL.iter().position(|b| *b == budget).unwrap_or(0);
        self.throttled_total[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the number of domains throttled now (the registry counts them).
    pub fn set_throttled_now(&self, n: u64) {
        self.throttled_now.store(n, Ordering::Relaxed);
    }

    /// The xenstore connection (xenstore discovery) came up or went away.
    pub fn xenstore_connected(&self, up: bool) {
        if up {
            self.xenstore_connections.fetch_add(1, Ordering::Relaxed);
        }
        self.xenstore_connected
            .store(u64::from(up), Ordering::Relaxed);
    }

    /// Sets the store's durable commits so far (`None`: the backend does not count them,
    /// and the metric is not shown).
    pub fn set_store_commits(&self, n: Option<u64>) {
        self.store_counts_commits
            .store(n.is_some(), Ordering::Relaxed);
        self.store_commits.store(n.unwrap_or(0), Ordering::Relaxed);
    }

    /// xenstore discovery handled `events` watch events with `requests` requests.
    pub fn xenstore_events(&self, events: u64, requests: u64) {
        self.xenstore_events.fetch_add(events, Ordering::Relaxed);
        self.xenstore_requests_event
            .fetch_add(requests, Ordering::Relaxed);
    }

    /// xenstore discovery read every domain again, with `requests` requests.
    pub fn xenstore_rescan(&self, requests: u64) {
        self.xenstore_rescans.fetch_add(1, Ordering::Relaxed);
        self.xenstore_requests_rescan
            .fetch_add(requests, Ordering::Relaxed);
    }

    /// An API request was served.
    pub fn api_request(&self) {
        self.api_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text, with `states` giving the current sessions by state and
    /// `domains` the number of domains known.
    pub fn render(&self, states: &[(DomainState, u64)], domains: u64) -> String {
        let mut o = String::new();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "xenchan_domains",
            "gauge",
            "Domains known to the broker.",
        );
        let _ = writeln!(o, "xenchan_domains {domains}");
        head(
            &mut o,
            "xenchan_sessions",
            "gauge",
            "Domains by state (pending: no socket).",
        );
        for s in DomainState::ALL {
            let n = states.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
            let _ = writeln!(o, "xenchan_sessions{{state=\"{s}\"}} {n}");
        }
        head(
            &mut o,
            "xenchan_connections_total",
            "counter",
            "Connections made to domain sockets.",
        );
        let _ = writeln!(o, "xenchan_connections_total {}", c(&self.connections));
        head(
            &mut o,
            "xenchan_pushes_total",
            "counter",
            "Configurations pushed to agents.",
        );
        let _ = writeln!(o, "xenchan_pushes_total {}", c(&self.pushes));
        head(
            &mut o,
            "xenchan_results_total",
            "counter",
            "Results received from agents.",
        );
        let _ = writeln!(o, "xenchan_results_total {}", c(&self.results));
        head(
            &mut o,
            "xenchan_item_results_total",
            "counter",
            "Item results received, by status.",
        );
        for (i, s) in ITEM_STATUSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_item_results_total{{status=\"{}\"}} {}",
                s.as_str(),
                c(&self.item_results[i])
            );
        }
        head(
            &mut o,
            "xenchan_frames_total",
            "counter",
            "Protocol frames decoded from agents.",
        );
        let _ = writeln!(o, "xenchan_frames_total {}", c(&self.frames));
        head(
            &mut o,
            "xenchan_frames_skipped_total",
            "counter",
            "Lines skipped as noise, by reason.",
        );
        for (i, r) in SKIP_REASONS.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_frames_skipped_total{{reason=\"{r}\"}} {}",
                c(&self.skipped[i])
            );
        }
        head(
            &mut o,
            "xenchan_frames_dropped_total",
            "counter",
            "Valid frames dropped unstored: not asked for, or nothing new, by reason.",
        );
        for (i, r) in DropReason::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_frames_dropped_total{{reason=\"{}\"}} {}",
                r.as_str(),
                c(&self.dropped[i])
            );
        }
        head(
            &mut o,
            "xenchan_session_writes_total",
            "counter",
            "Store writes made for what agents reported, by kind.",
        );
        for (i, k) in SessionWrite::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_session_writes_total{{kind=\"{}\"}} {}",
                k.as_str(),
                c(&self.session_writes[i])
            );
        }
        head(
            &mut o,
            "xenchan_errors_total",
            "counter",
            "Errors, by kind.",
        );
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_errors_total{{kind=\"{}\"}} {}",
                k.as_str(),
                c(&self.errors[i])
            );
        }
        head(
            &mut o,
            "xenchan_hook_runs_total",
            "counter",
            "Hook runs, by result.",
        );
        let _ = writeln!(
            o,
            "xenchan_hook_runs_total{{result=\"ok\"}} {}",
            c(&self.hooks_ok)
        );
        let _ = writeln!(
            o,
            "xenchan_hook_runs_total{{result=\"failed\"}} {}",
            c(&self.hooks_failed)
        );
        let _ = writeln!(
            o,
            "xenchan_hook_runs_total{{result=\"dropped\"}} {}",
            c(&self.hooks_dropped)
        );
        head(
            &mut o,
            "xenchan_throttled_total",
            "counter",
            "Times a domain ran out of a budget and was throttled, by budget.",
        );
        for (i, b) in Budget::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "xenchan_throttled_total{{budget=\"{b}\"}} {}",
                c(&self.throttled_total[i])
            );
        }
        head(
            &mut o,
            "xenchan_throttled_domains",
            "gauge",
            "Domains throttled right now (over a budget).",
        );
        let _ = writeln!(o, "xenchan_throttled_domains {}", c(&self.throttled_now));
        head(
            &mut o,
            "xenchan_api_requests_total",
            "counter",
            "Control API requests served.",
        );
        let _ = writeln!(o, "xenchan_api_requests_total {}", c(&self.api_requests));
        if self.store_counts_commits.load(Ordering::Relaxed) {
            head(
                &mut o,
                "xenchan_store_commits_total",
                "counter",
                "Durable store commits that wrote something (each an fsync; writes committed together count once).",
            );
            let _ = writeln!(o, "xenchan_store_commits_total {}", c(&self.store_commits));
        }
        head(
            &mut o,
            "xenchan_xenstore_connected",
            "gauge",
            "1 while xenstore discovery is connected to xenstore.",
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_connected {}",
            c(&self.xenstore_connected)
        );
        head(
            &mut o,
            "xenchan_xenstore_connections_total",
            "counter",
            "Connections made to xenstore (reconnections included).",
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_connections_total {}",
            c(&self.xenstore_connections)
        );
        head(
            &mut o,
            "xenchan_xenstore_events_total",
            "counter",
            "xenstore watch events handled by discovery.",
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_events_total {}",
            c(&self.xenstore_events)
        );
        head(
            &mut o,
            "xenchan_xenstore_rescans_total",
            "counter",
            "Full xenstore rescans by discovery (on connecting, after lost events, and the periodic safety net).",
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_rescans_total {}",
            c(&self.xenstore_rescans)
        );
        head(
            &mut o,
            "xenchan_xenstore_requests_total",
            "counter",
            "xenstore requests made by discovery, by cause (watch events, full rescans).",
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_requests_total{{cause=\"event\"}} {}",
            c(&self.xenstore_requests_event)
        );
        let _ = writeln!(
            o,
            "xenchan_xenstore_requests_total{{cause=\"rescan\"}} {}",
            c(&self.xenstore_requests_rescan)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::default();
        m.push();
        m.result([ItemStatus::Applied, ItemStatus::Failed]);
        m.error(ErrorKind::HelloTimeout);
        let before = DecodeStats::default();
        let now = DecodeStats {
            noise: 3,
            bad_checksum: 4,
            oversize: 1,
            frames: 2,
            ..DecodeStats::default()
        };
        m.decoded(&before, &now);
        m.xenstore_connected(true);
        m.dropped(DropReason::ResultUnchanged);
        m.session_write(SessionWrite::Facts);
        m.throttled(Budget::Writes);
        m.throttled(Budget::Frames);
        m.set_throttled_now(1);
        let t = m.render(&[(DomainState::Configured, 2)], 3);
        for line in [
            "xenchan_domains 3",
            "xenchan_sessions{state=\"configured\"} 2",
            "xenchan_sessions{state=\"pending\"} 0",
            "xenchan_pushes_total 1",
            "xenchan_item_results_total{status=\"failed\"} 1",
            "xenchan_frames_skipped_total{reason=\"noise\"} 3",
            "xenchan_frames_skipped_total{reason=\"oversize\"} 1",
            "xenchan_frames_skipped_total{reason=\"bad_checksum\"} 4",
            "xenchan_frames_total 2",
            "xenchan_errors_total{kind=\"hello_timeout\"} 1",
            "xenchan_xenstore_connected 1",
            "xenchan_xenstore_connections_total 1",
            "xenchan_frames_dropped_total{reason=\"result_unchanged\"} 1",
            "xenchan_frames_dropped_total{reason=\"facts_coalesced\"} 0",
            "xenchan_session_writes_total{kind=\"facts\"} 1",
            "xenchan_throttled_total{budget=\"frames\"} 1",
            "xenchan_throttled_total{budget=\"writes\"} 1",
            "xenchan_throttled_total{budget=\"hooks\"} 0",
            "xenchan_throttled_domains 1",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}\n{t}");
        }
    }
}
