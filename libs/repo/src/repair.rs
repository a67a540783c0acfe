//! Repairs: rebuilding the index from the packs' own headers, and snapshots that reference
//! data that is gone (rewritten without it, or removed when nothing is left).
//!
//! Both hold the exclusive lease and show what they would change with `dry_run`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{BlobId, BlobKind, IndexFile, IndexedPack, NodeKind, Tree, to_msgpack};
use crate::lock::Lease;
use crate::packer::read_pack_headers;
use crate::pipeline::{BlobSink, Pipeline};
use crate::repository::{Index, Repository, TreeLoader, paths};

/// What `repair index` found and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairIndexReport {
    pub dry_run: bool,
    /// Packs in the new index, from their headers.
    pub packs_indexed: u64,
    /// Packs whose header cannot be read: kept as the old index listed them, if it did.
    pub packs_unreadable: Vec<String>,
    /// Index entries of packs that no longer exist, dropped.
    pub packs_missing: u64,
    /// Packs no readable index file listed before.
    pub packs_added: u64,
    pub index_files_replaced: u64,
}

/// Rebuilds the index from the packs' headers: one new index file for every pack that
/// exists, superseding (then removing) every old index file, damaged or not.
pub fn repair_index(repo: &Repository, dry_run: bool) -> Result<RepairIndexReport> {
    let _lease = Lease::acquire(repo, true, "repair index")?;
    let old = repo.load_index()?;
    let old_files: Vec<String> =
        repo.backend().list(paths::INDEX)?.into_iter().map(|l| format!("{}{}", paths::INDEX, l.name)).collect();
    let listed: Vec<(String, u64)> = repo.list_packs()?.into_iter().collect();
    let (mut packs, unreadable) = read_pack_headers(repo, &listed);
    let mut report = RepairIndexReport { dry_run, ..RepairIndexReport::default() };
    for (id, why) in unreadable {
        tracing::warn!("pack {id}: header unreadable: {why}");
        if let Some(entries) = old.pack_entries.get(&id) {
            let size = old.packs.iter().find(|p| p.id == id).map(|p| p.size).unwrap_or_default();
            packs.push(IndexedPack { id: id.clone(), size, entries: entries.clone() });
        }
        report.packs_unreadable.push(id);
    }
    let existing: HashSet<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    report.packs_missing = old.packs.iter().filter(|p| !existing.contains(p.id.as_str())).count() as u64;
    report.packs_added = packs.iter().filter(|p| !old.pack_entries.contains_key(&p.id)).count() as u64;
    report.packs_indexed = packs.len() as u64;
    report.index_files_replaced = old_files.len() as u64;
    if dry_run {
        return Ok(report);
    }
    let written = repo.save_index(&IndexFile { packs, supersedes: old_files.clone() })?;
    for name in old_files.iter().filter(|n| **n != written) {
        repo.backend().delete(name)?;
    }
    Ok(report)
}

/// What `repair snapshots` does to one snapshot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SnapshotRepair {
    pub id: String,
    /// `removed` (its file is damaged, or nothing of it is left) or `rewritten`.
    pub action: &'static str,
    /// Files and folders left out because their data is gone.
    pub dropped: Vec<String>,
    /// The rewritten snapshot, tagged `repaired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairSnapshotsReport {
    pub dry_run: bool,
    pub snapshots_checked: u64,
    pub repairs: Vec<SnapshotRepair>,
}

/// Rewrites every snapshot that uses data that is gone (blobs in no index, or in a pack that
/// does not exist) without the files and folders it cannot restore, tagged `repaired`, and
/// removes the original; removes snapshot files that cannot be read, and snapshots of which
/// nothing is left. Run `repair index` first when index files are damaged or missing.
pub fn repair_snapshots(repo: &Repository, dry_run: bool) -> Result<RepairSnapshotsReport> {
    let _lease = Lease::acquire(repo, true, "repair snapshots")?;
    let index = Arc::new(repo.load_index()?);
    let packs = repo.list_packs()?;
    let (snapshots, damaged) = repo.snapshots_checked()?;
    let mut report = RepairSnapshotsReport {
        dry_run,
        snapshots_checked: (snapshots.len() + damaged.len()) as u64,
        ..RepairSnapshotsReport::default()
    };
    for d in damaged {
        let id = d.object.trim_start_matches(paths::SNAPSHOTS).to_string();
        if !dry_run {
            repo.delete_snapshot(&id)?;
        }
        report.repairs.push(SnapshotRepair {
            id,
            action: "removed",
            dropped: Vec::new(),
            new_id: None,
            reason: Some(format!("the snapshot file is damaged: {}", d.reason)),
        });
    }
    let pipeline = (!dry_run).then(|| Pipeline::start(repo, index.clone(), repo.config().compression_level, 2));
    let rewriter = Rewriter {
        loader: TreeLoader::new(repo, &index),
        index: &index,
        packs: &packs,
        sink: pipeline.as_ref().map(Pipeline::sink),
    };
    let mut rewritten: BTreeMap<String, crate::format::Snapshot> = BTreeMap::new();
    for (id, snapshot) in &snapshots {
        let mut dropped = Vec::new();
        let new_root = rewriter.tree(&snapshot.tree, "", &mut dropped)?;
        if dropped.is_empty() {
            continue;
        }
        match new_root {
            Some(root) => {
                let mut repaired = snapshot.clone();
                repaired.tree = root;
                repaired.partial = true;
                if !repaired.tags.iter().any(|t| t == "repaired") {
                    repaired.tags.push("repaired".into());
                }
                rewritten.insert(id.clone(), repaired);
                report.repairs.push(SnapshotRepair {
                    id: id.clone(),
                    action: "rewritten",
                    dropped,
                    new_id: None,
                    reason: None,
                });
            }
            None => report.repairs.push(SnapshotRepair {
                id: id.clone(),
                action: "removed",
                dropped,
                new_id: None,
                reason: Some("nothing of it can be restored".into()),
            }),
        }
    }
    drop(rewriter);
    let Some(pipeline) = pipeline else {
        return Ok(report);
    };
    // The new trees are packed and indexed before any snapshot names them.
    pipeline.finish()?;
    for repair in &mut report.repairs {
        if let Some(repaired) = rewritten.remove(&repair.id) {
            repair.new_id = Some(repo.save_snapshot(&repaired)?);
        }
        if snapshots.contains_key(&repair.id) {
            repo.delete_snapshot(&repair.id)?;
        }
    }
    Ok(report)
}

struct Rewriter<'a> {
    loader: TreeLoader<'a>,
    index: &'a Index,
    packs: &'a BTreeMap<String, u64>,
    sink: Option<&'a BlobSink>,
}

impl Rewriter<'_> {
    fn present(&self, id: &BlobId) -> bool {
        self.index.get(id).is_some_and(|(pack, _)| self.packs.contains_key(&pack.id))
    }

    /// The tree `id` without what cannot be restored (noted in `dropped`); `None` if the tree
    /// itself is gone. Unchanged trees keep their id.
    fn tree(&self, id: &BlobId, path: &str, dropped: &mut Vec<String>) -> Result<Option<BlobId>> {
        if !self.present(id) {
            dropped.push(format!("{path}/"));
            return Ok(None);
        }
        let tree = match self.loader.load(id) {
            Ok(tree) => tree,
            Err(Error::Corrupt { .. }) => {
                dropped.push(format!("{path}/"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let before = dropped.len();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            let node_path = format!("{path}/{}", node.name_lossy());
            match node.kind {
                NodeKind::File => {
                    if node.content.iter().filter_map(|c| c.0).all(|blob| self.present(&blob)) {
                        nodes.push(node);
                    } else {
                        dropped.push(node_path);
                    }
                }
                NodeKind::Dir => match node.subtree {
                    Some(sub) => {
                        if let Some(new) = self.tree(&sub, &node_path, dropped)? {
                            node.subtree = Some(new);
                            nodes.push(node);
                        }
                    }
                    None => nodes.push(node),
                },
                NodeKind::Symlink => nodes.push(node),
            }
        }
        if dropped.len() == before {
            return Ok(Some(*id));
        }
        let encoded = to_msgpack(&Tree { nodes });
        match self.sink {
            Some(sink) => Ok(Some(sink.store(BlobKind::Tree, &encoded)?)),
            None => Ok(Some(self.loader.repo().blob_id(&encoded))),
        }
    }
}
