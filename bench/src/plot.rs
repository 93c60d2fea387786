//! `--plot FILE.svg`: the run's timeline as stacked charts — latency percentiles (log scale),
//! throughput (published and delivered messages, frames), connections — with the measured window
//! shaded; when the edges log their merge windows, two more: the mean effective window and the
//! p99 latency (ms) against the offered rate (published msg/s, right axis), and messages per
//! frame. Plain SVG: text is `<text>` elements, so no font files are needed.

use std::ops::Range;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::progress::Sample;

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 330;
const WINDOW_SHADE: RGBColor = RGBColor(232, 240, 255);
const RIGHT_AXIS: u32 = 70;
const PURPLE: RGBColor = RGBColor(128, 0, 160);
const GREY: RGBColor = RGBColor(110, 110, 110);

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

pub fn draw(
    path: &Path,
    title: &str,
    timeline: &[Sample],
    window: Option<(f64, f64)>,
) -> Result<(), String> {
    let windows = timeline.iter().any(|s| s.window_ms.is_some());
    let n = if windows { 5 } else { 3 };
    let root = SVGBackend::new(path, (WIDTH, PANEL_HEIGHT * n + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let panels = root.split_evenly((n as usize, 1));
    let end = timeline.last().map_or(1.0, |s| s.t).max(1.0);
    let time = 0.0..end;
    // Room for the window chart's right axis in every chart, so that their times line up.
    let right = if windows { RIGHT_AXIS } else { 0 };

    let pick = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|s| Some((s.t, f(s)?)))
            .filter(|&(_, v)| v > 0.0)
            .collect()
    };
    let latency = [
        ("p50", BLUE, pick(&|s| Some(s.latency_ms?.p50))),
        ("p90", GREEN, pick(&|s| Some(s.latency_ms?.p90))),
        ("p99", RED, pick(&|s| Some(s.latency_ms?.p99))),
        ("max", BLACK, pick(&|s| Some(s.latency_ms?.max))),
    ];
    chart(
        &panels[0],
        "latency of the normal group, per second (ms)",
        &time,
        window,
        right,
        true,
        latency
            .into_iter()
            .map(|(name, color, points)| Series {
                name,
                color,
                points,
            })
            .collect(),
    )?;
    chart(
        &panels[1],
        "throughput per second",
        &time,
        window,
        right,
        true,
        vec![
            Series {
                name: "delivered messages/s",
                color: BLUE,
                points: pick(&|s| Some(s.delivered_msgs_per_s)),
            },
            Series {
                name: "delivered frames/s",
                color: GREEN,
                points: pick(&|s| Some(s.frames_per_s)),
            },
            Series {
                name: "published messages/s",
                color: RED,
                points: pick(&|s| Some(s.published_per_s)),
            },
        ],
    )?;
    chart(
        &panels[2],
        "connections",
        &time,
        window,
        right,
        false,
        vec![
            Series {
                name: "joined (clients)",
                color: BLUE,
                points: pick(&|s| Some(s.conns as f64)),
            },
            Series {
                name: "held (edges' reports)",
                color: RED,
                points: pick(&|s| s.edge_conns.map(|c| c as f64)),
            },
            Series {
                name: "reconnects/s",
                color: GREEN,
                points: pick(&|s| Some(s.reconnects_per_s)),
            },
        ],
    )?;
    if windows {
        window_chart(&panels[3], &time, window, timeline)?;
        chart(
            &panels[4],
            "messages per frame (delivered messages / frames, per second)",
            &time,
            window,
            right,
            false,
            vec![Series {
                name: "messages per frame",
                color: PURPLE,
                points: pick(&|s| {
                    (s.frames_per_s > 0.0).then(|| s.delivered_msgs_per_s / s.frames_per_s)
                }),
            }],
        )?;
    }
    root.present().map_err(err)
}

/// The merge windows against the load: the mean effective window and the p99 latency (ms, left
/// axis) with the offered rate (published msg/s, right axis), so a ramp shows the window growing
/// with the load while p99 stays bounded.
fn window_chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    time: &Range<f64>,
    window: Option<(f64, f64)>,
    timeline: &[Sample],
) -> Result<(), String> {
    let points = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline.iter().filter_map(|s| Some((s.t, f(s)?))).collect()
    };
    let left = vec![
        Series {
            name: "effective window (mean, ms)",
            color: PURPLE,
            points: points(&|s| s.window_ms),
        },
        Series {
            name: "p99 latency (ms)",
            color: RED,
            points: points(&|s| Some(s.latency_ms?.p99)),
        },
    ];
    // While publishing (a window of 0 ms is a value, a rate of 0 is no publisher).
    let offered = points(&|s| Some(s.published_per_s).filter(|&r| r > 0.0));
    let top = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0f64, f64::max);
    let hi = top(&mut left.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
    let hi2 = top(&mut offered.iter().map(|p| p.1));
    let hi2 = if hi2 > 0.0 { hi2 * 1.1 } else { 1.0 };
    let mut c = ChartBuilder::on(area)
        .caption(
            "merge windows: effective window and p99 latency (ms, left) against the offered rate (msg/s, right)",
            ("sans-serif", 15),
        )
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(RIGHT_AXIS)
        .build_cartesian_2d(time.clone(), 0.0..hi)
        .map_err(err)?
        .set_secondary_coord(time.clone(), 0.0..hi2);
    c.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ms")
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(err)?;
    c.configure_secondary_axes()
        .y_desc("published msg/s")
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(err)?;
    shade(&mut *c, window, 0.0, hi)?;
    if !offered.is_empty() {
        c.draw_secondary_series(LineSeries::new(offered, GREY.stroke_width(2)))
            .map_err(err)?
            .label("offered: published msg/s (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREY.stroke_width(2)));
    }
    lines(&mut *c, left)?;
    legend(&mut *c)
}

fn chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    time: &Range<f64>,
    window: Option<(f64, f64)>,
    right: u32,
    log_if_wide: bool,
    series: Vec<Series<'_>>,
) -> Result<(), String> {
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // A log scale only pays when the values span decades.
    let log = log_if_wide && hi > 0.0 && hi / lo >= 20.0;
    let (lo, hi) = if hi <= 0.0 {
        (0.1, 1.0)
    } else if log {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.0, hi * 1.1)
    };
    let caption = if log {
        format!("{caption} (log scale)")
    } else {
        caption.to_string()
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(right);
    if log {
        let mut c = builder
            .build_cartesian_2d(time.clone(), (lo..hi).log_scale())
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("seconds since start")
            .y_labels(8)
            .light_line_style(BLACK.mix(0.03))
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err)?;
        shade(&mut c, window, lo, hi)?;
        lines(&mut c, series)?;
        legend(&mut c)
    } else {
        let mut c = builder
            .build_cartesian_2d(time.clone(), lo..hi)
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("seconds since start")
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err)?;
        shade(&mut c, window, lo, hi)?;
        lines(&mut c, series)?;
        legend(&mut c)
    }
}

type Chart<'a, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>;

fn shade<Y>(
    c: &mut Chart<'_, Y>,
    window: Option<(f64, f64)>,
    lo: f64,
    hi: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    if let Some((t0, t1)) = window {
        c.draw_series(std::iter::once(Rectangle::new(
            [(t0, lo), (t1, hi)],
            WINDOW_SHADE.filled(),
        )))
        .map_err(err)?
        .label("measured window")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], WINDOW_SHADE.filled()));
    }
    Ok(())
}

fn lines<Y>(c: &mut Chart<'_, Y>, series: Vec<Series<'_>>) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    for s in series.into_iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        c.draw_series(LineSeries::new(s.points, color.stroke_width(2)))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    Ok(())
}

fn legend<Y>(c: &mut Chart<'_, Y>) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)
}

/// 1500000 → "1.5M", 2500 → "2.5k", 0.25 → "0.25".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Percentiles;

    #[test]
    fn draws_an_svg_with_text_and_lines() {
        let timeline: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t: f64::from(i),
                phase: "window",
                conns: 1000,
                edge_conns: Some(1000),
                published_per_s: 100.0,
                delivered_msgs_per_s: 100_000.0,
                frames_per_s: 10_000.0,
                reconnects_per_s: 0.0,
                sends_per_s: 0.0,
                send_replies_per_s: 0.0,
                latency_ms: Some(Percentiles {
                    p50: 5.0,
                    p90: 9.0,
                    p99: 20.0 + f64::from(i),
                    p999: 40.0,
                    max: 50.0,
                }),
                edge_cores: Some(0.5),
                control_cores: None,
                window_ms: (i > 2).then(|| 100.0 + 10.0 * f64::from(i)),
                channels_stretched: Some(1),
            })
            .collect();
        let path =
            std::env::temp_dir().join(format!("roomcast-bench-plot-{}.svg", std::process::id()));
        draw(&path, "test run", &timeline, Some((5.0, 15.0))).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("<text") && svg.contains("measured window"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("effective window") && svg.contains("messages per frame"));

        // Edges that log no windows: the three charts of before.
        let old: Vec<Sample> = timeline
            .into_iter()
            .map(|s| Sample {
                window_ms: None,
                channels_stretched: None,
                ..s
            })
            .collect();
        draw(&path, "old edges", &old, Some((5.0, 15.0))).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!svg.contains("effective window") && !svg.contains("messages per frame"));
    }
}
