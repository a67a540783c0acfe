//! Live progress: a bar on a terminal (bytes, files, rate, ETA), JSON lines with `--json`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arca_repo::Progress;
use arca_repo::copy::CopyProgress;
use arca_repo::restore::RestoreProgress;
use arca_repo::ticker::Ticker;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Stops reporting (and clears the bar) when dropped.
pub struct Reporter {
    ticker: Option<Ticker>,
    bar: Option<ProgressBar>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.ticker.take());
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
            .expect("valid template"),
    );
    bar
}

/// Shows backup progress: JSON lines on stdout with `json`, a bar on stderr unless `quiet`.
pub fn show_backup(json: bool, quiet: bool, p: Arc<Progress>) -> Option<Reporter> {
    let started = Instant::now();
    if json {
        let ticker = Ticker::every(Duration::from_secs(1), "arca-progress", move || {
            let done = p.bytes_done.load(Ordering::Relaxed);
            let total = p.bytes_total.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            let eta = (rate > 0.0 && p.walk_finished.load(Ordering::Relaxed))
                .then(|| (total.saturating_sub(done) as f64 / rate).round() as u64);
            println!(
                "{}",
                serde_json::json!({
                    "type": "progress",
                    "files_done": p.files_done.load(Ordering::Relaxed),
                    "files_total": p.files_total.load(Ordering::Relaxed),
                    "bytes_done": done,
                    "bytes_total": total,
                    "bytes_per_second": rate.round() as u64,
                    "eta_seconds": eta,
                })
            );
        });
        return Some(Reporter { ticker: Some(ticker), bar: None });
    }
    if quiet {
        return None;
    }
    let bar = bar();
    let shown = bar.clone();
    let ticker = Ticker::every(Duration::from_millis(200), "arca-progress", move || {
        shown.set_length(p.bytes_total.load(Ordering::Relaxed));
        shown.set_position(p.bytes_done.load(Ordering::Relaxed));
        shown.set_message(format!(
            "{}/{} files",
            p.files_done.load(Ordering::Relaxed),
            p.files_total.load(Ordering::Relaxed)
        ));
    });
    Some(Reporter { ticker: Some(ticker), bar: Some(bar) })
}

/// Shows restore progress on a terminal.
pub fn show_restore(quiet: bool, p: Arc<RestoreProgress>) -> Option<Reporter> {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = bar();
    let shown = bar.clone();
    let ticker = Ticker::every(Duration::from_millis(200), "arca-progress", move || {
        shown.set_length(p.bytes_total.load(Ordering::Relaxed));
        shown.set_position(p.bytes_done.load(Ordering::Relaxed));
    });
    Some(Reporter { ticker: Some(ticker), bar: Some(bar) })
}

/// Shows copy progress: JSON lines on stdout with `json`, a bar on stderr unless `quiet`.
pub fn show_copy(json: bool, quiet: bool, p: Arc<CopyProgress>) -> Option<Reporter> {
    if json {
        let ticker = Ticker::every(Duration::from_secs(1), "arca-progress", move || {
            println!(
                "{}",
                serde_json::json!({
                    "type": "progress",
                    "snapshots_done": p.snapshots_done.load(Ordering::Relaxed),
                    "snapshots_total": p.snapshots_total.load(Ordering::Relaxed),
                    "blobs_done": p.blobs_done.load(Ordering::Relaxed),
                    "blobs_total": p.blobs_total.load(Ordering::Relaxed),
                    "bytes_done": p.bytes_done.load(Ordering::Relaxed),
                    "bytes_total": p.bytes_total.load(Ordering::Relaxed),
                })
            );
        });
        return Some(Reporter { ticker: Some(ticker), bar: None });
    }
    if quiet {
        return None;
    }
    let bar = bar();
    let shown = bar.clone();
    let ticker = Ticker::every(Duration::from_millis(200), "arca-progress", move || {
        shown.set_length(p.bytes_total.load(Ordering::Relaxed));
        shown.set_position(p.bytes_done.load(Ordering::Relaxed));
        shown.set_message(format!(
            "{}/{} blobs",
            p.blobs_done.load(Ordering::Relaxed),
            p.blobs_total.load(Ordering::Relaxed)
        ));
    });
    Some(Reporter { ticker: Some(ticker), bar: Some(bar) })
}
