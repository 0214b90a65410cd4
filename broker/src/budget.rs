//! Per-domain budgets (issue 18): a token bucket per kind of work a guest can make the
//! broker do — frames handled, store writes, pushes, hook runs. A guest is untrusted; one
//! that speaks the protocol correctly but as fast as the socket takes it must cost the
//! broker no more than `burst + rate × seconds` of each.
//!
//! Pure: every call takes the time (`now`) as a plain [`Instant`], so the table tests run
//! on plain values. The session asks [`Budgets::take`] before the work; when it is told to
//! wait, it stops reading the guest's socket for that long (backpressure, not drops).

use std::time::{Duration, Instant};

use xenchan_api::config::Limits;

/// What a budget bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Frames read from the guest and handled.
    Frames,
    /// Store writes a guest's frames cause (results, facts, hello).
    Writes,
    /// Configurations pushed.
    Pushes,
    /// Notification hook runs queued.
    Hooks,
}

impl Budget {
    /// Every budget, in metric order.
    pub const ALL: [Budget; 4] = [
        Budget::Frames,
        Budget::Writes,
        Budget::Pushes,
        Budget::Hooks,
    ];

    /// The name in the API, metrics and config (`limits.<name>_per_sec`).
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Frames => "frames",
            Budget::Writes => "writes",
            Budget::Pushes => "pushes",
            Budget::Hooks => "hooks",
        }
    }

    fn index(self) -> usize {
        match self {
            Budget::Frames => 0,
            Budget::Writes => 1,
            Budget::Pushes => 2,
            Budget::Hooks => 3,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refill rate and a burst: at most `burst + per_sec × t` takes in any span `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second (0: nothing after the burst).
    pub per_sec: u32,
    /// Tokens held at most (at least 1).
    pub burst: u32,
}

/// Micro-tokens per token: integer arithmetic, so a refill is exact and tests are too.
const MICRO: u64 = 1_000_000;

/// One token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    /// Micro-tokens held.
    level: u64,
    /// When `level` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Bucket {
        let rate = Rate {
            burst: rate.burst.max(1),
            ..rate
        };
        Bucket {
            rate,
            level: u64::from(rate.burst) * MICRO,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at);
        // Only move `at` by the time credited, so no fraction of a token is lost.
        let micros = dt.as_micros().min(u128::from(u64::MAX)) as u64;
        let added = micros.saturating_mul(u64::from(self.rate.per_sec));
        let cap = u64::from(self.rate.burst) * MICRO;
        self.level = self.level.saturating_add(added).min(cap);
        self.at = now.max(self.at);
    }

    /// Whether the bucket holds at least half its burst at `now` (before a take).
    pub fn half_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level * 2 >= u64::from(self.rate.burst) * MICRO
    }

    /// Takes one token: `Ok`, or how long until one is there (nothing taken). With a zero
    /// rate and an empty bucket the wait is one hour (a rate of 0 is "burst only").
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= MICRO {
            self.level -= MICRO;
            return Ok(());
        }
        if self.rate.per_sec == 0 {
            return Err(Duration::from_secs(3600));
        }
        let missing = MICRO - self.level;
        let per_sec = u64::from(self.rate.per_sec);
        Err(Duration::from_micros(missing.div_ceil(per_sec)))
    }
}

/// Why a domain is throttled right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The budget it ran out of.
    pub budget: Budget,
    /// Since when.
    pub since: Instant,
}

/// What [`Budgets::take`] changed in the domain's throttled mark, for the caller to show
/// (API, metrics, log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Nothing changed.
    Same,
    /// The domain just became throttled on this budget.
    Entered(Budget),
    /// The domain is no longer throttled.
    Left,
}

/// One domain's budgets and throttled mark.
#[derive(Debug, Clone)]
pub struct Budgets {
    buckets: [Bucket; 4],
    throttled: Option<Throttled>,
}

/// The rates configured for `budget` (`[limits]`).
pub fn rate(limits: &Limits, budget: Budget) -> Rate {
    let (per_sec, burst) = match budget {
        Budget::Frames => (limits.frames_per_sec, limits.frames_burst),
        Budget::Writes => (limits.writes_per_sec, limits.writes_burst),
        Budget::Pushes => (limits.pushes_per_sec, limits.pushes_burst),
        Budget::Hooks => (limits.hooks_per_sec, limits.hooks_burst),
    };
    // A rate of 0 would leave a throttled session waiting for good; 1/s is the least.
    Rate {
        per_sec: per_sec.max(1),
        burst,
    }
}

impl Budgets {
    /// Full budgets at `now`, rates from `rates` (by [`Budget::ALL`] order).
    pub fn new(rates: [Rate; 4], now: Instant) -> Budgets {
        Budgets {
            buckets: rates.map(|r| Bucket::new(r, now)),
            throttled: None,
        }
    }

    /// Full budgets at `now` with the configured rates.
    pub fn from_limits(limits: &Limits, now: Instant) -> Budgets {
        Budgets::new(Budget::ALL.map(|b| rate(limits, b)), now)
    }

    /// Takes one token of `budget`: `Ok`, or how long to wait for one. Also updates the
    /// throttled mark: set (with the budget and `now`) when a take is refused, cleared
    /// when the budget it was set for is at least half full again. The hysteresis keeps a
    /// flooding domain marked through its whole flood (a token a refill is not a way out),
    /// so the mark, its log line and its metric change once per spell, not per frame.
    pub fn take(&mut self, budget: Budget, now: Instant) -> (Result<(), Duration>, Mark) {
        let bucket = &mut self.buckets[budget.index()];
        let recovered = bucket.half_full(now);
        let r = bucket.take(now);
        let mark = match (&r, self.throttled) {
            (Err(_), None) => {
                self.throttled = Some(Throttled { budget, since: now });
                Mark::Entered(budget)
            }
            (Ok(()), Some(t)) if t.budget == budget && recovered => {
                self.throttled = None;
                Mark::Left
            }
            _ => Mark::Same,
        };
        (r, mark)
    }

    /// The throttled mark.
    pub fn throttled(&self) -> Option<Throttled> {
        self.throttled
    }

    /// The throttled mark as of `now`: gone once the budget that set it is half full
    /// again, even if the domain has not tried to spend since (it went quiet).
    pub fn throttled_at(&self, now: Instant) -> Option<Throttled> {
        let t = self.throttled?;
        let mut b = self.buckets[t.budget.index()].clone();
        (!b.half_full(now)).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        // (rate, burst, takes at these ms offsets, expected: Ok or wait in µs)
        type Case = (u32, u32, &'static [(u64, Result<(), u64>)]);
        let cases: &[Case] = &[
            // A burst of 2, then empty: a token every 100 ms at 10/s.
            (
                10,
                2,
                &[
                    (0, Ok(())),
                    (0, Ok(())),
                    (0, Err(100_000)),
                    (40, Err(60_000)),
                    (100, Ok(())),
                    (100, Err(100_000)),
                ],
            ),
            // Refill never exceeds the burst, however long the pause.
            (
                1000,
                3,
                &[
                    (0, Ok(())),
                    (60_000, Ok(())),
                    (60_000, Ok(())),
                    (60_000, Ok(())),
                    (60_000, Err(1000)),
                ],
            ),
            // Zero rate: the burst only, then an hour's wait.
            (0, 1, &[(0, Ok(())), (5000, Err(3_600_000_000))]),
            // A burst of 0 is taken as 1.
            (1, 0, &[(0, Ok(())), (0, Err(1_000_000))]),
            // A clock going backwards credits nothing and takes nothing away.
            (10, 1, &[(500, Ok(())), (100, Err(100_000)), (600, Ok(()))]),
        ];
        for (i, (per_sec, burst, steps)) in cases.iter().enumerate() {
            let t0 = Instant::now();
            let mut b = Bucket::new(
                Rate {
                    per_sec: *per_sec,
                    burst: *burst,
                },
                t0,
            );
            for (j, (at, want)) in steps.iter().enumerate() {
                let got = b.take(ms(t0, *at)).map_err(|d| d.as_micros() as u64);
                assert_eq!(got, *want, "case {i} step {j}");
            }
        }
    }

    #[test]
    fn takes_over_a_span_are_bounded_by_burst_plus_rate() {
        // A flood: a take every millisecond for 15 s, as the flood test's guests do.
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                per_sec: 20,
                burst: 50,
            },
            t0,
        );
        let ok = (0..15_000).filter(|n| b.take(ms(t0, *n)).is_ok()).count();
        assert_eq!(ok, 50 + 20 * 15 - 1, "burst + rate × (15 s − 1 ms)");
    }

    #[test]
    fn the_mark_says_which_budget_and_since_when() {
        let t0 = Instant::now();
        let one = Rate {
            per_sec: 1,
            burst: 1,
        };
        let mut b = Budgets::new([one; 4], t0);
        assert_eq!(b.take(Budget::Frames, t0), (Ok(()), Mark::Same));
        assert_eq!(b.throttled(), None);
        let (r, m) = b.take(Budget::Frames, ms(t0, 10));
        assert!(r.is_err());
        assert_eq!(m, Mark::Entered(Budget::Frames));
        assert_eq!(
            b.throttled(),
            Some(Throttled {
                budget: Budget::Frames,
                since: ms(t0, 10)
            })
        );
        // Another budget's take neither clears nor moves the mark.
        assert_eq!(b.take(Budget::Writes, ms(t0, 20)), (Ok(()), Mark::Same));
        let (_, m) = b.take(Budget::Writes, ms(t0, 30));
        assert_eq!(m, Mark::Same);
        assert_eq!(b.throttled().map(|t| t.since), Some(ms(t0, 10)));
        // The budget that set it refills: cleared.
        assert_eq!(b.take(Budget::Frames, ms(t0, 1000)), (Ok(()), Mark::Left));
        assert_eq!(b.throttled(), None);
    }

    #[test]
    fn a_flood_stays_marked_until_it_stops() {
        let t0 = Instant::now();
        let ten = Rate {
            per_sec: 10,
            burst: 10,
        };
        let mut b = Budgets::new([ten; 4], t0);
        for _ in 0..10 {
            assert_eq!(b.take(Budget::Frames, t0), (Ok(()), Mark::Same));
        }
        assert_eq!(b.take(Budget::Frames, t0).1, Mark::Entered(Budget::Frames));
        // Taking each token as it comes (as a throttled session does) keeps the mark.
        for n in 1..=50 {
            let (r, m) = b.take(Budget::Frames, ms(t0, n * 100));
            assert_eq!((r, m), (Ok(()), Mark::Same), "token {n}");
        }
        assert!(b.throttled().is_some());
        assert!(b.throttled_at(ms(t0, 5000 + 400)).is_some());
        // A domain that went quiet is not shown throttled, before any take.
        assert_eq!(b.throttled_at(ms(t0, 5000 + 500)), None);
        // Quiet for half a burst's refill (5 tokens at 10/s): cleared at the next take.
        assert_eq!(
            b.take(Budget::Frames, ms(t0, 5000 + 500)),
            (Ok(()), Mark::Left)
        );
    }

    #[test]
    fn defaults_are_generous_for_a_real_agent() {
        // A real agent sends a handful of frames per push (hello, result, facts, pongs):
        // a push a second for a minute stays inside every budget.
        let l = Limits::default();
        let t0 = Instant::now();
        let mut b = Budgets::from_limits(&l, t0);
        for s in 0..60u64 {
            for k in 0..6u64 {
                let at = ms(t0, s * 1000 + k);
                assert!(b.take(Budget::Frames, at).0.is_ok(), "frame {s}.{k}");
            }
            for bud in [Budget::Writes, Budget::Pushes, Budget::Hooks] {
                assert!(b.take(bud, ms(t0, s * 1000)).0.is_ok(), "{bud} at {s} s");
            }
        }
        assert_eq!(b.throttled(), None);
    }
}
