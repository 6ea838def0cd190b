//! The progress display of a run on stderr.

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::inflight;
use crate::simulated_controller::SimulatedController;
use crate::storm::StormProgress;

/// The progress display on stderr: a bar on a terminal, a line every 5 s otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    last_line: Mutex<Option<Instant>>,
}

impl Progress {
    pub(crate) fn start(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} sent  {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            last_line: Mutex::new(None),
        }
    }

    fn message(
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) -> String {
        format!(
            "admitted {} denied {} | in flight {} (peak {}) | leaked connections {}",
            progress.admitted.load(Ordering::Relaxed),
            progress.denied.load(Ordering::Relaxed),
            tracker.in_flight(),
            tracker.peak(),
            controller.leaked_connections()
        )
    }

    pub(crate) fn update(
        &self,
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) {
        let msg = Self::message(progress, tracker, controller);
        match &self.bar {
            Some(bar) => {
                bar.set_position(progress.sent.load(Ordering::Relaxed));
                bar.set_message(msg);
            }
            None => {
                let mut last = self
                    .last_line
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    *last = Some(Instant::now());
                    eprintln!(
                        "[demo] {}: sent {} | {msg}",
                        self.label,
                        progress.sent.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }

    pub(crate) fn finish(
        &self,
        progress: &StormProgress,
        tracker: &inflight::InFlightTracker,
        controller: &SimulatedController,
    ) {
        let msg = Self::message(progress, tracker, controller);
        match &self.bar {
            Some(bar) => {
                bar.set_position(progress.sent.load(Ordering::Relaxed));
                bar.finish_with_message(msg);
            }
            None => eprintln!(
                "[demo] {}: done, sent {} | {msg}",
                self.label,
                progress.sent.load(Ordering::Relaxed)
            ),
        }
    }
}
