//! Reconnect delays: exponential with jitter, capped. Pure; the caller
//! supplies the randomness.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, attempt: 0 }
    }

    /// The next delay. `jitter` in `[0, 1)` picks a point in the upper half
    /// of the current step ("equal jitter"), so that many agents that lost
    /// the coordinator together do not come back together.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// After a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let full: Vec<_> = (0..6).map(|_| b.next(1.0)).collect();
        assert_eq!(
            full,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis).to_vec()
        );
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(50));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for i in 0..40 {
            let j = f64::from(i) / 40.0;
            let mut probe = b.clone();
            let d = probe.next(j);
            let step = Duration::from_millis(100) * 2u32.pow(b.attempt.min(6)).min(100);
            assert!(d >= step.min(Duration::from_secs(10)) / 2, "{d:?}");
            assert!(d <= step.min(Duration::from_secs(10)), "{d:?}");
        }
        for _ in 0..100 {
            assert!(b.next(0.999) <= Duration::from_secs(10));
        }
    }
}
