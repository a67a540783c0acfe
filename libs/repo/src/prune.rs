//! Retention (`forget`) and garbage collection (`prune`).
//!
//! Prune holds the exclusive lease, finds every blob that snapshots still use, deletes
//! packs with nothing in use, and copies the used blobs out of packs that are mostly
//! garbage (sealed bytes are copied as they are; nothing is decrypted). Order keeps a
//! killed prune harmless: new packs and their index, then one index for the kept packs
//! that supersedes the old index files, then deleting old index files, then packs.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::error::{Error, Result};
use crate::format::{BlobId, IndexFile, IndexedPack, NodeKind, RetentionPolicy, Snapshot, SnapshotMap};
use crate::lock::Lease;
use crate::packer::{Packer, SealedBlob};
use crate::repository::{Repository, TreeLoader, paths};
use crate::restore::walk_tree;

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
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, repack_unused_share: 0.3 }
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
}

/// Blob ids that any snapshot still uses (trees and content).
fn used_blobs(repo: &Repository, index: &crate::repository::Index) -> Result<HashSet<BlobId>> {
    let loader = TreeLoader::new(repo, index);
    let mut used = HashSet::new();
    for (_, snapshot) in repo.snapshots()? {
        used.insert(snapshot.tree);
        walk_tree(&loader, &snapshot.tree, b"", &mut |_, node| {
            match node.kind {
                NodeKind::File => used.extend(node.content.iter().filter_map(|c| c.0)),
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        // A folder seen before (unchanged between snapshots) need not be walked again.
                        return Ok(used.insert(sub));
                    }
                }
                NodeKind::Symlink => {}
            }
            Ok(true)
        })?;
    }
    Ok(used)
}

pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneReport> {
    let _lease = Lease::acquire(repo, true, "prune")?;
    let index = repo.load_index()?;
    let used = used_blobs(repo, &index)?;
    let mut report = PruneReport::default();
    let mut keep: Vec<IndexedPack> = Vec::new();
    let mut drop_packs: Vec<(String, u64)> = Vec::new();
    let mut repack: Vec<(String, u64, Vec<crate::format::PackEntry>)> = Vec::new();
    let mut placed: HashSet<BlobId> = HashSet::new();
    for (pack_no, pack) in index.packs.iter().enumerate() {
        let entries = &index.pack_entries[&pack.id];
        // A blob counts where the index points at it; its copies elsewhere are garbage.
        let live: Vec<_> = entries
            .iter()
            .filter(|e| used.contains(&e.id) && index.blobs[&e.id].pack == pack_no as u32 && placed.insert(e.id))
            .copied()
            .collect();
        let live_bytes: u64 = live.iter().map(|e| e.length as u64).sum();
        let total: u64 = entries.iter().map(|e| e.length as u64).sum::<u64>().max(1);
        if live.is_empty() {
            drop_packs.push((pack.id.clone(), pack.size));
        } else if (total - live_bytes) as f64 / total as f64 > options.repack_unused_share {
            repack.push((pack.id.clone(), pack.size, live));
        } else {
            keep.push(IndexedPack { id: pack.id.clone(), size: pack.size, entries: entries.clone() });
        }
    }
    let indexed: HashSet<&str> = index.packs.iter().map(|p| p.id.as_str()).collect();
    let unindexed: Vec<(String, u64)> = repo
        .backend()
        .list(paths::DATA)?
        .into_iter()
        .filter_map(|l| l.name.rsplit('/').next().map(|id| (id.to_string(), l.size)))
        .filter(|(id, _)| !indexed.contains(id.as_str()))
        .collect();
    report.packs_kept = keep.len() as u64;
    report.packs_deleted = drop_packs.len() as u64;
    report.packs_repacked = repack.len() as u64;
    report.unindexed_packs_deleted = unindexed.len() as u64;
    report.blobs_repacked = repack.iter().map(|(_, _, live)| live.len() as u64).sum();
    report.bytes_freed = drop_packs.iter().chain(&unindexed).map(|(_, size)| size).sum::<u64>()
        + repack.iter().map(|(_, size, live)| size - live.iter().map(|e| e.length as u64).sum::<u64>()).sum::<u64>();
    let nothing_to_do = drop_packs.is_empty() && repack.is_empty() && unindexed.is_empty();
    if options.dry_run || (nothing_to_do && index.files.len() <= 1) {
        return Ok(report);
    }
    // 1. Copy live blobs out of mostly-garbage packs; the packer indexes the new packs.
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
    // 2. One index for the kept packs, superseding every old index file.
    let old_files = index.files.clone();
    repo.save_index(&IndexFile { packs: keep, supersedes: old_files.clone() })?;
    // 3. The old index files, then 4. the packs nothing points at any more.
    for name in old_files.iter().filter(|n| !new_index_files.contains(n)) {
        repo.backend().delete(name)?;
    }
    report.index_files_replaced = old_files.len() as u64;
    for (pack_id, _) in drop_packs.iter().chain(&unindexed) {
        repo.backend().delete(&paths::pack(pack_id))?;
    }
    for (pack_id, _, _) in &repack {
        repo.backend().delete(&paths::pack(pack_id))?;
    }
    Ok(report)
}
