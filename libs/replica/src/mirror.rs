//! A mirror: one folder kept equal to another — files, folders, symlinks, modes and mtimes —
//! writing only what changed. A file that changed is compared block by block (1 MiB) against
//! what the mirror last wrote (BLAKE3 of each block, kept in memory) or, after a restart,
//! against the mirror's own bytes, and only the differing blocks are written; so a large disk
//! image that changed in a few places costs a read of the source and a few block writes.
//!
//! New files are written beside their final name and renamed into place after `fsync`, so
//! the mirror never shows half a new file; changed files are patched in place and synced. A
//! change counts as durable once the sync that carried it returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The unit of change detection and of writes.
pub const BLOCK: usize = 1 << 20;

/// Threads copying the files of one pass.
const WORKERS: usize = 8;

/// Prefix of files being written; never part of a finished mirror.
const TEMPORARY: &str = ".arca-mirror-";

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Files written (whole or in part).
    pub files: u64,
    /// Bytes written into the mirror.
    pub bytes_written: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Entries removed from the mirror.
    pub removed: u64,
    /// The source modification time of the oldest change carried: the sync made it durable,
    /// so `now - oldest_change` is the lag it had.
    pub oldest_change: Option<SystemTime>,
}

impl SyncStats {
    fn add(&mut self, other: SyncStats) {
        self.files += other.files;
        self.bytes_written += other.bytes_written;
        self.bytes_read += other.bytes_read;
        self.removed += other.removed;
        self.oldest_change = match (self.oldest_change, other.oldest_change) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Whether the sync changed anything.
    pub fn changed(&self) -> bool {
        self.files > 0 || self.removed > 0
    }
}

/// What the mirror last wrote for a file.
struct Known {
    size: u64,
    mtime: (i64, i64),
    blocks: Vec<[u8; 16]>,
}

/// Keeps `dest` equal to `source`.
pub struct Mirror {
    source: PathBuf,
    dest: PathBuf,
    known: Mutex<HashMap<PathBuf, Known>>,
}

fn block_hash(data: &[u8]) -> [u8; 16] {
    blake3::hash(data).as_bytes()[..16].try_into().expect("16 bytes")
}

fn mtime_of(meta: &fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

fn system_time(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or_else(|_| SystemTime::now())
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Reads at `offset` until `buf` is full or the end; returns how much it read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `rel` below `root`; the empty path is `root` itself, so a mirrored single file (an image)
/// is not named with a trailing `/` (which the file system refuses for a file).
fn under(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) }
}

/// The folder holding `path` (whose entry a rename or removal changes).
fn parent_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

fn remove_any(path: &Path) -> io::Result<bool> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Mirror {
    pub fn new(source: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Mirror {
        Mirror { source: source.into(), dest: dest.into(), known: Mutex::default() }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Forgets what it last wrote: the next sync compares files with the mirror's own bytes
    /// (after something else wrote into the mirror).
    pub fn forget_all(&self) {
        self.known.lock().expect("known blocks").clear();
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Makes the whole mirror equal to the source: a full walk of both. The source may be a
    /// single file (a disk image): then `dest` is a file too.
    pub fn sync_all(&self) -> io::Result<SyncStats> {
        self.in_parallel(WORKERS, |walk| walk.root(false))
    }

    /// Brings these source paths (anything under the source: files, folders, paths that no
    /// longer exist) into the mirror; a folder brings its whole subtree.
    pub fn sync_paths<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> io::Result<SyncStats> {
        let mut relative: Vec<PathBuf> =
            paths.into_iter().filter_map(|path| path.strip_prefix(&self.source).ok().map(Path::to_path_buf)).collect();
        relative.sort();
        relative.dedup();
        if relative.iter().any(|rel| rel.as_os_str().is_empty()) {
            // The source itself: a single file (an image) or the whole folder.
            let workers = if self.source.is_dir() { WORKERS } else { 1 };
            return self.in_parallel(workers, |walk| walk.root(true));
        }
        // A few changed files (the usual pass) need no more threads than files.
        let workers = if relative.len() < WORKERS && !relative.iter().any(|rel| self.source.join(rel).is_dir()) {
            relative.len().max(1)
        } else {
            WORKERS
        };
        self.in_parallel(workers, |walk| {
            // A folder's subtree covers the paths below it.
            let mut covered: Vec<PathBuf> = Vec::new();
            for rel in relative {
                if covered.iter().any(|folder| rel.starts_with(folder))
                    || rel.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMPORARY))
                {
                    continue;
                }
                let meta = match fs::symlink_metadata(self.source.join(&rel)) {
                    Ok(meta) => meta,
                    Err(e) if not_found(&e) => {
                        walk.remove(&rel)?;
                        covered.push(rel);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(parent) = rel.parent() {
                    walk.folder(parent)?;
                }
                if meta.is_dir() {
                    walk.tree(&rel)?;
                    covered.push(rel);
                } else {
                    // Reported as changed: compare it even if its size and mtime look the same
                    // (a second write within the file system's timestamp granularity).
                    walk.file(rel, meta, true)?;
                }
            }
            Ok(())
        })
    }

    fn forget(&self, rel: &Path) {
        self.known.lock().expect("mirror state").retain(|path, _| !path.starts_with(rel));
    }

    /// Runs a walk whose file copies go to `workers` threads, then makes the pass durable:
    /// folders get their mode and mtime once every file in them was written (writing into a
    /// folder moves its mtime), deepest first, and every folder that gained or lost a name is
    /// synced so the renames survive a crash. Most of a small file's cost is the `fsync` that
    /// makes it durable; run side by side, those share the disk's flushes.
    fn in_parallel(
        &self,
        workers: usize,
        walking: impl FnOnce(&mut Walk<'_>) -> io::Result<()>,
    ) -> io::Result<SyncStats> {
        let renamed = Mutex::new(BTreeSet::new());
        let (jobs, queue) = crossbeam_channel::bounded::<FileJob>(workers * 4);
        let (stats, folders) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..workers)
                .map(|_| {
                    let (queue, renamed) = (queue.clone(), &renamed);
                    scope.spawn(move || -> io::Result<SyncStats> {
                        let mut stats = SyncStats::default();
                        for (rel, meta, force) in queue {
                            stats.add(self.sync_entry(&rel, &meta, force, renamed)?);
                        }
                        Ok(stats)
                    })
                })
                .collect();
            drop(queue);
            let mut walk =
                Walk { mirror: self, jobs, stats: SyncStats::default(), folders: Vec::new(), renamed: &renamed };
            let walked = walking(&mut walk);
            let Walk { jobs, mut stats, folders, .. } = walk;
            drop(jobs);
            let mut failed = None;
            for worker in workers {
                match worker.join().expect("a mirror worker panicked") {
                    Ok(done) => stats.add(done),
                    Err(e) => failed = failed.or(Some(e)),
                }
            }
            // A worker's error first: the walk only saw that the workers had stopped.
            match (failed, walked) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(())) => Ok((stats, folders)),
            }
        })?;
        for (rel, meta) in folders.iter().rev() {
            let dest_dir = self.dest.join(rel);
            fs::set_permissions(&dest_dir, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            filetime::set_file_mtime(&dest_dir, filetime::FileTime::from_last_modification_time(meta))?;
        }
        for folder in renamed.into_inner().expect("mirror state") {
            match File::open(&folder) {
                Ok(folder) => folder.sync_all()?,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Syncs one non-folder entry; unless `force`, a file whose size, mtime and mode match
    /// the mirror's is taken as unchanged without reading it.
    fn sync_entry(
        &self,
        rel: &Path,
        meta: &fs::Metadata,
        force: bool,
        renamed: &Mutex<BTreeSet<PathBuf>>,
    ) -> io::Result<SyncStats> {
        let dest = under(&self.dest, rel);
        if meta.file_type().is_symlink() {
            let target = match fs::read_link(under(&self.source, rel)) {
                Ok(target) => target,
                Err(e) if not_found(&e) => return Ok(SyncStats::default()),
                Err(e) => return Err(e),
            };
            if fs::read_link(&dest).ok().as_ref() == Some(&target) {
                return Ok(SyncStats::default());
            }
            remove_any(&dest)?;
            std::os::unix::fs::symlink(&target, &dest)?;
            renamed.lock().expect("mirror state").insert(parent_of(&dest));
            return Ok(SyncStats { files: 1, oldest_change: Some(system_time(meta)), ..SyncStats::default() });
        }
        if !meta.is_file() {
            // Sockets, fifos and devices are not mirrored.
            return Ok(SyncStats::default());
        }
        match self.sync_file(rel, meta, force, renamed) {
            Err(e) if not_found(&e) => Ok(SyncStats::default()),
            other => other,
        }
    }

    fn sync_file(
        &self,
        rel: &Path,
        meta: &fs::Metadata,
        force: bool,
        renamed: &Mutex<BTreeSet<PathBuf>>,
    ) -> io::Result<SyncStats> {
        let dest = under(&self.dest, rel);
        let dest_meta = match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_file() => Some(m),
            Ok(_) => {
                remove_any(&dest)?;
                renamed.lock().expect("mirror state").insert(parent_of(&dest));
                None
            }
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(e),
        };
        let mode = meta.mode() & 0o7777;
        if let Some(d) = &dest_meta
            && !force
            && d.len() == meta.len()
            && mtime_of(d) == mtime_of(meta)
            && d.mode() & 0o7777 == mode
        {
            return Ok(SyncStats::default());
        }
        let source = File::open(under(&self.source, rel))?;
        let mut stats = SyncStats { files: 1, oldest_change: Some(system_time(meta)), ..SyncStats::default() };
        let (file, temporary) = match &dest_meta {
            Some(_) => (OpenOptions::new().read(true).write(true).open(&dest)?, None),
            None => {
                let name = format!("{TEMPORARY}{}", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
                let temporary = dest.with_file_name(name);
                (File::create(&temporary)?, Some(temporary))
            }
        };
        // What the mirror holds now, as we last wrote it (if it has not changed since).
        let known = {
            let known = self.known.lock().expect("mirror state");
            known
                .get(rel)
                .filter(|k| dest_meta.as_ref().is_some_and(|d| d.len() == k.size && mtime_of(d) == k.mtime))
                .map(|k| k.blocks.clone())
        };
        let copy = Copy {
            source: &source,
            dest: &file,
            known: known.as_deref(),
            dest_len: dest_meta.as_ref().map(fs::Metadata::len),
        };
        // A large file is read and compared in parts side by side (a disk image: the read and
        // the hashing are most of a pass).
        let total = meta.len().div_ceil(BLOCK as u64);
        let parts = if total >= PARALLEL_FROM { PARTS.min(total) } else { 1 };
        let ranges: Vec<(u64, Option<u64>)> = (0..parts)
            .map(|part| {
                let (first, next) = (total * part / parts, total * (part + 1) / parts);
                (first, (part + 1 < parts).then_some(next))
            })
            .collect();
        let copied: Vec<io::Result<Copied>> = if parts == 1 {
            vec![copy.blocks(0, None)]
        } else {
            std::thread::scope(|scope| {
                let copy = &copy;
                let workers: Vec<_> =
                    ranges.iter().map(|&(first, last)| scope.spawn(move || copy.blocks(first, last))).collect();
                workers.into_iter().map(|w| w.join().expect("a block copier panicked")).collect()
            })
        };
        let mut blocks = Vec::with_capacity(total as usize);
        let mut offset = 0u64;
        for part in copied {
            let part = part?;
            stats.bytes_read += part.read;
            stats.bytes_written += part.written;
            blocks.extend(part.hashes);
            offset = part.end;
            // The file ended early (it shrank while we read it): later parts read nothing.
            if part.short {
                break;
            }
        }
        // Reported as changed but the same in every byte and attribute (a second notification
        // of a write an earlier pass carried): no change, nothing to make durable.
        let unchanged = dest_meta.as_ref().is_some_and(|d| {
            stats.bytes_written == 0 && d.len() == offset && mtime_of(d) == mtime_of(meta) && d.mode() & 0o7777 == mode
        });
        if unchanged {
            stats.files = 0;
            stats.oldest_change = None;
        } else {
            file.set_len(offset)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_data()?;
            let mtime = filetime::FileTime::from_last_modification_time(meta);
            filetime::set_file_handle_times(&file, None, Some(mtime))?;
        }
        drop(file);
        if let Some(temporary) = temporary {
            fs::rename(&temporary, &dest)?;
            renamed.lock().expect("mirror state").insert(parent_of(&dest));
        }
        // The source may have changed while we read it: remember what we wrote only if not.
        let after = fs::metadata(under(&self.source, rel))?;
        let mut known = self.known.lock().expect("mirror state");
        if after.len() == offset && mtime_of(&after) == mtime_of(meta) {
            known.insert(rel.to_path_buf(), Known { size: offset, mtime: mtime_of(meta), blocks });
        } else {
            known.remove(rel);
        }
        Ok(stats)
    }
}

/// Files of at least this many blocks are read in [`PARTS`] parts side by side.
const PARALLEL_FROM: u64 = 16;
const PARTS: u64 = 2;

/// What a part of a file's copy did.
struct Copied {
    hashes: Vec<[u8; 16]>,
    read: u64,
    written: u64,
    /// Where its reading stopped.
    end: u64,
    /// It reached the end of the file before the end of its part.
    short: bool,
}

/// Copying one file's changed blocks.
struct Copy<'a> {
    source: &'a File,
    dest: &'a File,
    /// Hashes of what the mirror holds, if it holds what it last wrote.
    known: Option<&'a [[u8; 16]]>,
    /// The mirror's length, when it has the file (else it is new, and stays sparse).
    dest_len: Option<u64>,
}

impl Copy<'_> {
    /// Blocks `first..last` (to the end of the file when `last` is `None`): each is read,
    /// hashed, compared with what the mirror holds and written only when it differs.
    fn blocks(&self, first: u64, last: Option<u64>) -> io::Result<Copied> {
        let mut buf = vec![0u8; BLOCK];
        let mut theirs = vec![0u8; BLOCK];
        let mut done = Copied { hashes: Vec::new(), read: 0, written: 0, end: first * BLOCK as u64, short: false };
        let mut index = first;
        while last.is_none_or(|last| index < last) {
            let offset = index * BLOCK as u64;
            let read = read_full_at(self.source, &mut buf, offset)?;
            done.end = offset + read as u64;
            if read < BLOCK {
                done.short = last.is_some();
            }
            if read == 0 {
                break;
            }
            done.read += read as u64;
            let block = &buf[..read];
            let hash = block_hash(block);
            let same = match (self.known, self.dest_len) {
                (Some(known), _) => known.get(index as usize) == Some(&hash),
                (None, Some(len)) if offset < len => {
                    let have = read_full_at(self.dest, &mut theirs[..read], offset)?;
                    have == read && theirs[..read] == *block
                }
                _ => false,
            };
            // A new file stays sparse: its zero blocks are holes `set_len` leaves.
            let hole = self.dest_len.is_none() && block.iter().all(|&b| b == 0);
            if !same && !hole {
                self.dest.write_all_at(block, offset)?;
                done.written += read as u64;
            }
            done.hashes.push(hash);
            if read < BLOCK {
                break;
            }
            index += 1;
        }
        Ok(done)
    }
}

/// One file to bring over: its path below the source, its metadata, whether to compare it
/// even when size and mtime match.
type FileJob = (PathBuf, fs::Metadata, bool);

/// The walking side of a pass: reads folders, removes what the source lacks, and hands files
/// to the workers.
struct Walk<'a> {
    mirror: &'a Mirror,
    jobs: crossbeam_channel::Sender<FileJob>,
    stats: SyncStats,
    /// Folders walked, parents first, with their source metadata.
    folders: Vec<(PathBuf, fs::Metadata)>,
    /// Mirror folders that gained or lost a name.
    renamed: &'a Mutex<BTreeSet<PathBuf>>,
}

impl Walk<'_> {
    fn root(&mut self, force: bool) -> io::Result<()> {
        let mirror = self.mirror;
        let meta = fs::symlink_metadata(&mirror.source)?;
        if meta.is_dir() {
            fs::create_dir_all(&mirror.dest)?;
            self.tree(Path::new(""))
        } else {
            if let Some(parent) = mirror.dest.parent() {
                fs::create_dir_all(parent)?;
            }
            self.file(PathBuf::new(), meta, force)
        }
    }

    /// Makes sure the mirror has the folder `rel` (and the folders above it).
    fn folder(&mut self, rel: &Path) -> io::Result<()> {
        let dest = self.mirror.dest.join(rel);
        match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            // Never written through: a symlink here (mirrored from the source) is replaced.
            Ok(_) => {
                fs::remove_file(&dest)?;
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(&dest)?;
        let mut renamed = self.renamed.lock().expect("mirror state");
        for created in dest.ancestors().skip(1).take(rel.components().count()) {
            renamed.insert(created.to_path_buf());
        }
        Ok(())
    }

    fn file(&mut self, rel: PathBuf, meta: fs::Metadata, force: bool) -> io::Result<()> {
        self.jobs.send((rel, meta, force)).map_err(|_| io::Error::other("the mirror's workers stopped"))
    }

    /// Removes `rel` from the mirror (the source no longer has it).
    fn remove(&mut self, rel: &Path) -> io::Result<()> {
        let dest = self.mirror.dest.join(rel);
        if remove_any(&dest)? {
            self.stats.removed += 1;
            self.stats.oldest_change.get_or_insert_with(SystemTime::now);
            self.renamed.lock().expect("mirror state").insert(parent_of(&dest));
        }
        self.mirror.forget(rel);
        Ok(())
    }

    /// The folder `rel` (empty: the root) and everything below it, removing what the source
    /// no longer has.
    fn tree(&mut self, rel: &Path) -> io::Result<()> {
        let mirror = self.mirror;
        let source_dir = mirror.source.join(rel);
        let dest_dir = mirror.dest.join(rel);
        let source_meta = fs::symlink_metadata(&source_dir)?;
        match fs::symlink_metadata(&dest_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&dest_dir)?;
                fs::create_dir(&dest_dir)?;
                self.renamed.lock().expect("mirror state").insert(parent_of(&dest_dir));
            }
            Err(e) if not_found(&e) => {
                fs::create_dir_all(&dest_dir)?;
                self.renamed.lock().expect("mirror state").insert(parent_of(&dest_dir));
            }
            Err(e) => return Err(e),
        }
        let entries = match fs::read_dir(&source_dir) {
            Ok(entries) => entries,
            // Removed while we looked: the next event or rescan removes it here.
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.folders.push((rel.to_path_buf(), source_meta));
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry?;
            match entry.metadata() {
                Ok(meta) => children.push((entry.file_name(), meta)),
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        // What the source lacks goes first, stray temporaries of an interrupted pass included:
        // once files are handed out, workers write temporaries of their own here.
        let present: HashSet<&OsStr> = children.iter().map(|(name, _)| name.as_os_str()).collect();
        for entry in fs::read_dir(&dest_dir)? {
            let name = entry?.file_name();
            if !present.contains(name.as_os_str()) {
                self.remove(&rel.join(name))?;
            }
        }
        for (name, meta) in children {
            let child = rel.join(name);
            if meta.is_dir() {
                self.tree(&child)?;
            } else {
                self.file(child, meta, false)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Names, kinds, link targets, modes and bytes (folder mtimes move as the test writes).
    fn assert_same(a: &Path, b: &Path) {
        let mut names_a: Vec<_> = fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
        let mut names_b: Vec<_> = fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
        names_a.sort();
        names_b.sort();
        assert_eq!(names_a, names_b, "{} vs {}", a.display(), b.display());
        for name in names_a {
            let (pa, pb) = (a.join(&name), b.join(&name));
            let (ma, mb) = (fs::symlink_metadata(&pa).unwrap(), fs::symlink_metadata(&pb).unwrap());
            assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
            if ma.is_symlink() {
                assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
            } else if ma.is_dir() {
                assert_same(&pa, &pb);
            } else {
                assert_eq!(ma.mode(), mb.mode(), "{}", pa.display());
                assert_eq!(mtime_of(&ma), mtime_of(&mb), "{}", pa.display());
                assert!(fs::read(&pa).unwrap() == fs::read(&pb).unwrap(), "{} differs", pa.display());
            }
        }
    }

    #[test]
    fn a_full_sync_copies_everything_and_removes_what_the_source_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src"), dir.path().join("dst"));
        write(&source.join("a/one.bin"), &noise(3 * BLOCK + 17, 1));
        write(&source.join("a/empty"), b"");
        write(&source.join("b/c/two.txt"), b"two");
        std::os::unix::fs::symlink("../a/one.bin", source.join("b/link")).unwrap();
        fs::set_permissions(source.join("b/c/two.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        write(&dest.join("stale/old.txt"), b"old");
        write(&dest.join("b/c/two.txt"), b"something else entirely");
        let mirror = Mirror::new(&source, &dest);
        let stats = mirror.sync_all().unwrap();
        assert_same(&source, &dest);
        assert_eq!(stats.files, 4);
        assert_eq!(stats.removed, 1);
        assert_eq!(mirror.sync_all().unwrap(), SyncStats::default(), "a second sync finds nothing to do");
    }

    #[test]
    fn many_files_copied_side_by_side_leave_every_folder_with_its_source_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src"), dir.path().join("dst"));
        let mut folders = vec![source.clone()];
        for folder in 0..12 {
            let path = source.join(format!("f{folder}/inner{}", folder % 3));
            for file in 0..40 {
                write(&path.join(format!("{file}.txt")), &noise(100 + file * 37, (folder * 100 + file) as u64));
            }
            folders.extend([path.clone(), path.parent().unwrap().to_path_buf()]);
        }
        fs::set_permissions(source.join("f3"), fs::Permissions::from_mode(0o750)).unwrap();
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        for folder in &folders {
            filetime::set_file_mtime(folder, old).unwrap();
        }
        let mirror = Mirror::new(&source, &dest);
        assert_eq!(mirror.sync_all().unwrap().files, 12 * 40);
        assert_same(&source, &dest);
        for folder in &folders {
            let (a, b) = (
                fs::metadata(folder).unwrap(),
                fs::metadata(dest.join(folder.strip_prefix(&source).unwrap())).unwrap(),
            );
            assert_eq!((mtime_of(&a), a.mode()), (mtime_of(&b), b.mode()), "{}", folder.display());
        }
    }

    #[test]
    fn a_changed_block_is_the_only_thing_written() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src"), dir.path().join("dst"));
        let mut image = noise(20 * BLOCK, 3);
        write(&source.join("disk.img"), &image);
        let mirror = Mirror::new(&source, &dest);
        mirror.sync_all().unwrap();
        image[5 * BLOCK + 100..5 * BLOCK + 200].fill(0xee);
        fs::write(source.join("disk.img"), &image).unwrap();
        let stats = mirror.sync_paths([source.join("disk.img").as_path()]).unwrap();
        assert_eq!(stats.bytes_written, BLOCK as u64, "{stats:?}");
        assert_eq!(stats.bytes_read, 20 * BLOCK as u64);
        assert_same(&source, &dest);

        // A new mirror (a restarted replica) compares against the mirror's bytes instead.
        image[9 * BLOCK] ^= 1;
        image.truncate(17 * BLOCK + 5);
        fs::write(source.join("disk.img"), &image).unwrap();
        let restarted = Mirror::new(&source, &dest);
        let stats = restarted.sync_paths([source.join("disk.img").as_path()]).unwrap();
        assert_eq!(stats.bytes_written, BLOCK as u64, "only block 9; the tail is cut, not written: {stats:?}");
        assert_same(&source, &dest);
    }

    #[test]
    fn a_single_file_mirrors_to_a_file_and_then_block_by_block() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src/disk.img"), dir.path().join("dst/disk.img"));
        let mut image = noise(4 * BLOCK, 5);
        write(&source, &image);
        let mirror = Mirror::new(&source, &dest);
        assert_eq!(mirror.sync_all().unwrap().bytes_written, 4 * BLOCK as u64);
        assert!(fs::read(&dest).unwrap() == image);
        image[2 * BLOCK + 7] ^= 1;
        fs::write(&source, &image).unwrap();
        let stats = mirror.sync_paths([source.as_path()]).unwrap();
        assert_eq!(stats.bytes_written, BLOCK as u64, "{stats:?}");
        assert!(fs::read(&dest).unwrap() == image); // Zero blocks of a new copy are holes, not writes.
        image[BLOCK..3 * BLOCK].fill(0);
        fs::write(&source, &image).unwrap();
        let fresh = dir.path().join("fresh/disk.img");
        assert_eq!(Mirror::new(&source, &fresh).sync_all().unwrap().bytes_written, 2 * BLOCK as u64);
        assert!(fs::read(&fresh).unwrap() == image);
        assert!(fs::metadata(&fresh).unwrap().blocks() * 512 <= 2 * BLOCK as u64 + 64 * 1024, "sparse");
    }

    #[test]
    fn paths_that_changed_kind_or_vanished_follow_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (source, dest) = (dir.path().join("src"), dir.path().join("dst"));
        write(&source.join("x/y.txt"), b"y");
        write(&source.join("z"), b"z");
        let mirror = Mirror::new(&source, &dest);
        mirror.sync_all().unwrap();
        fs::remove_dir_all(source.join("x")).unwrap();
        write(&source.join("x"), b"now a file");
        fs::remove_file(source.join("z")).unwrap();
        write(&source.join("z/inside.txt"), b"now a folder");
        write(&source.join("new/deep/file"), b"new");
        let paths = [source.join("x"), source.join("z"), source.join("new")];
        let stats = mirror.sync_paths(paths.iter().map(PathBuf::as_path)).unwrap();
        assert_same(&source, &dest);
        assert!(stats.changed());
        fs::remove_dir_all(source.join("new")).unwrap();
        let stats = mirror.sync_paths([source.join("new/deep/file").as_path(), source.join("new").as_path()]).unwrap();
        assert_eq!(stats.removed, 1, "{stats:?}");
        assert_same(&source, &dest);
    }
}
