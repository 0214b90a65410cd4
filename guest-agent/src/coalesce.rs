//! One decision shared by the facts report and the re-apply on a link appearing: many
//! requests between two runs are one run, a run starts a settle time after the first
//! request, and runs are at least a gap apart (counted from the end of the last one).
//! Pure over plain values, so it is tested with durations standing in for instants.

use std::ops::Add;
use std::time::Duration;

/// Coalesces requests for a piece of work and rate-limits it. `T` is an instant (tokio's
/// in the agent, a `Duration` since an origin in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coalesce<T> {
    /// Wait this long after the first request before running (lets a burst settle).
    settle: Duration,
    /// At least this long between the end of a run and the start of the next.
    gap: Duration,
    /// The first request not yet served.
    wanted_since: Option<T>,
    /// A run is under way: requests now are served by the next run.
    running: bool,
    /// No run starts before this.
    not_before: Option<T>,
}

impl<T> Coalesce<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    pub(crate) fn new(settle: Duration, gap: Duration) -> Self {
        Coalesce {
            settle,
            gap,
            wanted_since: None,
            running: false,
            not_before: None,
        }
    }

    /// Asks for a run. Requests before the run starts are one request.
    pub(crate) fn want(&mut self, now: T) {
        self.wanted_since.get_or_insert(now);
    }

    /// Drops a request that has nothing left to do.
    pub(crate) fn forget(&mut self) {
        self.wanted_since = None;
    }

    /// When the next run may start; `None` when none is asked for or one is running.
    pub(crate) fn due(&self) -> Option<T> {
        if self.running {
            return None;
        }
        let w = self.wanted_since?;
        let settled = w + self.settle;
        Some(match self.not_before {
            Some(nb) if nb > settled => nb,
            _ => settled,
        })
    }

    /// Starts a run if one is due at `now`; the requests so far are served by it.
    pub(crate) fn try_start(&mut self, now: T) -> bool {
        if self.due().is_some_and(|d| d <= now) {
            self.running = true;
            self.wanted_since = None;
            true
        } else {
            false
        }
    }

    /// The run ended at `now`: the next one waits for the gap.
    pub(crate) fn finish(&mut self, now: T) {
        self.running = false;
        self.not_before = Some(now + self.gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One step of a scenario: at `t` ms, do `op`, and expect `due` afterwards.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Want,
        /// Try to start; expect whether it started.
        Start(bool),
        Finish,
        Forget,
    }

    fn run(settle: u64, gap: u64, steps: &[(u64, Op, Option<u64>)]) {
        let mut c = Coalesce::<Duration>::new(ms(settle), ms(gap));
        assert_eq!(c.due(), None);
        for (i, (t, op, due)) in steps.iter().enumerate() {
            match op {
                Op::Want => c.want(ms(*t)),
                Op::Start(want) => assert_eq!(c.try_start(ms(*t)), *want, "step {i} {op:?}"),
                Op::Finish => c.finish(ms(*t)),
                Op::Forget => c.forget(),
            }
            assert_eq!(c.due(), due.map(ms), "step {i} {op:?} at {t}");
        }
    }

    #[test]
    fn a_burst_is_one_run_after_the_settle_time() {
        use Op::*;
        run(
            50,
            1000,
            &[
                (0, Want, Some(50)),
                (10, Want, Some(50)),
                (40, Want, Some(50)),
                (45, Start(false), Some(50)),
                (50, Start(true), None),
                // A request during the run waits for the run to end, then the gap.
                (60, Want, None),
                (70, Finish, Some(1070)),
                (500, Want, Some(1070)),
                (1069, Start(false), Some(1070)),
                (1070, Start(true), None),
                (1080, Finish, None),
                (1085, Start(false), None),
            ],
        );
    }

    #[test]
    fn a_request_long_after_the_gap_runs_after_the_settle_time_only() {
        use Op::*;
        run(
            0,
            100,
            &[
                (0, Want, Some(0)),
                (0, Start(true), None),
                (5, Finish, None),
                (5000, Want, Some(5000)),
                (5000, Start(true), None),
            ],
        );
    }

    #[test]
    fn a_forgotten_request_never_runs() {
        use Op::*;
        run(
            10,
            10,
            &[
                (0, Want, Some(10)),
                (5, Forget, None),
                (20, Start(false), None),
            ],
        );
    }

    /// However many requests arrive, runs are at most one per gap: a flood over 10 s
    /// with a 1 s gap (runs taking 100 ms) gives at most 10 runs.
    #[test]
    fn a_flood_is_bounded_by_the_gap() {
        let mut c = Coalesce::<Duration>::new(ms(0), ms(1000));
        let mut runs = 0;
        let mut running_until = None;
        for t in (0..10_000).step_by(1) {
            let now = ms(t);
            c.want(now);
            if running_until == Some(now) {
                c.finish(now);
                running_until = None;
            }
            if c.try_start(now) {
                runs += 1;
                running_until = Some(now + ms(100));
            }
        }
        assert!((9..=10).contains(&runs), "{runs} runs");
    }
}
