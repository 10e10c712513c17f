//! Retry pacing for discovery's sources: exponential backoff with jitter, so that a fleet of
//! agents that lost etcd (or their interface) at the same moment does not retry in lockstep.

use std::time::Duration;

/// Exponential backoff between `min_ms` and `max_ms`. Each delay is drawn uniformly from the
/// upper half of the current step (`[step/2, step]`), then the step doubles.
#[derive(Debug)]
pub(crate) struct Backoff {
    min_ms: u64,
    max_ms: u64,
    step_ms: u64,
    rng: u64,
}

impl Backoff {
    /// `seed` only decorrelates agents (use the node id); it need not be secret.
    pub(crate) fn new(min_ms: u64, max_ms: u64, seed: u64) -> Self {
        assert!(min_ms >= 1 && min_ms <= max_ms, "backoff bounds");
        Self {
            min_ms,
            max_ms,
            step_ms: min_ms,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// The next delay to wait before retrying.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.step_ms / 2;
        let jitter = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % (self.step_ms - half + 1);
        let delay_ms = (half + jitter).max(1);
        self.step_ms = (self.step_ms.saturating_mul(2)).min(self.max_ms);
        Duration::from_millis(delay_ms)
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.step_ms = self.min_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 1000, 42);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!((50..=100).contains(&delays[0]), "{delays:?}");
        assert!((100..=200).contains(&delays[1]), "{delays:?}");
        for d in &delays[4..] {
            assert!((500..=1000).contains(d), "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn seeds_decorrelate() {
        let mut a = Backoff::new(1000, 1000, 1);
        let mut b = Backoff::new(1000, 1000, 2);
        let da: Vec<Duration> = (0..4).map(|_| a.next_delay()).collect();
        let db: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
    }
}
