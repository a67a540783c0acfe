//! Retention (`forget`) and garbage collection (`prune`).
//!
//! Prune finds every blob that snapshots still use, copies the used blobs out of packs that
//! are mostly garbage (sealed bytes are copied as they are; nothing is decrypted), and
//! deletes packs that have stayed unused for the grace period (see [`crate::gc`] for the
//! protocol that keeps concurrent backups safe). It refuses to delete anything while the
//! index does not cover what snapshots use. Order keeps a killed prune harmless: the sweep
//! record, the candidate mark, new packs and their index, then one index for the kept packs
//! that supersedes the old index files, then deleting old index files, then packs.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::error::{Error, Result};
use crate::format::{BlobId, IndexFile, IndexedPack, PackEntry, RetentionPolicy, Snapshot, SnapshotMap};
use crate::gc::{Marks, Sweep, UsedBlobs, used_blobs};
use crate::lock::Lease;
use crate::packer::{Packer, SealedBlob};
use crate::repository::{Damaged, Index, Repository, paths};

/// Why a snapshot is kept (or that it is not).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForgetDecision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Applies `policy` within each group of snapshots of the same host and paths.
pub fn plan_forget(snapshots: &SnapshotMap, policy: &RetentionPolicy, now: DateTime<Utc>) -> Vec<ForgetDecision> {
    type Group<'s> = Vec<(&'s String, &'s Snapshot)>;
    let mut groups: BTreeMap<(String, Vec<String>), Group<'_>> = BTreeMap::new();
    for (id, s) in snapshots {
        let mut paths = s.paths.clone();
        paths.sort();
        groups.entry((s.hostname.clone(), paths)).or_default().push((id, s));
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(a.0)));
        type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
        let rules: [(&str, u32, Bucket); 5] = [
            ("hourly", policy.keep_hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
            ("daily", policy.keep_daily, |t| (t.year(), t.ordinal(), 0, 0)),
            ("weekly", policy.keep_weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0, 0)),
            ("monthly", policy.keep_monthly, |t| (t.year(), t.month(), 0, 0)),
            ("yearly", policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
        ];
        let mut last_bucket: Vec<Option<(i32, u32, u32, u32)>> = vec![None; rules.len()];
        let mut kept_by_rule = vec![0u32; rules.len()];
        for (n, (id, s)) in group.into_iter().enumerate() {
            let mut reasons = Vec::new();
            if (n as u32) < policy.keep_last {
                reasons.push("last".to_string());
            }
            for (r, (name, limit, bucket)) in rules.iter().enumerate() {
                let b = bucket(&s.time);
                if kept_by_rule[r] < *limit && last_bucket[r] != Some(b) {
                    last_bucket[r] = Some(b);
                    kept_by_rule[r] += 1;
                    reasons.push((*name).to_string());
                }
            }
            if s.locked_until.is_some_and(|until| until > now) {
                reasons.push("locked".to_string());
            }
            out.push(ForgetDecision { id: id.clone(), time: s.time, keep: !reasons.is_empty(), reasons });
        }
    }
    out
}

/// Removes the snapshots `policy` does not keep; returns every decision.
pub fn forget(repo: &Repository, policy: &RetentionPolicy, dry_run: bool) -> Result<Vec<ForgetDecision>> {
    if policy.is_empty() {
        return Err(Error::Refused("no --keep-… rule given: refusing to forget every snapshot".into()));
    }
    let decisions = plan_forget(&repo.snapshots()?, policy, Utc::now());
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            repo.delete_snapshot(&d.id)?;
        }
    }
    Ok(decisions)
}

/// Removes one snapshot by id; refuses while it is locked.
pub fn forget_snapshot(repo: &Repository, id: &str) -> Result<String> {
    let (id, snapshot) = repo.find_snapshot(id)?;
    if let Some(until) = snapshot.locked_until.filter(|u| *u > Utc::now()) {
        return Err(Error::Refused(format!("snapshot {} is locked until {until}", &id[..8])));
    }
    repo.delete_snapshot(&id)?;
    Ok(id)
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Repack a pack when more than this share of its bytes is unused.
    pub repack_unused_share: f64,
    /// A pack is deleted only once it has stayed unused for this long, across two prunes
    /// (see [`crate::gc`]). Zero deletes unused packs at once: still safe, but a backup
    /// running meanwhile that relied on them must then run again.
    pub grace: std::time::Duration,
}

/// The grace period of prunes that do not set one (`ARCA_GC_GRACE_SECS`, default one hour).
pub fn default_grace() -> std::time::Duration {
    let secs = std::env::var("ARCA_GC_GRACE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3600);
    std::time::Duration::from_secs(secs)
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, repack_unused_share: 0.3, grace: default_grace() }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_kept: u64,
    pub unindexed_packs_deleted: u64,
    pub blobs_repacked: u64,
    pub bytes_freed: u64,
    pub index_files_replaced: u64,
    /// Unused packs still inside their grace period: a later prune deletes them.
    pub packs_pending: u64,
    pub bytes_pending: u64,
    /// When the oldest pending pack may go (store time), if any is pending.
    pub next_deletion_after: Option<DateTime<Utc>>,
    /// Half-written files killed writers left in a filesystem repository.
    pub temporary_files_removed: u64,
}

/// Refuses to garbage-collect an index that does not cover what snapshots use: whatever it
/// deleted could be data that is only missing from the index.
fn refuse_if_index_incomplete(used: &UsedBlobs, missing_packs: &[String]) -> Result<()> {
    if let Some(first) = used.unindexed.iter().min() {
        return Err(Error::Refused(format!(
            "the index does not cover what snapshots use: {} blob(s) are in no index file (first: {first}); \
             nothing was deleted — run `arca repair index` to rebuild the index from the packs",
            used.unindexed.len()
        )));
    }
    if let Some(first) = missing_packs.first() {
        return Err(Error::Refused(format!(
            "{} pack(s) holding data that snapshots use are missing (first: {first}); nothing was deleted — \
             run `arca check` to see which snapshots are damaged",
            missing_packs.len()
        )));
    }
    Ok(())
}

/// Refuses to garbage-collect while an index or snapshot file cannot be read: what it names
/// is unknown, so anything could be in use.
fn refuse_if_damaged(index: &Index, damaged_snapshots: &[Damaged]) -> Result<()> {
    if let Some(first) = index.damaged.first() {
        return Err(Error::Refused(format!(
            "{} index file(s) are damaged (first: {}: {}); nothing was deleted — run `arca repair index`",
            index.damaged.len(),
            first.object,
            first.reason
        )));
    }
    if let Some(first) = damaged_snapshots.first() {
        return Err(Error::Refused(format!(
            "{} snapshot file(s) are damaged (first: {}: {}); nothing was deleted — run `arca repair snapshots`",
            damaged_snapshots.len(),
            first.object,
            first.reason
        )));
    }
    Ok(())
}

/// A pack that nothing uses: deleted once its grace period is over.
struct Candidate {
    id: String,
    size: u64,
    indexed: bool,
}

/// What prune found: packs to keep as they are, to repack, and that nothing uses.
#[derive(Default)]
struct Plan {
    keep: Vec<IndexedPack>,
    repack: Vec<(String, u64, Vec<PackEntry>)>,
    candidates: Vec<Candidate>,
}

fn plan(index: &Index, listed: &BTreeMap<String, u64>, used: &UsedBlobs, options: &PruneOptions) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut missing_packs = Vec::new();
    let mut placed: HashSet<BlobId> = HashSet::new();
    for (pack_no, pack) in index.packs.iter().enumerate() {
        let entries = &index.pack_entries[&pack.id];
        // A blob counts where the index points at it; its copies elsewhere are garbage.
        let live: Vec<_> = entries
            .iter()
            .filter(|e| used.blobs.contains(&e.id) && index.blobs[&e.id].pack == pack_no as u32 && placed.insert(e.id))
            .copied()
            .collect();
        let live_bytes: u64 = live.iter().map(|e| e.length as u64).sum();
        let total: u64 = entries.iter().map(|e| e.length as u64).sum::<u64>().max(1);
        if live.is_empty() {
            // An unused pack already gone needs no grace: only its index entry is left.
            if listed.contains_key(&pack.id) {
                plan.candidates.push(Candidate { id: pack.id.clone(), size: pack.size, indexed: true });
            }
        } else if !listed.contains_key(&pack.id) {
            missing_packs.push(pack.id.clone());
        } else if (total - live_bytes) as f64 / total as f64 > options.repack_unused_share {
            plan.repack.push((pack.id.clone(), pack.size, live));
        } else {
            plan.keep.push(IndexedPack { id: pack.id.clone(), size: pack.size, entries: entries.clone() });
        }
    }
    refuse_if_index_incomplete(used, &missing_packs)?;
    plan.candidates.extend(
        listed.iter().filter(|(id, _)| !index.pack_entries.contains_key(*id)).map(|(id, size)| Candidate {
            id: id.clone(),
            size: *size,
            indexed: false,
        }),
    );
    Ok(plan)
}

pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneReport> {
    let _lease = Lease::acquire(repo, true, "prune")?;
    // The sweep record goes first: writers that loaded their index before it compare their
    // data with what exists once it is done (see `gc`).
    let sweep = if options.dry_run { None } else { Some(Sweep::start(repo)?) };
    let index = repo.load_index()?;
    let listed = repo.list_packs()?;
    let (snapshots, damaged_snapshots) = repo.snapshots_checked()?;
    refuse_if_damaged(&index, &damaged_snapshots)?;
    let used = used_blobs(repo, &index, snapshots.values().map(|s| s.tree))?;
    let Plan { mut keep, repack, candidates } = plan(&index, &listed, &used, options)?;

    // 1. Mark every unused pack (and those about to be repacked) with when it was first found
    //    unused; only those unused for the whole grace period are deleted now.
    let marks = Marks::read(repo)?;
    let grace = chrono::Duration::from_std(options.grace).unwrap_or(chrono::Duration::MAX);
    let (now, since) = match &sweep {
        Some(_) => {
            marks.write(repo, candidates.iter().map(|c| c.id.clone()).chain(repack.iter().map(|r| r.0.clone())))?
        }
        None => (Utc::now(), marks.since.clone()),
    };
    let due = |id: &str| options.grace.is_zero() || since.get(id).is_some_and(|t| *t <= now - grace);
    let (delete, pending): (Vec<Candidate>, Vec<Candidate>) = candidates.into_iter().partition(|c| due(&c.id));
    let mut report = PruneReport {
        packs_kept: keep.len() as u64,
        packs_deleted: delete.iter().filter(|c| c.indexed).count() as u64,
        unindexed_packs_deleted: delete.iter().filter(|c| !c.indexed).count() as u64,
        packs_repacked: repack.len() as u64,
        blobs_repacked: repack.iter().map(|(_, _, live)| live.len() as u64).sum(),
        bytes_freed: delete.iter().map(|c| c.size).sum(),
        packs_pending: pending.len() as u64,
        bytes_pending: pending.iter().map(|c| c.size).sum(),
        next_deletion_after: pending.iter().filter_map(|c| since.get(&c.id)).min().map(|t| *t + grace),
        ..PruneReport::default()
    };
    // Pending packs stay in the index: a backup may still use their blobs (and then they are
    // no longer unused).
    keep.extend(pending.iter().filter(|c| c.indexed).map(|c| IndexedPack {
        id: c.id.clone(),
        size: c.size,
        entries: index.pack_entries[&c.id].clone(),
    }));
    let index_changes = !delete.is_empty()
        || !repack.is_empty()
        || index.files.len() > 1
        || index.packs.iter().any(|p| !listed.contains_key(&p.id));
    let Some(sweep) = sweep else {
        return Ok(report);
    };
    if index_changes {
        // 2. Copy live blobs out of mostly-garbage packs; the packer indexes the new packs.
        let mut packer = Packer::new(repo);
        for (pack_id, _, live) in &repack {
            let bytes = repo.backend().read(&paths::pack(pack_id))?;
            for e in live {
                let sealed = bytes
                    .get(e.offset as usize..(e.offset + e.length) as usize)
                    .ok_or_else(|| Error::corrupt(paths::pack(pack_id), "blob beyond pack end"))?
                    .to_vec();
                packer.add(SealedBlob { id: e.id, kind: e.kind, sealed, raw_length: e.raw_length })?;
            }
        }
        let new_index_files = packer.finish()?.index_files;
        // 3. One index for the kept packs, superseding every old index file. Repacked packs
        //    leave the index now and the store once their grace period is over.
        let old_files = index.files.clone();
        repo.save_index(&IndexFile { packs: keep, supersedes: old_files.clone() })?;
        // 4. The old index files, then 5. the packs whose grace period is over.
        for name in old_files.iter().filter(|n| !new_index_files.contains(n)) {
            sweep.fence()?;
            repo.backend().delete(name)?;
        }
        report.index_files_replaced = old_files.len() as u64;
        for candidate in &delete {
            sweep.fence()?;
            repo.backend().delete(&paths::pack(&candidate.id))?;
        }
    }
    marks.remove_read(repo)?;
    sweep.remove_dead()?;
    let deleted = if index_changes { delete.iter().map(|c| c.id.clone()).collect() } else { Vec::new() };
    sweep.finish(deleted)?;
    report.temporary_files_removed =
        remove_stale_temporary_files(repo, options.grace.max(crate::gc::sweep_stale_after()))?;
    Ok(report)
}

/// Removes what killed writers left half-written in a filesystem repository's `.tmp/` (every
/// object is written there first and renamed into place), once older than `age`.
fn remove_stale_temporary_files(repo: &Repository, age: std::time::Duration) -> Result<u64> {
    let crate::backend::Target::Fs { path } = repo.backend().target() else { return Ok(0) };
    let tmp = path.join(".tmp");
    let Ok(entries) = std::fs::read_dir(&tmp) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified.elapsed().is_ok_and(|elapsed| elapsed > age));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}
