//! The garbage-collection protocol: what lets prune delete packs while backups and copies
//! write, without trusting leases for safety.
//!
//! Two kinds of objects under `gc/` carry it:
//!
//! - **Sweep records** (`gc/sweeps/<id>`, then `gc/sweeps/<id>.done`). A prune writes its
//!   record *before* it lists snapshots and keeps it fresh while it works (a heartbeat); it
//!   writes `.done` once its last delete returned. A prune deletes nothing unless its own
//!   heartbeat is recent (see [`Sweep::fence`]).
//! - **Candidate marks** (`gc/marks/<id>`). Each prune records every pack nothing uses, with
//!   the time it was first found so (the storage's own clock: the mark object's modification
//!   time). A pack is deleted only once it has stayed unused for the grace period.
//!
//! A writer ([`WriteGuard`]) lists the sweep records before it loads the index and again
//! around writing its snapshots. Nothing it relies on can have been deleted unless a sweep
//! it did not see finished before it started was running at some point in between; only
//! then does it wait for those sweeps to end and check that every blob its snapshots use is
//! indexed in a pack that exists. If one is gone it removes what it wrote and fails with
//! [`Error::DataRemoved`] (a backup of files or an image runs again, re-uploading them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::format::{BlobId, from_msgpack, to_msgpack};
use crate::repository::{Index, Repository, TreeLoader, paths};
use crate::ticker::Ticker;

/// How long a sweep record may go without a heartbeat before writers take its prune for
/// dead (`ARCA_SWEEP_STALE_SECS`, default 5 minutes). A prune stops deleting once its own
/// heartbeat is half this old, so a writer never trusts one that may resume; half of it is
/// more than a delete's retries and timeouts take.
pub fn sweep_stale_after() -> Duration {
    let secs = std::env::var("ARCA_SWEEP_STALE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    Duration::from_secs(secs)
}

/// The sweep records seen at one moment: which sweeps started and which of them finished.
#[derive(Clone, Debug, Default)]
pub struct SweepView {
    started: HashSet<String>,
    done: HashSet<String>,
}

impl SweepView {
    /// Lists `gc/sweeps/`.
    pub fn read(repo: &Repository) -> Result<SweepView> {
        let mut view = SweepView::default();
        for listed in repo.backend().list(paths::SWEEPS)? {
            match listed.name.strip_suffix(".done") {
                Some(id) => view.done.insert(id.to_string()),
                None => view.started.insert(listed.name),
            };
        }
        Ok(view)
    }

    /// Sweeps that may have deleted something between this view and `later`: every sweep
    /// either view shows that had not finished in this one.
    pub fn unfinished_since(&self, later: &SweepView) -> Vec<String> {
        let mut ids: Vec<String> =
            self.started.union(&later.started).filter(|id| !self.done.contains(*id)).cloned().collect();
        ids.sort();
        ids
    }

    fn with_done(mut self, ids: &[String]) -> SweepView {
        self.done.extend(ids.iter().cloned());
        self
    }
}

/// What a writer (backup, copy) saw of garbage collection when it started; it must be taken
/// before the writer loads the index.
pub struct WriteGuard {
    seen: SweepView,
    operation: &'static str,
    ghosts: HashSet<String>,
}

impl WriteGuard {
    pub fn begin(repo: &Repository, operation: &'static str) -> Result<WriteGuard> {
        let seen = SweepView::read(repo)?;
        let ghosts = deleted_by(repo, &seen)?;
        Ok(WriteGuard { seen, operation, ghosts })
    }

    /// `index` without the packs that finished sweeps deleted. A prune deletes a pack no index
    /// names after its grace period; a writer stalled longer than that may still write an index
    /// file naming it, and a writer that trusted such a file would see no sweep to check.
    pub fn trusted(&self, index: Index) -> Index {
        index.without(self.ghosts.clone())
    }

    /// Writes snapshots (through `write`, which returns their ids) whose trees are `roots`,
    /// once it is sure no sweep removed what they use. A snapshot is never left behind
    /// pointing at deleted data: if a sweep overlapped the write and the check then finds a
    /// blob gone, the snapshots just written are removed again and the result is
    /// [`Error::DataRemoved`].
    pub fn commit(
        self,
        repo: &Repository,
        roots: &[BlobId],
        write: impl FnOnce() -> Result<Vec<String>>,
    ) -> Result<Vec<String>> {
        let mut seen = self.seen;
        let before = SweepView::read(repo)?;
        let overlapping = seen.unfinished_since(&before);
        if !overlapping.is_empty() {
            let settled = wait_for_sweeps(repo, &overlapping)?;
            seen = SweepView::read(repo)?.with_done(&settled);
            refuse_if_removed(repo, roots, self.operation)?;
        }
        let written = write()?;
        let after = SweepView::read(repo)?;
        let overlapping = seen.unfinished_since(&after);
        if !overlapping.is_empty() {
            wait_for_sweeps(repo, &overlapping)?;
            if let Err(e) = refuse_if_removed(repo, roots, self.operation) {
                for id in &written {
                    repo.delete_snapshot(id)?;
                }
                return Err(e);
            }
        }
        Ok(written)
    }
}

fn refuse_if_removed(repo: &Repository, roots: &[BlobId], operation: &'static str) -> Result<()> {
    let missing = missing_blobs(repo, roots)?;
    if missing.is_empty() {
        return Ok(());
    }
    tracing::warn!(operation, missing = missing.len(), "a prune removed data this write relied on");
    Err(Error::DataRemoved { operation, blobs: missing.len() })
}

/// The packs the finished sweeps of `view` deleted, as their `.done` records list them.
fn deleted_by(repo: &Repository, view: &SweepView) -> Result<HashSet<String>> {
    Ok(read_done_records(repo, view)?.deleted.into_keys().collect())
}

fn read_done_records(repo: &Repository, view: &SweepView) -> Result<DoneRecord> {
    let mut all = DoneRecord::default();
    for id in &view.done {
        let name = format!("{}{id}.done", paths::SWEEPS);
        let record: DoneRecord = match repo.load_object(&name) {
            Ok(plain) => serde_json::from_slice(&plain).map_err(|e| Error::corrupt(&name, e.to_string()))?,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        all.deleted.extend(record.deleted);
    }
    Ok(all)
}

/// How long a deleted pack stays listed as deleted (a writer stalled longer than this between
/// uploading a pack and indexing it could still make a later writer trust it).
const GHOSTS_KEPT_DAYS: i64 = 7;

/// What a sweep wrote when it finished: every pack it and the sweeps before it deleted in the
/// last [`GHOSTS_KEPT_DAYS`], with when.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct DoneRecord {
    deleted: BTreeMap<String, DateTime<Utc>>,
}

/// Waits until every sweep in `ids` has finished or its prune is dead: its record gone without
/// `.done`, or unchanged for [`sweep_stale_after`] — counted from the record's last write by
/// the store's clock, so a sweep that died long ago is passed at once.
fn wait_for_sweeps(repo: &Repository, ids: &[String]) -> Result<Vec<String>> {
    let stale = sweep_stale_after();
    let store_now = store_clock(repo)?;
    let probed = Instant::now();
    let mut last_seen: HashMap<&String, (Vec<u8>, Instant)> = HashMap::new();
    loop {
        let view = SweepView::read(repo)?;
        let mut waiting = false;
        for id in ids {
            if view.done.contains(id) || !view.started.contains(id) {
                continue;
            }
            let name = format!("{}{id}", paths::SWEEPS);
            let record = match repo.backend().read(&name) {
                Ok(bytes) => bytes,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            // A prune killed on this very host is known dead at once.
            let dead = repo
                .open_object(&name, &record)
                .ok()
                .and_then(|plain| serde_json::from_slice::<SweepRecord>(&plain).ok())
                .is_some_and(|r| r.pid != 0 && crate::lock::process_is_gone(&r.hostname, &r.table, r.pid));
            if dead {
                tracing::warn!(sweep = %id, "the prune of this sweep died on this host; taking it for dead");
                continue;
            }
            let changed = match last_seen.get(id) {
                Some((seen, _)) => *seen != record,
                None => true,
            };
            if changed {
                // How long ago the record was written, by the store's clock (now: the probe's
                // time plus what passed here since).
                let age = match repo.backend().modified(&name) {
                    Ok(at) => {
                        let now = store_now + chrono::Duration::from_std(probed.elapsed()).unwrap_or_default();
                        (now - at).to_std().unwrap_or_default()
                    }
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                let written = Instant::now().checked_sub(age.min(stale)).unwrap_or_else(Instant::now);
                last_seen.insert(id, (record, written));
            }
            if last_seen[id].1.elapsed() < stale {
                waiting = true;
            } else {
                tracing::warn!(sweep = %id, "a prune's sweep stopped without finishing; taking it for dead");
            }
        }
        if !waiting {
            return Ok(ids.to_vec());
        }
        std::thread::sleep(Duration::from_millis(200).min(stale / 4));
    }
}

/// The store's current time: the modification time of an object written for the purpose.
fn store_clock(repo: &Repository) -> Result<DateTime<Utc>> {
    let mut id = [0u8; 8];
    crate::crypto::random_bytes(&mut id);
    let name = format!("gc/clock-{}", hex::encode(id));
    repo.backend().write(&name, Vec::new())?;
    let now = repo.backend().modified(&name);
    repo.backend().delete(&name)?;
    now
}

/// Blobs under `roots` (trees and their content) that the current index does not place in a
/// pack that exists. A missing tree counts once; what lies below it cannot be looked at.
pub fn missing_blobs(repo: &Repository, roots: &[BlobId]) -> Result<Vec<BlobId>> {
    let index = repo.load_index()?;
    let packs = repo.list_packs()?;
    let present = |id: &BlobId| index.get(id).is_some_and(|(pack, _)| packs.contains_key(&pack.id));
    let loader = TreeLoader::new(repo, &index);
    let mut missing = Vec::new();
    let mut walked = HashSet::new();
    let mut stack: Vec<BlobId> = roots.to_vec();
    while let Some(tree) = stack.pop() {
        if !walked.insert(tree) {
            continue;
        }
        if !present(&tree) {
            missing.push(tree);
            continue;
        }
        for node in loader.load(&tree)?.nodes {
            stack.extend(node.subtree);
            missing.extend(node.content.iter().filter_map(|chunk| chunk.0).filter(|id| !present(id)));
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Every blob the snapshots' trees use, and the blobs they name that the index does not hold
/// (a tree missing from the index is reported and not walked).
pub fn used_blobs(repo: &Repository, index: &Index, roots: impl IntoIterator<Item = BlobId>) -> Result<UsedBlobs> {
    let loader = TreeLoader::new(repo, index);
    let mut used = UsedBlobs::default();
    let mut stack: Vec<BlobId> = roots.into_iter().collect();
    while let Some(tree) = stack.pop() {
        // A folder seen before (unchanged between snapshots) need not be walked again.
        if !used.blobs.insert(tree) {
            continue;
        }
        if !index.contains(&tree) {
            used.unindexed.insert(tree);
            continue;
        }
        for node in loader.load(&tree)?.nodes {
            stack.extend(node.subtree);
            for id in node.content.iter().filter_map(|chunk| chunk.0) {
                if used.blobs.insert(id) && !index.contains(&id) {
                    used.unindexed.insert(id);
                }
            }
        }
    }
    Ok(used)
}

#[derive(Default)]
pub struct UsedBlobs {
    pub blobs: HashSet<BlobId>,
    pub unindexed: HashSet<BlobId>,
}

// ---------------------------------------------------------------------- sweeps

#[derive(serde::Serialize, serde::Deserialize)]
struct SweepRecord {
    hostname: String,
    instance: String,
    /// The prune's process, so a waiter on the same host sees at once that it died.
    #[serde(default)]
    table: crate::lock::ProcessTable,
    #[serde(default)]
    pid: u32,
    started: DateTime<Utc>,
    /// Bumped by every heartbeat, so the record's bytes change even within a clock tick.
    beat: u64,
}

/// A prune's sweep: its record in the repository and the heartbeat that keeps it fresh.
pub struct Sweep {
    repo: Repository,
    id: String,
    heartbeat: Option<Ticker>,
    lost: Arc<AtomicBool>,
    last_beat: Arc<std::sync::Mutex<Instant>>,
}

impl Sweep {
    /// Writes the sweep record; it must precede listing the snapshots.
    pub fn start(repo: &Repository) -> Result<Sweep> {
        let mut id = [0u8; 16];
        crate::crypto::random_bytes(&mut id);
        let id = hex::encode(id);
        let mut record = SweepRecord {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            instance: crate::lock::instance_id().to_string(),
            table: crate::lock::ProcessTable::current(),
            pid: std::process::id(),
            started: Utc::now(),
            beat: 0,
        };
        let name = format!("{}{id}", paths::SWEEPS);
        write_sealed(repo, &name, &record)?;
        let lost = Arc::new(AtomicBool::new(false));
        let last_beat = Arc::new(std::sync::Mutex::new(Instant::now()));
        let half = sweep_stale_after() / 2;
        let heartbeat = {
            let (repo, lost, last_beat) = (repo.clone(), lost.clone(), last_beat.clone());
            Ticker::every((half / 4).max(Duration::from_millis(50)), "arca-sweep", move || {
                let mut last = last_beat.lock().expect("heartbeat lock poisoned");
                // A heartbeat that comes too late (the process was stopped, the store hung)
                // may come after writers took this sweep for dead: it must not delete again.
                if last.elapsed() >= half {
                    lost.store(true, Ordering::SeqCst);
                }
                record.beat += 1;
                match write_sealed(&repo, &name, &record) {
                    Ok(()) => *last = Instant::now(),
                    Err(e) => tracing::warn!("cannot refresh sweep record {name}: {e}"),
                }
            })
        };
        Ok(Sweep { repo: repo.clone(), id, heartbeat: Some(heartbeat), lost, last_beat })
    }

    /// Fails unless this sweep may still delete: its heartbeat never lapsed. Called right
    /// before every delete.
    pub fn fence(&self) -> Result<()> {
        let last = *self.last_beat.lock().expect("heartbeat lock poisoned");
        if self.lost.load(Ordering::SeqCst) || last.elapsed() >= sweep_stale_after() / 2 {
            self.lost.store(true, Ordering::SeqCst);
            return Err(Error::Refused(
                "prune stopped: its sweep went without a heartbeat for too long (the process was paused \
                 or the store did not answer), so writers may have taken it for dead; nothing more is \
                 deleted — run prune again"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Marks the sweep finished, naming the packs it deleted, and removes the records of other
    /// finished sweeps.
    pub fn finish(mut self, deleted: Vec<String>) -> Result<()> {
        drop(self.heartbeat.take());
        // The records replaced below hand on what they list, for as long as a writer may stall.
        let view = SweepView::read(&self.repo)?;
        let now = Utc::now();
        let mut record = DoneRecord { deleted: deleted.into_iter().map(|id| (id, now)).collect() };
        for (id, at) in read_done_records(&self.repo, &view)?.deleted {
            if now - at < chrono::Duration::days(GHOSTS_KEPT_DAYS) {
                record.deleted.entry(id).or_insert(at);
            }
        }
        let done = serde_json::to_vec(&record).expect("record serializes");
        write_sealed_bytes(&self.repo, &format!("{}{}.done", paths::SWEEPS, self.id), &done)?;
        for id in view.done.iter().filter(|id| **id != self.id) {
            self.repo.backend().delete(&format!("{}{id}", paths::SWEEPS))?;
            self.repo.backend().delete(&format!("{}{id}.done", paths::SWEEPS))?;
        }
        Ok(())
    }

    /// Removes the records of sweeps that never finished and whose heartbeat is older than the
    /// stale time by the store's clock (their prune died; a paused one fences itself).
    pub fn remove_dead(&self) -> Result<()> {
        let view = SweepView::read(&self.repo)?;
        let now = self.repo.backend().modified(&format!("{}{}", paths::SWEEPS, self.id))?;
        let stale = chrono::Duration::from_std(sweep_stale_after()).unwrap_or(chrono::Duration::MAX);
        for id in view.started.iter().filter(|id| **id != self.id && !view.done.contains(*id)) {
            let name = format!("{}{id}", paths::SWEEPS);
            match self.repo.backend().modified(&name) {
                Ok(at) if now - at > stale * 2 => self.repo.backend().delete(&name)?,
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        // A sweep dropped without `finish` failed part-way; its record stays until it goes
        // stale, so writers that saw it keep checking their data.
        drop(self.heartbeat.take());
    }
}

fn write_sealed<T: serde::Serialize>(repo: &Repository, name: &str, value: &T) -> Result<()> {
    write_sealed_bytes(repo, name, &serde_json::to_vec(value).expect("record serializes"))
}

fn write_sealed_bytes(repo: &Repository, name: &str, plain: &[u8]) -> Result<()> {
    repo.backend().write(name, repo.data_key().seal(0, plain))
}

// ---------------------------------------------------------------------- candidate marks

/// The packs nothing used at one prune, each with when it was first found unused (`None`:
/// at this mark, whose time is its object's modification time).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct MarkFile {
    candidates: BTreeMap<String, Option<DateTime<Utc>>>,
}

/// Pack id → when it was first found unused (store time).
pub type UnusedSince = HashMap<String, DateTime<Utc>>;

/// The latest candidate mark.
pub struct Marks {
    pub since: UnusedSince,
    names: Vec<String>,
}

impl Marks {
    /// Reads the newest mark (by the store's clock); older ones are leftovers of a killed prune.
    pub fn read(repo: &Repository) -> Result<Marks> {
        let mut names: Vec<String> =
            repo.backend().list(paths::MARKS)?.into_iter().map(|l| format!("{}{}", paths::MARKS, l.name)).collect();
        names.sort();
        let mut newest: Option<(DateTime<Utc>, &String)> = None;
        for name in &names {
            match repo.backend().modified(name) {
                Ok(at) if newest.is_none_or(|(t, _)| at > t) => newest = Some((at, name)),
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut since = HashMap::new();
        if let Some((at, name)) = newest {
            let file: MarkFile = match repo.load_object(name) {
                Ok(plain) => from_msgpack(&plain, name)?,
                Err(Error::NotFound(_)) => MarkFile::default(),
                Err(e) => return Err(e),
            };
            since = file.candidates.into_iter().map(|(id, t)| (id, t.unwrap_or(at))).collect();
        }
        Ok(Marks { since, names })
    }

    /// Writes a new mark for `candidates` (keeping the times they were first found unused);
    /// returns its time by the store's clock and the time each candidate was first found.
    pub fn write(
        &self,
        repo: &Repository,
        candidates: impl IntoIterator<Item = String>,
    ) -> Result<(DateTime<Utc>, UnusedSince)> {
        let file = MarkFile {
            candidates: candidates.into_iter().map(|id| (id.clone(), self.since.get(&id).copied())).collect(),
        };
        let id = repo.save_object(paths::MARKS, &to_msgpack(&file))?;
        let at = repo.backend().modified(&format!("{}{id}", paths::MARKS))?;
        let since = file.candidates.into_iter().map(|(id, t)| (id, t.unwrap_or(at))).collect();
        Ok((at, since))
    }

    /// Removes the marks this one was read from (called once a newer one is written).
    pub fn remove_read(&self, repo: &Repository) -> Result<()> {
        for name in &self.names {
            repo.backend().delete(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(started: &[&str], done: &[&str]) -> SweepView {
        SweepView {
            started: started.iter().map(|s| s.to_string()).collect(),
            done: done.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn only_sweeps_unfinished_at_the_start_count_as_overlapping() {
        // Finished before the writer started: harmless, even if its record is gone later.
        assert!(view(&["a"], &["a"]).unfinished_since(&view(&[], &[])).is_empty());
        assert!(view(&["a"], &["a"]).unfinished_since(&view(&["a"], &["a"])).is_empty());
        // Running at the start, or started since: both may have deleted what the writer uses.
        assert_eq!(view(&["a"], &[]).unfinished_since(&view(&["a"], &["a"])), ["a"]);
        assert_eq!(view(&["a"], &[]).unfinished_since(&view(&[], &[])), ["a"]);
        assert_eq!(view(&["a"], &["a"]).unfinished_since(&view(&["a", "b"], &["a", "b"])), ["b"]);
    }
}
