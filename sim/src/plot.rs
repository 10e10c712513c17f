//! SVG pictures drawn with plotters' SVG backend into a string (the caller writes the file; text
//! becomes SVG `<text>`, so no font library is involved):
//! - [`run_svg`]: one run's timeline: members known per running node (min, median, max, and the
//!   number of running nodes), a band per queen's reign labelled with her term and node, and a
//!   vertical marker per scenario action (crash, restart, partition, heal, pause, network change)
//!   and per failover (shaded from the queen's crash to the next crowning).
//! - [`sweep_svg`]: a sweep's histograms of first-queen, failover and membership-convergence
//!   times, with p50 and p99 marked, one panel per metric.

use crate::report::{Percentiles, Report, SweepReport};
use crate::series::{MarkKind, Point, Series};
use crate::sweep::Samples;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of a run's timeline, in pixels.
pub const RUN_SIZE: (u32, u32) = (1200, 600);
/// Width and height of a sweep's histograms, in pixels.
pub const SWEEP_SIZE: (u32, u32) = (1200, 420);
/// Rows of marker labels at the top of the timeline; a label that fits in none is left out (its
/// line is always drawn).
const LABEL_ROWS: usize = 4;
/// Queen bands are stacked in at most this many lanes (overlapping reigns: a stale queen in a
/// minority partition); further overlaps share the last lane.
const MAX_LANES: usize = 3;
/// Bars per histogram, at most.
const MAX_BINS: usize = 40;
const FONT: &str = "sans-serif";
/// Font size of labels as plotters takes it (it writes `size / 1.24` px into the SVG).
const LABEL_PX: u32 = 16;
const LEFT_AXIS_PX: u32 = 70;

const CRASH: RGBColor = RGBColor(214, 39, 40);
const RESTART: RGBColor = RGBColor(44, 160, 44);
const PARTITION: RGBColor = RGBColor(148, 103, 189);
const HEAL: RGBColor = RGBColor(23, 160, 180);
const PAUSE: RGBColor = RGBColor(255, 127, 14);
const NETWORK: RGBColor = RGBColor(127, 127, 127);
const FAILOVER: RGBColor = RGBColor(140, 70, 40);
const MEMBERS: RGBColor = RGBColor(31, 119, 180);
const RUNNING: RGBColor = RGBColor(90, 90, 90);
const QUEEN: [RGBColor; 2] = [RGBColor(246, 200, 95), RGBColor(230, 160, 50)];
const QUEEN_EDGE: RGBColor = RGBColor(150, 100, 20);
const BAR: RGBColor = RGBColor(31, 119, 180);
const P50: RGBColor = RGBColor(44, 160, 44);
const P99: RGBColor = RGBColor(214, 39, 40);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the run recorded no time series (the engine was not asked to record one)")]
    NoSeries,
    #[error("drawing the picture failed: {0}")]
    Draw(String),
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// The colour a marker kind is drawn in (tests count crash markers by it).
pub fn mark_color(kind: MarkKind) -> RGBColor {
    match kind {
        MarkKind::Crash => CRASH,
        MarkKind::Restart => RESTART,
        MarkKind::Partition => PARTITION,
        MarkKind::Heal => HEAL,
        MarkKind::Pause => PAUSE,
        MarkKind::Network => NETWORK,
    }
}

fn mark_name(kind: MarkKind) -> &'static str {
    match kind {
        MarkKind::Crash => "crash",
        MarkKind::Restart => "restart",
        MarkKind::Partition => "partition",
        MarkKind::Heal => "heal",
        MarkKind::Pause => "pause",
        MarkKind::Network => "network / clock",
    }
}

/// SVG colour syntax, as plotters writes it.
pub fn svg_color(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Rough width of a label in pixels (SVG text is measured by the viewer, not here).
fn text_width_px(text: &str, size: u32) -> i32 {
    (text.chars().count() as f64 * f64::from(size) / 1.24 * 0.62).ceil() as i32
}

/// The title line of a run's timeline.
pub fn run_title(scenario: &str, report: &Report) -> String {
    format!(
        "{scenario}: {} nodes, seed {}, {:.0} s simulated",
        report.nodes, report.seed, report.simulated_s
    )
}

/// The title line of a sweep's histograms.
pub fn sweep_title(scenario: &str, summary: &SweepReport) -> String {
    format!(
        "{scenario}: {} seeds × {} nodes",
        summary.runs, summary.nodes
    )
}

/// Points whose neighbours on both sides have the same value add nothing to a line: drop them.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let same_before = i > 0 && points[i - 1].1 == p.1;
        let same_after = i + 1 < points.len() && points[i + 1].1 == p.1;
        if !(same_before && same_after) {
            out.push(*p);
        }
    }
    out
}

/// A queen's reign as drawn: lane, start, end, label candidates.
struct Band {
    lane: usize,
    from_s: f64,
    to_s: f64,
    term: u64,
    node: usize,
}

fn bands(report: &Report) -> (Vec<Band>, usize) {
    let end = report.simulated_s;
    let mut queens: Vec<_> = report.queens.iter().collect();
    queens.sort_by(|a, b| a.crowned_s.total_cmp(&b.crowned_s));
    let mut lane_ends: Vec<f64> = Vec::new();
    let mut out = Vec::new();
    for q in queens {
        let to_s = q.deposed_s.unwrap_or(end).max(q.crowned_s);
        let lane = match lane_ends.iter().position(|e| *e <= q.crowned_s) {
            Some(l) => l,
            None if lane_ends.len() < MAX_LANES => {
                lane_ends.push(0.0);
                lane_ends.len() - 1
            }
            None => MAX_LANES - 1,
        };
        lane_ends[lane] = lane_ends[lane].max(to_s);
        out.push(Band {
            lane,
            from_s: q.crowned_s,
            to_s,
            term: q.term,
            node: q.node,
        });
    }
    (out, lane_ends.len().max(1))
}

/// A vertical marker in the timeline.
struct Mark {
    at_s: f64,
    color: RGBColor,
    label: String,
    legend: &'static str,
}

/// Draws a run's timeline. `report` must come from a run that recorded its series
/// (`Sim::record_series`).
pub fn run_svg(report: &Report, title: &str) -> Result<String, PlotError> {
    let series = report.series.as_ref().ok_or(PlotError::NoSeries)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, RUN_SIZE).into_drawing_area();
        draw_run(&root, report, series, title)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn draw_run<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
    series: &Series,
    title: &str,
) -> Result<(), PlotError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root.titled(title, (FONT, 26)).map_err(draw_err)?;
    let (top, main) = root.split_vertically(70);
    let end_s = report.simulated_s.max(0.001);

    // Queen bands.
    let (bands, lanes) = bands(report);
    let mut qchart = ChartBuilder::on(&top)
        .margin_left(10)
        .margin_right(25)
        .margin_top(4)
        .set_label_area_size(LabelAreaPosition::Left, LEFT_AXIS_PX)
        .build_cartesian_2d(0.0..end_s, 0.0..lanes as f64)
        .map_err(draw_err)?;
    qchart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .y_desc("queen")
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(draw_err)?;
    let label_style = TextStyle::from((FONT, LABEL_PX).into_font()).color(&BLACK);
    for b in &bands {
        let y0 = (lanes - 1 - b.lane) as f64;
        let rect = [(b.from_s, y0 + 0.1), (b.to_s, y0 + 0.9)];
        let fill = QUEEN[usize::try_from(b.term % 2).unwrap_or(0)];
        qchart
            .draw_series([
                Rectangle::new(rect, fill.filled()),
                Rectangle::new(rect, QUEEN_EDGE.stroke_width(1)),
            ])
            .map_err(draw_err)?;
        let width_px =
            qchart.backend_coord(&(b.to_s, 0.0)).0 - qchart.backend_coord(&(b.from_s, 0.0)).0;
        let candidates = [
            format!("term {} · queen n{}", b.term, b.node),
            format!("t{} n{}", b.term, b.node),
            format!("{}", b.term),
        ];
        if let Some(text) = candidates
            .into_iter()
            .find(|t| text_width_px(t, LABEL_PX) + 6 <= width_px)
        {
            let mid = (b.from_s + b.to_s) / 2.0;
            qchart
                .draw_series([Text::new(
                    text,
                    (mid, y0 + 0.5),
                    label_style.pos(Pos::new(HPos::Center, VPos::Center)),
                )])
                .map_err(draw_err)?;
        }
    }

    // Members known per running node.
    let points: Vec<Point> = series.points();
    let y_top = (report.nodes as f64 * 1.25).max(2.0);
    let mut chart = ChartBuilder::on(&main)
        .margin_left(10)
        .margin_right(25)
        .margin_top(4)
        .margin_bottom(8)
        .set_label_area_size(LabelAreaPosition::Left, LEFT_AXIS_PX)
        .set_label_area_size(LabelAreaPosition::Bottom, 45)
        .build_cartesian_2d(0.0..end_s, 0.0..y_top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_desc("simulated time (s)")
        .y_desc("live members known per node")
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 15))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(draw_err)?;

    // Failovers: shaded from the queen's crash to the next crowning.
    let mut marks: Vec<Mark> = Vec::new();
    for f in &report.failovers {
        let until = f.new_queen_s.unwrap_or(end_s);
        chart
            .draw_series([Rectangle::new(
                [(f.queen_lost_s, 0.0), (until, y_top)],
                FAILOVER.mix(0.12).filled(),
            )])
            .map_err(draw_err)?;
        marks.push(Mark {
            at_s: until,
            color: FAILOVER,
            label: match f.duration_s() {
                Some(d) => format!("new queen +{d:.2}s"),
                None => "no new queen".to_owned(),
            },
            legend: "failover",
        });
    }

    let line =
        |f: fn(&Point) -> f64| thin(&points.iter().map(|p| (p.at_s, f(p))).collect::<Vec<_>>());
    let (mins, maxs) = (line(|p| f64::from(p.min)), line(|p| f64::from(p.max)));
    let mut band: Vec<(f64, f64)> = maxs.clone();
    band.extend(mins.iter().rev());
    chart
        .draw_series([Polygon::new(band, MEMBERS.mix(0.15).filled())])
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            line(|p| f64::from(p.running)),
            RUNNING.stroke_width(1),
        ))
        .map_err(draw_err)?
        .label("running nodes")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RUNNING.stroke_width(1)));
    chart
        .draw_series(LineSeries::new(maxs, MEMBERS.mix(0.6).stroke_width(1)))
        .map_err(draw_err)?
        .label("max / min (shaded between)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], MEMBERS.mix(0.3).filled()));
    chart
        .draw_series(LineSeries::new(mins, MEMBERS.mix(0.6).stroke_width(1)))
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(line(|p| p.median), MEMBERS.stroke_width(2)))
        .map_err(draw_err)?
        .label("median")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], MEMBERS.stroke_width(2)));

    // Markers.
    marks.extend(series.markers.iter().map(|m| Mark {
        at_s: m.at_s,
        color: mark_color(m.kind),
        label: m.label.clone(),
        legend: mark_name(m.kind),
    }));
    marks.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut legend_done: Vec<&'static str> = Vec::new();
    for m in &marks {
        let drawn = chart
            .draw_series([PathElement::new(
                [(m.at_s, 0.0), (m.at_s, y_top)],
                m.color.stroke_width(2),
            )])
            .map_err(draw_err)?;
        if !legend_done.contains(&m.legend) {
            legend_done.push(m.legend);
            let color = m.color;
            drawn.label(m.legend).legend(move |(x, y)| {
                PathElement::new([(x + 9, y - 6), (x + 9, y + 6)], color.stroke_width(2))
            });
        }
    }
    // Labels in rows at the top, left to right; one that fits no row is left out.
    let (x_px, _) = chart.plotting_area().get_pixel_range();
    let row_px = LABEL_PX as i32 + 3;
    let mut row_end = [i32::MIN; LABEL_ROWS];
    for m in &marks {
        let x = chart.backend_coord(&(m.at_s, 0.0)).0;
        let w = text_width_px(&m.label, LABEL_PX);
        // Right of the line, or left of it near the right edge.
        let right_of_line = x + 4 + w <= x_px.end;
        let (left, at, anchor) = if right_of_line {
            (x + 4, x + 4, HPos::Left)
        } else {
            (x - 4 - w, x - 4, HPos::Right)
        };
        let Some(row) = (0..LABEL_ROWS).find(|r| row_end[*r] + 6 <= left) else {
            continue;
        };
        row_end[row] = left + w;
        boxed_label(
            &chart.plotting_area().strip_coord_spec(),
            &m.label,
            m.color,
            (at - x_px.start, 4 + row as i32 * row_px),
            anchor,
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 15))
        .draw()
        .map_err(draw_err)?;
    if series.markers_dropped > 0 {
        main.draw(&Text::new(
            format!("({} more markers not recorded)", series.markers_dropped),
            (LEFT_AXIS_PX as i32 + 14, 4),
            (FONT, 18).into_font().color(&NETWORK),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// Draws a sweep's histograms, one panel per metric, with p50 and p99 marked.
pub fn sweep_svg(samples: &Samples, title: &str) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SWEEP_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, (FONT, 26)).map_err(draw_err)?;
        let panels = root.split_evenly((1, 3));
        let metrics = [
            ("first queen", &samples.first_queen_s),
            ("failover: crash to new queen", &samples.failover_s),
            ("membership converged", &samples.membership_converged_s),
        ];
        for (panel, (name, values)) in panels.iter().zip(metrics) {
            histogram(panel, name, values)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    values: &[f64],
) -> Result<(), PlotError> {
    let caption = format!("{name} (n={})", values.len());
    let pct = Percentiles::of(values.to_vec());
    let (Some(lo), Some(hi), Some(p50), Some(p99)) = (
        values.iter().copied().reduce(f64::min),
        pct.max,
        pct.p50,
        pct.p99,
    ) else {
        area.draw(&Text::new(
            format!("{caption}: no samples"),
            (20, 40),
            (FONT, 18).into_font(),
        ))
        .map_err(draw_err)?;
        return Ok(());
    };
    let bins = ((values.len() as f64).sqrt().ceil() as usize).clamp(5, MAX_BINS);
    let span = (hi - lo).max(0.01);
    let width = span / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values {
        let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let highest = counts.iter().copied().max().unwrap_or(1);
    let top = highest + highest.div_ceil(3).max(1);
    let (x0, x1) = (lo - width, lo + span + width);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 19))
        .margin(10)
        .margin_right(30)
        .set_label_area_size(LabelAreaPosition::Left, 45)
        .set_label_area_size(LabelAreaPosition::Bottom, 40)
        .build_cartesian_2d(x0..x1, 0..top)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_desc("seconds")
        .y_desc("count")
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 15))
        .x_labels(6)
        .y_labels(usize::try_from(top).unwrap_or(10).min(10))
        .x_label_formatter(&|x| format!("{x:.2}"))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| {
                    let a = lo + width * i as f64;
                    Rectangle::new([(a, 0), (a + width, *c)], BAR.mix(0.75).filled())
                }),
        )
        .map_err(draw_err)?;
    let (x_px, _) = chart.plotting_area().get_pixel_range();
    for (row, (what, v, color)) in [("p50", p50, P50), ("p99", p99, P99)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series([PathElement::new([(v, 0), (v, top)], color.stroke_width(2))])
            .map_err(draw_err)?;
        let label = format!("{what} {v:.3}s");
        let x = chart.backend_coord(&(v, 0)).0;
        let (anchor, dx) = if x + 4 + text_width_px(&label, LABEL_PX) <= x_px.end {
            (HPos::Left, 4)
        } else {
            (HPos::Right, -4)
        };
        boxed_label(
            &chart.plotting_area().strip_coord_spec(),
            &label,
            color,
            (x - x_px.start + dx, 4 + row as i32 * (LABEL_PX as i32 + 4)),
            anchor,
        )?;
    }
    Ok(())
}

/// A label on a white box (so lines behind it do not cross the text), its top at `at`, left or
/// right of `at` by `anchor`. `area` is in pixels.
fn boxed_label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    color: RGBColor,
    at: (i32, i32),
    anchor: HPos,
) -> Result<(), PlotError> {
    let w = text_width_px(text, LABEL_PX);
    let (x, y) = at;
    let left = match anchor {
        HPos::Left => x,
        HPos::Center => x - w / 2,
        HPos::Right => x - w,
    };
    let h = (f64::from(LABEL_PX) / 1.24 * 1.2).ceil() as i32;
    area.draw(&Rectangle::new(
        [(left - 2, y - 1), (left + w + 2, y + h)],
        WHITE.mix(0.85).filled(),
    ))
    .map_err(draw_err)?;
    area.draw(&Text::new(
        text.to_owned(),
        (x, y),
        TextStyle::from((FONT, LABEL_PX).into_font())
            .color(&color)
            .pos(Pos::new(anchor, VPos::Top)),
    ))
    .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_keeps_the_shape() {
        let pts = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 5.0), (4.0, 5.0)];
        assert_eq!(
            thin(&pts),
            vec![(0.0, 1.0), (2.0, 1.0), (3.0, 5.0), (4.0, 5.0)]
        );
    }

    #[test]
    fn empty_metric_says_so() {
        let svg = sweep_svg(&Samples::default(), "nothing").expect("draws");
        assert!(svg.contains("no samples"), "{svg}");
    }
}
