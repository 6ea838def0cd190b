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

/// One line of a [`chart`]: `(x, y)` points.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (a second kind of line on the same chart).
    pub dashed: bool,
}

/// The in-flight SVG document.
pub fn in_flight_svg(title: &str, series: &[Series<'_>]) -> String {
    let lines: Vec<Line<'_>> = series
        .iter()
        .map(|s| Line {
            label: s.label,
            color: s.color,
            points: s
                .samples
                .iter()
                .map(|p| (p.t, p.in_flight as f64))
                .collect(),
            dashed: false,
        })
        .collect();
    let mut svg = open_svg(HEIGHT);
    svg.push_str(&chart(
        0.0,
        title,
        (
            "seconds since the storm started",
            "in-flight Backups (not Completed/Error)",
        ),
        &lines,
    ));
    svg.push_str("</svg>\n");
    svg
}

/// The texts around a [`lines_svg`] plot.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

/// A one-chart SVG document of `lines` from x = 0 and y = 0, each line's legend entry with its
/// peak.
pub fn lines_svg(texts: &Chart<'_>, lines: &[Line<'_>]) -> String {
    let mut svg = open_svg(HEIGHT);
    svg.push_str(&chart(
        0.0,
        texts.title,
        (texts.x_label, texts.y_label),
        lines,
    ));
    svg.push_str("</svg>\n");
    svg
}

fn open_svg(height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    svg
}

/// The slow-leak runs' SVG document: the leaky manager's connections (top) and RSS (bottom)
/// over time, one line per run, and the stretches the webhook saw the node `leaking` shaded.
pub fn slow_leak_svg(runs: &[crate::report::SlowLeakRun]) -> String {
    let colors = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e"];
    let node = runs.first().map_or("", |r| r.leaky_node.as_str());
    let lines = |value: &dyn Fn(&crate::report::ManagerSample) -> f64| -> Vec<Line<'_>> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| Line {
                label: &r.label,
                color: colors[i % colors.len()],
                points: r.samples.iter().map(|s| (s.t, value(s))).collect(),
                dashed: false,
            })
            .collect()
    };
    let mut svg = open_svg(2.0 * HEIGHT);
    let connections = lines(&|s| s.connections as f64);
    let rss = lines(&|s| s.rss_mib);
    let panels = [
        (
            0.0,
            format!("{node}'s longhorn-manager: connections to instance managers"),
            "connections (agent's monitor)",
            &connections,
        ),
        (
            HEIGHT,
            format!("{node}'s longhorn-manager: resident memory"),
            "RSS, MiB (agent's monitor)",
            &rss,
        ),
    ];
    for (top, title, y_label, lines) in panels {
        svg.push_str(&chart(
            top,
            &title,
            (
                "seconds since the storm started (shaded: the webhook saw it leaking, loop on)",
                y_label,
            ),
            lines,
        ));
    }
    // Shade the enforcing run's protected stretches on both panels.
    if let Some(on) = runs.iter().find(|r| r.mode == "enforce") {
        let max_t = runs
            .iter()
            .flat_map(|r| r.samples.iter().map(|s| s.t))
            .fold(1.0f64, f64::max);
        let x_top = (max_t / nice_step(max_t, 10)).ceil() * nice_step(max_t, 10);
        let plot_w = WIDTH - LEFT - RIGHT;
        for top in [0.0, HEIGHT] {
            for (from, to) in &on.leaking_spans {
                let _ = writeln!(
                    svg,
                    r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#2ca02c" fill-opacity="0.12"/>"##,
                    LEFT + from / x_top * plot_w,
                    top + TOP,
                    ((to - from) / x_top * plot_w).max(1.0),
                    HEIGHT - TOP - BOTTOM
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A chart `HEIGHT` tall whose top edge is at `top`: title, axes and grid, the lines and their
/// legend.
pub fn chart(
    top: f64,
    title: &str,
    (x_label, y_label): (&str, &str),
    lines: &[Line<'_>],
) -> String {
    let max_t = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = lines.iter().map(peak).fold(1.0f64, f64::max) * 1.15; // headroom for the legend
    let x_step = nice_step(max_t, 10);
    let y_step = nice_step(max_y, 8);
    let x_top = (max_t / x_step).ceil() * x_step;
    let y_top = (max_y / y_step).ceil() * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / x_top * plot_w;
    let y = |v: f64| top + TOP + plot_h - v / y_top * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="17" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        top + 28.0,
        escape(title)
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
            r##"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + TOP,
            top + TOP + plot_h,
            top + TOP + plot_h + 18.0,
            t
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##,
        top + TOP
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        top + HEIGHT - 15.0,
        escape(x_label)
    );
    let mid = top + TOP + plot_h / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 18 {mid:.1})">{}</text>"#,
        escape(y_label)
    );
    lines_and_legend(&mut svg, top, lines, &x, &y);
    svg
}

/// The highest finite y of `line` (0 when it has none).
fn peak(line: &Line<'_>) -> f64 {
    line.points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
}

/// Each line's polyline, and its legend entry with its peak.
fn lines_and_legend(
    svg: &mut String,
    top: f64,
    lines: &[Line<'_>],
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
) {
    for (i, s) in lines.iter().enumerate() {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if !s.points.is_empty() {
            let points: Vec<String> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2.5"{dash} points="{}"/>"#,
                escape(s.color),
                points.join(" ")
            );
        }
        let ly = top + TOP + 18.0 + 20.0 * i as f64;
        let lx = LEFT + 15.0;
        let peak = peak(s);
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"{dash}/><text x="{}" y="{}">{} (peak {peak:.0})</text>"#,
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

    #[test]
    fn slow_leak_svg_has_both_panels_both_runs_and_the_protected_stretches() {
        use crate::report::{ManagerSample, SlowLeakRun};
        let run = |mode: &str, spans: Vec<(f64, f64)>| SlowLeakRun {
            label: format!("C: loop {mode}"),
            mode: mode.into(),
            leaky_node: "node-1".into(),
            leaking_spans: spans,
            samples: (0..10)
                .map(|i| ManagerSample {
                    t: f64::from(i),
                    connections: 3 * i as u64,
                    rss_mib: 20.0 + f64::from(i),
                    ..ManagerSample::default()
                })
                .collect(),
            ..SlowLeakRun::default()
        };
        let svg = slow_leak_svg(&[
            run("off", vec![(4.0, 9.0)]),
            run("enforce", vec![(5.0, 7.0)]),
        ]);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "two panels, two runs");
        assert!(
            svg.contains("node-1&#39;s") || svg.contains("node-1's longhorn-manager: connections")
        );
        assert!(svg.contains("C: loop enforce (peak 27)"), "{svg}");
        assert!(svg.contains("C: loop off (peak 29)"), "RSS peak: {svg}");
        // Only the enforcing run's stretch is shaded, once per panel.
        assert_eq!(svg.matches("fill-opacity").count(), 2);
        assert!(!svg.contains("NaN"));
    }
}
