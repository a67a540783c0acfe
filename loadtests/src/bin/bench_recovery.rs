//! Instant-recovery and replication benchmark (issue 6, "Speed"), in one process on this
//! machine, everything on the local disk:
//!
//! 1. instant recovery: a generated disk image (default 1 GiB of 4 MiB segments: incompressible
//!    data, log text, sparse binary pages, repeats of earlier segments, and zero regions) backed
//!    up into a local repository; then, in interleaved runs, a full `restore` of the image
//!    snapshot into a fresh folder, and an NBD export of it (`arca_recovery::nbd`) read by real
//!    clients: the time to first byte from opening the repository to `qemu-io -c 'read 0 4096'`
//!    returning, and the whole export read by `nbdcopy … null:` and by `qemu-img convert` into a
//!    file, each as a ratio to the restore's throughput;
//! 2. replication lag with the engine a replica job runs (`arca_replica::follow` driving a
//!    `Mirror`, default `FollowSettings`): (a) small files created or rewritten at
//!    `--files-per-second`, (b) `--image-change-percent` of a disk image rewritten in random
//!    1 MiB blocks every second. Each change's lag is taken from the writer's side (written →
//!    seen with its content in the mirror, polled every 2 ms) and each pass's `Pass::lag()`
//!    from the engine's;
//!    (c) the same image held open by `qemu-storage-daemon`, the guest's writes coming over
//!    NBD, followed through qemu's dirty bitmaps (`arca_replica::Tracked`);
//! 3. an incremental `arca_repo::backup` of the same sources after one second's worth of the
//!    same changes (previous snapshot as parent), against the replica's p99 lag.
//!
//! Prints Markdown tables. Usage:
//! `bench-recovery [--only recovery,files,image,image-qemu] [--runs N] [--image-mib N] [--seconds N]`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arca_recovery::nbd::{NbdServer, name_hash};
use arca_replica::{Behind, FollowSettings, Mirror, Pass, QemuDisk, Replicator, Tracked, follow, nbd};
use arca_repo::backup::{BackupOptions, BackupSource, IMAGE_BLOCK, backup};
use arca_repo::reader::{FileReader, image_node};
use arca_repo::restore::{RestoreOptions, restore};
use arca_repo::{Backend, InitOptions, Repository, Target, TargetOptions};
use arca_testkit::{DaemonOptions, StorageDaemon};
use clap::Parser;

const MIB: usize = 1 << 20;
const PASSPHRASE: &[u8] = b"bench-recovery passphrase";
const EXPORT_NAME: &str = "bench-recovery-export";
/// How often the writer's side looks for its changes in the mirror.
const POLL: Duration = Duration::from_millis(2);
/// A change not seen this long after the writer stopped counts as never replicated.
const GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    /// Which parts to run: recovery, files, image, image-qemu.
    #[arg(long, value_delimiter = ',', default_value = "recovery,files,image,image-qemu")]
    only: Vec<String>,
    /// Interleaved runs of the restore and the export, and incremental backups per source.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size of the generated disk image in MiB.
    #[arg(long, default_value_t = 1024)]
    image_mib: usize,
    /// Small files created or rewritten per second.
    #[arg(long, default_value_t = 100)]
    files_per_second: u64,
    /// Files in the small-files source before the stream starts (100 a folder). An
    /// incremental backup walks them all; the replica touches only what changed.
    #[arg(long, default_value_t = 50_000)]
    tree_files: usize,
    /// Share of the image rewritten per second, in percent.
    #[arg(long, default_value_t = 1.0)]
    image_change_percent: f64,
    /// Seconds each change stream runs.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The follower's debounce in ms (default: `FollowSettings::default()`).
    #[arg(long)]
    debounce_ms: Option<u64>,
    /// The follower's longest batch in ms (default: `FollowSettings::default()`).
    #[arg(long)]
    max_batch_ms: Option<u64>,
    /// Working folder (default: a fresh one in the temp dir, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working folder.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for part in &args.only {
        anyhow::ensure!(["recovery", "files", "image", "image-qemu"].contains(&part.as_str()), "unknown part `{part}`");
    }
    anyhow::ensure!(args.runs > 0 && args.image_mib >= 8 && args.seconds > 0, "nothing to measure");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("arca-bench-recovery-{}", std::process::id())));
    fs::create_dir_all(&dir)?;
    eprintln!("working in {}; load average {}", dir.display(), load_average());
    let result = run(&args, &dir);
    if args.keep {
        eprintln!("kept {}", dir.display());
    } else {
        fs::remove_dir_all(&dir).ok();
    }
    result
}

fn run(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let image = dir.join("image/disk.img");
    let shape = generate_image(&image, args.image_mib, 1)?;
    eprintln!("image: {shape}");
    println!("Disk image: {} MiB, {shape}.\n", args.image_mib);

    if args.only.iter().any(|p| p == "recovery") {
        let mark = CpuMark::now();
        let recovery = instant_recovery(dir, &image, args.runs)?;
        print_recovery(&recovery);
        println!("{}\n", mark.report());
    }
    let mut settings = FollowSettings::default();
    if let Some(ms) = args.debounce_ms {
        settings.debounce = Duration::from_millis(ms);
    }
    if let Some(ms) = args.max_batch_ms {
        settings.max_batch_wait = Duration::from_millis(ms);
    }
    eprintln!("follow settings: {settings:?}");
    let mut replicas = Vec::new();
    if args.only.iter().any(|p| p == "files") {
        let mark = CpuMark::now();
        let lag = small_files_lag(&settings, &dir.join("files"), args.tree_files, args.files_per_second, args.seconds)?;
        let backups = small_files_backups(&dir.join("files"), args.files_per_second, args.runs)?;
        replicas.push(Replica {
            name: format!(
                "{} small files, {} changes/s for {} s",
                args.tree_files, args.files_per_second, args.seconds
            ),
            target: Duration::from_secs(1),
            lag,
            backups,
            load: mark.report(),
        });
    }
    let blocks = ((args.image_mib as f64 * args.image_change_percent / 100.0).round() as usize).max(1);
    // Each image stream starts from a copy of the generated image, in a folder of its own.
    let image_copy = |work: &Path| -> anyhow::Result<(PathBuf, PathBuf)> {
        let (source, dest) = (work.join("src/disk.img"), work.join("dst/disk.img"));
        fs::create_dir_all(work.join("src"))?;
        fs::copy(&image, &source)?;
        Ok((source, dest))
    };
    if args.only.iter().any(|p| p == "image") {
        let mark = CpuMark::now();
        let (source, dest) = image_copy(&dir.join("image-replica"))?;
        let image = OpenOptions::new().write(true).open(&source)?;
        let mut write = |at, data: &[u8]| image.write_all_at(data, at);
        let lag =
            image_lag(&settings, &Mirror::new(&source, &dest), (&source, &dest), &mut write, blocks, args.seconds)?;
        let backups = image_backups(&dir.join("image-replica"), &source, blocks, args.runs)?;
        replicas.push(Replica {
            name: format!(
                "{} MiB image, {blocks} random 1 MiB blocks ({} %) rewritten per second for {} s",
                args.image_mib, args.image_change_percent, args.seconds
            ),
            target: Duration::from_secs(5),
            lag,
            backups,
            load: mark.report(),
        });
    }
    if args.only.iter().any(|p| p == "image-qemu") {
        let mark = CpuMark::now();
        let work = dir.join("image-qemu");
        let (source, dest) = image_copy(&work)?;
        let lag = {
            let daemon = StorageDaemon::start(&work, &source, DaemonOptions { nbd: true, ..DaemonOptions::default() });
            let disk = QemuDisk { monitor: daemon.monitor(), node: "drive0".into(), nbd: Some(daemon.nbd()) };
            let tracked = Tracked::open(Mirror::new(&source, &dest), disk, "arca-bench")?;
            let mut guest = nbd::Client::connect(&daemon.nbd(), "vm", None)?;
            let mut write = |at, data: &[u8]| guest.write_at(at, data);
            image_lag(&settings, &tracked, (&source, &dest), &mut write, blocks, args.seconds)?
        };
        let backups = image_backups(&work, &source, blocks, args.runs)?;
        replicas.push(Replica {
            name: format!(
                "{} MiB image open in qemu-storage-daemon, changed blocks from its dirty bitmap; {blocks} random 1 MiB blocks ({} %) written by the guest over NBD per second for {} s",
                args.image_mib, args.image_change_percent, args.seconds
            ),
            target: Duration::from_secs(5),
            lag,
            backups,
            load: mark.report(),
        });
    }
    if !replicas.is_empty() {
        print_replicas(&replicas, &settings);
    }
    Ok(())
}

// ---- Instant recovery ----

struct RecoveryRun {
    /// `restore` of the image snapshot (the repository already open).
    restore: Duration,
    export: ExportTimes,
}

struct ExportTimes {
    /// Opening the repository (key derivation) to the export being served.
    ready: Duration,
    /// Opening the repository to `qemu-io` having read the first 4 KiB.
    first_byte: Duration,
    /// The same `qemu-io` read again on the warm export: the client's own start-up.
    client_alone: Duration,
    nbdcopy: Duration,
    convert: Duration,
}

struct Recovery {
    bytes: u64,
    backup: Duration,
    repository_bytes: u64,
    runs: Vec<RecoveryRun>,
}

fn instant_recovery(dir: &Path, image: &Path, runs: usize) -> anyhow::Result<Recovery> {
    let repo_path = dir.join("repo-image");
    let repo = init_repo(&repo_path)?;
    let started = Instant::now();
    let outcome = backup(&repo, BackupSource::Image(image.to_path_buf()), &BackupOptions::default())?;
    let backup_time = started.elapsed();
    drop(repo);
    let bytes = fs::metadata(image)?.len();
    eprintln!("backup of the image: {backup_time:.2?}; snapshot {}", outcome.snapshot_id);

    let runtime = tokio::runtime::Runtime::new()?;
    let server = runtime.block_on(NbdServer::bind("127.0.0.1:0".parse().expect("an address")))?;
    let url = format!("nbd://{}/{EXPORT_NAME}", server.address());
    let mut results = Vec::new();
    for run in 0..runs {
        // Alternate which goes first, so neither always finds the other's pages in the cache.
        let mut restore_time = Duration::ZERO;
        let mut export = None;
        for step in 0..2 {
            if (run + step) % 2 == 0 {
                let out = dir.join(format!("restore-{run}"));
                restore_time = timed_restore(&repo_path, &outcome.snapshot_id, &out)?;
                if run == 0 {
                    let restored = first_file(&out)?.context("the restore wrote no file")?;
                    anyhow::ensure!(same_content(image, &restored)?, "the restored image differs from the source");
                }
                fs::remove_dir_all(&out)?;
            } else {
                export = Some(timed_export(&server, &url, &repo_path, &outcome.snapshot_id, dir, image, run == 0)?);
            }
        }
        let result = RecoveryRun { restore: restore_time, export: export.expect("the export ran") };
        eprintln!(
            "run {}: restore {:.2?}, export ready {:.0?}, first byte {:.0?} (qemu-io alone {:.0?}), nbdcopy {:.2?}, qemu-img convert {:.2?}; load {}",
            run + 1,
            result.restore,
            result.export.ready,
            result.export.first_byte,
            result.export.client_alone,
            result.export.nbdcopy,
            result.export.convert,
            load_average()
        );
        results.push(result);
    }
    let repository_bytes = folder_bytes(&repo_path)?;
    fs::remove_dir_all(&repo_path)?;
    Ok(Recovery { bytes, backup: backup_time, repository_bytes, runs: results })
}

fn timed_restore(repo_path: &Path, snapshot: &str, out: &Path) -> anyhow::Result<Duration> {
    let repo = open_repo(repo_path)?;
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    let started = Instant::now();
    restore(&repo, &snapshot, out, &RestoreOptions::default())?;
    Ok(started.elapsed())
}

/// Opens the repository and serves the image as an export, then reads it with real clients.
fn timed_export(
    server: &NbdServer,
    url: &str,
    repo_path: &Path,
    snapshot: &str,
    dir: &Path,
    image: &Path,
    verify: bool,
) -> anyhow::Result<ExportTimes> {
    let started = Instant::now();
    let repo = open_repo(repo_path)?;
    let (_, snapshot) = repo.find_snapshot(snapshot)?;
    let index = Arc::new(repo.load_index()?);
    let (_, node) = image_node(&repo, &index, &snapshot)?;
    let reader = FileReader::new(repo, index, &node)?;
    let guard = server.add(name_hash(EXPORT_NAME.as_bytes()), reader, false)?;
    let ready = started.elapsed();
    qemu_io_first_block(url)?;
    let first_byte = started.elapsed();
    let again = Instant::now();
    qemu_io_first_block(url)?;
    let client_alone = again.elapsed();

    let started = Instant::now();
    run_client("nbdcopy", &[url, "null:"])?;
    let nbdcopy = started.elapsed();

    let copy = dir.join("export-copy.img");
    let started = Instant::now();
    run_client("qemu-img", &["convert", "-f", "raw", "-O", "raw", url, path_str(&copy)?])?;
    let convert = started.elapsed();
    if verify {
        anyhow::ensure!(same_content(image, &copy)?, "the export's copy differs from the source image");
    }
    fs::remove_file(&copy)?;
    drop(guard);
    Ok(ExportTimes { ready, first_byte, client_alone, nbdcopy, convert })
}

fn qemu_io_first_block(url: &str) -> anyhow::Result<()> {
    let out = run_client("qemu-io", &["-f", "raw", "-r", "-c", "read 0 4096", url])?;
    anyhow::ensure!(out.contains("read 4096/4096 bytes"), "qemu-io did not read the first block: {out}");
    Ok(())
}

/// Runs a client to its end; its standard output.
fn run_client(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn print_recovery(recovery: &Recovery) {
    let mib = recovery.bytes as f64 / MIB as f64;
    let rate = |d: Duration| mib / d.as_secs_f64();
    let runs = &recovery.runs;
    println!(
        "Instant recovery: {mib:.0} MiB image, full backup {:.2} s ({:.0} MiB/s), repository {:.0} MiB; {} interleaved runs, warm page cache.\n",
        recovery.backup.as_secs_f64(),
        rate(recovery.backup),
        recovery.repository_bytes as f64 / MIB as f64,
        runs.len()
    );
    let header: Vec<String> = (1..=runs.len()).map(|i| format!("run {i}")).collect();
    println!("| measurement | {} | median | target | met? |", header.join(" | "));
    println!("|---|{}---:|---|---|", "---:|".repeat(runs.len()));
    let restore_rate: Vec<f64> = runs.iter().map(|r| rate(r.restore)).collect();
    let row = |name: &str, values: Vec<f64>, unit: &str, digits: usize, target: &str, met: Option<bool>| {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}{unit}")).collect();
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        println!("| {name} | {} | **{:.digits$}{unit}** | {target} | {met} |", cells.join(" | "), median_f64(&values));
    };
    row(
        "full restore (`restore` into a fresh folder), s",
        runs.iter().map(|r| r.restore.as_secs_f64()).collect(),
        "",
        2,
        "",
        None,
    );
    row("full restore throughput", restore_rate.clone(), " MiB/s", 0, "the reference", None);
    let ms =
        |f: fn(&ExportTimes) -> Duration| runs.iter().map(|r| f(&r.export).as_secs_f64() * 1e3).collect::<Vec<_>>();
    row("export ready: open repository (KDF), index, reader, add export", ms(|e| e.ready), " ms", 0, "", None);
    let first: Vec<f64> = ms(|e| e.first_byte);
    let first_met = median_f64(&first) < 1000.0;
    row("first byte: open → `qemu-io -c 'read 0 4096'` done", first, " ms", 0, "< 1 s", Some(first_met));
    row("of which `qemu-io` alone (same read again, warm)", ms(|e| e.client_alone), " ms", 0, "", None);
    for (name, times) in
        [("`nbdcopy nbd://… null:`", ms(|e| e.nbdcopy)), ("`qemu-img convert -O raw nbd://… file`", ms(|e| e.convert))]
    {
        let rates: Vec<f64> = times.iter().map(|t| mib / (t / 1e3)).collect();
        let ratios: Vec<f64> = rates.iter().zip(&restore_rate).map(|(a, b)| 100.0 * a / b).collect();
        row(&format!("sequential read of the export, {name}"), rates, " MiB/s", 0, "", None);
        let met = median_f64(&ratios) >= 50.0;
        row("… as a share of the restore (same run)", ratios, " %", 0, "≥ 50 %", Some(met));
    }
    println!();
}

// ---- Replication lag ----

/// What a change stream measured.
struct Lag {
    /// Writer's side: written → seen with its content in the mirror.
    seen: Vec<Duration>,
    /// Changes overwritten before their first version was seen (not counted).
    superseded: usize,
    /// Changes never seen.
    unseen: usize,
    /// The engine's `Pass::lag()` of every pass that carried changes.
    passes: Vec<Duration>,
    /// Files the passes wrote, on average.
    files_per_pass: f64,
    /// The first full sync.
    initial_sync: Duration,
    /// Changes the writer made per second (it aims at the asked rate).
    achieved_rate: f64,
}

/// A change waiting to be seen in the mirror.
struct Pending {
    key: String,
    written: Instant,
    seen: Box<dyn Fn() -> bool + Send>,
}

/// Follows `source` into `dest` with the replica engine while `write` makes its changes (it
/// sends one [`Pending`] per change), measuring every change's lag.
fn measure_lag(
    settings: &FollowSettings,
    mirror: &(dyn Replicator + Sync),
    write: impl FnOnce(&mpsc::Sender<Pending>) -> anyhow::Result<f64>,
) -> anyhow::Result<Lag> {
    let stop = AtomicBool::new(false);
    let passes: Mutex<Vec<Pass>> = Mutex::default();
    let (first_pass, first_passed) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let started = Instant::now();
        let follower = scope.spawn(|| {
            let mut first = Some(first_pass);
            follow(mirror, settings, &stop, &Behind::default(), |pass| {
                if let Some(first) = first.take() {
                    let _ = first.send(());
                } else if pass.stats.changed() {
                    passes.lock().expect("passes").push(pass.clone());
                }
                !stop.load(Ordering::Relaxed)
            })
        });
        let result: anyhow::Result<_> = (|| {
            first_passed.recv().context("the follower stopped before its first pass")?;
            let initial_sync = started.elapsed();
            let (changes, pending) = mpsc::channel::<Pending>();
            let poller = scope.spawn(move || poll_until_seen(pending));
            let achieved_rate = write(&changes)?;
            drop(changes);
            let (seen, superseded, unseen) = poller.join().expect("the poller panicked");
            Ok((initial_sync, achieved_rate, seen, superseded, unseen))
        })();
        // One more idle tick so the last pass is recorded, then stop.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        follower.join().expect("the follower panicked")?;
        let (initial_sync, achieved_rate, seen, superseded, unseen) = result?;
        let passes = std::mem::take(&mut *passes.lock().expect("passes"));
        let files: u64 = passes.iter().map(|p| p.stats.files).sum();
        Ok(Lag {
            seen,
            superseded,
            unseen,
            files_per_pass: files as f64 / passes.len().max(1) as f64,
            passes: passes.iter().filter_map(Pass::lag).collect(),
            initial_sync,
            achieved_rate,
        })
    })
}

/// Looks for every pending change every [`POLL`] until the sender is gone and all were seen
/// (or [`GIVE_UP`] passed). Returns the lags, the superseded and the never-seen counts.
fn poll_until_seen(pending: mpsc::Receiver<Pending>) -> (Vec<Duration>, usize, usize) {
    let mut waiting: HashMap<String, Pending> = HashMap::new();
    let mut lags = Vec::new();
    let mut superseded = 0;
    let mut writer_done: Option<Instant> = None;
    loop {
        let tick = Instant::now();
        loop {
            match pending.try_recv() {
                Ok(change) => {
                    if waiting.insert(change.key.clone(), change).is_some() {
                        superseded += 1;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    writer_done.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        waiting.retain(|_, change| {
            if (change.seen)() {
                lags.push(change.written.elapsed());
                false
            } else {
                true
            }
        });
        if writer_done.is_some_and(|done| waiting.is_empty() || done.elapsed() > GIVE_UP) {
            return (lags, superseded, waiting.len());
        }
        std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
    }
}

/// A tree of `count` small files, 100 a folder, 512 B to 16 KiB.
fn small_files_tree(source: &Path, count: usize, rng: &mut Rng) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for folder in 0..count.div_ceil(100) {
        fs::create_dir_all(source.join(format!("d{folder:02}")))?;
        for file in 0..100 {
            let path = source.join(format!("d{folder:02}/f{file:04}.txt"));
            fs::write(&path, small_file_content(rng, 0))?;
            files.push(path);
        }
    }
    Ok(files)
}

fn small_file_content(rng: &mut Rng, change: u64) -> Vec<u8> {
    let size = (512usize << rng.below(6)) + rng.below(512) as usize;
    let mut content = format!("change {change}\n").into_bytes();
    let start = content.len();
    content.resize(start.max(size), 0);
    fill_text(rng, &mut content[start..]);
    content
}

/// Change `i` of the small-files stream: every other one creates a file, the others rewrite
/// one that exists. Returns the path and its new content.
fn small_file_change(
    source: &Path,
    files: &mut Vec<PathBuf>,
    rng: &mut Rng,
    i: u64,
) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let path = if i.is_multiple_of(2) {
        let path = source.join(format!("d{:02}/new-{i:06}.txt", i % 20));
        files.push(path.clone());
        path
    } else {
        files[rng.below(files.len() as u64) as usize].clone()
    };
    let content = small_file_content(rng, i);
    fs::write(&path, &content)?;
    Ok((path, content))
}

fn small_files_lag(
    settings: &FollowSettings,
    dir: &Path,
    tree_files: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Lag> {
    let (source, dest) = (dir.join("src"), dir.join("dst"));
    let mut rng = Rng::new(11);
    let mut files = small_files_tree(&source, tree_files, &mut rng)?;
    let lag = measure_lag(settings, &Mirror::new(&source, &dest), |changes| {
        let total = rate * seconds;
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let (path, content) = small_file_change(&source, &mut files, &mut rng, i)?;
            let written = Instant::now();
            let mirrored = dest.join(path.strip_prefix(&source)?);
            changes
                .send(Pending {
                    key: path.to_string_lossy().into_owned(),
                    written,
                    seen: Box::new(move || fs::read(&mirrored).is_ok_and(|have| have == content)),
                })
                .ok();
        }
        Ok(total as f64 / started.elapsed().as_secs_f64())
    })?;
    anyhow::ensure!(same_tree(&source, &dest)?, "the mirror differs from the source after the stream");
    Ok(lag)
}

/// Incremental backups of the small-files source, each after one second's worth of changes.
fn small_files_backups(dir: &Path, rate: u64, runs: usize) -> anyhow::Result<Backups> {
    let source = dir.join("src");
    let mut files: Vec<PathBuf> = Vec::new();
    collect_files(&source, &mut files)?;
    let mut rng = Rng::new(12);
    let repo = init_repo(&dir.join("repo"))?;
    let full_started = Instant::now();
    let mut parent = backup(&repo, BackupSource::Paths(vec![source.clone()]), &BackupOptions::default())?.snapshot_id;
    let full = full_started.elapsed();
    let mut times = Vec::new();
    for run in 0..runs {
        for i in 0..rate {
            small_file_change(&source, &mut files, &mut rng, 1_000_000 * (run as u64 + 1) + i)?;
        }
        let options = BackupOptions { parent: Some(parent.clone()), ..BackupOptions::default() };
        let started = Instant::now();
        parent = backup(&repo, BackupSource::Paths(vec![source.clone()]), &options)?.snapshot_id;
        times.push(started.elapsed());
        eprintln!("small files: incremental backup {run}: {:.2?}", times[run]);
    }
    Ok(Backups { full, incremental: times, change: format!("{rate} files changed") })
}

/// A 1 MiB block of fresh random data stamped with `stamp` at both ends.
fn stamped_block(rng: &mut Rng, stamp: [u8; 16]) -> Vec<u8> {
    let mut block = vec![0u8; MIB];
    rng.fill(&mut block);
    block[..16].copy_from_slice(&stamp);
    block[MIB - 16..].copy_from_slice(&stamp);
    block
}

fn stamp(round: u64, k: usize) -> [u8; 16] {
    let mut stamp = *b"arca-bench\0\0\0\0\0\0";
    stamp[10..14].copy_from_slice(&(round as u32).to_le_bytes());
    stamp[14..16].copy_from_slice(&(k as u16).to_le_bytes());
    stamp
}

/// How the guest writes to the image: straight into the file, or through qemu over NBD.
type WriteAt<'a> = &'a mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>;

/// Rewrites `blocks` random 1 MiB blocks of an image of `size` bytes; returns each block's
/// number and stamp.
fn rewrite_blocks(
    write: WriteAt<'_>,
    size: u64,
    rng: &mut Rng,
    round: u64,
    blocks: usize,
) -> anyhow::Result<Vec<(u64, [u8; 16])>> {
    let count = size / MIB as u64;
    let mut written = Vec::with_capacity(blocks);
    for k in 0..blocks {
        let block = rng.below(count);
        let stamp = stamp(round, k);
        write(block * MIB as u64, &stamped_block(rng, stamp))?;
        written.push((block, stamp));
    }
    Ok(written)
}

/// The lag of a replica of `source` in `dest` kept by `mirror` while `write` rewrites
/// `blocks` random 1 MiB blocks every second.
fn image_lag(
    settings: &FollowSettings,
    mirror: &(dyn Replicator + Sync),
    (source, dest): (&Path, &Path),
    write: WriteAt<'_>,
    blocks: usize,
    seconds: u64,
) -> anyhow::Result<Lag> {
    let mut rng = Rng::new(21);
    let size = fs::metadata(source)?.len();
    let lag = measure_lag(settings, mirror, |changes| {
        let started = Instant::now();
        for round in 0..seconds {
            std::thread::sleep((started + Duration::from_secs(round)).saturating_duration_since(Instant::now()));
            for (block, stamp) in rewrite_blocks(write, size, &mut rng, round + 1, blocks)? {
                let written = Instant::now();
                let dest = dest.to_path_buf();
                let seen = move || {
                    let Ok(file) = File::open(&dest) else { return false };
                    let (mut head, mut tail) = ([0u8; 16], [0u8; 16]);
                    let at = block * MIB as u64;
                    file.read_exact_at(&mut head, at).is_ok()
                        && file.read_exact_at(&mut tail, at + (MIB - 16) as u64).is_ok()
                        && head == stamp
                        && tail == stamp
                };
                changes.send(Pending { key: block.to_string(), written, seen: Box::new(seen) }).ok();
            }
        }
        Ok((seconds as usize * blocks) as f64 / started.elapsed().as_secs_f64())
    })?;
    anyhow::ensure!(same_content(source, dest)?, "the mirrored image differs from the source after the stream");
    Ok(lag)
}

/// Incremental backups of the image, each after one second's worth of rewritten blocks.
fn image_backups(dir: &Path, source: &Path, blocks: usize, runs: usize) -> anyhow::Result<Backups> {
    let repo = init_repo(&dir.join("repo"))?;
    let full_started = Instant::now();
    let mut parent = backup(&repo, BackupSource::Image(source.to_path_buf()), &BackupOptions::default())?.snapshot_id;
    let full = full_started.elapsed();
    let image = OpenOptions::new().write(true).open(source)?;
    let size = image.metadata()?.len();
    let mut rng = Rng::new(22);
    let mut times = Vec::new();
    for run in 0..runs {
        rewrite_blocks(&mut |at, data| image.write_all_at(data, at), size, &mut rng, 1_000_000 + run as u64, blocks)?;
        let options = BackupOptions { parent: Some(parent.clone()), ..BackupOptions::default() };
        let started = Instant::now();
        parent = backup(&repo, BackupSource::Image(source.to_path_buf()), &options)?.snapshot_id;
        times.push(started.elapsed());
        eprintln!("image: incremental backup {run}: {:.2?}", times[run]);
    }
    Ok(Backups { full, incremental: times, change: format!("{blocks} × 1 MiB blocks rewritten") })
}

struct Backups {
    full: Duration,
    incremental: Vec<Duration>,
    change: String,
}

/// One change stream's results.
struct Replica {
    name: String,
    /// The p99 lag the issue asks for.
    target: Duration,
    lag: Lag,
    backups: Backups,
    load: String,
}

fn print_replicas(replicas: &[Replica], settings: &FollowSettings) {
    println!(
        "Replication lag: `follow` + `Mirror` ({} ms debounce, {} ms longest batch), source and mirror on the local disk.\n",
        settings.debounce.as_millis(),
        settings.max_batch_wait.as_millis()
    );
    println!(
        "| stream | changes (superseded / never seen) | achieved rate | writer's side: written → in the mirror, p50 / p99 / max | engine `Pass::lag()` p50 / p99 / max (passes) | files per pass | target p99 | met? |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for Replica { name, target, lag, .. } in replicas {
        let p99 = percentile(&lag.seen, 0.99);
        println!(
            "| {name} | {} ({} / {}) | {:.1}/s | {} | {} ({}) | {:.1} | < {} s | {} |",
            lag.seen.len() + lag.superseded + lag.unseen,
            lag.superseded,
            lag.unseen,
            lag.achieved_rate,
            three(&lag.seen),
            three(&lag.passes),
            lag.passes.len(),
            lag.files_per_pass,
            target.as_secs(),
            if p99 < *target && lag.unseen == 0 { "yes" } else { "**no**" }
        );
    }
    println!();
    println!(
        "| source | initial full sync | full backup | change | incremental backup per run | median | replica p99 (writer's side) | backup / replica p99 | target | met? |"
    );
    println!("|---|---:|---:|---|---|---:|---:|---:|---|---|");
    for Replica { name, lag, backups, .. } in replicas {
        let median = percentile(&backups.incremental, 0.5);
        let p99 = percentile(&lag.seen, 0.99);
        let ratio = median.as_secs_f64() / p99.as_secs_f64().max(1e-6);
        let runs: Vec<String> = backups.incremental.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
        println!(
            "| {name} | {:.2} s | {:.2} s | {} | {} s | **{:.2} s** | {:.0} ms | **{ratio:.1}×** | ≥ 10× | {} |",
            lag.initial_sync.as_secs_f64(),
            backups.full.as_secs_f64(),
            backups.change,
            runs.join(" / "),
            median.as_secs_f64(),
            p99.as_secs_f64() * 1e3,
            if ratio >= 10.0 { "yes" } else { "**no**" }
        );
    }
    println!();
    for Replica { name, load, .. } in replicas {
        println!("- {name}: {load}");
    }
}

/// "p50 / p99 / max ms".
fn three(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "–".into();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.0} / {:.0} / {:.0} ms",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.99)),
        ms(percentile(samples, 1.0))
    )
}

/// Nearest-rank percentile (`q` in 0..=1).
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

// ---- The disk image ----

/// What kinds of 4 MiB segments the generated image holds.
#[derive(Default)]
struct ImageShape {
    random: usize,
    text: usize,
    sparse_binary: usize,
    repeats: usize,
    zeros: usize,
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "4 MiB segments: {} incompressible, {} log text, {} binary pages (half zero), {} repeats of earlier segments, {} all zero",
            self.random, self.text, self.sparse_binary, self.repeats, self.zeros
        )
    }
}

#[derive(Clone, Copy)]
enum Segment {
    Random(u64),
    Text(u64),
    SparseBinary(u64),
    Zeros,
}

/// Writes a deterministic image of `mib` MiB in runs of segments of one kind (real disks keep
/// free space and data in long runs): about 30 % incompressible (media, encrypted or
/// compressed files), 25 % log text, 20 % binary pages, 10 % repeats, 15 % zeros.
fn generate_image(path: &Path, mib: usize, seed: u64) -> anyhow::Result<ImageShape> {
    fs::create_dir_all(path.parent().expect("a folder"))?;
    let mut out = BufWriter::with_capacity(IMAGE_BLOCK, File::create(path)?);
    let mut rng = Rng::new(seed);
    let mut shape = ImageShape::default();
    let mut data_segments: Vec<Segment> = Vec::new();
    let mut buf = vec![0u8; IMAGE_BLOCK];
    let mut left = mib * MIB;
    while left > 0 {
        let roll = rng.below(100);
        let run = 1 + rng.below(6) as usize;
        for _ in 0..run {
            if left == 0 {
                break;
            }
            let segment = match roll {
                0..30 => Segment::Random(rng.next()),
                30..55 => Segment::Text(rng.next()),
                55..75 => Segment::SparseBinary(rng.next()),
                75..85 if !data_segments.is_empty() => {
                    shape.repeats += 1;
                    data_segments[rng.below(data_segments.len() as u64) as usize]
                }
                _ => Segment::Zeros,
            };
            let len = left.min(IMAGE_BLOCK);
            let block = &mut buf[..len];
            match segment {
                Segment::Random(seed) => {
                    shape.random += usize::from(roll < 30);
                    Rng::new(seed).fill(block);
                }
                Segment::Text(seed) => {
                    shape.text += usize::from((30..55).contains(&roll));
                    fill_text(&mut Rng::new(seed), block);
                }
                Segment::SparseBinary(seed) => {
                    shape.sparse_binary += usize::from((55..75).contains(&roll));
                    fill_sparse_binary(&mut Rng::new(seed), block);
                }
                Segment::Zeros => {
                    shape.zeros += 1;
                    block.fill(0);
                }
            }
            if !matches!(segment, Segment::Zeros) && roll < 75 {
                data_segments.push(segment);
            }
            out.write_all(block)?;
            left -= len;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(shape)
}

const WORDS: &[&str] = &[
    "backup",
    "replica",
    "snapshot",
    "worker",
    "pack",
    "index",
    "chunk",
    "restore",
    "policy",
    "target",
    "connection",
    "accepted",
    "closed",
    "request",
    "GET",
    "POST",
    "/v1/jobs",
    "/v1/snapshots",
    "200",
    "404",
    "retry",
    "timeout",
    "user",
    "session",
    "started",
    "finished",
    "bytes",
    "files",
    "error",
    "warning",
];

/// Log-like lines: compress about 4× with zstd.
fn fill_text(rng: &mut Rng, buf: &mut [u8]) {
    let mut line = Vec::with_capacity(160);
    let mut at = 0;
    while at < buf.len() {
        line.clear();
        let level = ["INFO", "INFO", "INFO", "DEBUG", "WARN"][rng.below(5) as usize];
        let _ = write!(
            line,
            "2026-11-30T08:{:02}:{:02}.{:06}Z {level} worker-{}:",
            rng.below(60),
            rng.below(60),
            rng.below(1_000_000),
            rng.below(16)
        );
        for _ in 0..3 + rng.below(8) {
            let _ = write!(line, " {}", WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        let _ = writeln!(line, " id={:016x} n={}", rng.next(), rng.below(100_000));
        let take = line.len().min(buf.len() - at);
        buf[at..at + take].copy_from_slice(&line[..take]);
        at += take;
    }
}

/// 4 KiB pages, half of them zero and the rest small integers (tables, executables).
fn fill_sparse_binary(rng: &mut Rng, buf: &mut [u8]) {
    for page in buf.chunks_mut(4096) {
        if rng.below(2) == 0 {
            page.fill(0);
        } else {
            for word in page.chunks_mut(4) {
                let value = (rng.below(1024) as u32).to_le_bytes();
                word.copy_from_slice(&value[..word.len()]);
            }
        }
    }
}

/// xorshift64*: fast, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let value = self.next().to_le_bytes();
            word.copy_from_slice(&value[..word.len()]);
        }
    }
}

// ---- Helpers ----

fn target(path: &Path) -> anyhow::Result<(Target, TargetOptions)> {
    Ok((Target::parse(&format!("fs://{}", path.display()))?, TargetOptions::default()))
}

/// A repository with the default (CLI) key derivation, so opening it costs what it costs.
fn init_repo(path: &Path) -> anyhow::Result<Repository> {
    let (target, options) = target(path)?;
    Ok(Repository::init(Backend::open(&target, &options)?, PASSPHRASE, &InitOptions::default())?)
}

fn open_repo(path: &Path) -> anyhow::Result<Repository> {
    let (target, options) = target(path)?;
    Ok(Repository::open(Backend::open(&target, &options)?, PASSPHRASE)?)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The first regular file under `dir` (a restored image).
fn first_file(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    Ok(files.into_iter().next())
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

fn folder_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.iter().map(|f| Ok(fs::metadata(f)?.len())).sum()
}

/// Whether two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 4 * MIB], vec![0u8; 4 * MIB]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        if n != read_full(&mut b, &mut y)? || x[..n] != y[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Whether two trees hold the same files with the same bytes.
fn same_tree(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut left, mut right) = (Vec::new(), Vec::new());
    collect_files(a, &mut left)?;
    collect_files(b, &mut right)?;
    if left.len() != right.len() {
        return Ok(false);
    }
    for (x, y) in left.iter().zip(&right) {
        if x.strip_prefix(a)? != y.strip_prefix(b)? || fs::read(x)? != fs::read(y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPU time of the machine and of this process (with the clients it waited for), to tell how
/// much of the two cores other work took during a part.
struct CpuMark {
    machine_busy: u64,
    machine_total: u64,
    own: u64,
    load: String,
}

impl CpuMark {
    fn now() -> CpuMark {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal …
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let machine_total: u64 = fields.iter().take(8).sum();
        let own_stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after_name = own_stat.rfind(')').map_or("", |at| &own_stat[at + 1..]);
        let rest: Vec<u64> = after_name.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        // After the name: state (field 3) … utime (14), stime (15), cutime (16), cstime (17).
        let own = rest.get(11..15).map_or(0, |t| t.iter().sum());
        CpuMark { machine_busy: machine_total - idle, machine_total, own, load: load_average() }
    }

    /// "load average a → b; cores busy: x of n (this benchmark y, other work z)".
    fn report(&self) -> String {
        let now = CpuMark::now();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let total = (now.machine_total - self.machine_total).max(1) as f64;
        let busy = cores * (now.machine_busy - self.machine_busy) as f64 / total;
        let own = cores * (now.own - self.own) as f64 / total;
        format!(
            "load average (1/5/15 min) {} at the start, {} at the end; cores busy {busy:.2} of {cores:.0}: this benchmark and its clients {own:.2}, other work {:.2}",
            self.load,
            now.load,
            (busy - own).max(0.0)
        )
    }
}
