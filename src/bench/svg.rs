//! The bench report as a picture (SVG, written by hand: no plotting dependency): on the left
//! the cumulative distribution of each run's end-to-end latency, on the right each run's
//! median per stage as stacked bars, so a tail and where the time goes are seen at a glance.

use std::fmt::Write as _;

use super::report::{Report, Run};

/// Colours of runs (CDF lines) and stages (bar parts).
const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The stages that add up to the end-to-end time, in pipeline order, with their colours.
const PARTS: &[(&str, &str)] = &[
    ("wait", "#d9d9d9"),
    ("preprocess", "#9ecae1"),
    ("volume", "#6baed6"),
    ("inference", "#08519c"),
    ("postprocess", "#fdae6b"),
    ("encode", "#e6550d"),
    ("emit", "#a63603"),
];

const W: f64 = 1000.0;
const PLOT_H: f64 = 300.0;
const TOP: f64 = 40.0;
const LEFT: f64 = 60.0;
const PANEL_W: f64 = 380.0;
const RIGHT_X: f64 = 560.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn name(run: &Run) -> String {
    format!("{} {} {}t", run.model, run.precision, run.threads)
}

/// A round step for about five axis ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The SVG document for `report`.
pub fn plot(report: &Report) -> String {
    let runs = &report.runs;
    let legend_h = 18.0 * runs.len().max(2) as f64;
    let h = TOP + PLOT_H + 50.0 + legend_h + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">End-to-end latency, cumulative ({})</text>"#,
        escape(&report.machine.cpu)
    );
    let _ = writeln!(
        s,
        r#"<text x="{RIGHT_X}" y="20" font-size="14">Median per stage (ms)</text>"#
    );
    cdf_panel(&mut s, runs);
    bars_panel(&mut s, runs);
    let y0 = TOP + PLOT_H + 50.0;
    for (i, r) in runs.iter().enumerate() {
        let y = y0 + 18.0 * i as f64;
        let colour = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 24.0,
            LEFT + 30.0,
            y + 4.0,
            escape(&name(r))
        );
    }
    let present = PARTS
        .iter()
        .filter(|(part, _)| runs.iter().any(|r| r.stages.contains_key(*part)));
    for (i, (part, colour)) in present.enumerate() {
        let x = RIGHT_X + 105.0 * (i % 4) as f64;
        let y = y0 + 18.0 * (i / 4) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{}">{part}</text>"#,
            y - 8.0,
            x + 16.0,
            y + 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn cdf_panel(s: &mut String, runs: &[Run]) {
    let points = || {
        runs.iter()
            .flat_map(|r| r.end_to_end_cdf.iter().map(|p| p.0))
    };
    let low = points().fold(f64::INFINITY, f64::min).max(0.001);
    let high = points().fold(0.0, f64::max).max(low * 1.01);
    let (lo, hi) = (low.log10().floor(), high.log10().ceil());
    let x = |ms: f64| LEFT + (ms.max(1e-3).log10() - lo) / (hi - lo) * PANEL_W;
    let y = |f: f64| TOP + (1.0 - f) * PLOT_H;
    axes(s, LEFT, "ms (log)");
    for decade in lo as i32..=hi as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(decade);
            if v.log10() > hi + 1e-9 {
                break;
            }
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{v}</text>"##,
                x(v),
                TOP + PLOT_H,
                TOP + PLOT_H + 16.0
            );
        }
    }
    for f in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/>"##,
            y(f),
            LEFT + PANEL_W
        );
    }
    for f in [0.0, 0.5, 0.9, 1.0] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{f}</text>"#,
            LEFT - 6.0,
            y(f) + 4.0
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let mut points = String::new();
        let mut previous = 0.0;
        for &(ms, f) in &r.end_to_end_cdf {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(ms),
                y(previous),
                x(ms),
                y(f)
            );
            previous = f;
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.trim_end(),
            PALETTE[i % PALETTE.len()]
        );
    }
}

fn bars_panel(s: &mut String, runs: &[Run]) {
    let total = |r: &Run| PARTS.iter().map(|(p, _)| r.stage(p).p50).sum::<f64>();
    let max = runs.iter().map(total).fold(0.0, f64::max).max(0.001);
    let step = tick_step(max);
    let x_max = (max / step).ceil() * step;
    let width = W - RIGHT_X - 70.0;
    let x = |ms: f64| RIGHT_X + ms / x_max * width;
    axes(s, RIGHT_X, "ms");
    let mut v = 0.0;
    while v <= x_max + step / 2.0 {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{v}</text>"#,
            x(v),
            TOP + PLOT_H + 16.0
        );
        v += step;
    }
    let band = PLOT_H / runs.len().max(1) as f64;
    for (i, r) in runs.iter().enumerate() {
        let top = TOP + band * i as f64 + band * 0.15;
        let height = band * 0.7;
        let mut at = 0.0;
        for (part, colour) in PARTS {
            let ms = r.stage(part).p50;
            if ms <= 0.0 {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="{colour}"><title>{} {part}: {ms:.2} ms</title></rect>"#,
                x(at),
                x(at + ms) - x(at),
                escape(&name(r))
            );
            at += ms;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{at:.2}</text>"#,
            x(at) + 4.0,
            top + height / 2.0 + 4.0
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{top:.1}" width="4" height="{height:.1}" fill="{}"/>"#,
            RIGHT_X - 8.0,
            PALETTE[i % PALETTE.len()]
        );
    }
}

/// The x and y axis lines of a panel starting at `left`, with the x unit.
fn axes(s: &mut String, left: f64, unit: &str) {
    let bottom = TOP + PLOT_H;
    let right = if left == LEFT {
        LEFT + PANEL_W
    } else {
        W - 70.0
    };
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{TOP}" x2="{left}" y2="{bottom}" stroke="black"/><text x="{right}" y="{}" text-anchor="end">{unit}</text>"#,
        bottom + 32.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Machine;
    use crate::histogram::Histogram;

    #[test]
    fn the_plot_is_well_formed_and_draws_every_run() {
        let mut runs = Vec::new();
        for (model, base) in [("a<b", 4_000u64), ("c", 9_000)] {
            let mut h = Histogram::default();
            for i in 0..100 {
                h.record(base + i * 37);
            }
            let p = h.percentiles();
            runs.push(Run {
                model: model.into(),
                precision: "int8".into(),
                threads: 2,
                stages: [("inference".to_string(), p), ("end_to_end".to_string(), p)].into(),
                end_to_end_cdf: h.cdf(),
                ..Run::default()
            });
        }
        let report = Report {
            edgeseg: "0".into(),
            machine: Machine::this(),
            wall_s: 1.0,
            runs,
        };
        let svg = plot(&report);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<title>").count(), 2);
        assert!(svg.contains("a&lt;b int8 2t") && !svg.contains("a<b"));
        assert!(!svg.contains("NaN") && !svg.contains("=\"inf"));
        assert_eq!(tick_step(13.0), 5.0);
        assert_eq!(tick_step(0.7), 0.2);
    }
}
