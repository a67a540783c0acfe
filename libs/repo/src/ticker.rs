//! A background thread that runs a closure periodically and stops at once when dropped
//! (no sleeping out the rest of a period), used for lease refreshes, index watching and
//! progress reports.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

pub struct Ticker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Calls `tick` every `period` on a thread called `name` until the ticker is dropped.
    pub fn every(period: Duration, name: &str, mut tick: impl FnMut() + Send + 'static) -> Ticker {
        let (stop, stopped) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    tick();
                }
            })
            .expect("spawn ticker thread");
        Ticker { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn ticks_and_stops_promptly() {
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        let ticker = Ticker::every(Duration::from_millis(10), "test-ticker", move || {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        drop(ticker);
        assert!(started.elapsed() < Duration::from_millis(50), "drop waited {:?}", started.elapsed());
        assert!(count.load(Ordering::Relaxed) >= 3);
    }
}
