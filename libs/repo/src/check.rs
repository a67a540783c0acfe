//! Verification. The structure check confirms that every blob a snapshot needs is
//! indexed and that every indexed pack exists with the recorded size; `read_data` also
//! reads every pack, checks its hash and authenticates and decodes every blob. Damage
//! is reported with the snapshots and files it hurts. `read_data_subset` reads only a
//! share of the packs, so a scheduled verify reads the whole repository over a cycle.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::format::{BlobId, IndexFile, NodeKind, from_msgpack};
use crate::packer::read_pack_header;
use crate::repository::{Index, PackRecord, Repository, TreeLoader, paths};
use crate::restore::walk_tree;

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Read and authenticate every pack.
    pub read_data: bool,
    /// Read and authenticate only these packs (implies reading data).
    pub read_data_subset: Option<Subset>,
}

/// A share of a repository's packs to read.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subset {
    /// Part `n` of `m` (1-based): the packs whose id falls into bucket `n` of `m`. The parts
    /// `1/m` … `m/m` are disjoint and together hold every pack, so running them in turn (one
    /// per scheduled verify) reads each pack once per cycle; a pack always falls in the same
    /// part.
    Part { n: u32, m: u32 },
    /// This percentage (above 0, at most 100) of the packs, rounded up, chosen at random
    /// on every run: over many runs every pack is likely, not certain, to be read.
    Percent(f64),
}

impl Subset {
    /// Refuses a part outside `1 <= n <= m` or a percentage outside (0, 100].
    pub fn validate(&self) -> Result<()> {
        let why = match *self {
            Subset::Part { n, m } if m == 0 || n == 0 || n > m => "`n/m` needs 1 <= n <= m",
            Subset::Percent(p) if !(p > 0.0 && p <= 100.0) => "the percentage must be above 0 and at most 100",
            _ => return Ok(()),
        };
        Err(Error::Refused(format!("bad read-data subset `{self}`: {why}")))
    }

    /// The packs of `packs` this subset reads. `Part` depends only on the pack ids;
    /// `Percent` picks ⌈percent × packs / 100⌉ packs at random.
    pub fn select<'p>(&self, packs: &'p [PackRecord]) -> Vec<&'p PackRecord> {
        match *self {
            Subset::Part { n, m } => packs.iter().filter(|p| pack_bucket(&p.id, m) == n - 1).collect(),
            Subset::Percent(percent) => {
                let wanted = ((packs.len() as f64 * percent / 100.0).ceil() as usize).min(packs.len());
                let mut keyed: Vec<(u64, &PackRecord)> = packs
                    .iter()
                    .map(|p| {
                        let mut draw = [0u8; 8];
                        crate::crypto::random_bytes(&mut draw);
                        (u64::from_le_bytes(draw), p)
                    })
                    .collect();
                keyed.sort_by_key(|(draw, _)| *draw);
                keyed.into_iter().take(wanted).map(|(_, p)| p).collect()
            }
        }
    }
}

/// The bucket (0-based, below `m`) of a pack: the first 64 bits of its id modulo `m`.
/// Pack ids are BLAKE3 hashes, so packs spread evenly over the buckets.
fn pack_bucket(pack_id: &str, m: u32) -> u32 {
    let head = pack_id.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0);
    (head % u64::from(m)) as u32
}

impl std::str::FromStr for Subset {
    type Err = Error;

    /// Parses `n/m` (e.g. `2/7`) or a percentage (e.g. `10%`, `2.5%`).
    fn from_str(text: &str) -> Result<Subset> {
        let bad = |why: &str| Error::Refused(format!("bad read-data subset `{text}`: {why}"));
        if let Some(percent) = text.strip_suffix('%') {
            let percent: f64 = percent.trim().parse().map_err(|_| bad("expected a percentage like `10%`"))?;
            let subset = Subset::Percent(percent);
            subset.validate().map_err(|_| bad("the percentage must be above 0 and at most 100"))?;
            return Ok(subset);
        }
        let (n, m) = text.split_once('/').ok_or_else(|| bad("expected `n/m` (e.g. `1/5`) or a percentage"))?;
        let n: u32 = n.trim().parse().map_err(|_| bad("`n` in `n/m` must be a whole number"))?;
        let m: u32 = m.trim().parse().map_err(|_| bad("`m` in `n/m` must be a whole number"))?;
        let subset = Subset::Part { n, m };
        subset.validate().map_err(|_| bad("`n/m` needs 1 <= n <= m"))?;
        Ok(subset)
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subset::Part { n, m } => write!(f, "{n}/{m}"),
            Subset::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A snapshot hurt by damage, and the files and folders in it that are.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Affected {
    pub snapshot: String,
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// The subset of packs read, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<Subset>,
    pub snapshots: usize,
    pub packs: usize,
    /// Packs read and authenticated (all of them with `read_data`, a share with a subset).
    pub packs_read: usize,
    /// Ids of the packs read, sorted.
    pub packs_read_ids: Vec<String>,
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
    if let Some(subset) = &options.read_data_subset {
        subset.validate()?;
    }
    report.read_data_subset = options.read_data_subset;
    // Snapshots first, then the index, then the packs: a backup writes in the opposite order
    // (packs, index, snapshot), so one that finishes while check runs never makes a snapshot
    // appear whose data check has not seen.
    let (snapshots, damaged_snapshots) = repo.snapshots_checked()?;
    for d in &damaged_snapshots {
        report.errors.push(format!("snapshot file {}: {} (`arca repair snapshots` removes it)", d.object, d.reason));
    }
    let index = load_index_reporting(repo, &mut report)?;
    let on_disk = repo.list_packs()?;
    report.packs = index.packs.len();
    let mut damaged: BTreeMap<String, String> = BTreeMap::new();
    for pack in &index.packs {
        let size = match on_disk.get(&pack.id) {
            None => {
                damaged.insert(pack.id.clone(), "missing".into());
                continue;
            }
            // Some stores list without sizes: ask for this one.
            Some(0) => repo.backend().size(&paths::pack(&pack.id))?,
            Some(&size) => size,
        };
        if size != pack.size {
            damaged.insert(pack.id.clone(), format!("size {size}, index says {}", pack.size));
        }
    }
    let indexed: HashSet<&str> = index.packs.iter().map(|p| p.id.as_str()).collect();
    let unindexed = on_disk.keys().filter(|id| !indexed.contains(id.as_str())).count();
    if unindexed > 0 {
        report
            .warnings
            .push(format!("{unindexed} pack(s) are in no index (left by an interrupted backup); prune removes them"));
    }
    if options.read_data || options.read_data_subset.is_some() {
        let blobs_read = std::sync::atomic::AtomicU64::new(0);
        let found: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        let to_read: Vec<&PackRecord> = match &options.read_data_subset {
            Some(subset) => subset.select(&index.packs),
            None => index.packs.iter().collect(),
        };
        let to_read: Vec<&PackRecord> = to_read.into_iter().filter(|p| !damaged.contains_key(&p.id)).collect();
        report.packs_read = to_read.len();
        report.packs_read_ids = to_read.iter().map(|p| p.id.clone()).collect();
        report.packs_read_ids.sort();
        let queue: Mutex<Vec<&PackRecord>> = Mutex::new(to_read);
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
    report.snapshots = snapshots.len() + damaged_snapshots.len();
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
            // A prune replaced it between the listing and the read.
            Err(Error::NotFound(_)) => {}
            Err(e) => report.errors.push(format!("index file {name}: {e} (`arca repair index` rebuilds the index)")),
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

#[cfg(test)]
mod tests {
    use super::Subset;
    use crate::repository::PackRecord;

    fn packs(count: usize) -> Vec<PackRecord> {
        (0..count).map(|i| PackRecord { id: blake3::hash(&i.to_le_bytes()).to_hex().to_string(), size: 1 }).collect()
    }

    #[test]
    fn parts_split_the_packs_without_overlap() {
        let packs = packs(200);
        let mut seen: Vec<&str> = Vec::new();
        for n in 1..=7 {
            let part = Subset::Part { n, m: 7 }.select(&packs);
            assert!(!part.is_empty() && part.len() < 60, "part {n}/7 has {} packs", part.len());
            seen.extend(part.iter().map(|p| p.id.as_str()));
        }
        seen.sort();
        let mut all: Vec<&str> = packs.iter().map(|p| p.id.as_str()).collect();
        all.sort();
        assert_eq!(seen, all, "every pack in exactly one part");
    }

    #[test]
    fn a_percentage_reads_that_share_rounded_up() {
        let packs = packs(30);
        assert_eq!(Subset::Percent(10.0).select(&packs).len(), 3);
        assert_eq!(Subset::Percent(1.0).select(&packs).len(), 1);
        assert_eq!(Subset::Percent(100.0).select(&packs).len(), 30);
    }

    #[test]
    fn subsets_parse_and_print() {
        assert_eq!("2/5".parse::<Subset>().unwrap(), Subset::Part { n: 2, m: 5 });
        assert_eq!("12.5%".parse::<Subset>().unwrap(), Subset::Percent(12.5));
        assert_eq!(Subset::Part { n: 1, m: 3 }.to_string(), "1/3");
        for bad in ["0/5", "6/5", "1/0", "x", "0%", "101%", "1/", "/2", "-5%"] {
            let error = bad.parse::<Subset>().unwrap_err().to_string();
            assert!(error.starts_with(&format!("bad read-data subset `{bad}`")), "{error}");
        }
    }
}
