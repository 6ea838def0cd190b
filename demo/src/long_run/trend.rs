//! Is a sampled series flat after warm-up? Least squares over the judged part (the run's second
//! half), the slope's 95 % confidence interval (Student's t on the residuals), and the drift the
//! slope implies over a horizon: an hour, or the judged half itself when the run is shorter than
//! an hour (extrapolating a minute's warm-up wobble to an hour says nothing). A series is flat
//! when the interval contains 0 (no trend the samples can tell from noise) or when the implied
//! drift over the horizon is within the series' stated bound (a trend too small to matter).

use serde::{Deserialize, Serialize};

/// How much a series may drift over the horizon (an hour) and still be called flat.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriftBound {
    /// Share of the judged part's mean level (0.05 = 5 %).
    pub relative: f64,
    /// In the series' unit; the bound is the larger of the two.
    pub absolute: f64,
}

impl DriftBound {
    pub fn of_level(&self, mean: f64) -> f64 {
        (self.relative * mean.abs()).max(self.absolute)
    }
}

/// The verdict on one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Samples judged.
    pub samples: usize,
    pub mean: f64,
    /// Least-squares slope, in the series' unit per hour.
    pub slope_per_hour: f64,
    /// Half width of the slope's 95 % confidence interval, per hour.
    pub ci95_per_hour: f64,
    /// The horizon the drift is taken over, in hours.
    pub horizon_hours: f64,
    /// The drift the slope implies over the horizon.
    pub drift: f64,
    /// The drift allowed over the horizon (see [`DriftBound`]).
    pub bound: f64,
    pub flat: bool,
    /// Why it is (or is not) flat, in words.
    pub why: String,
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (table to 30, then
/// 1.96 + 2.5/df, within 0.3 % of the exact value).
pub fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + 2.5 / df as f64,
    }
}

/// `(slope, intercept, standard error of the slope)` of the least-squares line through
/// `points` (`x` in seconds); `None` with fewer than 3 points or all `x` equal.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    let se = (sse / (nf - 2.0) / sxx).sqrt();
    Some((slope, intercept, se))
}

/// The points of the judged part: those at or after half of the last sample's time.
pub fn second_half(points: &[(f64, f64)]) -> &[(f64, f64)] {
    let end = points.last().map_or(0.0, |p| p.0);
    let from = points.partition_point(|p| p.0 < end / 2.0);
    &points[from..]
}

/// The horizon for a run of `total_seconds` whose judged half spans `judged_seconds`: an hour,
/// or the judged span when the run is shorter than an hour.
pub fn horizon_hours(total_seconds: f64, judged_seconds: f64) -> f64 {
    if total_seconds >= 3600.0 {
        1.0
    } else {
        (judged_seconds / 3600.0).max(0.0)
    }
}

/// Judges `points` (`x` in seconds, sorted) over their second half against `bound`, the drift
/// taken over `horizon_hours`.
pub fn judge(points: &[(f64, f64)], bound: DriftBound, horizon_hours: f64) -> Trend {
    let judged = second_half(points);
    let n = judged.len();
    let mean = if n == 0 {
        0.0
    } else {
        judged.iter().map(|p| p.1).sum::<f64>() / n as f64
    };
    let allowed = bound.of_level(mean);
    let Some((slope, _, se)) = least_squares(judged) else {
        return Trend {
            samples: n,
            mean,
            slope_per_hour: 0.0,
            // Finite, so that the report stays valid JSON; `flat` and `why` say it was not judged.
            ci95_per_hour: 0.0,
            horizon_hours,
            drift: 0.0,
            bound: allowed,
            flat: false,
            why: format!("not judged: {n} samples in the second half (3 needed)"),
        };
    };
    let slope_per_hour = slope * 3600.0;
    let ci95_per_hour = t95(n - 2) * se * 3600.0;
    let drift = slope_per_hour * horizon_hours;
    let over = if horizon_hours >= 1.0 {
        "an hour".to_string()
    } else {
        format!("the judged {:.0} s", horizon_hours * 3600.0)
    };
    let (flat, why) = if slope_per_hour.abs() <= ci95_per_hour {
        (true, "95 % interval of the slope contains 0".to_string())
    } else if drift.abs() <= allowed {
        (
            true,
            format!("drift {drift:+.3} over {over} within the bound {allowed:.3}"),
        )
    } else if drift < 0.0 && horizon_hours < 1.0 {
        // A run shorter than an hour judges half of it: a pool draining the last wave's
        // connections falls through the whole window. A fall is no leak; the hour-long run
        // still judges both directions.
        (
            true,
            format!(
                "falling ({drift:+.3} over {over}): a run shorter than an hour judges growth only"
            ),
        )
    } else {
        (
            false,
            format!(
                "slope {slope_per_hour:+.3}/h ± {ci95_per_hour:.3} excludes 0 and its drift {drift:+.3} over {over} exceeds the bound {allowed:.3}"
            ),
        )
    };
    Trend {
        samples: n,
        mean,
        slope_per_hour,
        ci95_per_hour,
        horizon_hours,
        drift,
        bound: allowed,
        flat,
        why,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_short_run_judges_growth_only_and_an_hour_both_directions() {
        let falling: Vec<(f64, f64)> = (0..20)
            .map(|i| (f64::from(i), 100.0 - f64::from(i)))
            .collect();
        let bound = super::DriftBound {
            relative: 0.0,
            absolute: 1.0,
        };
        assert!(super::judge(&falling, bound, 0.1).flat);
        assert!(!super::judge(&falling, bound, 1.0).flat);
        let rising: Vec<(f64, f64)> = falling.iter().map(|&(t, v)| (t, 200.0 - v)).collect();
        assert!(!super::judge(&rising, bound, 0.1).flat);
    }

    use super::*;

    const BOUND: DriftBound = DriftBound {
        relative: 0.05,
        absolute: 2.0,
    };

    fn series(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 10.0, f(i as f64 * 10.0)))
            .collect()
    }

    #[test]
    fn least_squares_finds_an_exact_line() {
        let (slope, intercept, se) = least_squares(&series(10, |t| 3.0 + 0.5 * t)).unwrap();
        assert!((slope - 0.5).abs() < 1e-12);
        assert!((intercept - 3.0).abs() < 1e-9);
        assert!(se < 1e-9);
        assert_eq!(least_squares(&series(2, |t| t)), None);
        assert_eq!(least_squares(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn a_constant_series_is_flat() {
        let t = judge(&series(360, |_| 100.0), BOUND, 1.0);
        assert!(t.flat, "{t:?}");
        assert_eq!(t.slope_per_hour, 0.0);
        assert_eq!(t.samples, 180);
    }

    #[test]
    fn a_leak_after_warm_up_is_caught() {
        // 1 unit per minute = 60 per hour on a level of 100: far over 5 % and 2.
        let t = judge(&series(360, |t| 100.0 + t / 60.0), BOUND, 1.0);
        assert!(!t.flat, "{t:?}");
        assert!((t.slope_per_hour - 60.0).abs() < 1e-6);
        assert!(t.why.contains("excludes 0"));
    }

    #[test]
    fn warm_up_growth_is_not_judged() {
        // Grows for the first half, then stays.
        let t = judge(&series(360, |t| (t.min(1790.0)) / 10.0), BOUND, 1.0);
        assert!(t.flat, "{t:?}");
    }

    #[test]
    fn noise_without_trend_is_flat_and_a_tiny_trend_is_within_the_bound() {
        let noisy = series(360, |t| {
            50.0 + if (t as u64 / 10).is_multiple_of(2) {
                5.0
            } else {
                -5.0
            }
        });
        assert!(judge(&noisy, BOUND, 1.0).flat);
        // 1 per hour on a level of 50 (bound: max(2.5, 2)): real but within the bound.
        let tiny = judge(&series(360, |t| 50.0 + t / 3600.0), BOUND, 1.0);
        assert!(tiny.flat, "{tiny:?}");
        assert!(tiny.why.contains("within the bound"));
    }

    #[test]
    fn too_few_samples_are_not_called_flat() {
        let t = judge(&series(3, |_| 1.0), BOUND, 1.0);
        assert!(!t.flat);
        assert!(t.why.contains("not judged"));
    }

    #[test]
    fn short_runs_take_the_drift_over_their_judged_half() {
        assert_eq!(horizon_hours(3600.0, 1800.0), 1.0);
        assert_eq!(horizon_hours(120.0, 60.0), 60.0 / 3600.0);
        // +3 over the judged minute of a 2-minute run: within an absolute bound of 4 over that
        // minute, though it would be 180 per hour.
        let step = series(13, |t| if t >= 80.0 { 24.0 } else { 21.0 });
        let bound = DriftBound {
            relative: 0.0,
            absolute: 4.0,
        };
        assert!(judge(&step, bound, horizon_hours(120.0, 60.0)).flat);
        assert!(!judge(&step, bound, 1.0).flat);
        // A leak of 1 per 10 s over the judged minute (+6) is caught on the short horizon too.
        let leak = series(13, |t| t / 10.0);
        let t = judge(&leak, bound, horizon_hours(120.0, 60.0));
        assert!(!t.flat, "{t:?}");
        assert!(t.why.contains("over the judged 60 s"), "{}", t.why);
    }

    #[test]
    fn t_quantiles() {
        assert_eq!(t95(1), 12.706);
        assert_eq!(t95(30), 2.042);
        assert!((t95(120) - 1.980).abs() < 0.005);
        assert!(t95(0).is_infinite());
    }
}
