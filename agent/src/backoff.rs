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
        self.next_capped(jitter, self.max)
    }

    /// [`Backoff::next`] with the step held to `cap` (at least the initial
    /// delay), still jittered: an apply waiting to hear from a coordinator
    /// before its confirmation deadline cannot sleep a full step.
    pub fn next_capped(&mut self, jitter: f64, cap: Duration) -> Duration {
        let step = self.initial.saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX)).min(self.max).min(cap.max(self.initial));
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
        assert_eq!(full, [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis).to_vec());
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(50));
    }

    #[test]
    fn a_capped_step_stays_under_its_cap_keeps_growing_behind_it_and_keeps_its_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let capped: Vec<_> = (0..6).map(|_| b.next_capped(1.0, Duration::from_millis(500))).collect();
        assert_eq!(capped, [100, 200, 400, 500, 500, 500].map(Duration::from_millis).to_vec());
        assert_eq!(b.next(1.0), Duration::from_millis(6_400), "the uncapped step grew meanwhile");
        assert_eq!(b.next_capped(0.0, Duration::from_millis(500)), Duration::from_millis(250), "jittered within the cap's upper half");
        assert_eq!(b.next_capped(1.0, Duration::ZERO), Duration::from_millis(100), "never below the initial delay");
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_every_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for i in 0..40 {
            // The step this attempt may take, before `next` advances it.
            let step = (Duration::from_millis(100) * 2u32.pow(b.attempt.min(16))).min(Duration::from_secs(10));
            let jitter = f64::from(i % 10) / 10.0;
            let d = b.next(jitter);
            assert!(d >= step / 2, "attempt {i}: {d:?} below half of {step:?}");
            assert!(d <= step, "attempt {i}: {d:?} above {step:?}");
        }
        assert_eq!(b.next(1.0), Duration::from_secs(10), "capped at the maximum");
    }
}
