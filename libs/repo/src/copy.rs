//! Copies of snapshots from one repository to another, moving only the blobs the
//! destination lacks.
//!
//! Two repositories can exchange blobs when they share the blob-id key and the chunker
//! parameters: equal content then has equal blob ids in both, so the destination's index
//! says which blobs it already has. [`Repository::init_copy_of`] creates such a repository
//! (with its own master key and repository id); [`copy_snapshots`] refuses any other pair.
//!
//! A copy walks each selected snapshot's trees in the source, collects the tree and data
//! blobs the destination's index lacks, reads them from the source packs with ranged reads
//! (neighbouring blobs in one request), authenticates and checks each against its id, and
//! hands the stored encoding (zstd or raw, as the source stored it) to the destination's
//! [`Pipeline`], which seals it with the destination's key, packs, uploads and indexes it.
//! Blobs are not compressed again, so the destination keeps the source's compression.
//!
//! Write order is the backup's: packs, then their index files, and the snapshot manifests
//! last, so a copy killed at any point leaves no snapshot that points at missing data; the
//! next copy reuses the indexed packs. The destination's shared lease is held while writing.
//! The source is only read (no lease), like restore: a prune of the source running at the
//! same time may make the copy fail, and it must then be retried.
//!
//! A snapshot counts as already in the destination when one there has the same root tree,
//! time, host name and paths; such snapshots are skipped, so repeating a copy writes nothing
//! at all. A copied manifest is the source's (summary included) except for `parent`, which
//! names the parent's id in the destination when the parent is there too. Snapshot ids are
//! content hashes of the sealed manifest, so a copy's id differs from the source's id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::Backend;
use crate::crypto::FLAG_ZSTD;
use crate::error::{Error, Result};
use crate::format::{BlobId, Snapshot, SnapshotMap};
use crate::gc::{WriteGuard, used_blobs};
use crate::lock::Lease;
use crate::pipeline::{BlobSink, Pipeline};
use crate::repository::{Index, InitOptions, Location, Repository, RepositoryIdentity, paths};

/// Neighbouring blobs closer than this are fetched in one request (the gap is read and dropped).
const MAX_READ_GAP: u64 = 256 << 10;
/// One request reads at most this much, so a worker never holds a whole pack.
const MAX_READ: u64 = 8 << 20;
/// Source packs read at once: reads are mostly waiting on storage.
const READERS: usize = 4;

/// How to copy.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Live counters the caller can poll.
    pub progress: Option<Arc<CopyProgress>>,
}

/// Counters updated while a copy runs. Totals are known once the snapshots' trees have
/// been walked (`blobs_total` is set before the first blob is read).
#[derive(Debug, Default)]
pub struct CopyProgress {
    pub snapshots_total: AtomicU64,
    pub snapshots_done: AtomicU64,
    /// Blobs to copy (those the destination lacks) and their sealed bytes in the source.
    pub blobs_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub blobs_done: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// One selected snapshot and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopiedSnapshot {
    pub source_id: String,
    /// Its id in the destination: the new manifest, or the one that was already there.
    pub destination_id: String,
    /// False when the destination already had it (nothing was written for it).
    pub copied: bool,
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyReport {
    /// The selected snapshots, oldest first.
    pub snapshots: Vec<CopiedSnapshot>,
    pub snapshots_copied: u64,
    pub snapshots_skipped: u64,
    /// Tree and data blobs stored in the destination by this copy.
    pub blobs_copied: u64,
    /// Blobs the copied snapshots need that the destination already had.
    pub blobs_skipped: u64,
    /// Plaintext bytes of the copied blobs.
    pub bytes_copied: u64,
    /// Sealed bytes of the copied blobs, as uploaded in packs.
    pub bytes_stored: u64,
    /// Bytes read from the source's packs (blobs plus the small gaps between them).
    pub bytes_read: u64,
    /// Source packs read from, and packs written to the destination.
    pub packs_read: u64,
    pub packs_written: u64,
    pub duration_ms: u64,
}

impl Repository {
    /// The blob-id key and chunker seed of this repository: a repository created with
    /// the same identity gives equal content equal blob ids.
    pub fn identity(&self) -> RepositoryIdentity {
        let mut id_key = [0u8; 32];
        hex::decode_to_slice(&self.config().id_key, &mut id_key).expect("id key written by init is hex");
        RepositoryIdentity { id_key, chunker_seed: self.config().chunker.seed }
    }

    /// Creates a repository at `backend` that [`copy_snapshots`] can copy into from `source`
    /// (and back): same blob-id key and chunker as `source`, its own random master key and
    /// repository id, opened later with [`Repository::open`] like any other. `options.identity`
    /// is ignored; the other options apply.
    pub fn init_copy_of(
        backend: Backend,
        passphrase: &[u8],
        source: &Repository,
        options: &InitOptions,
    ) -> Result<Repository> {
        let options = InitOptions { identity: Some(source.identity()), ..options.clone() };
        Repository::init(backend, passphrase, &options)
    }
}

/// Refuses a pair of repositories that cannot exchange blobs, or one repository twice.
pub fn ensure_copy_compatible(source: &Repository, destination: &Repository) -> Result<()> {
    let (src, dst) = (source.config(), destination.config());
    if src.id == dst.id {
        return Err(Error::Refused(format!(
            "`{}` and `{}` are the same repository ({})",
            source.backend().target(),
            destination.backend().target(),
            src.id
        )));
    }
    let why = if src.id_key != dst.id_key {
        "their blob ids are keyed differently"
    } else if src.chunker != dst.chunker {
        "their chunkers differ"
    } else {
        return Ok(());
    };
    Err(Error::Incompatible(format!(
        "`{}` cannot take blobs from `{}`: {why} (create the destination as a copy of the source, \
         e.g. `arca copy --init`)",
        destination.backend().target(),
        source.backend().target()
    )))
}

/// Resolves snapshot selectors (full ids, unique id prefixes, or `latest`) against `all`;
/// returns full ids without duplicates, in the order given.
pub fn resolve_snapshots(all: &SnapshotMap, selectors: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for selector in selectors {
        let id = if selector == "latest" {
            all.iter()
                .max_by(|a, b| a.1.time.cmp(&b.1.time))
                .map(|(id, _)| id.clone())
                .ok_or_else(|| Error::NotFound("snapshot `latest` (the repository has no snapshots)".into()))?
        } else {
            let mut matching = all.keys().filter(|id| id.starts_with(selector.as_str()));
            match (matching.next(), matching.next()) {
                (None, _) => return Err(Error::NotFound(format!("snapshot `{selector}`"))),
                (Some(id), None) => id.clone(),
                (Some(_), Some(_)) => return Err(Error::Ambiguous(selector.clone())),
            }
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// What makes two manifests the same snapshot for [`copy_snapshots`].
type SnapshotKey = (BlobId, chrono::DateTime<chrono::Utc>, String, Vec<String>);

fn snapshot_key(snapshot: &Snapshot) -> SnapshotKey {
    let mut paths = snapshot.paths.clone();
    paths.sort();
    (snapshot.tree, snapshot.time, snapshot.hostname.clone(), paths)
}

/// Copies the snapshots `snapshot_ids` (full ids, unique prefixes or `latest`) from `source`
/// into `destination`, storing only the blobs the destination lacks; see the module docs.
pub fn copy_snapshots(
    source: &Repository,
    destination: &Repository,
    snapshot_ids: &[String],
    options: &CopyOptions,
) -> Result<CopyReport> {
    let started = Instant::now();
    ensure_copy_compatible(source, destination)?;
    // A shared lease on the source too: a prune there rewrites the index and repacks blobs
    // while we read them (the copy waits and is retried, like a backup).
    let _source_lease = Lease::acquire(source, false, "copy from")?;
    let progress = options.progress.clone().unwrap_or_default();
    let source_snapshots = source.snapshots()?;
    let mut selected: Vec<(String, Snapshot)> = resolve_snapshots(&source_snapshots, snapshot_ids)?
        .into_iter()
        .map(|id| {
            let snapshot = source_snapshots[&id].clone();
            (id, snapshot)
        })
        .collect();
    selected.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    progress.snapshots_total.store(selected.len() as u64, Ordering::Relaxed);

    let mut in_destination: HashMap<SnapshotKey, String> =
        destination.snapshots()?.into_iter().map(|(id, s)| (snapshot_key(&s), id)).collect();
    let mut report = CopyReport::default();
    let to_copy: Vec<&(String, Snapshot)> =
        selected.iter().filter(|(_, s)| !in_destination.contains_key(&snapshot_key(s))).collect();
    if to_copy.is_empty() {
        // Nothing to write: not even a lease is taken.
        for (id, snapshot) in &selected {
            report.snapshots.push(CopiedSnapshot {
                source_id: id.clone(),
                destination_id: in_destination[&snapshot_key(snapshot)].clone(),
                copied: false,
            });
        }
        report.snapshots_skipped = selected.len() as u64;
        progress.snapshots_done.store(selected.len() as u64, Ordering::Relaxed);
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    let _lease = Lease::acquire(destination, false, "copy")?;
    let guard = WriteGuard::begin(destination, "copy")?;
    let source_index = source.load_index()?;
    let destination_index = Arc::new(guard.trusted(destination.load_index()?));
    let used = used_blobs(source, &source_index, to_copy.iter().map(|(_, s)| s.tree))?;
    if let Some(first) = used.unindexed.iter().min() {
        return Err(Error::NotFound(format!("blob {first} in the source index (run `arca check` on the source)")));
    }
    let referenced = used.blobs;
    let mut by_pack: HashMap<u32, Vec<(BlobId, Location)>> = HashMap::new();
    for id in &referenced {
        if destination_index.contains(id) {
            report.blobs_skipped += 1;
            continue;
        }
        let (_, location) = source_index.get(id).ok_or_else(|| {
            Error::NotFound(format!("blob {id} in the source index (run `arca check` on the source)"))
        })?;
        progress.blobs_total.fetch_add(1, Ordering::Relaxed);
        progress.bytes_total.fetch_add(location.length as u64, Ordering::Relaxed);
        by_pack.entry(location.pack).or_default().push((*id, location));
    }
    report.packs_read = by_pack.len() as u64;
    tracing::debug!(
        referenced = referenced.len(),
        missing = progress.blobs_total.load(Ordering::Relaxed),
        packs = by_pack.len(),
        "copy planned"
    );

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let pipeline = Pipeline::start(destination, destination_index, destination.config().compression_level, threads);
    let counters = Counters::default();
    let moved = move_blobs(source, &source_index, by_pack, pipeline.sink(), &progress, &counters);
    if let Err(e) = moved {
        // Flush what was uploaded so the next copy reuses it, then report the cause.
        return Err(e.or_cause(pipeline.finish()));
    }
    let stats = pipeline.finish()?;
    report.blobs_copied = stats.blobs;
    report.bytes_stored = stats.bytes;
    report.packs_written = stats.packs;
    report.blobs_skipped += counters.already_queued.load(Ordering::Relaxed);
    report.bytes_copied = counters.plaintext.load(Ordering::Relaxed);
    report.bytes_read = counters.read.load(Ordering::Relaxed);

    // Every pack and index is written: now the manifests, oldest first so parents map. Look
    // again at what the destination holds, so a copy of the same snapshots that finished
    // meanwhile is not written twice.
    let roots: Vec<BlobId> = to_copy.iter().map(|(_, s)| s.tree).collect();
    guard.commit(destination, &roots, || {
        let mut written = Vec::new();
        in_destination.extend(destination.snapshots()?.into_iter().map(|(id, s)| (snapshot_key(&s), id)));
        let mut destination_ids: HashMap<String, String> = HashMap::new();
        for (id, snapshot) in &selected {
            let key = snapshot_key(snapshot);
            let (destination_id, copied) = match in_destination.get(&key) {
                Some(existing) => (existing.clone(), false),
                None => {
                    let mut copy = snapshot.clone();
                    copy.parent = snapshot.parent.as_ref().map(|p| {
                        destination_ids
                            .get(p)
                            .cloned()
                            .or_else(|| {
                                source_snapshots.get(p).and_then(|s| in_destination.get(&snapshot_key(s)).cloned())
                            })
                            .unwrap_or_else(|| p.clone())
                    });
                    let new_id = destination.save_snapshot(&copy)?;
                    written.push(new_id.clone());
                    in_destination.insert(key, new_id.clone());
                    (new_id, true)
                }
            };
            destination_ids.insert(id.clone(), destination_id.clone());
            if copied {
                report.snapshots_copied += 1;
            } else {
                report.snapshots_skipped += 1;
            }
            progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
            report.snapshots.push(CopiedSnapshot { source_id: id.clone(), destination_id, copied });
        }
        Ok(written)
    })?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A source pack (its number in the index) and the blobs to take from it.
type PackWork = (u32, Vec<(BlobId, Location)>);

#[derive(Default)]
struct Counters {
    plaintext: AtomicU64,
    read: AtomicU64,
    /// Blobs another writer stored in the destination while this copy ran.
    already_queued: AtomicU64,
}

/// Reads the wanted blobs pack by pack on a few threads and hands them to `sink`.
fn move_blobs(
    source: &Repository,
    index: &Index,
    by_pack: HashMap<u32, Vec<(BlobId, Location)>>,
    sink: &BlobSink,
    progress: &CopyProgress,
    counters: &Counters,
) -> Result<()> {
    let queue: Mutex<Vec<PackWork>> = Mutex::new(by_pack.into_iter().collect());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            scope.spawn(|| {
                let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompression context");
                loop {
                    if first_error.lock().expect("error lock poisoned").is_some() {
                        return;
                    }
                    let Some((pack, blobs)) = queue.lock().expect("queue poisoned").pop() else { return };
                    let pack_id = &index.packs[pack as usize].id;
                    if let Err(e) = move_pack(source, pack_id, blobs, sink, &mut decompressor, progress, counters) {
                        first_error.lock().expect("error lock poisoned").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("error lock poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn move_pack(
    source: &Repository,
    pack_id: &str,
    mut blobs: Vec<(BlobId, Location)>,
    sink: &BlobSink,
    decompressor: &mut zstd::bulk::Decompressor<'_>,
    progress: &CopyProgress,
    counters: &Counters,
) -> Result<()> {
    let name = paths::pack(pack_id);
    blobs.sort_by_key(|(_, location)| location.offset);
    let mut i = 0;
    while i < blobs.len() {
        let start = blobs[i].1.offset as u64;
        let mut end = start + blobs[i].1.length as u64;
        let mut j = i + 1;
        while j < blobs.len() {
            let (offset, length) = (blobs[j].1.offset as u64, blobs[j].1.length as u64);
            if offset > end + MAX_READ_GAP || offset + length - start > MAX_READ {
                break;
            }
            end = end.max(offset + length);
            j += 1;
        }
        let mut bytes = source.backend().read_range(&name, start, end - start)?;
        counters.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        for (id, location) in &blobs[i..j] {
            let from = (location.offset as u64 - start) as usize;
            let sealed = bytes
                .get_mut(from..from + location.length as usize)
                .ok_or_else(|| Error::corrupt(&name, "blob beyond pack end"))?;
            let what = || format!("blob {id} in source pack {pack_id}");
            let (flags, encoded) = source.data_key().open_in_place(sealed, &what())?;
            // Check the content against its id before the destination vouches for it.
            let plain_id = if flags & FLAG_ZSTD != 0 {
                let plain = decompressor
                    .decompress(encoded, location.raw_length as usize)
                    .map_err(|e| Error::corrupt(what(), format!("zstd: {e}")))?;
                if plain.len() != location.raw_length as usize {
                    return Err(Error::corrupt(what(), "length does not match the index"));
                }
                source.blob_id(&plain)
            } else {
                source.blob_id(encoded)
            };
            if plain_id != *id {
                return Err(Error::corrupt(what(), "content does not match its id"));
            }
            if sink.store_encoded(*id, location.kind, flags, encoded.to_vec(), location.raw_length)? {
                counters.plaintext.fetch_add(location.raw_length as u64, Ordering::Relaxed);
            } else {
                counters.already_queued.fetch_add(1, Ordering::Relaxed);
            }
            progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            progress.bytes_done.fetch_add(location.length as u64, Ordering::Relaxed);
        }
        i = j;
    }
    Ok(())
}
