//! Verification. The structure check confirms that every blob a snapshot needs is
//! indexed and that every indexed pack exists with the recorded size; `read_data` also
//! reads every pack, checks its hash and authenticates and decodes every blob. Damage
//! is reported with the snapshots and files it hurts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::format::{BlobId, IndexFile, NodeKind, from_msgpack};
use crate::packer::read_pack_header;
use crate::repository::{Index, Repository, TreeLoader, paths};
use crate::restore::walk_tree;

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Read and authenticate every pack.
    pub read_data: bool,
}

/// A snapshot hurt by damage, and the files and folders in it that are.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Affected {
    pub snapshot: String,
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs_read: u64,
    /// Packs that are missing, truncated or fail authentication.
    pub damaged_packs: Vec<String>,
    pub affected: Vec<Affected>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn check(repo: &Repository, options: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let index = load_index_reporting(repo, &mut report)?;
    let on_disk: HashMap<String, u64> = repo
        .backend()
        .list(paths::DATA)?
        .into_iter()
        .filter_map(|l| l.name.rsplit('/').next().map(|id| (id.to_string(), l.size)))
        .collect();
    report.packs = index.packs.len();
    let mut damaged: BTreeMap<String, String> = BTreeMap::new();
    for pack in &index.packs {
        match on_disk.get(&pack.id) {
            None => {
                damaged.insert(pack.id.clone(), "missing".into());
            }
            Some(&size) if size != pack.size && size != 0 => {
                damaged.insert(pack.id.clone(), format!("size {size}, index says {}", pack.size));
            }
            Some(_) => {}
        }
    }
    let indexed: HashSet<&str> = index.packs.iter().map(|p| p.id.as_str()).collect();
    let unindexed = on_disk.keys().filter(|id| !indexed.contains(id.as_str())).count();
    if unindexed > 0 {
        report
            .warnings
            .push(format!("{unindexed} pack(s) are in no index (left by an interrupted backup); prune removes them"));
    }
    if options.read_data {
        let blobs_read = std::sync::atomic::AtomicU64::new(0);
        let found: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        let queue: Mutex<Vec<&crate::repository::PackRecord>> =
            Mutex::new(index.packs.iter().filter(|p| !damaged.contains_key(&p.id)).collect());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while let Some(pack) = queue.lock().expect("queue poisoned").pop() {
                        match verify_pack(repo, &index, &pack.id) {
                            Ok(n) => {
                                blobs_read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(reason) => found.lock().expect("lock poisoned").push((pack.id.clone(), reason)),
                        }
                    }
                });
            }
        });
        report.blobs_read = blobs_read.into_inner();
        damaged.extend(found.into_inner().expect("lock poisoned"));
    }
    for (pack, reason) in &damaged {
        report.errors.push(format!("pack {pack}: {reason}"));
    }
    report.damaged_packs = damaged.keys().cloned().collect();
    let damaged_packs: HashSet<u32> =
        index.packs.iter().enumerate().filter(|(_, p)| damaged.contains_key(&p.id)).map(|(i, _)| i as u32).collect();
    let bad_blob = |id: &BlobId| match index.blobs.get(id) {
        None => Some("not in the index"),
        Some(loc) if damaged_packs.contains(&loc.pack) => Some("in a damaged pack"),
        Some(_) => None,
    };
    let snapshots = repo.snapshots()?;
    report.snapshots = snapshots.len();
    let loader = TreeLoader::new(repo, &index);
    for (id, snapshot) in &snapshots {
        let mut hurt: BTreeSet<String> = BTreeSet::new();
        if let Some(why) = bad_blob(&snapshot.tree) {
            hurt.insert(format!("/ (root tree {why})"));
        } else {
            walk_checked(&loader, &snapshot.tree, b"", &bad_blob, &mut hurt);
        }
        if !hurt.is_empty() {
            report.errors.push(format!("snapshot {}: {} damaged file(s) or folder(s)", &id[..8], hurt.len()));
            report.affected.push(Affected { snapshot: id.clone(), paths: hurt.into_iter().collect() });
        }
    }
    Ok(report)
}

fn walk_checked(
    loader: &TreeLoader<'_>,
    tree: &BlobId,
    prefix: &[u8],
    bad_blob: &dyn Fn(&BlobId) -> Option<&'static str>,
    hurt: &mut BTreeSet<String>,
) {
    let result = walk_tree(loader, tree, prefix, &mut |path, node| {
        let shown = String::from_utf8_lossy(path).into_owned();
        match node.kind {
            NodeKind::File => {
                if node.content.iter().filter_map(|c| c.0).any(|id| bad_blob(&id).is_some()) {
                    hurt.insert(shown);
                }
                Ok(false)
            }
            NodeKind::Dir => match node.subtree.as_ref().map(|s| (s, bad_blob(s))) {
                Some((sub, None)) => {
                    // Load it here so an undecodable tree is reported with its path.
                    if let Err(e) = loader.load(sub) {
                        hurt.insert(format!("{shown}/ (tree unreadable: {e})"));
                        return Ok(false);
                    }
                    Ok(true)
                }
                Some((_, Some(why))) => {
                    hurt.insert(format!("{shown}/ (tree {why})"));
                    Ok(false)
                }
                None => {
                    hurt.insert(format!("{shown}/ (folder without tree)"));
                    Ok(false)
                }
            },
            NodeKind::Symlink => Ok(false),
        }
    });
    if let Err(e) = result {
        hurt.insert(format!("{} (tree unreadable: {e})", String::from_utf8_lossy(prefix)));
    }
}

fn load_index_reporting(repo: &Repository, report: &mut CheckReport) -> Result<Index> {
    let names: Vec<String> =
        repo.backend().list(paths::INDEX)?.into_iter().map(|l| format!("{}{}", paths::INDEX, l.name)).collect();
    let mut index = Index::default();
    for (name, bytes) in names.iter().zip(repo.backend().read_many(&names, 16)) {
        let decoded =
            bytes.and_then(|b| repo.open_object(name, &b)).and_then(|plain| from_msgpack::<IndexFile>(&plain, name));
        match decoded {
            Ok(file) => index.add_file(name.clone(), file),
            Err(e) => report.errors.push(format!("index file {name}: {e}")),
        }
    }
    Ok(index)
}

/// Reads a whole pack and authenticates everything in it; returns the blobs checked.
fn verify_pack(repo: &Repository, index: &Index, pack_id: &str) -> std::result::Result<u64, String> {
    let bytes = repo.backend().read(&paths::pack(pack_id)).map_err(|e| e.to_string())?;
    if blake3::hash(&bytes).to_hex().as_str() != pack_id {
        return Err("content does not match its hash (damaged)".into());
    }
    let header = read_pack_header(repo, pack_id, &bytes).map_err(|e| e.to_string())?;
    let indexed = index.pack_entries.get(pack_id).map(Vec::as_slice).unwrap_or_default();
    if header != indexed {
        return Err("pack header and index disagree".into());
    }
    for e in &header {
        let start = e.offset as usize;
        let sealed = bytes.get(start..start + e.length as usize).ok_or("blob beyond pack end")?;
        repo.decode_blob(&e.id, sealed, e.raw_length).map_err(|err| match err {
            Error::Corrupt { reason, .. } => format!("blob {}: {reason}", e.id),
            other => other.to_string(),
        })?;
    }
    Ok(header.len() as u64)
}
