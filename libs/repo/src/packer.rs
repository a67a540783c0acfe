//! Packs: sealed blobs are appended to an open pack per blob kind; a full pack gets its
//! sealed header and is uploaded in the background. Once uploads finish, their packs are
//! recorded in an index file every few packs, so an interrupted backup leaves indexed
//! packs the next run reuses (and at worst a few unindexed packs that prune removes).

use std::collections::VecDeque;

use crate::crypto::FLAG_ZSTD;
use crate::error::{Error, Result};
use crate::format::{BlobId, BlobKind, IndexFile, IndexedPack, PackEntry, PackHeader, to_msgpack};
use crate::repository::{Repository, paths};

/// Uploaded packs collected before an index file is written.
const PACKS_PER_INDEX: usize = 8;

/// A blob ready for a pack: already compressed (or not) and sealed.
pub struct SealedBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    pub sealed: Vec<u8>,
    pub raw_length: u32,
}

struct OpenPack {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl OpenPack {
    fn new(capacity: usize) -> OpenPack {
        OpenPack { data: Vec::with_capacity(capacity), entries: Vec::new() }
    }
}

/// Counts what the packer stored.
#[derive(Clone, Debug, Default)]
pub struct PackerStats {
    pub blobs: u64,
    pub bytes: u64,
    pub packs: u64,
    pub index_files: Vec<String>,
}

pub struct Packer {
    repo: Repository,
    open: [OpenPack; 2],
    in_flight: VecDeque<(tokio::task::JoinHandle<Result<()>>, IndexedPack)>,
    uploaded: Vec<IndexedPack>,
    stats: PackerStats,
    pack_size: usize,
}

fn slot(kind: BlobKind) -> usize {
    match kind {
        BlobKind::Data => 0,
        BlobKind::Tree => 1,
    }
}

impl Packer {
    pub fn new(repo: &Repository) -> Packer {
        let pack_size = repo.config().pack_size as usize;
        Packer {
            repo: repo.clone(),
            open: [OpenPack::new(pack_size + (1 << 20)), OpenPack::new(1 << 20)],
            in_flight: VecDeque::new(),
            uploaded: Vec::new(),
            stats: PackerStats::default(),
            pack_size,
        }
    }

    /// Adds a blob; uploads the pack when it is full.
    pub fn add(&mut self, blob: SealedBlob) -> Result<()> {
        let pack = &mut self.open[slot(blob.kind)];
        pack.entries.push(PackEntry {
            id: blob.id,
            kind: blob.kind,
            offset: pack.data.len() as u32,
            length: blob.sealed.len() as u32,
            raw_length: blob.raw_length,
        });
        pack.data.extend_from_slice(&blob.sealed);
        self.stats.blobs += 1;
        self.stats.bytes += blob.sealed.len() as u64;
        if pack.data.len() >= self.pack_size {
            self.seal_and_upload(slot(blob.kind))?;
        }
        Ok(())
    }

    fn seal_and_upload(&mut self, slot: usize) -> Result<()> {
        let capacity = if slot == 0 { self.pack_size + (1 << 20) } else { 1 << 20 };
        let OpenPack { mut data, entries } = std::mem::replace(&mut self.open[slot], OpenPack::new(capacity));
        if entries.is_empty() {
            return Ok(());
        }
        let header = to_msgpack(&PackHeader { entries: entries.clone() });
        let compressed = zstd::bulk::compress(&header, 3).map_err(Error::io("compress pack header", ""))?;
        let before = data.len();
        self.repo.data_key().seal_into(FLAG_ZSTD, &compressed, &mut data);
        let header_len = (data.len() - before) as u32;
        data.extend_from_slice(&header_len.to_le_bytes());
        let id = blake3::hash(&data).to_hex().to_string();
        let record = IndexedPack { id: id.clone(), size: data.len() as u64, entries };
        self.stats.packs += 1;
        self.repo.backend().ensure_room_for(data.len() as u64)?;
        while self.in_flight.len() >= self.repo.backend().write_concurrency() {
            self.finish_oldest_upload()?;
        }
        let handle = self.repo.backend().spawn_write(paths::pack(&id), data);
        self.in_flight.push_back((handle, record));
        // Index what has finished uploading so far, so a crash loses little.
        while self.in_flight.front().is_some_and(|(h, _)| h.is_finished()) {
            self.finish_oldest_upload()?;
        }
        Ok(())
    }

    fn finish_oldest_upload(&mut self) -> Result<()> {
        let (handle, record) = self.in_flight.pop_front().expect("caller checked");
        self.repo.backend().runtime().block_on(handle).expect("upload task panicked")?;
        self.uploaded.push(record);
        if self.uploaded.len() >= PACKS_PER_INDEX {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&mut self) -> Result<()> {
        if self.uploaded.is_empty() {
            return Ok(());
        }
        let file = IndexFile { packs: std::mem::take(&mut self.uploaded), supersedes: Vec::new() };
        let name = self.repo.save_index(&file)?;
        self.stats.index_files.push(name);
        Ok(())
    }

    /// Called when no blob arrived for a while: index every finished upload now, so a
    /// stalled or slow source does not keep uploaded packs unindexed.
    pub fn idle(&mut self) -> Result<()> {
        while self.in_flight.front().is_some_and(|(h, _)| h.is_finished()) {
            self.finish_oldest_upload()?;
        }
        self.write_index()
    }

    /// Uploads the open packs, waits for every upload and writes the last index file.
    pub fn finish(mut self) -> Result<PackerStats> {
        self.seal_and_upload(0)?;
        self.seal_and_upload(1)?;
        while !self.in_flight.is_empty() {
            self.finish_oldest_upload()?;
        }
        self.write_index()?;
        Ok(self.stats)
    }
}

/// Splits a pack file into its header entries (for check and index repair).
pub fn read_pack_header(repo: &Repository, pack_id: &str, pack: &[u8]) -> Result<Vec<PackEntry>> {
    let what = paths::pack(pack_id);
    if pack.len() < 4 {
        return Err(Error::corrupt(&what, "pack too short"));
    }
    let header_len = u32::from_le_bytes(pack[pack.len() - 4..].try_into().expect("4 bytes")) as usize;
    if header_len + 4 > pack.len() {
        return Err(Error::corrupt(&what, "pack header length out of range"));
    }
    let sealed = &pack[pack.len() - 4 - header_len..pack.len() - 4];
    let header: PackHeader = crate::format::from_msgpack(&repo.open_object(&what, sealed)?, &what)?;
    Ok(header.entries)
}

/// Reads the headers of packs of known size (two range reads each, a few packs at a time):
/// the packs as an index file would list them, and those whose header cannot be read (id, why).
pub fn read_pack_headers(repo: &Repository, packs: &[(String, u64)]) -> (Vec<IndexedPack>, Vec<(String, String)>) {
    let queue = std::sync::Mutex::new(packs.iter());
    let found = std::sync::Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..packs.len().min(8) {
            scope.spawn(|| {
                while let Some((id, size)) = queue.lock().expect("queue poisoned").next() {
                    let read = read_pack_header_at(repo, id, *size);
                    let mut found = found.lock().expect("results poisoned");
                    match read {
                        Ok(entries) => found.0.push(IndexedPack { id: id.clone(), size: *size, entries }),
                        Err(e) => found.1.push((id.clone(), e.to_string())),
                    }
                }
            });
        }
    });
    let (mut read, mut unreadable) = found.into_inner().expect("results poisoned");
    read.sort_by(|a: &IndexedPack, b| a.id.cmp(&b.id));
    unreadable.sort();
    (read, unreadable)
}

/// Reads one pack's header without reading its blobs.
fn read_pack_header_at(repo: &Repository, pack_id: &str, size: u64) -> Result<Vec<PackEntry>> {
    let what = paths::pack(pack_id);
    let size = if size == 0 { repo.backend().size(&what)? } else { size };
    if size < 4 {
        return Err(Error::corrupt(&what, "pack too short"));
    }
    let tail = repo.backend().read_range(&what, size - 4, 4)?;
    let header_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
    if header_len + 4 > size {
        return Err(Error::corrupt(&what, "pack header length out of range"));
    }
    let sealed = repo.backend().read_range(&what, size - 4 - header_len, header_len)?;
    let header: PackHeader = crate::format::from_msgpack(&repo.open_object(&what, &sealed)?, &what)?;
    Ok(header.entries)
}
