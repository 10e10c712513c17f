//! The engine's event queue: events ordered by (time, sequence number), popped in exactly that
//! order, as a calendar queue (a timing wheel).
//!
//! Almost every event the engine schedules is due within a few seconds (packets within
//! milliseconds, foca's and the node's timers within seconds), so a binary heap spends most of
//! its time sifting 60-byte entries through a deep tree. Here time is cut into buckets of
//! [`BUCKET_US`]; a wheel of [`SLOTS`] buckets holds everything due within its horizon, each
//! bucket an unsorted `Vec` until the wheel reaches it, then sorted once and drained from
//! its end. Events beyond the horizon wait in a binary heap and move to the wheel as it
//! turns. The order is the same total order a heap gives ((time, seq) is unique), so a run's
//! trace does not depend on the queue.
//!
//! Also used by the bare-foca baseline in `benches/` so that both run the same event loop.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Width of one bucket, as a power of two (1,024 µs).
const SHIFT: u32 = 10;
/// The width of one bucket in µs.
pub const BUCKET_US: u64 = 1 << SHIFT;
/// Buckets on the wheel: a horizon of ~4.2 s.
pub const SLOTS: usize = 4096;
/// A drained bucket keeps room for this many events.
const KEEP: usize = 16;

struct Entry<K> {
    at: u64,
    seq: u64,
    kind: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Events keyed by (time in µs, sequence number); every key must be unique.
pub struct EventQueue<K> {
    wheel: Vec<Vec<Entry<K>>>,
    /// The bucket (time / `BUCKET_US`) being drained. Wheel events lie in buckets
    /// `cur..cur + SLOTS`, except events pushed for an earlier time, which join bucket `cur`.
    cur: u64,
    /// Bucket `cur` is sorted, largest key first (so the next event is its last).
    sorted: bool,
    in_wheel: usize,
    /// Events in bucket `cur + SLOTS` or later.
    far: BinaryHeap<Reverse<Entry<K>>>,
}

impl<K> Default for EventQueue<K> {
    fn default() -> Self {
        EventQueue {
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            cur: 0,
            sorted: false,
            in_wheel: 0,
            far: BinaryHeap::new(),
        }
    }
}

fn slot(bucket: u64) -> usize {
    (bucket % SLOTS as u64) as usize
}

impl<K> EventQueue<K> {
    pub fn len(&self) -> usize {
        self.in_wheel + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `kind` at `at` with the tie-breaker `seq` (unique per queue).
    pub fn push(&mut self, at: u64, seq: u64, kind: K) {
        let e = Entry { at, seq, kind };
        let bucket = (at >> SHIFT).max(self.cur);
        if bucket >= self.cur + SLOTS as u64 {
            self.far.push(Reverse(e));
            return;
        }
        self.in_wheel += 1;
        let v = &mut self.wheel[slot(bucket)];
        if bucket == self.cur && self.sorted {
            // Keep the bucket being drained sorted (largest first).
            let pos = v.partition_point(|x| x > &e);
            v.insert(pos, e);
        } else {
            v.push(e);
        }
    }

    /// Removes and returns the earliest event, `(at, seq, kind)`, if it is due by `end`.
    pub fn pop_until(&mut self, end: u64) -> Option<(u64, u64, K)> {
        loop {
            let s = slot(self.cur);
            if !self.wheel[s].is_empty() {
                if !self.sorted {
                    self.wheel[s].sort_unstable_by(|a, b| b.cmp(a));
                    self.sorted = true;
                }
                let v = &mut self.wheel[s];
                if v.last().is_some_and(|e| e.at > end) {
                    return None;
                }
                let e = v.pop()?;
                self.in_wheel -= 1;
                return Some((e.at, e.seq, e.kind));
            }
            // Bucket `cur` is empty: give back the room of a busy bucket (every bucket keeps
            // what it last held otherwise: SLOTS × the busiest millisecond), then turn the
            // wheel to the next bucket that may hold events.
            if self.wheel[s].capacity() > KEEP {
                self.wheel[s] = Vec::new();
            }
            if self.in_wheel == 0 {
                let Reverse(first) = self.far.peek()?;
                if first.at > end {
                    return None;
                }
                self.cur = first.at >> SHIFT;
            } else {
                if (self.cur + 1) << SHIFT > end {
                    return None;
                }
                self.cur += 1;
            }
            self.sorted = false;
            let horizon = self.cur + SLOTS as u64;
            while self
                .far
                .peek()
                .is_some_and(|Reverse(e)| e.at >> SHIFT < horizon)
            {
                let Some(Reverse(e)) = self.far.pop() else {
                    break;
                };
                self.in_wheel += 1;
                self.wheel[slot(e.at >> SHIFT)].push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    /// Same order as a binary heap under a random mix of pushes (near, far, in the past of
    /// the wheel) and pops with and without an end.
    #[test]
    fn pops_in_the_order_of_a_heap() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut q = EventQueue::default();
            let mut heap = BinaryHeap::new();
            let mut now = 0u64;
            let mut seq = 0u64;
            for _ in 0..20_000 {
                if rng.random_bool(0.55) {
                    seq += 1;
                    let delay = match rng.random_range(0..10) {
                        0 => 0,
                        1 => rng.random_range(0..100_000_000),
                        2 => rng.random_range(0..10_000_000),
                        _ => rng.random_range(0..5_000),
                    };
                    q.push(now + delay, seq, seq);
                    heap.push(Reverse((now + delay, seq)));
                } else {
                    let end = if rng.random_bool(0.2) {
                        now + rng.random_range(0..3_000)
                    } else {
                        u64::MAX
                    };
                    let want = heap
                        .peek()
                        .filter(|Reverse((at, _))| *at <= end)
                        .map(|Reverse(k)| *k);
                    if want.is_some() {
                        heap.pop();
                    }
                    let got = q.pop_until(end).map(|(at, s, k)| {
                        assert_eq!(s, k);
                        (at, s)
                    });
                    assert_eq!(got, want, "seed {seed}");
                    if let Some((at, _)) = got {
                        now = at;
                    }
                }
                assert_eq!(q.len(), heap.len());
            }
        }
    }
}
