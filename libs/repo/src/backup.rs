//! Backups of file trees, disk images and streams.
//!
//! A file-tree backup walks the paths once (metadata only), takes unchanged files'
//! content from the parent snapshot, and hands the files it must read to reader
//! threads. Readers chunk and hash; the [`Pipeline`] compresses, seals, packs and
//! uploads new chunks. Trees are stored bottom-up once every file is done, then the
//! packs are flushed and indexed, and the snapshot is written last.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;

use crate::chunker::{Chunker, fixed_blocks, is_zero};
use crate::error::{Error, Result};
use crate::format::{
    BackupMode, BackupSummary, BlobId, BlobKind, ChunkRef, Node, NodeKind, Snapshot, SourceKind, Tree, to_msgpack,
};
use crate::gc::WriteGuard;
use crate::lock::Lease;
use crate::pipeline::{BlobSink, Pipeline};
use crate::repository::{Index, Repository, TreeLoader};

/// Image blocks are fixed-size so a changed block re-uploads only itself.
pub const IMAGE_BLOCK: usize = 4 << 20;

/// What to back up.
pub enum BackupSource {
    /// File trees (files, folders, symlinks).
    Paths(Vec<PathBuf>),
    /// A raw disk image file or block device, in fixed blocks.
    Image(PathBuf),
    /// Standard input, stored as one file called `name`.
    Stdin { name: String },
    /// A command's standard output (run with `sh -c`), stored as one file called `name`.
    Command { name: String, command: String },
    /// Several commands' standard output, each stored as one file named by its `name`. They
    /// run one after another; any that fails fails the backup, which then writes no snapshot.
    Commands(Vec<NamedCommand>),
}

/// A command whose standard output is stored as the file `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedCommand {
    pub name: String,
    pub command: String,
}

/// How to back up.
#[derive(Clone, Default)]
pub struct BackupOptions {
    pub mode: BackupMode,
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot and used to find the parent (default: this host).
    pub hostname: Option<String>,
    /// zstd level for this backup (default: the repository's).
    pub compression_level: Option<i32>,
    /// Use this snapshot as the parent instead of finding one.
    pub parent: Option<String>,
    /// Snapshot time (default: now); lets imports and tests set it.
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// Live counters the caller can poll.
    pub progress: Option<Arc<Progress>>,
    /// The platform job this backup runs for, recorded in the snapshot.
    pub job: Option<String>,
    /// Entries left out, with everything below them: a pattern with a `/` is matched
    /// against the whole absolute path (`/home/*/.cache`, `**/node_modules`), one without
    /// against each entry's name (`*.tmp`, `.git`). `*` stays within one path segment, `**`
    /// crosses them.
    pub excludes: Vec<String>,
}

/// Compiled [`BackupOptions::excludes`].
struct Excludes {
    paths: globset::GlobSet,
    names: globset::GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Option<Excludes>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let (mut paths, mut names) = (globset::GlobSetBuilder::new(), globset::GlobSetBuilder::new());
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Refused(format!("bad exclude pattern `{pattern}`: {e}")))?;
            if pattern.contains('/') {
                paths.add(glob)
            } else {
                names.add(glob)
            };
        }
        let build = |set: globset::GlobSetBuilder| {
            set.build().map_err(|e| Error::Refused(format!("bad exclude patterns: {e}")))
        };
        Ok(Some(Excludes { paths: build(paths)?, names: build(names)? }))
    }

    fn matches(&self, path: &Path, name: &std::ffi::OsStr) -> bool {
        self.names.is_match(name) || self.paths.is_match(path)
    }
}

/// Counters updated while a backup runs.
#[derive(Default, Debug)]
pub struct Progress {
    /// Files and bytes found that must be read (grows while walking).
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub walk_finished: std::sync::atomic::AtomicBool,
    cancelled: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// Asks the backup to stop: it ends soon with [`Error::Cancelled`] and writes no snapshot;
    /// what it uploaded so far is indexed, so the next run reuses it.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        if self.is_cancelled() { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot_id: String,
    pub snapshot: Snapshot,
    /// Files skipped or unreadable; the snapshot is `partial` if any was unreadable.
    pub warnings: Vec<String>,
}

/// Backs up `source` into `repo` and writes a snapshot.
///
/// If a prune removed data the backup relied on while it ran (see [`crate::gc`]), a backup of
/// files or an image runs once more, storing that data anew; a stream cannot be read twice,
/// so its backup fails with [`Error::DataRemoved`] and writes no snapshot.
pub fn backup(repo: &Repository, source: BackupSource, options: &BackupOptions) -> Result<BackupOutcome> {
    let again = match &source {
        BackupSource::Paths(paths) => Some(BackupSource::Paths(paths.clone())),
        BackupSource::Image(path) => Some(BackupSource::Image(path.clone())),
        BackupSource::Stdin { .. } | BackupSource::Command { .. } | BackupSource::Commands(_) => None,
    };
    match (backup_once(repo, source, options), again) {
        (Err(e @ Error::DataRemoved { .. }), Some(source)) => {
            tracing::warn!("{e}: backing up again");
            backup_once(repo, source, options)
        }
        (outcome, _) => outcome,
    }
}

fn backup_once(repo: &Repository, source: BackupSource, options: &BackupOptions) -> Result<BackupOutcome> {
    let started = Instant::now();
    let excludes = Excludes::new(&options.excludes)?;
    let _lease = Lease::acquire(repo, false, "backup")?;
    let guard = WriteGuard::begin(repo, "backup")?;
    let index = Arc::new(guard.trusted(repo.load_index()?));
    tracing::debug!(elapsed = ?started.elapsed(), blobs = index.blobs.len(), "index loaded");
    let hostname =
        options.hostname.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let (kind, paths) = match &source {
        BackupSource::Paths(paths) => {
            (SourceKind::Files, paths.iter().map(|p| absolute(p)).collect::<Result<Vec<_>>>()?)
        }
        BackupSource::Image(path) => (SourceKind::Image, vec![absolute(path)?]),
        BackupSource::Stdin { name } | BackupSource::Command { name, .. } => {
            check_stream_name(name)?;
            (SourceKind::Stream, vec![PathBuf::from(name)])
        }
        BackupSource::Commands(commands) => {
            if commands.is_empty() {
                return Err(Error::Refused("no command to back up".into()));
            }
            let mut names = Vec::with_capacity(commands.len());
            for NamedCommand { name, .. } in commands {
                check_stream_name(name)?;
                if names.contains(&PathBuf::from(name)) {
                    return Err(Error::Refused(format!("two commands would both be stored as `{name}`")));
                }
                names.push(PathBuf::from(name));
            }
            (SourceKind::Stream, names)
        }
    };
    let path_strings: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let parent = match options.mode {
        BackupMode::Full => None,
        _ => find_parent(repo, options, &hostname, kind, &path_strings)?,
    };
    let parent_tree = match &parent {
        Some((_, snap)) => Some(TreeLoader::new(repo, &index).load(&snap.tree)?),
        None => None,
    };
    let level = options.compression_level.unwrap_or(repo.config().compression_level);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let pipeline = Pipeline::start(repo, index.clone(), level, threads);
    let progress = options.progress.clone().unwrap_or_default();
    let mut run = Run {
        repo,
        index: &index,
        sink: pipeline.sink().clone(),
        progress: progress.clone(),
        warnings: Mutex::new(Vec::new()),
        partial: false,
        summary: BackupSummary::default(),
    };
    let tree = match source {
        BackupSource::Paths(_) | BackupSource::Image(_) => {
            run.back_up_paths(&paths, parent_tree, kind == SourceKind::Image, threads, excludes)
        }
        BackupSource::Stdin { name } => {
            run.back_up_stream(&name, std::io::stdin().lock()).and_then(|node| run.stream_tree(vec![node]))
        }
        BackupSource::Command { name, command } => {
            run.back_up_command(&name, &command).and_then(|node| run.stream_tree(vec![node]))
        }
        BackupSource::Commands(commands) => commands
            .iter()
            .map(|NamedCommand { name, command }| run.back_up_command(name, command))
            .collect::<Result<Vec<Node>>>()
            .and_then(|nodes| run.stream_tree(nodes)),
    };
    // The run holds a handle on the pipeline; release it so the pipeline can drain.
    let Run { warnings, partial, mut summary, sink, .. } = run;
    drop(sink);
    let tree = match tree.and_then(|tree| progress.check().map(|()| tree)) {
        Ok(tree) => tree,
        Err(e) => {
            // Flush what was uploaded so the next run can reuse it, then report the cause.
            return Err(e.or_cause(pipeline.finish()));
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "files and trees handed to the pipeline");
    let stats = pipeline.finish()?;
    tracing::debug!(elapsed = ?started.elapsed(), packs = stats.packs, "packs uploaded and indexed");
    let warnings = warnings.into_inner().expect("warnings lock poisoned");
    summary.bytes_stored = stats.bytes;
    summary.blobs_new = stats.blobs;
    summary.warnings = warnings.len() as u64;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let snapshot = Snapshot {
        version: 1,
        time: options.time.unwrap_or_else(chrono::Utc::now),
        tree,
        paths: path_strings,
        hostname,
        username: std::env::var("USER").unwrap_or_default(),
        tags: options.tags.clone(),
        source_kind: kind,
        mode: options.mode,
        parent: parent.map(|(id, _)| id),
        partial,
        summary,
        locked_until: None,
        job: options.job.clone(),
    };
    let written = guard.commit(repo, &[snapshot.tree], || Ok(vec![repo.save_snapshot(&snapshot)?]))?;
    let snapshot_id = written.into_iter().next().expect("one snapshot written");
    Ok(BackupOutcome { snapshot_id, snapshot, warnings })
}

fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Refused(format!("`{name}` is not a valid file name for a stream")));
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(Error::io("resolve path", path))?;
    // Drop `.` and resolve `..` lexically: the snapshot records the path as given.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    std::fs::symlink_metadata(&out).map_err(Error::io("read", &out))?;
    Ok(out)
}

/// The newest snapshot of the same host, paths, kind (and tags, if given); for a
/// differential backup the newest *full* one.
fn find_parent(
    repo: &Repository,
    options: &BackupOptions,
    hostname: &str,
    kind: SourceKind,
    paths: &[String],
) -> Result<Option<(String, Snapshot)>> {
    if let Some(id) = &options.parent {
        return repo.find_snapshot(id).map(Some);
    }
    let mut want: Vec<&String> = paths.iter().collect();
    want.sort();
    let mut tags = options.tags.clone();
    tags.sort();
    let candidates = repo.snapshots()?.into_iter().filter(|(_, s)| {
        let mut have: Vec<&String> = s.paths.iter().collect();
        have.sort();
        let mut their_tags = s.tags.clone();
        their_tags.sort();
        s.hostname == hostname
            && s.source_kind == kind
            && have == want
            && (options.tags.is_empty() || their_tags == tags)
            && (options.mode != BackupMode::Differential || s.mode == BackupMode::Full || s.parent.is_none())
    });
    Ok(candidates.max_by(|a, b| a.1.time.cmp(&b.1.time)))
}

/// A folder being built: its entries and what is still to be filled in.
struct DirBuild {
    nodes: Vec<Option<Node>>,
    /// Entries whose content or subtree comes later: (position in `nodes`, what).
    pending: Vec<(usize, Pending)>,
    parent: Option<Tree>,
}

enum Pending {
    File(usize),
    Dir(usize),
}

struct FileJob {
    job: usize,
    path: PathBuf,
}

/// Result of reading one file: its chunks and the bytes read, or why it failed.
type FileResult = std::result::Result<(Vec<ChunkRef>, u64), String>;

struct Run<'a> {
    repo: &'a Repository,
    index: &'a Index,
    sink: BlobSink,
    progress: Arc<Progress>,
    warnings: Mutex<Vec<String>>,
    partial: bool,
    summary: BackupSummary,
}

fn node_from(name: &[u8], kind: NodeKind, meta: &Metadata) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        device: meta.dev(),
        links: meta.nlink(),
        size: if kind == NodeKind::File { meta.size() } else { 0 },
        content: Vec::new(),
        subtree: None,
        link_target: None,
    }
}

fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind == NodeKind::File
        && old.size == new.size
        && old.mtime_ns == new.mtime_ns
        && old.ctime_ns == new.ctime_ns
        && old.inode == new.inode
}

struct Walk<'w> {
    dirs: Vec<DirBuild>,
    jobs: crossbeam_channel::Sender<FileJob>,
    /// Per queued file (by job number): whether the parent snapshot had it (changed, not new).
    job_in_parent: Vec<bool>,
    /// (device, inode) of multiply-linked files seen → their job, so each is read once.
    hard_links: HashMap<(u64, u64), usize>,
    loader: TreeLoader<'w>,
    image: bool,
    excludes: Option<Excludes>,
}

impl<'a> Run<'a> {
    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings.lock().expect("warnings lock poisoned").push(message);
    }

    fn back_up_paths(
        &mut self,
        paths: &[PathBuf],
        parent: Option<Tree>,
        image: bool,
        threads: usize,
        excludes: Option<Excludes>,
    ) -> Result<BlobId> {
        let readers = if image { 1 } else { threads.clamp(2, 4) };
        let (tx_jobs, rx_jobs) = bounded::<FileJob>(1024);
        let chunker = Chunker::new(&self.repo.config().chunker);
        let results: Mutex<Vec<(usize, FileResult)>> = Mutex::new(Vec::new());
        let walked = std::thread::scope(|scope| -> Result<Walk<'_>> {
            for _ in 0..readers {
                let rx = rx_jobs.clone();
                let (sink, progress, results, chunker) = (self.sink.clone(), self.progress.clone(), &results, &chunker);
                scope.spawn(move || {
                    let mut buf = Vec::new();
                    for job in rx {
                        let result = read_file(&job.path, image, chunker, &mut buf, &sink, &progress);
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        results.lock().expect("results lock poisoned").push((job.job, result));
                    }
                });
            }
            drop(rx_jobs);
            let mut walk = Walk {
                dirs: vec![DirBuild { nodes: Vec::new(), pending: Vec::new(), parent }],
                jobs: tx_jobs,
                job_in_parent: Vec::new(),
                hard_links: HashMap::new(),
                loader: TreeLoader::new(self.repo, self.index),
                image,
                excludes,
            };
            for path in paths {
                self.add_path(&mut walk, path)?;
            }
            tracing::debug!(jobs = walk.job_in_parent.len(), "walk finished");
            self.progress.walk_finished.store(true, Ordering::Relaxed);
            let (closed, _) = bounded(0);
            drop(std::mem::replace(&mut walk.jobs, closed));
            Ok(walk)
        })?;
        self.summary.bytes_read = self.progress.bytes_done.load(Ordering::Relaxed);
        let mut by_job: Vec<Option<FileResult>> = (0..walked.job_in_parent.len()).map(|_| None).collect();
        for (job, result) in results.into_inner().expect("results lock poisoned") {
            // Count each file read once, whatever number of hard links name it.
            match &result {
                Ok(_) if walked.job_in_parent[job] => self.summary.files_changed += 1,
                Ok(_) => self.summary.files_new += 1,
                Err(reason) => {
                    self.partial = true;
                    self.warn(reason.clone());
                }
            }
            by_job[job] = Some(result);
        }
        self.build_trees(walked.dirs, &mut by_job)
    }

    /// Adds one source path under the root, creating its ancestors as folders.
    fn add_path(&mut self, walk: &mut Walk<'_>, path: &Path) -> Result<()> {
        let mut dir = 0;
        let mut so_far = PathBuf::from("/");
        let components: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((leaf, ancestors)) = components.split_last() else {
            // The whole file system: its entries go straight into the snapshot's root.
            return self.walk_dir(walk, 0, path);
        };
        for name in ancestors {
            so_far.push(name);
            let existing = walk.dirs[dir].pending.iter().find_map(|(pos, p)| match p {
                Pending::Dir(d) if walk.dirs[dir].nodes[*pos].as_ref().is_some_and(|n| n.name == name.as_bytes()) => {
                    Some(*d)
                }
                _ => None,
            });
            dir = match existing {
                Some(d) => d,
                None => {
                    let meta = std::fs::metadata(&so_far).map_err(Error::io("read", &so_far))?;
                    let node = node_from(name.as_bytes(), NodeKind::Dir, &meta);
                    self.push_dir(walk, dir, node)?
                }
            };
        }
        let meta = std::fs::symlink_metadata(path).map_err(Error::io("read", path))?;
        self.add_entry(walk, dir, path, leaf.as_bytes(), meta)
    }

    fn push_dir(&mut self, walk: &mut Walk<'_>, dir: usize, node: Node) -> Result<usize> {
        let parent = match walk.dirs[dir].parent.as_ref().and_then(|t| find_node(t, &node.name)) {
            Some(Node { kind: NodeKind::Dir, subtree: Some(id), .. }) => {
                let id = *id;
                match walk.loader.load(&id) {
                    Ok(tree) => Some(tree),
                    Err(e) => {
                        self.warn(format!("parent tree {id} unreadable, reading the folder afresh: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        let new = walk.dirs.len();
        walk.dirs.push(DirBuild { nodes: Vec::new(), pending: Vec::new(), parent });
        let here = &mut walk.dirs[dir];
        here.pending.push((here.nodes.len(), Pending::Dir(new)));
        here.nodes.push(Some(node));
        self.summary.dirs += 1;
        Ok(new)
    }

    fn add_entry(&mut self, walk: &mut Walk<'_>, dir: usize, path: &Path, name: &[u8], meta: Metadata) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_dir() && !walk.image {
            let node = node_from(name, NodeKind::Dir, &meta);
            let new = self.push_dir(walk, dir, node)?;
            self.walk_dir(walk, new, path)
        } else if ft.is_symlink() && !walk.image {
            let mut node = node_from(name, NodeKind::Symlink, &meta);
            match std::fs::read_link(path) {
                Ok(target) => {
                    node.link_target = Some(target.as_os_str().as_bytes().to_vec());
                    walk.dirs[dir].nodes.push(Some(node));
                }
                Err(e) => {
                    self.partial = true;
                    self.warn(format!("cannot read symlink `{}`: {e}", path.display()));
                }
            }
            Ok(())
        } else if ft.is_file() || (walk.image && ft.is_block_device()) {
            self.add_file(walk, dir, path, node_from(name, NodeKind::File, &meta))
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_block_device() || ft.is_char_device() {
                "device"
            } else {
                "special file"
            };
            self.warn(format!("skipped {what} `{}`", path.display()));
            Ok(())
        }
    }

    fn add_file(&mut self, walk: &mut Walk<'_>, dir: usize, path: &Path, mut node: Node) -> Result<()> {
        self.summary.bytes_total += node.size;
        if node.links > 1
            && let Some(&job) = walk.hard_links.get(&(node.device, node.inode))
        {
            // Another name of a file already queued: share its content, read it once.
            let here = &mut walk.dirs[dir];
            here.pending.push((here.nodes.len(), Pending::File(job)));
            here.nodes.push(Some(node));
            return Ok(());
        }
        let old = walk.dirs[dir].parent.as_ref().and_then(|t| find_node(t, &node.name));
        if let Some(old) = old
            && unchanged(old, &node)
            && old.content.iter().all(|c| c.0.is_none_or(|id| self.index.contains(&id)))
        {
            node.content = old.content.clone();
            self.summary.files_unmodified += 1;
            walk.dirs[dir].nodes.push(Some(node));
            return Ok(());
        }
        let job = walk.job_in_parent.len();
        walk.job_in_parent.push(old.is_some());
        if node.links > 1 {
            walk.hard_links.insert((node.device, node.inode), job);
        }
        self.progress.files_total.fetch_add(1, Ordering::Relaxed);
        self.progress.bytes_total.fetch_add(node.size, Ordering::Relaxed);
        let here = &mut walk.dirs[dir];
        here.pending.push((here.nodes.len(), Pending::File(job)));
        here.nodes.push(Some(node));
        walk.jobs.send(FileJob { job, path: path.to_path_buf() }).map_err(|_| pipeline_gone())
    }

    fn walk_dir(&mut self, walk: &mut Walk<'_>, dir: usize, path: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                self.partial = true;
                self.warn(format!("cannot read folder `{}`: {e}", path.display()));
                return Ok(());
            }
        };
        let mut children = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => children.push(entry.file_name()),
                Err(e) => {
                    self.partial = true;
                    self.warn(format!("cannot list folder `{}`: {e}", path.display()));
                }
            }
        }
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in children {
            self.progress.check()?;
            let child = path.join(&name);
            if walk.excludes.as_ref().is_some_and(|excludes| excludes.matches(&child, &name)) {
                continue;
            }
            match std::fs::symlink_metadata(&child) {
                Ok(meta) => self.add_entry(walk, dir, &child, name.as_bytes(), meta)?,
                Err(e) => {
                    self.partial = true;
                    self.warn(format!("cannot read `{}`: {e}", child.display()));
                }
            }
        }
        Ok(())
    }

    /// Fills in file contents and subtrees bottom-up and stores each folder's tree.
    fn build_trees(&mut self, mut dirs: Vec<DirBuild>, results: &mut [Option<FileResult>]) -> Result<BlobId> {
        let mut tree_ids: Vec<Option<BlobId>> = vec![None; dirs.len()];
        // Children are always created after their parent, so reverse order is bottom-up.
        for d in (0..dirs.len()).rev() {
            let DirBuild { nodes, pending, .. } =
                std::mem::replace(&mut dirs[d], DirBuild { nodes: Vec::new(), pending: Vec::new(), parent: None });
            let mut nodes = nodes;
            for (pos, what) in pending {
                let node = nodes[pos].as_mut().expect("pending nodes are present");
                match what {
                    Pending::Dir(child) => node.subtree = Some(tree_ids[child].expect("children are built first")),
                    Pending::File(job) => match results[job].as_ref() {
                        Some(Ok((content, size))) => {
                            node.content = content.clone();
                            node.size = *size;
                        }
                        // Unreadable: left out (counted and warned about once, above).
                        Some(Err(_)) => nodes[pos] = None,
                        None => return Err(pipeline_gone()),
                    },
                }
            }
            let mut tree = Tree { nodes: nodes.into_iter().flatten().collect() };
            tree.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            tree_ids[d] = Some(self.sink.store(BlobKind::Tree, &to_msgpack(&tree))?);
        }
        Ok(tree_ids[0].expect("root is built"))
    }

    /// Stores `reader`'s bytes as the content of a file called `name`; its node.
    fn back_up_stream(&mut self, name: &str, reader: impl Read) -> Result<Node> {
        let chunker = Chunker::new(&self.repo.config().chunker);
        let mut content = Vec::new();
        let size = chunker.chunk_reader::<_, Error>(reader, &mut Vec::new(), |chunk| {
            self.progress.check()?;
            content.push(store_chunk(&self.sink, chunk)?);
            self.progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(())
        })?;
        let now = chrono::Utc::now();
        let node = Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File,
            mode: 0o100600,
            uid: 0,
            gid: 0,
            mtime_ns: now.timestamp_nanos_opt().unwrap_or(0),
            ctime_ns: 0,
            inode: 0,
            device: 0,
            links: 1,
            size,
            content,
            subtree: None,
            link_target: None,
        };
        self.summary.files_new += 1;
        self.summary.bytes_read += size;
        self.summary.bytes_total += size;
        Ok(node)
    }

    /// The root tree of a snapshot of streams: one file each.
    fn stream_tree(&mut self, mut nodes: Vec<Node>) -> Result<BlobId> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.sink.store(BlobKind::Tree, &to_msgpack(&Tree { nodes }))
    }

    fn back_up_command(&mut self, name: &str, command: &str) -> Result<Node> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::Command { command: command.to_string(), reason: e.to_string() })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let stored = self.back_up_stream(name, stdout);
        if stored.is_err() {
            // The engine stopped reading (cancelled, or storage failed): that is the cause, and
            // the command, its output cut off, has nothing more to say.
            let _ = child.kill();
        }
        let status =
            child.wait().map_err(|e| Error::Command { command: command.to_string(), reason: e.to_string() })?;
        let err_out = err_reader.join().unwrap_or_default();
        let node = stored?;
        if !status.success() {
            let text = String::from_utf8_lossy(&err_out);
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            return Err(Error::Command { command: command.to_string(), reason: format!("{status}: {last}") });
        }
        Ok(node)
    }
}

fn pipeline_gone() -> Error {
    Error::Refused("the backup pipeline stopped after an earlier error".into())
}

fn find_node<'t>(tree: &'t Tree, name: &[u8]) -> Option<&'t Node> {
    tree.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &tree.nodes[i])
}

fn store_chunk(sink: &BlobSink, chunk: &[u8]) -> Result<ChunkRef> {
    if is_zero(chunk) {
        return Ok(ChunkRef(None, chunk.len() as u32));
    }
    Ok(ChunkRef(Some(sink.store(BlobKind::Data, chunk)?), chunk.len() as u32))
}

fn read_file(
    path: &Path,
    image: bool,
    chunker: &Chunker,
    buf: &mut Vec<u8>,
    sink: &BlobSink,
    progress: &Progress,
) -> FileResult {
    let file = File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut content = Vec::new();
    let on_chunk = |chunk: &[u8]| -> Result<()> {
        progress.check()?;
        content.push(store_chunk(sink, chunk)?);
        progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let read =
        if image { fixed_blocks(file, IMAGE_BLOCK, on_chunk) } else { chunker.chunk_reader(file, buf, on_chunk) };
    match read {
        Ok(size) => Ok((content, size)),
        Err(e @ Error::Io { .. }) => Err(format!("cannot read `{}`: {e}", path.display())),
        Err(e) => Err(format!("`{}`: {e}", path.display())),
    }
}
