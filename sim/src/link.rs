//! The datagram model of one network path, shared by the engine and the bare-foca baseline in
//! `benches/`: a datagram is lost, or arrives once or twice (duplication), after a latency
//! drawn uniformly from a range, sometimes held back further (reordering). The draws are made
//! in a fixed order from the caller's RNG, so a run stays a function of its seed.

use rand::RngExt;
use rand::rngs::ChaCha8Rng;

/// Loss, duplication, latency and reordering of datagrams on every path.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Latency range in µs, `lo..=hi`.
    pub latency_us: (u64, u64),
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

impl Link {
    /// The delays, in µs, of the copies of one datagram that arrive: none when it is lost,
    /// two when it is duplicated.
    pub fn datagram(&self, rng: &mut ChaCha8Rng) -> [Option<u64>; 2] {
        if rng.random_bool(self.loss.clamp(0.0, 1.0)) {
            return [None, None];
        }
        let copies = if rng.random_bool(self.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        let mut out = [None, None];
        for slot in out.iter_mut().take(copies) {
            let (lo, hi) = self.latency_us;
            let mut delay = rng.random_range(lo..=hi);
            if rng.random_bool(self.reorder.clamp(0.0, 1.0)) {
                delay += rng.random_range(0..=hi.max(1) * 4);
            }
            *slot = Some(delay);
        }
        out
    }
}
