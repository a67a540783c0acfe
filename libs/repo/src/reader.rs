//! Random access to one file of a snapshot, straight from the repository: what instant
//! recovery (an image exported over NBD) and HTTP range requests read through.
//!
//! A file's content is a list of chunks; [`FileReader`] keeps their start offsets, finds the
//! chunks a read covers by binary search, and decodes each chunk once into a small shared
//! cache, so the many small reads of a block-device client cost one pack range read per
//! chunk. Holes read as zeros and are never fetched.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{ChunkRef, Node, NodeKind, Snapshot};
use crate::repository::{Index, Repository, TreeLoader};
use crate::restore::walk_tree;

/// Decoded chunks kept per reader: 4 MiB image blocks make this 128 MiB at most.
const CACHED_CHUNKS: usize = 32;

/// Reads any byte range of one file of a snapshot.
pub struct FileReader {
    repo: Repository,
    index: Arc<Index>,
    chunks: Vec<ChunkRef>,
    /// `starts[i]` is where chunk `i` begins in the file; one more entry holds the size.
    starts: Vec<u64>,
    cache: quick_cache::sync::Cache<usize, Arc<Vec<u8>>>,
}

impl FileReader {
    /// A reader of `node`'s content (a regular file).
    pub fn new(repo: Repository, index: Arc<Index>, node: &Node) -> Result<FileReader> {
        if node.kind != NodeKind::File {
            return Err(Error::Refused(format!("{} is not a regular file", node.name_lossy())));
        }
        let mut starts = Vec::with_capacity(node.content.len() + 1);
        let mut offset = 0u64;
        for chunk in &node.content {
            starts.push(offset);
            offset += u64::from(chunk.1);
        }
        starts.push(offset);
        if offset != node.size {
            return Err(Error::corrupt(
                node.name_lossy(),
                format!("its chunks hold {offset} bytes, the file has {}", node.size),
            ));
        }
        Ok(FileReader {
            repo,
            index,
            chunks: node.content.clone(),
            starts,
            cache: quick_cache::sync::Cache::new(CACHED_CHUNKS),
        })
    }

    pub fn size(&self) -> u64 {
        *self.starts.last().expect("starts holds the size")
    }

    /// Fills `buf` from `offset`; returns how many bytes it read (fewer only at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = self.size().min(offset.saturating_add(buf.len() as u64));
        if offset >= end {
            return Ok(0);
        }
        let mut at = offset;
        let mut i = self.starts.partition_point(|&start| start <= at) - 1;
        while at < end {
            let chunk_start = self.starts[i];
            let chunk_end = self.starts[i + 1];
            let from = (at - chunk_start) as usize;
            let take = (chunk_end.min(end) - at) as usize;
            let out = &mut buf[(at - offset) as usize..][..take];
            match self.chunks[i].0 {
                None => out.fill(0),
                Some(_) => out.copy_from_slice(&self.chunk(i)?[from..from + take]),
            }
            at += take as u64;
            i += 1;
        }
        Ok((end - offset) as usize)
    }

    /// Whether `[offset, offset + len)` is all hole (reads as zeros without any fetch).
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = self.size().min(offset.saturating_add(len));
        let first = self.starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let last = self.starts.partition_point(|&start| start < end);
        (first..last.min(self.chunks.len())).all(|i| self.chunks[i].0.is_none())
    }

    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        self.cache.get_or_insert_with(&i, || {
            let id = self.chunks[i].0.expect("holes are not fetched");
            let plain = self.repo.read_blob(&self.index, &id)?;
            if plain.len() as u32 != self.chunks[i].1 {
                return Err(Error::corrupt(format!("blob {id}"), "its length differs from the file's record"));
            }
            Ok(Arc::new(plain))
        })
    }
}

/// Finds the node at `path` (components separated by `/`, leading `/` optional) in a snapshot.
pub fn find_node(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &str) -> Result<Node> {
    let loader = TreeLoader::new(repo, index);
    let mut tree = snapshot.tree;
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let not_found = || Error::NotFound(format!("{path} in the snapshot"));
    let Some((last, folders)) = components.split_last() else {
        return Err(Error::Refused("name a file or folder of the snapshot".into()));
    };
    for name in folders {
        let node = loader.load(&tree)?.nodes.into_iter().find(|n| n.name == name.as_bytes()).ok_or_else(not_found)?;
        tree = node.subtree.ok_or_else(not_found)?;
    }
    loader.load(&tree)?.nodes.into_iter().find(|n| n.name == last.as_bytes()).ok_or_else(not_found)
}

/// The one file of an image snapshot, with its path.
pub fn image_node(repo: &Repository, index: &Index, snapshot: &Snapshot) -> Result<(String, Node)> {
    let loader = TreeLoader::new(repo, index);
    let mut found = None;
    walk_tree(&loader, &snapshot.tree, b"", &mut |path, node| {
        if node.kind == NodeKind::File && found.is_none() {
            found = Some((String::from_utf8_lossy(path).into_owned(), node.clone()));
        }
        Ok(found.is_none())
    })?;
    found.ok_or_else(|| Error::NotFound("a file in the image snapshot".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupOptions, BackupSource, IMAGE_BLOCK, backup};
    use crate::crypto::KdfParams;
    use crate::{Backend, InitOptions, Target, TargetOptions};

    fn noise(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// An image with data, a run of zero blocks (holes) and a short tail, read back in ranges
    /// that cross every kind of boundary.
    #[test]
    fn reads_any_range_of_an_image_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = noise(2 * IMAGE_BLOCK + 10, 7);
        image.resize(5 * IMAGE_BLOCK, 0);
        image.extend_from_slice(&noise(IMAGE_BLOCK + 12_345, 8));
        let path = dir.path().join("vm.img");
        std::fs::write(&path, &image).unwrap();
        let target = Target::parse(&format!("fs://{}", dir.path().join("repo").display())).unwrap();
        let options = InitOptions {
            kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            ..InitOptions::default()
        };
        let repo =
            Repository::init(Backend::open(&target, &TargetOptions::default()).unwrap(), b"pw", &options).unwrap();
        let outcome = backup(&repo, BackupSource::Image(path), &BackupOptions::default()).unwrap();
        let index = Arc::new(repo.load_index().unwrap());
        let (_, node) = image_node(&repo, &index, &outcome.snapshot).unwrap();
        let reader = FileReader::new(repo.clone(), index, &node).unwrap();
        assert_eq!(reader.size(), image.len() as u64);
        assert!(reader.is_hole(3 * IMAGE_BLOCK as u64, IMAGE_BLOCK as u64));
        assert!(!reader.is_hole(2 * IMAGE_BLOCK as u64, IMAGE_BLOCK as u64 + 1));
        let len = image.len() as u64;
        for (offset, size) in [
            (0, 100),
            (IMAGE_BLOCK as u64 - 3, 7),
            (2 << 20, 6 << 20),
            (5 * IMAGE_BLOCK as u64 - 1, 2 << 20),
            (len - 100, 100),
            (len - 10, 100),
            (0, len as usize),
        ] {
            let mut buf = vec![0xaau8; size];
            let read = reader.read_at(offset, &mut buf).unwrap();
            let end = (offset + size as u64).min(len) as usize;
            assert_eq!(read, end - offset as usize, "at {offset}");
            assert!(buf[..read] == image[offset as usize..end], "bytes at {offset}+{size}");
        }
        assert_eq!(reader.read_at(len, &mut [0u8; 4]).unwrap(), 0);
    }
}
