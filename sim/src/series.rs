//! The time series a run records for its picture (`aware-sim run --svg`): members known per
//! running node (min, median, max) at every engine sample, and one marker per scenario action
//! (crash, restart, partition, heal, ...). Reigns and failovers are not here: the report's
//! `queens` and `failovers` already hold them.
//!
//! Bounded: at most [`MAX_POINTS`] points. When full, neighbouring points are merged pairwise and
//! each later point covers twice as many samples (min of the minimums, max of the maximums, mean
//! of the medians), so an hour-long run keeps its dips. At most [`MAX_MARKERS`] markers; later
//! ones are counted in `markers_dropped`.

use serde::Serialize;

/// Points kept per run; downsampled (pairwise merge) beyond that.
pub const MAX_POINTS: usize = 2_000;
/// Markers kept per run.
pub const MAX_MARKERS: usize = 2_000;

/// Members known per running node at one time (or the aggregate of a few consecutive samples).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Start of the samples this point covers.
    pub at_s: f64,
    /// Running nodes (the lowest count among the samples covered).
    pub running: u32,
    /// Fewest live members any running node knows, itself included.
    pub min: u32,
    /// Median over running nodes (mean of the covered samples' medians).
    pub median: f64,
    /// Most live members any running node knows, itself included.
    pub max: u32,
}

impl Point {
    fn merge(self, later: Point, later_weight: f64, weight: f64) -> Point {
        Point {
            at_s: self.at_s,
            running: self.running.min(later.running),
            min: self.min.min(later.min),
            median: (self.median * weight + later.median * later_weight) / (weight + later_weight),
            max: self.max.max(later.max),
        }
    }
}

/// What kind of event a marker shows (each kind has its colour in the picture).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    Crash,
    Restart,
    Partition,
    Heal,
    Pause,
    /// One-way cuts, loss changes, clock skew: the network or clock changed.
    Network,
}

/// A scenario action at one time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Marker {
    pub at_s: f64,
    pub kind: MarkKind,
    pub label: String,
}

/// A run's recorded series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// Finished points, oldest first; at most [`MAX_POINTS`].
    points: Vec<Point>,
    /// Samples each finished point covers (a power of two).
    stride: u32,
    /// The point being filled and how many samples it holds so far.
    pending: Option<(Point, u32)>,
    pub markers: Vec<Marker>,
    pub markers_dropped: usize,
}

impl Series {
    pub fn new() -> Series {
        Series {
            stride: 1,
            ..Series::default()
        }
    }

    /// Records one sample: `known` holds, per running node, the live members it knows (itself
    /// included). Sorts `known` in place.
    pub fn sample(&mut self, at_s: f64, known: &mut [u32]) {
        known.sort_unstable();
        let (Some(&min), Some(&max)) = (known.first(), known.last()) else {
            self.push(Point {
                at_s,
                running: 0,
                min: 0,
                median: 0.0,
                max: 0,
            });
            return;
        };
        let mid = known.len() / 2;
        let median = if known.len() % 2 == 1 {
            f64::from(known[mid])
        } else {
            (f64::from(known[mid - 1]) + f64::from(known[mid])) / 2.0
        };
        self.push(Point {
            at_s,
            running: u32::try_from(known.len()).unwrap_or(u32::MAX),
            min,
            median,
            max,
        });
    }

    fn push(&mut self, p: Point) {
        let (acc, n) = match self.pending.take() {
            None => (p, 1),
            Some((acc, n)) => (acc.merge(p, 1.0, f64::from(n)), n + 1),
        };
        if n < self.stride {
            self.pending = Some((acc, n));
            return;
        }
        self.points.push(acc);
        if self.points.len() >= MAX_POINTS {
            self.points = self
                .points
                .chunks(2)
                .filter_map(|pair| pair.iter().copied().reduce(|a, b| a.merge(b, 1.0, 1.0)))
                .collect();
            self.stride = self.stride.saturating_mul(2);
        }
        debug_assert!(self.points.len() < MAX_POINTS);
    }

    /// Every point, the partly filled last one included.
    pub fn points(&self) -> Vec<Point> {
        let mut all = self.points.clone();
        all.extend(self.pending.map(|(p, _)| p));
        all
    }

    pub fn mark(&mut self, at_s: f64, kind: MarkKind, label: String) {
        if self.markers.len() < MAX_MARKERS {
            self.markers.push(Marker { at_s, kind, label });
        } else {
            self.markers_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_takes_min_median_max() {
        let mut s = Series::new();
        s.sample(0.0, &mut [5, 1, 3, 4]);
        let p = s.points()[0];
        assert_eq!((p.running, p.min, p.median, p.max), (4, 1, 3.5, 5));
    }

    #[test]
    fn points_stay_bounded_and_keep_extremes() {
        let mut s = Series::new();
        let samples = MAX_POINTS * 5 + 3;
        for i in 0..samples {
            // One dip to 1 in the middle must survive downsampling.
            let v = if i == samples / 2 { 1 } else { 10 };
            s.sample(i as f64 * 0.1, &mut [v, 10, 10]);
        }
        let pts = s.points();
        assert!(pts.len() <= MAX_POINTS, "{} points", pts.len());
        assert!(pts.len() > MAX_POINTS / 4, "{} points", pts.len());
        assert_eq!(pts.iter().map(|p| p.min).min(), Some(1));
        assert!(pts.windows(2).all(|w| w[0].at_s < w[1].at_s));
        assert_eq!(pts[0].at_s, 0.0);
    }

    #[test]
    fn markers_are_bounded() {
        let mut s = Series::new();
        for i in 0..MAX_MARKERS + 7 {
            s.mark(i as f64, MarkKind::Crash, "crash".to_owned());
        }
        assert_eq!((s.markers.len(), s.markers_dropped), (MAX_MARKERS, 7));
    }
}
