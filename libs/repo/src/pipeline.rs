//! The write pipeline shared by every kind of backup: callers hand in plaintext blobs;
//! blobs the repository already has are dropped at once (dedup by keyed id), new ones are
//! compressed and sealed on a pool of threads and packed and uploaded by one packer thread.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use crate::crypto::FLAG_ZSTD;
use crate::error::{Error, Result};
use crate::format::{BlobId, BlobKind, IndexFile, from_msgpack};
use crate::packer::{Packer, PackerStats, SealedBlob};
use crate::repository::{Index, Repository, paths};
use crate::ticker::Ticker;

struct RawBlob {
    id: BlobId,
    kind: BlobKind,
    data: Vec<u8>,
    /// `Some((flags, raw_length))` when `data` is already encoded as stored (compressed
    /// or deliberately raw), so it is only sealed; `None` when it is plaintext to compress.
    encoded: Option<(u8, u32)>,
}

/// Decides, once per id, whether a blob still has to be stored.
struct Dedup {
    index: Arc<Index>,
    /// Blobs other writers indexed while this run was going (see [`watch_other_writers`]).
    others: RwLock<HashSet<BlobId>>,
    pending: Mutex<HashSet<BlobId>>,
}

impl Dedup {
    fn known(&self, id: &BlobId) -> bool {
        self.index.contains(id) || self.others.read().expect("dedup lock poisoned").contains(id)
    }

    fn claim(&self, id: &BlobId) -> bool {
        !self.known(id) && self.pending.lock().expect("dedup lock poisoned").insert(*id)
    }
}

/// The cloneable handle that stores blobs.
#[derive(Clone)]
pub struct BlobSink {
    repo: Repository,
    dedup: Arc<Dedup>,
    tx: Sender<RawBlob>,
}

impl BlobSink {
    /// Stores `data` unless the repository has it; returns its id.
    pub fn store(&self, kind: BlobKind, data: &[u8]) -> Result<BlobId> {
        let id = self.repo.blob_id(data);
        if self.dedup.claim(&id) {
            self.tx.send(RawBlob { id, kind, data: data.to_vec(), encoded: None }).map_err(|_| pipeline_stopped())?;
        }
        Ok(id)
    }

    /// Stores a blob already encoded as another repository stored it (`flags` says whether
    /// `encoded` is zstd; `raw_length` is the plaintext length), unless this repository has
    /// it: it is sealed with this repository's key without being compressed again. The
    /// caller has checked that `id` is the keyed id of the plaintext. Returns whether the
    /// blob was queued (false when the repository has it or it is already on its way).
    pub(crate) fn store_encoded(
        &self,
        id: BlobId,
        kind: BlobKind,
        flags: u8,
        encoded: Vec<u8>,
        raw_length: u32,
    ) -> Result<bool> {
        if !self.dedup.claim(&id) {
            return Ok(false);
        }
        let blob = RawBlob { id, kind, data: encoded, encoded: Some((flags & FLAG_ZSTD, raw_length)) };
        self.tx.send(blob).map_err(|_| pipeline_stopped())?;
        Ok(true)
    }
}

fn pipeline_stopped() -> Error {
    Error::PipelineStopped
}

/// The running threads behind a [`BlobSink`].
pub struct Pipeline {
    sink: Option<BlobSink>,
    compressors: Vec<JoinHandle<()>>,
    packer: JoinHandle<Result<PackerStats>>,
    watcher: Option<Ticker>,
}

/// How often a running backup looks for index files that concurrent writers added.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Adds the blobs of index files that appear while this run goes on, so concurrent
/// backups into one repository do not upload the same chunks twice.
fn watch_other_writers(repo: Repository, dedup: Arc<Dedup>) -> Ticker {
    let mut seen: HashSet<String> = dedup.index.files.iter().cloned().collect();
    Ticker::every(WATCH_EVERY, "arca-index-watch", move || {
        let Ok(listed) = repo.backend().list(paths::INDEX) else { return };
        for name in listed.into_iter().map(|l| format!("{}{}", paths::INDEX, l.name)) {
            if seen.contains(&name) {
                continue;
            }
            // Our own index files list only blobs already pending; reading them is harmless.
            if let Ok(file) = repo.load_object(&name).and_then(|b| from_msgpack::<IndexFile>(&b, &name)) {
                let mut others = dedup.others.write().expect("dedup lock poisoned");
                let trusted = file.packs.iter().filter(|p| !dedup.index.ghosts.contains(&p.id));
                others.extend(trusted.flat_map(|p| p.entries.iter().map(|e| e.id)));
                seen.insert(name);
            }
        }
    })
}

impl Pipeline {
    pub fn start(repo: &Repository, index: Arc<Index>, level: i32, threads: usize) -> Pipeline {
        let (tx_raw, rx_raw) = bounded::<RawBlob>(threads * 2);
        let (tx_sealed, rx_sealed) = bounded::<SealedBlob>(threads * 2);
        let compressors = (0..threads.max(1))
            .map(|_| {
                let (rx, tx, repo) = (rx_raw.clone(), tx_sealed.clone(), repo.clone());
                std::thread::Builder::new()
                    .name("arca-compress".into())
                    .spawn(move || compress_loop(&repo, level, rx, tx))
                    .expect("spawn compressor thread")
            })
            .collect();
        drop(tx_sealed);
        let packer_repo = repo.clone();
        let packer = std::thread::Builder::new()
            .name("arca-packer".into())
            .spawn(move || {
                let mut packer = Packer::new(&packer_repo);
                loop {
                    match rx_sealed.recv_timeout(Duration::from_secs(1)) {
                        Ok(blob) => packer.add(blob)?,
                        Err(RecvTimeoutError::Timeout) => packer.idle()?,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                packer.finish()
            })
            .expect("spawn packer thread");
        let dedup = Arc::new(Dedup { index, others: RwLock::new(HashSet::new()), pending: Mutex::new(HashSet::new()) });
        let watcher = Some(watch_other_writers(repo.clone(), dedup.clone()));
        Pipeline { sink: Some(BlobSink { repo: repo.clone(), dedup, tx: tx_raw }), compressors, packer, watcher }
    }

    pub fn sink(&self) -> &BlobSink {
        self.sink.as_ref().expect("sink lives until finish")
    }

    /// Waits until every blob is packed, uploaded and indexed.
    pub fn finish(mut self) -> Result<PackerStats> {
        drop(self.sink.take());
        for handle in self.compressors.drain(..) {
            handle.join().expect("compressor thread panicked");
        }
        drop(self.watcher.take());
        self.packer.join().expect("packer thread panicked")
    }
}

fn compress_loop(repo: &Repository, level: i32, rx: Receiver<RawBlob>, tx: Sender<SealedBlob>) {
    let mut compressor = zstd::bulk::Compressor::new(level).expect("valid zstd level");
    let mut probe = zstd::bulk::Compressor::new(1).expect("valid zstd level");
    for RawBlob { id, kind, data, encoded } in rx {
        if let Some((flags, raw_length)) = encoded {
            let sealed = repo.data_key().seal(flags, &data);
            if tx.send(SealedBlob { id, kind, sealed, raw_length }).is_err() {
                return;
            }
            continue;
        }
        let compressed = if looks_incompressible(&mut probe, &data) {
            None
        } else {
            compressor.compress(&data).ok().filter(|c| c.len() + c.len() / 32 < data.len())
        };
        let sealed = match &compressed {
            Some(c) => repo.data_key().seal(FLAG_ZSTD, c),
            None => repo.data_key().seal(0, &data),
        };
        if tx.send(SealedBlob { id, kind, sealed, raw_length: data.len() as u32 }).is_err() {
            // The packer failed; `finish` reports its error.
            return;
        }
    }
}

/// Compressing a 16 KiB sample at the fastest level tells random or already-compressed
/// data apart cheaply, so it is stored raw without paying for a full compression.
fn looks_incompressible(probe: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if data.len() < 4 * SAMPLE {
        return false;
    }
    let mid = data.len() / 2;
    let sample = &data[mid - SAMPLE / 2..mid + SAMPLE / 2];
    match probe.compress(sample) {
        Ok(c) => c.len() * 100 >= sample.len() * 97,
        Err(_) => false,
    }
}
