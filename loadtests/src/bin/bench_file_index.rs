//! File-index benchmark: the catalog's `files::index_snapshot` on a synthetic snapshot of
//! `--files` paths (default 1,000,000: folders of 7 files and 3 subfolders, so ~10 entries per
//! folder and trees ~10 levels deep, with realistic names), on SQLite (a file with WAL) and
//! PostgreSQL (a fresh database on 127.0.0.1:5432):
//!
//! 1. snapshot 1: every path is new,
//! 2. snapshot 2: nothing changed,
//! 3. snapshot 3: `--changed-percent` of the files changed (size and mtime).
//!
//! Prints a Markdown table: seconds and rows written per snapshot. Usage:
//! `bench-file-index [--files N] [--changed-percent P] [--backends sqlite,postgres]`.

use std::time::Instant;

use arca_catalog::files::{FileEntry, FileKind, IndexOutcome, Series, index_snapshot};
use arca_events::{SnapshotId, SourceId, TenantId};
use chrono::{Duration, TimeZone, Utc};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Paths per snapshot (files, folders and symlinks).
    #[arg(long, default_value_t = 1_000_000)]
    files: usize,
    /// Share of the files changed in snapshot 3.
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Which databases to measure.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let first = synthetic_tree(args.files);
    let changed = with_changes(&first, args.changed_percent);
    let changed_files = first.iter().zip(&changed).filter(|(a, b)| a != b).count();
    let folders = first.iter().filter(|e| e.kind == FileKind::Dir).count();
    let mean_path = first.iter().map(|e| e.path.len()).sum::<usize>() / first.len().max(1);
    let deepest = first.iter().map(|e| e.path.matches('/').count()).max().unwrap_or(0);
    eprintln!(
        "{} paths ({folders} folders, mean path {mean_path} bytes, {deepest} levels deep); snapshot 3 changes {changed_files} files",
        first.len()
    );

    let mut results = Vec::new();
    for backend in &args.backends {
        let (label, url, _guard) = match backend.as_str() {
            "sqlite" => {
                let dir = tempfile_dir()?;
                let url = format!("sqlite://{}/catalog.db?mode=rwc", dir.display());
                ("SQLite", url, Guard { dir: Some(dir), _pg: None })
            }
            "postgres" => {
                let pg = arca_testkit::postgres_database();
                ("PostgreSQL", pg.url.clone(), Guard { dir: None, _pg: Some(pg) })
            }
            other => anyhow::bail!("unknown backend `{other}` (sqlite, postgres)"),
        };
        let db = arca_catalog::db::connect(&url).await?;
        let tenant = TenantId::new();
        let series = Series::Source(SourceId::new());
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let snapshots = [("1: all new", &first), ("2: unchanged", &first), ("3: changed", &changed)];
        for (n, (name, entries)) in snapshots.into_iter().enumerate() {
            let time = start + Duration::days(n as i64);
            let entries = entries.clone();
            let began = Instant::now();
            let outcome = index_snapshot(&db, tenant, SnapshotId::new(), &series, time, entries).await?;
            let seconds = began.elapsed().as_secs_f64();
            eprintln!("{label} snapshot {name}: {seconds:.1} s, {outcome:?}");
            results.push((label, name, seconds, outcome));
        }
        db.close().await?;
    }

    println!(
        "| database | snapshot | paths | seconds | paths/s | file rows added | file rows closed | indexed_snapshots rows |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (label, name, seconds, outcome) in results {
        let IndexOutcome { entries, rows_added, rows_closed, .. } = outcome;
        println!(
            "| {label} | {name} | {entries} | {seconds:.1} | {:.0} | {rows_added} | {rows_closed} | 1 |",
            entries as f64 / seconds
        );
    }
    Ok(())
}

/// Keeps a benchmark database alive until its measurements are done, then removes it.
struct Guard {
    dir: Option<std::path::PathBuf>,
    _pg: Option<arca_testkit::PgDatabase>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("arca-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const FOLDER_WORDS: [&str; 12] =
    ["projects", "src", "docs", "photos", "archive", "invoices", "reports", "assets", "build", "data", "mail", "notes"];
const FILE_STEMS: [&str; 10] =
    ["report", "IMG", "invoice", "main", "README", "budget", "notes", "backup", "index", "summary"];
const EXTENSIONS: [&str; 8] = ["pdf", "jpg", "docx", "rs", "md", "xlsx", "txt", "json"];

/// `count` paths under `/home`, breadth first: every folder gets 7 files and 3 subfolders
/// until the count is reached. Listed depth first, as a snapshot's trees are walked.
fn synthetic_tree(count: usize) -> Vec<FileEntry> {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut children: Vec<Vec<usize>> = vec![Vec::new()];
    let mut nodes: Vec<FileEntry> = vec![FileEntry { path: "/home".into(), kind: FileKind::Dir, size: 0, mtime_ns: 0 }];
    let mut queue = std::collections::VecDeque::from([0usize]);
    while let Some(folder) = queue.pop_front() {
        if nodes.len() >= count {
            break;
        }
        let parent = nodes[folder].path.clone();
        for i in 0..10 {
            if nodes.len() >= count {
                break;
            }
            let r = random.next();
            let mtime_ns = 1_700_000_000_000_000_000 + (r % 100_000_000) as i64 * 1_000_000_000;
            let entry = if i < 7 {
                let stem = FILE_STEMS[(r % 10) as usize];
                let ext = EXTENSIONS[((r >> 8) % 8) as usize];
                FileEntry {
                    // The last digit is the position in the folder: names never collide.
                    path: format!("{parent}/{stem}-{:05}.{ext}", (r >> 16) % 10_000 * 10 + i),
                    kind: FileKind::File,
                    size: (r >> 24) % (8 << 20),
                    mtime_ns,
                }
            } else {
                let word = FOLDER_WORDS[(r % 12) as usize];
                FileEntry { path: format!("{parent}/{word}-{}", i - 6), kind: FileKind::Dir, size: 0, mtime_ns }
            };
            let id = nodes.len();
            let is_dir = entry.kind == FileKind::Dir;
            nodes.push(entry);
            children.push(Vec::new());
            children[folder].push(id);
            if is_dir {
                queue.push_back(id);
            }
        }
    }
    let mut ordered = Vec::with_capacity(nodes.len());
    let mut stack = vec![0usize];
    while let Some(id) = stack.pop() {
        ordered.push(id);
        stack.extend(children[id].iter().rev());
    }
    let mut nodes: Vec<Option<FileEntry>> = nodes.into_iter().map(Some).collect();
    ordered.into_iter().map(|id| nodes[id].take().expect("each node listed once")).collect()
}

/// `tree` with `percent` % of its files given a new size and mtime (spread evenly).
fn with_changes(tree: &[FileEntry], percent: f64) -> Vec<FileEntry> {
    let every = if percent > 0.0 { (100.0 / percent).round().max(1.0) as usize } else { usize::MAX };
    let mut files = 0usize;
    tree.iter()
        .map(|entry| {
            let mut entry = entry.clone();
            if entry.kind == FileKind::File {
                files += 1;
                if files.is_multiple_of(every) {
                    entry.size += 1;
                    entry.mtime_ns += 1_000_000_000;
                }
            }
            entry
        })
        .collect()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
