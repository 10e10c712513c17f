//! The node's own timer queue, ordered by (deadline, insertion sequence) so that equal deadlines
//! fire in a deterministic order. Bounded: a node never holds more than `MAX_TIMERS`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use swarm_core::Time;

/// Far above what a node schedules (foca keeps a few timers per member it suspects).
pub const MAX_TIMERS: usize = 1 << 20;

struct Entry<T> {
    at: Time,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    /// Schedules `item` at `at`. Returns false (and drops it) if the queue is full.
    pub fn push(&mut self, at: Time, item: T) -> bool {
        if self.heap.len() >= MAX_TIMERS {
            return false;
        }
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            item,
        }));
        true
    }

    pub fn next_deadline(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes and returns the earliest item due at or before `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<T> {
        if self.next_deadline()? <= now {
            self.heap.pop().map(|Reverse(e)| e.item)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_then_insertion_order() {
        let mut q = TimerQueue::default();
        q.push(Time(5), "b");
        q.push(Time(3), "a");
        q.push(Time(5), "c");
        assert_eq!(q.next_deadline(), Some(Time(3)));
        assert_eq!(q.pop_due(Time(2)), None);
        assert_eq!(q.pop_due(Time(5)), Some("a"));
        assert_eq!(q.pop_due(Time(5)), Some("b"));
        assert_eq!(q.pop_due(Time(5)), Some("c"));
        assert!(q.is_empty());
    }
}
