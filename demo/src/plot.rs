//! A hand-written SVG line plot of in-flight Backups over time, one line per run. No fonts
//! or drawing libraries needed: text is left to the viewer's default sans-serif.

use std::fmt::Write as _;

use crate::report::Sample;

/// One line of the plot.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub samples: &'a [Sample],
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// A "nice" tick step (1, 2 or 5 × 10^k) giving at most about `ticks` intervals up to `max`.
pub fn nice_step(max: f64, ticks: u32) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let raw = max / f64::from(ticks.max(1));
    let magnitude = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * magnitude >= raw {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document.
pub fn in_flight_svg(title: &str, series: &[Series<'_>]) -> String {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.samples
                .iter()
                .map(|p| (p.t, p.in_flight as f64))
                .collect()
        })
        .collect();
    let lines: Vec<Line<'_>> = series
        .iter()
        .zip(&points)
        .map(|(s, p)| Line {
            label: s.label,
            color: s.color,
            points: p,
        })
        .collect();
    lines_svg(
        &Chart {
            title,
            x_label: "seconds since the storm started",
            y_label: "in-flight Backups (not Completed/Error)",
        },
        &lines,
    )
}

/// One line of a [`lines_svg`] plot: `(x, y)` points.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: &'a [(f64, f64)],
}

/// The texts around a [`lines_svg`] plot.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

/// A line plot of `lines` from x = 0 and y = 0, each line's legend entry with its peak.
pub fn lines_svg(chart: &Chart<'_>, lines: &[Line<'_>]) -> String {
    let max_t = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15; // headroom for the legend
    let x_step = nice_step(max_t, 10);
    let y_step = nice_step(max_y, 8);
    let x_top = (max_t / x_step).ceil() * x_step;
    let y_top = (max_y / y_step).ceil() * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / x_top * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_top * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="17" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(chart.title)
    );
    // Grid and ticks.
    let mut v = 0.0;
    while v <= y_top + y_step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            yy + 4.0,
            v
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= x_top + x_step / 2.0 {
        let xx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            t
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(chart.y_label)
    );
    lines_and_legend(&mut svg, lines, &x, &y);
    svg.push_str("</svg>\n");
    svg
}

/// Each series' polyline, and its legend entry with its peak.
fn lines_and_legend(
    svg: &mut String,
    series: &[Line<'_>],
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
) {
    for (i, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let points: Vec<String> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2.5" points="{}"/>"#,
                escape(s.color),
                points.join(" ")
            );
        }
        let ly = TOP + 18.0 + 20.0 * i as f64;
        let lx = LEFT + 15.0;
        let peak = s
            .points
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{} (peak {peak})</text>"#,
            lx + 25.0,
            escape(s.color),
            lx + 32.0,
            ly + 4.0,
            escape(s.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert_eq!(nice_step(4422.0, 8), 1000.0);
        assert_eq!(nice_step(60.0, 10), 10.0);
        assert_eq!(nice_step(7.0, 8), 1.0);
        assert_eq!(nice_step(0.0, 8), 1.0);
        assert_eq!(nice_step(f64::NAN, 8), 1.0);
        assert_eq!(nice_step(35.0, 8), 5.0);
    }

    #[test]
    fn svg_has_a_line_per_series_and_escapes_labels() {
        let a = [
            Sample {
                t: 0.0,
                in_flight: 0,
            },
            Sample {
                t: 10.0,
                in_flight: 4000,
            },
        ];
        let b = [Sample {
            t: 5.0,
            in_flight: 40,
        }];
        let svg = in_flight_svg(
            "storm <test>",
            &[
                Series {
                    label: "A & co",
                    color: "#d62728",
                    samples: &a,
                },
                Series {
                    label: "B",
                    color: "#2ca02c",
                    samples: &b,
                },
                Series {
                    label: "empty",
                    color: "#000",
                    samples: &[],
                },
            ],
        );
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("storm &lt;test&gt;"));
        assert!(svg.contains("A &amp; co (peak 4000)"));
        assert!(svg.contains("B (peak 40)"));
        // The top of the y axis is a multiple of the step above the peak.
        assert!(svg.contains(">4000</text>"));
        assert!(!svg.contains("NaN"));
    }
}
