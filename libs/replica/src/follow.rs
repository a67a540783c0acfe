//! Following a source: a full sync first, then the paths file-system notifications name,
//! gathered for a short debounce so a burst of writes becomes one pass, and a full rescan
//! now and then (and whenever notifications were lost) as the safety net.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::mirror::{Mirror, SyncStats};

/// How to follow.
#[derive(Clone, Debug)]
pub struct FollowSettings {
    /// After a notification, wait this long for more before syncing.
    pub debounce: Duration,
    /// A pass never waits longer than this for a burst to end — nor shorter than the previous
    /// pass took: so a large file that keeps changing (a disk image, a growing log), read
    /// whole by every pass, is read at most about half the time.
    pub max_batch_wait: Duration,
    /// A full rescan at least this often.
    pub rescan_every: Duration,
}

impl Default for FollowSettings {
    fn default() -> Self {
        FollowSettings {
            debounce: Duration::from_millis(5),
            max_batch_wait: Duration::from_millis(20),
            rescan_every: Duration::from_secs(300),
        }
    }
}

/// One sync pass.
#[derive(Clone, Debug)]
pub struct Pass {
    pub stats: SyncStats,
    /// When it was durable.
    pub finished: SystemTime,
    /// A full walk (the first pass, a rescan, or after lost notifications).
    pub full: bool,
}

impl Pass {
    /// How long the oldest change it carried waited to become durable in the mirror.
    pub fn lag(&self) -> Option<Duration> {
        self.stats.oldest_change.map(|changed| self.finished.duration_since(changed).unwrap_or_default())
    }
}

/// How far behind its source a follower is right now, readable from another thread while a
/// pass runs (a watchdog raising an alert when a pass takes longer than the RPO allows).
#[derive(Debug, Default)]
pub struct Behind {
    since: Mutex<Option<SystemTime>>,
}

impl Behind {
    /// How long the oldest change not yet in the mirror has waited; zero when in step.
    pub fn lag(&self) -> Duration {
        self.since
            .lock()
            .expect("lag state")
            .map_or(Duration::ZERO, |since| SystemTime::now().duration_since(since).unwrap_or_default())
    }

    /// A change at `at` is waiting (the oldest one counts).
    pub fn changed_at(&self, at: SystemTime) {
        self.since.lock().expect("lag state").get_or_insert(at);
    }

    /// Everything noted so far is durable.
    pub fn in_step(&self) {
        *self.since.lock().expect("lag state") = None;
    }
}

/// The longest `on_pass` waits to be called.
pub const IDLE_TICK: Duration = Duration::from_millis(100);

fn is_read(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

fn io_error(e: notify::Error) -> io::Error {
    io::Error::other(format!("watch for changes: {e}"))
}

/// Something kept in step with a source folder or file: a [`Mirror`], or anything else that
/// can take the whole source or a list of changed paths (a backup into a repository).
pub trait Replicator {
    fn source(&self) -> &Path;
    fn sync_all(&self) -> io::Result<SyncStats>;
    fn sync_paths(&self, paths: &mut dyn Iterator<Item = &Path>) -> io::Result<SyncStats>;

    /// Whether a pass costs about as much as the files it was told about (a large file read
    /// whole): then a batch lasts at least as long as the previous pass, so a file that keeps
    /// changing is read at most half the time. One whose passes cost only what changed says no.
    fn hold_between_passes(&self) -> bool {
        true
    }

    /// How often to ask [`Replicator::poll`] for changes when notifications are quiet (for
    /// writers the file system does not report, such as qemu's native AIO); `None`: never.
    fn poll_every(&self) -> Option<Duration> {
        None
    }

    /// Whether the source changed since the last pass, asked every [`Replicator::poll_every`].
    fn poll(&self) -> io::Result<bool> {
        Ok(false)
    }
}

impl Replicator for Mirror {
    fn source(&self) -> &Path {
        Mirror::source(self)
    }

    fn sync_all(&self) -> io::Result<SyncStats> {
        Mirror::sync_all(self)
    }

    fn sync_paths(&self, paths: &mut dyn Iterator<Item = &Path>) -> io::Result<SyncStats> {
        Mirror::sync_paths(self, paths)
    }
}

/// Follows `mirror`'s source until `stop` is set or `on_pass` returns `false`. `on_pass` is
/// called after the first full sync, after every pass, after every rescan, and at least every
/// [`IDLE_TICK`] while nothing happens (with an empty pass), so the caller can act on time
/// (record a recovery point once changes have settled). `behind` tells how long notified
/// changes have waited (not counting the first sync and rescans, which bring no news).
/// Blocking: run it on a thread of its own.
pub fn follow(
    mirror: &dyn Replicator,
    settings: &FollowSettings,
    stop: &AtomicBool,
    behind: &Behind,
    mut on_pass: impl FnMut(&Pass) -> bool,
) -> io::Result<()> {
    let (sender, events) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = sender.send(event);
    })
    .map_err(io_error)?;
    let source = mirror.source().to_path_buf();
    let single_file = !std::fs::symlink_metadata(&source)?.is_dir();
    // A single file is watched through its folder, so a file replaced by a rename is seen.
    let watched = if single_file { source.parent().unwrap_or(Path::new("/")).to_path_buf() } else { source.clone() };
    let mode = if single_file { RecursiveMode::NonRecursive } else { RecursiveMode::Recursive };
    watcher.watch(&watched, mode).map_err(io_error)?;

    let pass = |full: bool, paths: &BTreeSet<PathBuf>| -> io::Result<Pass> {
        let stats =
            if full { mirror.sync_all()? } else { mirror.sync_paths(&mut paths.iter().map(PathBuf::as_path))? };
        Ok(Pass { stats, finished: SystemTime::now(), full })
    };
    if !on_pass(&pass(true, &BTreeSet::new())?) {
        return Ok(());
    }
    let mut next_rescan = Instant::now() + settings.rescan_every;
    let mut last_pass = Duration::ZERO;
    let poll_every = mirror.poll_every();
    let mut last_poll = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let wait =
            next_rescan.saturating_duration_since(Instant::now()).min(poll_every.unwrap_or(IDLE_TICK).min(IDLE_TICK));
        let mut paths = BTreeSet::new();
        let mut full = false;
        // Asked on time even while notifications keep coming (reads of the source, say), which
        // would otherwise starve it.
        let polled = match poll_every {
            Some(every) if last_poll.elapsed() >= every => {
                last_poll = Instant::now();
                mirror.poll()?
            }
            _ => false,
        };
        if polled {
            behind.changed_at(SystemTime::now());
            // The pass takes what notifications told too; lost ones still mean a rescan.
            for event in events.try_iter() {
                if event.is_err() || event.is_ok_and(|e| e.need_rescan()) {
                    full = true;
                }
            }
        } else {
            match events.recv_timeout(wait) {
                Ok(first) => {
                    let started = Instant::now();
                    behind.changed_at(SystemTime::now());
                    let mut add = |event: notify::Result<notify::Event>| match event {
                        Ok(event) if event.need_rescan() => full = true,
                        // Opening or reading a file changes nothing; our own reads of the source
                        // would otherwise start another pass of the same files, forever.
                        Ok(event) if is_read(&event.kind) => {}
                        Ok(event) => paths.extend(event.paths.into_iter().filter(|p| !single_file || *p == source)),
                        Err(e) => {
                            tracing::warn!(error = %e, "file-system notifications failed; rescanning");
                            full = true;
                        }
                    };
                    add(first);
                    let window = settings.max_batch_wait.max(last_pass);
                    while let Some(left) = window.checked_sub(started.elapsed()) {
                        let held = last_pass.saturating_sub(started.elapsed());
                        let wait = if held.is_zero() { settings.debounce.min(left) } else { held };
                        match events.recv_timeout(wait) {
                            Ok(event) => add(event),
                            Err(mpsc::RecvTimeoutError::Timeout) if !held.is_zero() => {}
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                return Err(io::Error::other("the watcher stopped"));
                            }
                        }
                    }
                    if paths.is_empty() && !full {
                        behind.in_step();
                        continue;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= next_rescan => full = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let idle = Pass { stats: SyncStats::default(), finished: SystemTime::now(), full: false };
                    if !on_pass(&idle) {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(io::Error::other("the watcher stopped")),
            }
        }
        if full {
            next_rescan = Instant::now() + settings.rescan_every;
        }
        let started = Instant::now();
        let done = pass(full, &paths)?;
        // The pass took everything so far: the next poll is due a period after it.
        last_poll = Instant::now();
        if !full && mirror.hold_between_passes() {
            last_pass = started.elapsed();
        }
        behind.in_step();
        if !on_pass(&done) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn changes_reach_the_mirror_soon_and_each_pass_reports_its_lag() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/first.txt"), b"first").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (passes, passed) = mpsc::channel();
        let follower = {
            let (source, dest, stop) = (source.clone(), dest.clone(), stop.clone());
            std::thread::spawn(move || {
                let mirror = Mirror::new(source, dest);
                follow(&mirror, &FollowSettings::default(), &stop, &Behind::default(), |pass| {
                    passes.send(pass.clone()).is_ok()
                })
            })
        };
        let first = passed.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(first.full);
        assert_eq!(std::fs::read(dest.join("sub/first.txt")).unwrap(), b"first");

        std::fs::write(source.join("sub/second.txt"), b"second").unwrap();
        std::fs::create_dir_all(source.join("new/deeper")).unwrap();
        std::fs::write(source.join("new/deeper/third.txt"), b"third").unwrap();
        std::fs::remove_file(source.join("sub/first.txt")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(dest.join("new/deeper/third.txt").exists()
            && dest.join("sub/second.txt").exists()
            && !dest.join("sub/first.txt").exists())
        {
            let pass = passed.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a pass");
            assert!(!pass.full, "notifications carry these changes, not a rescan");
            assert_eq!(pass.lag().is_some(), pass.stats.changed(), "a pass that changed something has a lag");
        }
        assert_eq!(std::fs::read(dest.join("new/deeper/third.txt")).unwrap(), b"third");
        // The mirror's own reads of the source are no change: the source stays quiet.
        // (Passes that ended before the mirror was seen in step may still be queued.)
        let in_step = SystemTime::now();
        let quiet = Instant::now() + Duration::from_millis(800);
        while let Ok(pass) = passed.recv_timeout(quiet.saturating_duration_since(Instant::now())) {
            assert!(pass.finished <= in_step || !pass.stats.changed(), "a pass after the source went quiet: {pass:?}");
        }
        stop.store(true, Ordering::Relaxed);
        follower.join().unwrap().unwrap();
    }

    /// A replicator whose passes over notified paths take as long as the test wants.
    struct Slow {
        source: PathBuf,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Replicator for Slow {
        fn source(&self) -> &Path {
            &self.source
        }

        fn sync_all(&self) -> io::Result<SyncStats> {
            Ok(SyncStats::default())
        }

        fn sync_paths(&self, _: &mut dyn Iterator<Item = &Path>) -> io::Result<SyncStats> {
            self.release.lock().unwrap().recv().ok();
            Ok(SyncStats { files: 1, ..SyncStats::default() })
        }
    }

    #[test]
    fn how_far_behind_grows_while_a_pass_runs_and_is_zero_once_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let (release, released) = mpsc::channel();
        let slow = Slow { source: dir.path().to_path_buf(), release: Mutex::new(released) };
        let (stop, behind) = (AtomicBool::new(false), Behind::default());
        let (passes, passed) = mpsc::channel();
        std::thread::scope(|scope| {
            let (slow, stop, behind) = (&slow, &stop, &behind);
            let follower = scope.spawn(move || {
                follow(slow, &FollowSettings::default(), stop, behind, |pass| passes.send(pass.stats.changed()).is_ok())
            });
            assert!(!passed.recv_timeout(Duration::from_secs(10)).unwrap(), "the first sync");
            assert_eq!(behind.lag(), Duration::ZERO, "the first sync brings no news");
            std::fs::write(dir.path().join("new.txt"), b"new").unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while behind.lag() < Duration::from_millis(300) {
                assert!(Instant::now() < deadline, "the lag never grew");
                std::thread::sleep(Duration::from_millis(10));
            }
            release.send(()).unwrap();
            while !passed.recv_timeout(Duration::from_secs(10)).unwrap() {}
            assert_eq!(behind.lag(), Duration::ZERO, "in step after the pass");
            stop.store(true, Ordering::Relaxed);
            drop(release);
            follower.join().unwrap().unwrap();
        });
    }

    #[test]
    fn an_image_that_stopped_changing_is_not_synced_again() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src/disk.img"), dir.path().join("dst/disk.img"));
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        std::fs::write(&source, vec![7u8; 3 << 20]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (passes, passed) = mpsc::channel();
        let follower = {
            let (source, dest, stop) = (source.clone(), dest.clone(), stop.clone());
            std::thread::spawn(move || {
                let mirror = Mirror::new(source, dest);
                follow(&mirror, &FollowSettings::default(), &stop, &Behind::default(), |pass| {
                    passes.send(pass.clone()).is_ok()
                })
            })
        };
        assert!(passed.recv_timeout(Duration::from_secs(10)).unwrap().full);
        std::fs::write(&source, vec![8u8; 3 << 20]).unwrap();
        // Until the mirror has the new content and time (a write may take several passes).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mtime = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
        while std::fs::read(&dest).unwrap() != vec![8u8; 3 << 20] || mtime(&dest) != mtime(&source) {
            passed.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a pass");
        }
        // The mirror's own reads of the source are no change.
        // (Passes that ended before the mirror was seen in step may still be queued.)
        let in_step = SystemTime::now();
        let quiet = Instant::now() + Duration::from_millis(800);
        while let Ok(pass) = passed.recv_timeout(quiet.saturating_duration_since(Instant::now())) {
            assert!(pass.finished <= in_step || !pass.stats.changed(), "a pass after the source went quiet: {pass:?}");
        }
        assert_eq!(std::fs::read(&dest).unwrap(), vec![8u8; 3 << 20]);
        stop.store(true, Ordering::Relaxed);
        follower.join().unwrap().unwrap();
    }
}
