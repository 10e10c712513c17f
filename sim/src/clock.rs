//! A simulated node's monotonic clock: the map between global virtual time and the node's local
//! time, both ways.
//!
//! A real monotonic clock runs at a slightly wrong but steady rate (its **drift**, a few hundred
//! ppm at worst for a quartz oscillator) and never runs backwards. So here: local time advances
//! at `1 + drift_ppm/10⁶` per global µs, piecewise (chaos may change a node's rate; the clock
//! stays continuous). An explicit `skew` step (scenario tests only; real monotonic clocks never
//! step) moves the clock by a fixed offset; a backward step becomes a **stall** (the clock reads
//! the same value until its undisturbed course catches up), exactly as `dna::Node::clock` would
//! clamp it. A process pause does not touch the clock: it keeps running while the process
//! sleeps, which is what a paused node sees when it wakes.
//!
//! `local` is monotonic (non-decreasing) in global time whatever happens, so the smallest global
//! time at which the clock reaches a given local value (`global`) is well defined; the engine
//! uses it to schedule a node's timers and the checker to judge leases in real time.

use swarm_core::Time;

/// Node clocks start here so that a backward step never underflows.
pub const CLOCK_BASE_US: u64 = 1_000_000_000;
/// Parts per million.
const PPM: i128 = 1_000_000;
/// Largest drift accepted, in ppm (±50%). Real oscillators stay within a few hundred ppm; the
/// bound is this high only so that tests can show where lease safety breaks (about ±21% with
/// the default leases; see docs/election.md §7).
pub const MAX_DRIFT_PPM: i64 = 500_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Start of the current rate segment in global µs ...
    anchor_global_us: u64,
    /// ... and the local reading there, before `offset_us`.
    anchor_local_us: u64,
    drift_ppm: i64,
    /// The sum of every `skew` step.
    offset_us: i64,
    /// The clock never reads below this (set by a backward step).
    floor_us: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new(0)
    }
}

impl Clock {
    /// A clock that reads `CLOCK_BASE_US` at global time 0 and drifts by `drift_ppm`.
    pub fn new(drift_ppm: i64) -> Clock {
        Clock {
            anchor_global_us: 0,
            anchor_local_us: CLOCK_BASE_US,
            drift_ppm: drift_ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM),
            offset_us: 0,
            floor_us: 0,
        }
    }

    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    /// The undisturbed course at global `g`, before the offset (may be below the anchor's
    /// reading for `g` before the anchor: only the engine's "2 s ago" look-back asks that).
    fn course(&self, global_us: u64) -> i128 {
        let d = i128::from(global_us) - i128::from(self.anchor_global_us);
        if self.drift_ppm == 0 {
            // The common case, without the 128-bit division (the engine asks on every event).
            return i128::from(self.anchor_local_us) + d;
        }
        i128::from(self.anchor_local_us) + d + (d * i128::from(self.drift_ppm)).div_euclid(PPM)
    }

    fn raw(&self, global_us: u64) -> i128 {
        self.course(global_us) + i128::from(self.offset_us)
    }

    /// The node's clock at global time `global_us`.
    pub fn local(&self, global_us: u64) -> Time {
        let raw = u64::try_from(self.raw(global_us).max(0)).unwrap_or(u64::MAX);
        Time(raw.max(self.floor_us))
    }

    /// The earliest global time ≥ `now_us` at which the clock reads at least `local`.
    pub fn global(&self, local: Time, now_us: u64) -> u64 {
        if self.local(now_us) >= local {
            return now_us;
        }
        // local > floor, so the raw course must reach it: the smallest d with f(d) ≥ x, where
        // f(d) = d + ⌊d·drift/10⁶⌋ is non-decreasing (drift > −10⁶).
        let x = i128::from(local.0) - i128::from(self.anchor_local_us) - i128::from(self.offset_us);
        let p = i128::from(self.drift_ppm);
        if p == 0 {
            let g = i128::from(self.anchor_global_us) + x.max(0);
            return u64::try_from(g).unwrap_or(u64::MAX).max(now_us);
        }
        let f = |d: i128| d + (d * p).div_euclid(PPM);
        let mut d = (x * PPM).div_euclid(PPM + p).max(0);
        while f(d) < x {
            d += 1;
        }
        while d > 0 && f(d - 1) >= x {
            d -= 1;
        }
        let g = i128::from(self.anchor_global_us) + d;
        u64::try_from(g).unwrap_or(u64::MAX).max(now_us)
    }

    /// From `now_us` on, the clock runs at `drift_ppm` (continuously: no step).
    pub fn set_drift(&mut self, now_us: u64, drift_ppm: i64) {
        let at = u64::try_from(self.course(now_us).max(0)).unwrap_or(u64::MAX);
        self.anchor_global_us = now_us;
        self.anchor_local_us = at;
        self.drift_ppm = drift_ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM);
    }

    /// Steps the clock at `now_us` so that it reads its undisturbed course plus `offset_us`; a
    /// backward step stalls it instead of running it backwards.
    pub fn set_offset(&mut self, now_us: u64, offset_us: i64) {
        let before = self.local(now_us);
        self.offset_us = offset_us;
        self.floor_us = self.floor_us.max(before.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_drift_or_skew_local_is_base_plus_global() {
        let c = Clock::new(0);
        assert_eq!(c.local(0), Time(CLOCK_BASE_US));
        assert_eq!(c.local(1234), Time(CLOCK_BASE_US + 1234));
        assert_eq!(c.global(Time(CLOCK_BASE_US + 5000), 10), 5000);
        assert_eq!(
            c.global(Time(CLOCK_BASE_US + 5), 10),
            10,
            "past deadlines are now"
        );
    }

    #[test]
    fn drift_runs_fast_or_slow_and_global_inverts_it() {
        let fast = Clock::new(200);
        assert_eq!(fast.local(1_000_000), Time(CLOCK_BASE_US + 1_000_200));
        let slow = Clock::new(-200);
        assert_eq!(slow.local(1_000_000), Time(CLOCK_BASE_US + 999_800));
        for c in [
            &fast,
            &slow,
            &Clock::new(123_457),
            &Clock::new(-MAX_DRIFT_PPM),
        ] {
            for target in [1u64, 999, 1_000_000, 3_333_333, 77_777_777] {
                let local = Time(CLOCK_BASE_US + target);
                let g = c.global(local, 0);
                assert!(c.local(g) >= local, "{c:?} {target}");
                assert!(
                    g == 0 || c.local(g - 1) < local,
                    "{c:?} {target}: not the earliest"
                );
            }
        }
    }

    #[test]
    fn a_rate_change_is_continuous_and_the_clock_never_runs_backwards() {
        let mut c = Clock::new(300);
        let before = c.local(5_000_000);
        c.set_drift(5_000_000, -300);
        assert_eq!(c.local(5_000_000), before);
        assert!(c.local(6_000_000) > before);
        let mut last = Time(0);
        for g in (0..10_000_000).step_by(997) {
            assert!(c.local(g) >= last);
            last = c.local(g);
        }
    }

    #[test]
    fn a_backward_step_is_a_stall() {
        let mut c = Clock::new(0);
        c.set_offset(1_000_000, -300_000);
        let at = c.local(1_000_000);
        assert_eq!(at, Time(CLOCK_BASE_US + 1_000_000));
        // Stalled until its course catches up 300 ms later.
        assert_eq!(c.local(1_200_000), at);
        assert_eq!(c.local(1_300_000), at);
        assert_eq!(c.local(1_300_001), Time(at.0 + 1));
        assert_eq!(c.global(Time(at.0 + 1), 1_000_000), 1_300_001);
        // A forward step jumps.
        c.set_offset(2_000_000, 0);
        assert_eq!(c.local(2_000_000), Time(CLOCK_BASE_US + 2_000_000));
    }
}
