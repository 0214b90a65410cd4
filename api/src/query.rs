//! The query strings of the list endpoints (`GET /v1/events`, `GET /v1/domains`): one
//! type per endpoint, written by the [`Client`] and parsed by the broker with the same
//! code, so both sides agree on every parameter and its bounds.
//!
//! [`Client`]: crate::client::Client

use std::fmt::Write as _;

use thiserror::Error;

use crate::paths::check_domain_name;
use crate::types::DomainState;

/// Events per page when `limit` is not given.
pub const DEFAULT_EVENT_LIMIT: usize = 100;
/// Most events per page.
pub const MAX_EVENT_LIMIT: usize = 1000;
/// Most domains per page.
pub const MAX_DOMAIN_LIMIT: usize = 100_000;
/// The response header of `GET /v1/domains` that carries the cursor of the next page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// A query parameter the server cannot use: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("query parameter `{param}`: {message}")]
pub struct QueryError {
    /// The parameter.
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        param: param.to_string(),
        message: message.into(),
    }
}

/// `GET /v1/events`: newest first; each filter narrows, `cursor` continues a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this domain's events (`-` for broker-wide ones such as `start`).
    pub domain: Option<String>,
    /// Only events of this kind (`config`, `result`, `prepare`...).
    pub kind: Option<String>,
    /// Only events at or after this instant (RFC 3339, UTC: `2026-01-02T03:04:05Z`).
    pub since: Option<String>,
    /// Only events before this instant (RFC 3339, UTC).
    pub until: Option<String>,
    /// Events per page (1-[`MAX_EVENT_LIMIT`], default [`DEFAULT_EVENT_LIMIT`]).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page: the events older than it.
    pub cursor: Option<String>,
}

/// `GET /v1/domains`: by name; each filter narrows, `cursor` continues a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainQuery {
    /// Only domains in this state.
    pub state: Option<DomainState>,
    /// Only domains whose name starts with this.
    pub prefix: Option<String>,
    /// Domains per page (1-[`MAX_DOMAIN_LIMIT`]; absent: all).
    pub limit: Option<usize>,
    /// The cursor of the previous page (its last name): the domains after it.
    pub cursor: Option<String>,
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space); `None` if malformed or not
/// UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `k=v` pairs of a query string, decoded; a parameter given twice is refused.
fn pairs<'a>(q: &'a str, known: &[&str]) -> Result<Vec<(&'a str, String)>, QueryError> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(bad(
                &k.escape_debug().to_string(),
                format!("unknown parameter (known: {})", known.join(", ")),
            ));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(bad(k, "given twice"));
        }
        let v = decode(v).ok_or_else(|| bad(k, "not valid percent-encoded UTF-8"))?;
        out.push((k, v));
    }
    Ok(out)
}

fn limit(param: &str, v: &str, max: usize) -> Result<usize, QueryError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            param,
            format!("`{}` is not a number from 1 to {max}", v.escape_debug()),
        )),
    }
}

/// An event kind: 1-32 characters `a-z`, `0-9`, `-`, `_`.
fn check_kind(v: &str) -> Result<(), QueryError> {
    if (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(bad(
            "kind",
            format!(
                "`{}` is not an event kind (a-z, 0-9, `-`, `_`)",
                v.escape_debug()
            ),
        ))
    }
}

/// Checks an RFC 3339 UTC instant and writes it the way the broker records times
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`), so that instants compare as strings. Fractions beyond
/// milliseconds are cut; offsets other than `Z` are refused (say it in UTC).
///
/// # Errors
/// A sentence naming what is wrong.
pub fn normalize_instant(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = b.get(19..).unwrap_or_default();
    let (frac, zone) = match rest.first() {
        Some(b'.') => {
            let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            (&rest[1..=n], &rest[1 + n..])
        }
        _ => (&rest[..0], rest),
    };
    if !shape || !matches!(zone, b"Z" | b"z") || (rest.first() == Some(&b'.') && frac.is_empty()) {
        return Err(format!(
            "`{}` is not an RFC 3339 UTC time such as 2026-01-02T03:04:05Z",
            v.escape_debug()
        ));
    }
    let num = |r: std::ops::Range<usize>| v[r].parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return Err(format!(
            "`{}` is not a valid date and time",
            v.escape_debug()
        ));
    }
    let mut ms: String = frac.iter().take(3).map(|&c| c as char).collect();
    while ms.len() < 3 {
        ms.push('0');
    }
    Ok(format!("{}T{}.{ms}Z", &v[..10], &v[11..19]))
}

/// Milliseconds since the Unix epoch as the broker writes instants
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`), for tools that turn "10 minutes ago" into a `since`.
pub fn instant_from_unix_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl EventQuery {
    /// The query string (without `?`; empty when nothing is set).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("domain", &self.domain),
            ("kind", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
            ("cursor", &self.cursor),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        if let Some(n) = self.limit {
            parts.push(format!("limit={n}"));
        }
        parts.join("&")
    }

    /// Parses and checks a query string (times normalised, see [`normalize_instant`]).
    ///
    /// # Errors
    /// The first parameter that is unknown, repeated or out of bounds.
    pub fn parse(q: &str) -> Result<EventQuery, QueryError> {
        let mut out = EventQuery::default();
        for (k, v) in pairs(q, &["domain", "kind", "since", "until", "limit", "cursor"])? {
            match k {
                "domain" => {
                    if v != "-" {
                        check_domain_name(&v).map_err(|e| bad(k, e))?;
                    }
                    out.domain = Some(v);
                }
                "kind" => {
                    check_kind(&v)?;
                    out.kind = Some(v);
                }
                "since" => out.since = Some(normalize_instant(&v).map_err(|e| bad(k, e))?),
                "until" => out.until = Some(normalize_instant(&v).map_err(|e| bad(k, e))?),
                "limit" => out.limit = Some(limit(k, &v, MAX_EVENT_LIMIT)?),
                _ => {
                    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad(k, "not a cursor this API returned"));
                    }
                    out.cursor = Some(v);
                }
            }
        }
        Ok(out)
    }

    /// The page size in effect.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_EVENT_LIMIT)
    }
}

impl DomainQuery {
    /// The query string (without `?`; empty when nothing is set).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(p) = &self.prefix {
            parts.push(format!("prefix={}", encode(p)));
        }
        if let Some(n) = self.limit {
            parts.push(format!("limit={n}"));
        }
        if let Some(c) = &self.cursor {
            parts.push(format!("cursor={}", encode(c)));
        }
        parts.join("&")
    }

    /// Parses and checks a query string.
    ///
    /// # Errors
    /// The first parameter that is unknown, repeated or out of bounds.
    pub fn parse(q: &str) -> Result<DomainQuery, QueryError> {
        let mut out = DomainQuery::default();
        for (k, v) in pairs(q, &["state", "prefix", "limit", "cursor"])? {
            match k {
                "state" => {
                    let s = DomainState::ALL
                        .into_iter()
                        .find(|s| s.as_str() == v)
                        .ok_or_else(|| {
                            let all: Vec<&str> =
                                DomainState::ALL.iter().map(|s| s.as_str()).collect();
                            bad(
                                k,
                                format!(
                                    "`{}` is not a state ({})",
                                    v.escape_debug(),
                                    all.join(", ")
                                ),
                            )
                        })?;
                    out.state = Some(s);
                }
                "prefix" => {
                    if v.len() > 255 || v.chars().any(char::is_control) {
                        return Err(bad(k, "at most 255 characters, no control characters"));
                    }
                    out.prefix = Some(v);
                }
                "limit" => out.limit = Some(limit(k, &v, MAX_DOMAIN_LIMIT)?),
                _ => {
                    check_domain_name(&v).map_err(|_| bad(k, "not a cursor this API returned"))?;
                    out.cursor = Some(v);
                }
            }
        }
        Ok(out)
    }

    /// Whether a domain with `name` in `state` passes the filters (not the cursor).
    pub fn matches(&self, name: &str, state: DomainState) -> bool {
        self.state.is_none_or(|s| s == state)
            && self.prefix.as_deref().is_none_or(|p| name.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_queries_round_trip_and_refuse_by_name() {
        let q = EventQuery {
            domain: Some("web1".into()),
            kind: Some("config".into()),
            since: Some("2026-01-02T03:04:05.000Z".into()),
            until: None,
            limit: Some(5),
            cursor: Some("42".into()),
        };
        assert_eq!(EventQuery::parse(&q.to_query()).unwrap(), q);
        assert_eq!(EventQuery::parse("").unwrap(), EventQuery::default());
        assert_eq!(EventQuery::default().page_size(), DEFAULT_EVENT_LIMIT);
        for (query, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("kind=Config", "kind"),
            ("domain=a/b", "domain"),
            ("since=yesterday", "since"),
            ("until=2026-13-01T00:00:00Z", "until"),
            ("cursor=abc", "cursor"),
            ("domian=web1", "domian"),
            ("kind=a&kind=b", "kind"),
            ("domain=%zz", "domain"),
        ] {
            let e = EventQuery::parse(query).unwrap_err();
            assert_eq!(e.param, param, "{query}: {e}");
        }
        assert_eq!(
            EventQuery::parse("domain=-").unwrap().domain.as_deref(),
            Some("-")
        );
    }

    #[test]
    fn instants_are_normalised_to_the_recorded_form() {
        for (given, want) in [
            ("2026-01-02T03:04:05Z", Some("2026-01-02T03:04:05.000Z")),
            ("2026-01-02T03:04:05.1Z", Some("2026-01-02T03:04:05.100Z")),
            (
                "2026-01-02T03:04:05.123456Z",
                Some("2026-01-02T03:04:05.123Z"),
            ),
            ("2026-01-02 03:04:05z", Some("2026-01-02T03:04:05.000Z")),
            ("2026-01-02T03:04:05+01:00", None),
            ("2026-01-02T03:04:05.Z", None),
            ("2026-01-02T24:04:05Z", None),
            ("2026-01-02", None),
            ("", None),
        ] {
            assert_eq!(normalize_instant(given).ok().as_deref(), want, "{given}");
        }
    }

    #[test]
    fn instants_from_unix_time() {
        assert_eq!(instant_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            instant_from_unix_millis(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            instant_from_unix_millis(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn domain_queries_round_trip_and_match() {
        let q = DomainQuery {
            state: Some(DomainState::IdentityMismatch),
            prefix: Some("web".into()),
            limit: Some(2),
            cursor: Some("web1".into()),
        };
        assert_eq!(DomainQuery::parse(&q.to_query()).unwrap(), q);
        assert!(q.matches("web2", DomainState::IdentityMismatch));
        assert!(!q.matches("db1", DomainState::IdentityMismatch));
        assert!(!q.matches("web2", DomainState::Configured));
        assert!(DomainQuery::default().matches("x", DomainState::Idle));
        let e = DomainQuery::parse("state=running").unwrap_err();
        assert_eq!(e.param, "state");
        assert!(e.message.contains("configured"), "{e}");
        assert_eq!(DomainQuery::parse("limit=0").unwrap_err().param, "limit");
        assert_eq!(
            DomainQuery::parse("cursor=a%2Fb").unwrap_err().param,
            "cursor"
        );
    }
}
