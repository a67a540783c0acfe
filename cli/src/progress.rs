//! Live progress: a bar on a terminal (bytes, files, rate, ETA), JSON lines with `--json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_repo::Progress;
use arca_repo::restore::RestoreProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Stops the reporter thread when dropped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn(tick: Duration, mut on_tick: impl FnMut(bool) + Send + 'static) -> Reporter {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut last = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= tick {
                last = Instant::now();
                on_tick(false);
            }
        }
        on_tick(true);
    });
    Reporter { stop, thread: Some(thread) }
}

fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
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
        return Some(spawn(Duration::from_secs(1), move |last| {
            if last {
                return;
            }
            let done = p.bytes_done.load(Ordering::Relaxed);
            let total = p.bytes_total.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            let eta = if rate > 0.0 && p.walk_finished.load(Ordering::Relaxed) {
                Some(((total.saturating_sub(done)) as f64 / rate).round() as u64)
            } else {
                None
            };
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
        }));
    }
    if quiet {
        return None;
    }
    let bar = bar(0);
    Some(spawn(Duration::from_millis(200), move |last| {
        if last {
            bar.finish_and_clear();
            return;
        }
        bar.set_length(p.bytes_total.load(Ordering::Relaxed));
        bar.set_position(p.bytes_done.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{}/{} files",
            p.files_done.load(Ordering::Relaxed),
            p.files_total.load(Ordering::Relaxed)
        ));
    }))
}

/// Shows restore progress on a terminal.
pub fn show_restore(quiet: bool, p: Arc<RestoreProgress>) -> Option<Reporter> {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = bar(0);
    Some(spawn(Duration::from_millis(200), move |last| {
        if last {
            bar.finish_and_clear();
            return;
        }
        bar.set_length(p.bytes_total.load(Ordering::Relaxed));
        bar.set_position(p.bytes_done.load(Ordering::Relaxed));
    }))
}
