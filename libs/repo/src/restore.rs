//! Restores and tree walks.
//!
//! A restore first plans (walks the snapshot, refuses unsafe names), creates folders and
//! files, then reads every needed pack once, in parallel, writing each blob to every place
//! it belongs with positioned writes. Hole chunks and all-zero blobs are skipped, so
//! sparse files stay sparse. Symlinks are created last, so no write can follow one.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::chunker::is_zero;
use crate::error::{Error, Result};
use crate::format::{BlobId, ChunkRef, Node, NodeKind, Snapshot};
use crate::repository::{Index, Location, Repository, TreeLoader, paths};

/// Visits every node under `tree` depth-first with its path (components joined by `/`,
/// starting with `/`). `visit` returns whether to descend into a folder.
pub fn walk_tree(
    loader: &TreeLoader<'_>,
    tree: &BlobId,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    let tree = loader.load(tree)?;
    for node in &tree.nodes {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        if visit(&path, node)?
            && let Some(sub) = &node.subtree
        {
            walk_tree(loader, sub, &path, visit)?;
        }
    }
    Ok(())
}

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Glob patterns over snapshot paths (e.g. `/home/*/docs/**`); empty restores all.
    /// A matching folder brings everything below it.
    pub include: Vec<String>,
    /// Live counters the caller can poll.
    pub progress: Option<Arc<RestoreProgress>>,
}

/// Counters updated while a restore runs.
#[derive(Default, Debug)]
pub struct RestoreProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub files_total: AtomicU64,
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

struct PlannedFile {
    path: PathBuf,
    node: Node,
}

/// Where file number `n` is written until its content is complete: a name that does not look
/// like the file, beside it, so a failed restore leaves nothing that passes for a whole file.
fn partial_path(file: &PlannedFile, n: usize) -> PathBuf {
    file.path.with_file_name(format!(".arca-partial-{n}"))
}

#[derive(Default)]
struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<PlannedFile>,
    /// Further names of hard-linked files: (new path, index of the first file).
    links: Vec<(PathBuf, usize)>,
    symlinks: Vec<(PathBuf, Node)>,
}

fn build_globs(patterns: &[String]) -> Result<Option<globset::GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Refused(format!("bad include pattern `{p}`: {e}")))?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| Error::Refused(format!("bad include patterns: {e}")))
}

struct Planner<'a> {
    loader: TreeLoader<'a>,
    dest: &'a Path,
    globs: Option<globset::GlobSet>,
    /// (device, inode) of multiply-linked files planned → their index in `self.out.files`.
    hard_links: HashMap<(u64, u64), usize>,
    out: Plan,
}

impl Planner<'_> {
    /// Plans the folder `tree` at snapshot path `rel`; returns whether anything in it is selected.
    fn plan(&mut self, tree: &BlobId, rel: &[u8], selected: bool) -> Result<bool> {
        let tree = self.loader.load(tree)?;
        let mut seen = HashSet::new();
        let mut any = false;
        for node in &tree.nodes {
            if !node.name_is_safe() {
                return Err(Error::Refused(format!(
                    "snapshot holds an unsafe name `{}` under `{}`: refusing to restore",
                    node.name_lossy(),
                    String::from_utf8_lossy(rel)
                )));
            }
            if !seen.insert(node.name.as_slice()) {
                return Err(Error::Refused(format!(
                    "snapshot holds the name `{}` twice under `{}`: refusing to restore",
                    node.name_lossy(),
                    String::from_utf8_lossy(rel)
                )));
            }
            let mut path_bytes = rel.to_vec();
            path_bytes.push(b'/');
            path_bytes.extend_from_slice(&node.name);
            let here =
                selected || self.globs.as_ref().is_none_or(|g| g.is_match(Path::new(OsStr::from_bytes(&path_bytes))));
            let path = self.dest.join(OsStr::from_bytes(&path_bytes[1..]));
            match node.kind {
                NodeKind::Dir => {
                    let at = self.out.dirs.len();
                    self.out.dirs.push((path, node.clone()));
                    let sub = node.subtree.ok_or_else(|| Error::corrupt("tree", "folder without subtree"))?;
                    let inner = self.plan(&sub, &path_bytes, here)?;
                    if !here && !inner {
                        self.out.dirs.truncate(at);
                    }
                    any |= here || inner;
                }
                _ if !here => {}
                NodeKind::File => {
                    any = true;
                    if node.links > 1 {
                        if let Some(&first) = self.hard_links.get(&(node.device, node.inode)) {
                            self.out.links.push((path, first));
                            continue;
                        }
                        self.hard_links.insert((node.device, node.inode), self.out.files.len());
                    }
                    self.out.files.push(PlannedFile { path, node: node.clone() });
                }
                NodeKind::Symlink => {
                    any = true;
                    self.out.symlinks.push((path, node.clone()));
                }
            }
        }
        Ok(any)
    }
}

/// What restoring `snapshot` into `dest` with `options.include` creates (nothing is written).
fn plan(repo: &Repository, index: &Index, snapshot: &Snapshot, dest: &Path, options: &RestoreOptions) -> Result<Plan> {
    let mut planner = Planner {
        loader: TreeLoader::new(repo, index),
        dest,
        globs: build_globs(&options.include)?,
        hard_links: HashMap::new(),
        out: Plan::default(),
    };
    planner.plan(&snapshot.tree, b"", false)?;
    Ok(planner.out)
}

/// Where one blob must be written.
type Targets = Vec<(usize, u64)>;
/// A pack and the blobs to take from it.
type PackWork = (u32, Vec<(BlobId, Location)>);

/// Restores `snapshot` into `dest` (created if missing).
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    dest: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let index = repo.load_index()?;
    let filtered = !options.include.is_empty();
    let Plan { dirs, files, links, symlinks } = plan(repo, &index, snapshot, dest, options)?;
    if filtered && files.is_empty() && dirs.is_empty() && symlinks.is_empty() {
        return Err(Error::NotFound(format!("nothing in the snapshot matches {:?}", options.include)));
    }
    let mut summary = RestoreSummary::default();
    std::fs::create_dir_all(dest).map_err(Error::io("create folder", dest))?;
    for (path, _) in &dirs {
        make_dir(path)?;
    }
    // Every blob → where it goes; every pack → which blobs it must give.
    let mut wanted: HashMap<BlobId, Targets> = HashMap::new();
    let progress = options.progress.clone().unwrap_or_default();
    // Creating files is mostly file-system work in the kernel: spread it over the cores.
    let numbered: Vec<(usize, &PlannedFile)> = files.iter().enumerate().collect();
    for_each_in_parallel(&numbered, |(n, f)| {
        let partial = partial_path(f, *n);
        let file = create_file(&partial)?;
        file.set_len(f.node.size).map_err(Error::io("resize", &partial))
    })
    .inspect_err(|_| remove_partial_files(&files))?;
    for (i, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for chunk in &f.node.content {
            if let Some(id) = chunk.0 {
                wanted.entry(id).or_default().push((i, offset));
            }
            offset += chunk.1 as u64;
        }
        progress.bytes_total.fetch_add(f.node.size, Ordering::Relaxed);
    }
    progress.files_total.store(files.len() as u64, Ordering::Relaxed);
    let mut by_pack: HashMap<u32, Vec<(BlobId, Location)>> = HashMap::new();
    for id in wanted.keys() {
        let (_, loc) = index.get(id).ok_or_else(|| Error::NotFound(format!("blob {id} in the index")))?;
        by_pack.entry(loc.pack).or_default().push((*id, loc));
    }
    let queue: Mutex<Vec<PackWork>> = Mutex::new(by_pack.into_iter().collect());
    let written = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8) * 2;
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some((pack, blobs)) = queue.lock().expect("queue poisoned").pop() else { return };
                    if first_error.lock().expect("error lock poisoned").is_some() {
                        return;
                    }
                    let result = restore_pack(repo, &index, pack, blobs, &wanted, &files, &written, &progress);
                    if let Err(e) = result {
                        first_error.lock().expect("error lock poisoned").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error lock poisoned") {
        remove_partial_files(&files);
        return Err(e);
    }
    summary.bytes = written.into_inner();
    let as_root = is_root();
    let failed = Mutex::new(Vec::new());
    // Complete: metadata first, then the file's own name.
    for_each_in_parallel(&numbered, |(n, f)| {
        let partial = partial_path(f, *n);
        if let Err(e) = set_metadata(&partial, &f.node, as_root) {
            failed
                .lock()
                .expect("warnings lock poisoned")
                .push(e.to_string().replace(&*partial.to_string_lossy(), &f.path.to_string_lossy()));
        }
        std::fs::rename(&partial, &f.path).map_err(Error::io("rename into place", &f.path))
    })
    .inspect_err(|_| remove_partial_files(&files))?;
    summary.warnings.extend(failed.into_inner().expect("warnings lock poisoned"));
    for (path, first) in &links {
        std::fs::hard_link(&files[*first].path, path).map_err(Error::io("hard link", path))?;
    }
    for (path, node) in &symlinks {
        let target = node.link_target.as_deref().unwrap_or_default();
        std::os::unix::fs::symlink(OsStr::from_bytes(target), path).map_err(Error::io("create symlink", path))?;
        if as_root {
            let _ = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid));
        }
        let mtime = filetime_of(node);
        if let Err(e) = filetime::set_symlink_file_times(path, mtime, mtime) {
            summary.warnings.push(format!("set times of `{}`: {e}", path.display()));
        }
    }
    // Folders last and deepest first, so writing into them does not bump their times.
    for (path, node) in dirs.iter().rev() {
        if let Err(e) = set_metadata(path, node, as_root) {
            summary.warnings.push(e.to_string());
        }
    }
    summary.files = (files.len() + links.len()) as u64;
    summary.dirs = dirs.len() as u64;
    summary.symlinks = symlinks.len() as u64;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    index: &Index,
    pack: u32,
    mut blobs: Vec<(BlobId, Location)>,
    wanted: &HashMap<BlobId, Targets>,
    files: &[PlannedFile],
    written: &AtomicU64,
    progress: &RestoreProgress,
) -> Result<()> {
    let pack_id = &index.packs[pack as usize].id;
    let name = paths::pack(pack_id);
    blobs.sort_by_key(|(_, loc)| loc.offset);
    let mut open_files: HashMap<usize, File> = HashMap::new();
    // Read runs of blobs that lie close together in one request.
    let mut i = 0;
    while i < blobs.len() {
        let start = blobs[i].1.offset as u64;
        let mut end = start + blobs[i].1.length as u64;
        let mut j = i + 1;
        // Runs stay under 8 MiB so a worker never holds a whole pack in memory.
        while j < blobs.len()
            && (blobs[j].1.offset as u64) <= end + (256 << 10)
            && blobs[j].1.offset as u64 + blobs[j].1.length as u64 - start <= 8 << 20
        {
            end = end.max(blobs[j].1.offset as u64 + blobs[j].1.length as u64);
            j += 1;
        }
        let mut bytes = repo.backend().read_range(&name, start, end - start)?;
        for (id, loc) in &blobs[i..j] {
            let from = (loc.offset as u64 - start) as usize;
            let sealed = &mut bytes[from..from + loc.length as usize];
            repo.with_blob(id, sealed, loc.raw_length, |plain| -> Result<()> {
                let runs = nonzero_runs(plain);
                for &(file_no, offset) in &wanted[id] {
                    if !runs.is_empty() {
                        // A pack may feed thousands of small files: keep few open at a time.
                        if open_files.len() >= 64 && !open_files.contains_key(&file_no) {
                            open_files.clear();
                        }
                        let file = match open_files.entry(file_no) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(open_for_write(&partial_path(&files[file_no], file_no))?)
                            }
                        };
                        for run in &runs {
                            file.write_all_at(&plain[run.clone()], offset + run.start as u64)
                                .map_err(Error::io("write", &files[file_no].path))?;
                        }
                    }
                    written.fetch_add(plain.len() as u64, Ordering::Relaxed);
                    progress.bytes_done.fetch_add(plain.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            })??;
        }
        i = j;
    }
    Ok(())
}

/// The parts of `data` to write: runs of 4 KiB pages that are not all zero. Skipping
/// the zero pages leaves holes, so sparse files (and images) stay sparse.
fn nonzero_runs(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    const PAGE: usize = 4096;
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, page) in data.chunks(PAGE).enumerate() {
        if is_zero(page) {
            continue;
        }
        let (start, end) = (i * PAGE, i * PAGE + page.len());
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// Runs `work` on every item, split over the available cores; stops at the first error.
fn for_each_in_parallel<T: Sync>(items: &[T], work: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
    let per_thread = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(per_thread).map(|part| scope.spawn(|| part.iter().try_for_each(&work))).collect();
        handles.into_iter().try_for_each(|h| h.join().expect("restore worker panicked"))
    })
}

fn make_dir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path).map_err(Error::io("read", path))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(Error::Refused(format!(
                    "`{}` exists and is not a folder; refusing to restore through it",
                    path.display()
                )))
            }
        }
        Err(e) => Err(Error::io("create folder", path)(e)),
    }
}

/// Removes what a failed restore left under temporary names (best effort: the error that
/// stopped the restore is the one reported).
fn remove_partial_files(files: &[PlannedFile]) {
    for (n, f) in files.iter().enumerate() {
        let _ = std::fs::remove_file(partial_path(f, n));
    }
}

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(Error::io("create", path))
}

fn open_for_write(path: &Path) -> Result<File> {
    OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(Error::io("open", path))
}

fn filetime_of(node: &Node) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn set_metadata(path: &Path, node: &Node, as_root: bool) -> Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)).map_err(Error::io("chown", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(Error::io("chmod", path))?;
    let mtime = filetime_of(node);
    filetime::set_file_times(path, mtime, mtime).map_err(Error::io("set times", path))
}

/// What reading a restore back found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreVerification {
    pub files: u64,
    pub bytes: u64,
    /// Files whose content differs from the snapshot, or that are missing.
    pub mismatches: Vec<String>,
}

impl RestoreVerification {
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Reads back what [`restore`] wrote for `snapshot` under `dest` (with the same `include`
/// selection) and checks every file chunk by chunk against the snapshot: each stored chunk's
/// keyed id must match the bytes on disk, each hole must read as zeros, and the size must
/// match. Reads each restored file once.
pub fn verify_restore(
    repo: &Repository,
    snapshot: &Snapshot,
    dest: &Path,
    options: &RestoreOptions,
) -> Result<RestoreVerification> {
    let files = plan(repo, &repo.load_index()?, snapshot, dest, options)?.files;
    let mut report = RestoreVerification::default();
    let mut buf = Vec::new();
    for file in &files {
        report.files += 1;
        let shown = file.path.display().to_string();
        let mut reader = match File::open(&file.path) {
            Ok(f) => std::io::BufReader::with_capacity(1 << 20, f),
            Err(e) => {
                report.mismatches.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let mut matches = true;
        for ChunkRef(id, length) in &file.node.content {
            buf.resize(*length as usize, 0);
            if std::io::Read::read_exact(&mut reader, &mut buf).is_err() {
                matches = false;
                break;
            }
            report.bytes += u64::from(*length);
            let same = match id {
                Some(id) => repo.blob_id(&buf) == *id,
                None => is_zero(&buf),
            };
            if !same {
                matches = false;
                break;
            }
        }
        let longer = matches && std::io::Read::read(&mut reader, &mut [0u8; 1]).map(|n| n > 0).unwrap_or(true);
        if !matches || longer {
            report.mismatches.push(format!("{shown}: content differs from the snapshot"));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::nonzero_runs;
    use crate::backend::{Backend, Target, TargetOptions};
    use crate::reader::FileReader;
    use crate::repository::{InitOptions, Repository, TreeLoader};
    use crate::{BackupOptions, BackupSource, Error, NamedCommand, backup};

    fn scratch_repository(dir: &std::path::Path) -> Repository {
        let target = Target::parse(&format!("fs://{}", dir.display())).unwrap();
        let backend = Backend::open(&target, &TargetOptions::default()).unwrap();
        let options = InitOptions {
            kdf: crate::crypto::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            ..InitOptions::default()
        };
        Repository::init(backend, b"test", &options).unwrap()
    }

    #[test]
    fn a_commands_output_reads_back_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let repo = scratch_repository(dir.path());
        // A few megabytes of text: several chunks, and runs of zeros stored as holes.
        let command = "seq 1 500000; head -c 3000000 /dev/zero; seq 7 70000";
        let source = BackupSource::Command { name: "app.dump".into(), command: command.into() };
        let outcome = backup(&repo, source, &BackupOptions::default()).unwrap();
        let expected = std::process::Command::new("sh").args(["-c", command]).output().unwrap().stdout;

        let index = repo.load_index().unwrap();
        let root = TreeLoader::new(&repo, &index).load(&outcome.snapshot.tree).unwrap();
        let [node] = &root.nodes[..] else { panic!("one file in a stream snapshot: {:?}", root.nodes) };
        assert!(node.content.len() > 2, "several chunks");
        let reader = FileReader::new(repo.clone(), Arc::new(index.clone()), node).unwrap();
        assert_eq!(reader.size(), expected.len() as u64);
        let mut read = Vec::new();
        // Small reads cross chunk boundaries.
        let mut buf = [0u8; 7777];
        loop {
            let n = reader.read_at(read.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
        }
        assert!(read == expected, "the stream reads back byte for byte");
    }

    #[test]
    fn a_command_that_fails_after_writing_commits_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let repo = scratch_repository(dir.path());
        let source = BackupSource::Command {
            name: "app.dump".into(),
            command: "seq 1 300000; echo 'pg_dump: error: connection lost' >&2; exit 1".into(),
        };
        match backup(&repo, source, &BackupOptions::default()) {
            Err(Error::Command { reason, .. }) => assert!(reason.contains("connection lost"), "{reason}"),
            other => panic!("a failed command must fail the backup: {:?}", other.map(|o| o.snapshot_id)),
        }
        assert!(repo.snapshots().unwrap().is_empty(), "no snapshot of a truncated stream");

        // Of several commands, the last failing fails it all.
        let named = |name: &str, command: &str| NamedCommand { name: name.into(), command: command.into() };
        let source = BackupSource::Commands(vec![named("a.dump", "seq 1 1000"), named("b.dump", "seq 1 10; exit 2")]);
        assert!(matches!(backup(&repo, source, &BackupOptions::default()), Err(Error::Command { .. })));
        assert!(repo.snapshots().unwrap().is_empty(), "no snapshot when one of its commands failed");
    }

    #[test]
    fn several_commands_are_one_snapshot_of_one_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let repo = scratch_repository(dir.path());
        let named = |name: &str, command: &str| NamedCommand { name: name.into(), command: command.into() };
        let source = BackupSource::Commands(vec![named("z.dump", "seq 1 1000"), named("a.dump", "seq 5 50")]);
        let outcome = backup(&repo, source, &BackupOptions::default()).unwrap();
        assert_eq!(outcome.snapshot.summary.files_new, 2);
        let index = repo.load_index().unwrap();
        let root = TreeLoader::new(&repo, &index).load(&outcome.snapshot.tree).unwrap();
        let names: Vec<&[u8]> = root.nodes.iter().map(|n| n.name.as_slice()).collect();
        assert_eq!(names, [&b"a.dump"[..], b"z.dump"]);
        let reader = FileReader::new(repo.clone(), Arc::new(index.clone()), &root.nodes[0]).unwrap();
        let mut text = vec![0u8; reader.size() as usize];
        assert_eq!(reader.read_at(0, &mut text).unwrap(), text.len());
        let expected: Vec<String> = (5..=50).map(|n| n.to_string()).collect();
        assert_eq!(String::from_utf8(text).unwrap(), expected.join("\n") + "\n");
        let twice = BackupSource::Commands(vec![named("a.dump", "true"), named("a.dump", "true")]);
        assert!(matches!(backup(&repo, twice, &BackupOptions::default()), Err(Error::Refused(_))));
    }

    #[test]
    fn zero_pages_are_skipped() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096 + 7] = 1;
        data[2 * 4096] = 2;
        data[5 * 4096 + 99] = 3;
        assert_eq!(nonzero_runs(&data), vec![4096..3 * 4096, 5 * 4096..5 * 4096 + 100]);
        assert!(nonzero_runs(&[0u8; 10]).is_empty());
    }
}
