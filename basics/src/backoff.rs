//! Capped exponential backoff with jitter: every reconnect loop (sessions, xenstore
//! discovery, the agent's device retries) uses this one.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff between `min` and `max`, with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`; doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.min(max);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next delay: a random point in [d/2, d], d doubling up to the maximum, so that
    /// many clients that lost their peer together do not retry together.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let lo = d / 2;
        let span = d.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rand::thread_rng().gen_range(0..=span))
    }

    /// The delay `next_delay` would start from now (without jitter).
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Back to `min`: call after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(1));
        }
        assert_eq!(b.current(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
    }

    #[test]
    fn min_above_max_is_clamped() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
