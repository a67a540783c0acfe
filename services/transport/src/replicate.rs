//! Replicas: a replicate job keeps a live copy of a source (a folder, or a disk image file)
//! nearly in step — file-system notifications, debounced, plus a periodic rescan; only changed
//! blocks of a changed file are written — and records recovery points beside it, so a source
//! that was deleted or encrypted can be rolled back, not just mirrored.
//!
//! A replica kept in a folder `D` holds the live copy in `D/live` (for an image source,
//! `D/live/<image name>`) and its recovery points as snapshots of the live copy in a
//! repository at `D/points` (deduplicated, so a point costs only what changed). A point is
//! recorded once changes have settled (or have waited half the RPO) and at most every half RPO
//! (1 s to 5 min), with the worst lag seen since the last one. A watcher beside the follower
//! keeps the live lag metric, `arca_replica_lag_seconds{replica}`, and reports a lag over the
//! RPO while it happens; the domain raises `ReplicaLagExceeded` once per time over the RPO.
//!
//! Failover (its own job) stops the follower and makes a kept point the live copy: the point
//! is restored beside `D/live` and swapped in. Failback copies the live copy, with whatever
//! changed during failover, back over the source, and starts a new replicate job.
//!
//! A replica on an S3 or Azure target keeps no live copy: its recovery points are incremental
//! backups of the source into the target's repository, driven by the same notifications, and
//! committed as snapshots; it is failed over by restoring one of them. Points it no longer keeps
//! are forgotten by storage jobs (transport workers never delete).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arca_bus::ExecuteError;
use arca_domain::job::{Job, JobCommand};
use arca_domain::replica::{Replica, ReplicaCommand};
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_domain::source::Source;
use arca_domain::{DomainError, Lifecycle};
use arca_events::{JobKind, ReplicaDestination, ReplicaId, SourceKind, TargetId, Trigger};
use arca_replica::{Behind, FollowSettings, Mirror, QemuDisk, Replicator, SyncStats, Tracked, follow};
use arca_repo::restore::{RestoreOptions, restore};
use arca_repo::{BackupOptions, BackupSource, Repository};
use arca_worker::ids::{follow_up_job_id, replicate_job_id, snapshot_id};
use arca_worker::runner::start_job;
use arca_worker::{Folders, JobContext, JobError, JobHandler, JobOutcome, TargetSpec, Targets, usage};
use chrono::Utc;

/// Tag on every recovery point of a replica.
fn point_tag(replica: ReplicaId) -> String {
    format!("replica:{replica}")
}

/// Where a folder replica keeps things.
struct Layout {
    live: PathBuf,
    points: PathBuf,
    /// Where a failover restores a point before swapping it in.
    staging: PathBuf,
    /// Locked by whoever writes the live copy: the follower, a failover, a failback.
    lock: PathBuf,
}

fn layout(destination: &str, source: &Path) -> Layout {
    let root = PathBuf::from(destination);
    let live = if source.is_dir() {
        root.join("live")
    } else {
        root.join("live").join(source.file_name().unwrap_or_else(|| "image".as_ref()))
    };
    Layout { live, points: root.join("points"), staging: root.join(".failover"), lock: root.join(".lock") }
}

/// Takes the replica folder's lock, waiting up to a minute for its holder (a follower that
/// was just cancelled stops within a tenth of a second) to let go.
fn lock_folder(layout: &Layout) -> Result<std::fs::File, JobError> {
    if let Some(parent) = layout.lock.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create the replica folder", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&layout.lock)
        .map_err(|e| io_error("open the replica's lock", e))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JobError::Temporary("another job still holds the replica folder".into()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock the replica folder", e)),
        }
    }
}

struct Replicated {
    id: ReplicaId,
    replica: Replica,
    source: PathBuf,
    /// The running qemu that has the source image open, to ask for changed blocks.
    qemu: Option<QemuDisk>,
    to: Destination,
}

enum Destination {
    Folder(String),
    Target(TargetId),
}

impl Replicated {
    /// The folder of a folder replica (failover and failback need one).
    fn folder(&self) -> Result<&str, JobError> {
        match &self.to {
            Destination::Folder(folder) => Ok(folder),
            Destination::Target(_) => {
                Err(JobError::Permanent("a replica on a target is failed over by restoring one of its points".into()))
            }
        }
    }
}

/// The replica a job works for, its source path and its destination folder (both checked
/// against the tenant's folder on a shared host).
async fn load(ctx: &JobContext, folders: &Folders) -> Result<Option<Replicated>, JobError> {
    let Some(Trigger::Replica { replica: id }) = ctx.job.trigger else {
        return Err(JobError::Permanent("a replica job is triggered by its replica".into()));
    };
    let (replica, _) = ctx.store.load_state::<Replica>(ctx.tenant, id.as_uuid()).await?;
    if replica.status != Lifecycle::Active {
        return Ok(None);
    }
    let (source, _) = ctx.store.load_state::<Source>(ctx.tenant, replica.source.as_uuid()).await?;
    let path = match (source.kind, &source.paths[..]) {
        (Some(SourceKind::Files | SourceKind::Image), [path]) if source.status == Lifecycle::Active => {
            folders.check(ctx.tenant, Path::new(path), "the replicated source")?
        }
        (Some(SourceKind::Postgres), _) => {
            return Err(JobError::Permanent("a PostgreSQL source is protected by backups, not replicas".into()));
        }
        (Some(_), _) if source.status == Lifecycle::Active => {
            return Err(JobError::Permanent("a replicated source names exactly one folder or image".into()));
        }
        _ => return Err(JobError::Permanent(format!("source {} does not exist or was removed", replica.source))),
    };
    let qemu = match &source.qemu {
        Some(qemu) => {
            let socket = |path: &str, what| folders.check(ctx.tenant, Path::new(path), what);
            Some(QemuDisk {
                monitor: socket(&qemu.monitor, "the qemu monitor")?,
                node: qemu.node.clone(),
                nbd: qemu.nbd.as_deref().map(|nbd| socket(nbd, "the qemu NBD server")).transpose()?,
            })
        }
        None => None,
    };
    let to = match &replica.destination {
        Some(ReplicaDestination::Directory { path }) => {
            let path = folders.check(ctx.tenant, Path::new(path), "the replica's folder")?;
            Destination::Folder(path.to_string_lossy().into_owned())
        }
        Some(ReplicaDestination::Target { target }) => Destination::Target(*target),
        None => return Err(JobError::Permanent(format!("replica {id} has no destination"))),
    };
    Ok(Some(Replicated { id, replica, source: path, qemu, to }))
}

fn repo_error(e: arca_repo::Error) -> JobError {
    if e.is_temporary() { JobError::Temporary(e.to_string()) } else { JobError::Permanent(e.to_string()) }
}

fn io_error(what: &str, e: std::io::Error) -> JobError {
    JobError::Temporary(format!("{what}: {e}"))
}

/// Follows replicas' sources.
pub struct ReplicateHandler {
    targets: Targets,
    settings: FollowSettings,
}

impl ReplicateHandler {
    pub fn new(targets: Targets, settings: FollowSettings) -> Self {
        ReplicateHandler { targets, settings }
    }
}

impl JobHandler for ReplicateHandler {
    fn kind(&self) -> JobKind {
        JobKind::Replicate
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let Some(work) = load(&ctx, self.targets.folders()).await? else { return Ok(JobOutcome::default()) };
        if work.replica.is_failed_over() {
            // Failed over: the live copy is the replica's own now; a failback resumes.
            return Ok(JobOutcome::default());
        }
        if !work.source.exists() {
            return Err(JobError::Temporary(format!("the source {} is not there", work.source.display())));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = tokio::spawn({
            let (ctx, stop) = (ctx.clone(), stop.clone());
            async move {
                ctx.cancelled().await;
                stop.store(true, Ordering::Relaxed);
            }
        });
        let targets = self.targets.clone();
        let settings = self.settings.clone();
        let runtime = tokio::runtime::Handle::current();
        let spec = match work.to {
            Destination::Target(target) => {
                let spec = self.targets.describe(ctx.tenant, target).await?;
                self.targets.ensure_repository(&spec).await?;
                Some(spec)
            }
            Destination::Folder(_) => None,
        };
        let behind = Arc::new(Watched::default());
        let rpo = Duration::from_secs(work.replica.rpo_seconds);
        let watcher = tokio::spawn(watch_lag(ctx.clone(), work.id, rpo, behind.clone()));
        let follower = {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            tokio::task::spawn_blocking(move || match spec {
                Some(spec) => follow_into_target(&ctx, &spec, &settings, &work, &stop, &behind, &runtime),
                None => follow_source(&ctx, &targets, &settings, &work, &stop, &behind, &runtime),
            })
        };
        let result = follower.await.map_err(|e| JobError::Temporary(format!("the replica thread stopped: {e}")))?;
        stopper.abort();
        watcher.abort();
        result
    }
}

/// A replica's lag as metrics: how far behind it is now, and the lag each change had when
/// it became durable.
struct LagMetrics {
    current: metrics::Gauge,
    durable: metrics::Histogram,
}

impl LagMetrics {
    fn new(replica: ReplicaId) -> LagMetrics {
        LagMetrics {
            current: metrics::gauge!("arca_replica_lag_seconds", "replica" => replica.to_string()),
            durable: metrics::histogram!("arca_replica_lag", "replica" => replica.to_string()),
        }
    }

    fn now(&self, lag: Duration) {
        self.current.set(lag.as_secs_f64());
    }

    fn made_durable(&self, lag: Duration) {
        self.durable.record(lag.as_secs_f64());
    }
}

/// How far behind a follower is, seen from outside its loop: changes notified and not yet in
/// the live copy, and (for a replica on a target) changes not yet in a recovery point.
#[derive(Default)]
struct Watched {
    passes: Behind,
    unsaved: Behind,
}

impl Watched {
    fn lag(&self) -> Duration {
        self.passes.lag().max(self.unsaved.lag())
    }
}

/// How often the watcher looks at a follower's lag.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Whether a lag seen now raises the alert: once when it goes over the RPO, again only after
/// it came back within it.
fn lag_alert(lag: Duration, rpo: Duration, alerted: &mut bool) -> bool {
    let over = lag > rpo;
    let raise = over && !*alerted;
    *alerted = over;
    raise
}

/// Watches a follower while it runs: the live lag metric, and the lag alert as soon as the
/// lag is over the RPO — a pass (or a point) that runs long raises it while it runs, not
/// when it ends.
async fn watch_lag(ctx: JobContext, replica: ReplicaId, rpo: Duration, behind: Arc<Watched>) {
    let metrics = LagMetrics::new(replica);
    let mut alerted = false;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        let lag = behind.lag();
        if lag > Duration::ZERO {
            metrics.now(lag);
        }
        if lag_alert(lag, rpo, &mut alerted) {
            let command = ReplicaCommand::ReportLag { lag_ms: lag.as_millis() as u64 };
            if let Err(e) = ctx.store.execute::<Replica>(ctx.tenant, replica, &command, &ctx.meta).await {
                tracing::warn!(%replica, error = %e, "could not raise the replica's lag alert");
            }
        }
    }
}

/// The follow loop of one replica (blocking).
fn follow_source(
    ctx: &JobContext,
    targets: &Targets,
    settings: &FollowSettings,
    work: &Replicated,
    stop: &AtomicBool,
    behind: &Watched,
    runtime: &tokio::runtime::Handle,
) -> Result<JobOutcome, JobError> {
    let layout = layout(work.folder()?, &work.source);
    let _lock = lock_folder(&layout)?;
    let repo = targets.local_repository(ctx.tenant, &layout.points).map_err(repo_error)?;
    let mirror = Mirror::new(&work.source, &layout.live);
    let replicator: Box<dyn Replicator> = match &work.qemu {
        Some(qemu) => {
            let name = format!("arca-{}", work.id.as_uuid().simple());
            let tracked = Tracked::open(mirror, qemu.clone(), &name)
                .map_err(|e| io_error("follow the image's changed blocks through qemu", e))?;
            Box::new(tracked)
        }
        None => Box::new(mirror),
    };
    let point_every = Duration::from_secs((work.replica.rpo_seconds / 2).clamp(1, 300));
    let lag = LagMetrics::new(work.id);
    let mut last_point: Option<Instant> = None;
    // Since when the live copy has changes no point holds.
    let mut dirty: Option<Instant> = None;
    let mut settled_since = Instant::now();
    let mut worst_lag = Duration::ZERO;
    // Points dropped since the last prune.
    let mut dropped = 0;
    let mut outcome = JobOutcome::default();
    let mut failure = None;
    let followed = follow(replicator.as_ref(), settings, stop, &behind.passes, |pass| {
        if pass.full || pass.stats.changed() {
            dirty.get_or_insert_with(Instant::now);
            settled_since = Instant::now();
            outcome.bytes_read += pass.stats.bytes_read;
            outcome.bytes_added += pass.stats.bytes_written;
            outcome.files += pass.stats.files;
        }
        if let Some(carried) = pass.lag() {
            lag.now(carried);
            lag.made_durable(carried);
            worst_lag = worst_lag.max(carried);
        } else if !pass.stats.changed() {
            lag.now(Duration::ZERO);
        }
        // A point once changes settle (a quiet debounce) or have waited half the RPO (a source
        // that never stops changing), never more often than every half RPO.
        let due = last_point.is_none_or(|at| at.elapsed() >= point_every);
        let settled = settled_since.elapsed() >= settings.debounce || pass.full;
        if dirty.is_some_and(|since| settled || since.elapsed() >= point_every) && due {
            match record_point(ctx, &repo, work, &layout.live, worst_lag, runtime, &mut dropped) {
                Ok(()) => {
                    last_point = Some(Instant::now());
                    dirty = None;
                    worst_lag = Duration::ZERO;
                }
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
        }
        !stop.load(Ordering::Relaxed)
    });
    if let Some(failure) = failure {
        return Err(failure);
    }
    followed.map_err(|e| io_error("follow the source", e))?;
    Ok(outcome)
}

/// What a replica on a target follows: the changes themselves are carried by backups of the
/// source into the target's repository, so a pass only notes how old the oldest change is.
struct Changes {
    source: PathBuf,
}

impl Replicator for Changes {
    fn source(&self) -> &Path {
        &self.source
    }

    /// The first pass and every rescan: the backup engine finds what changed.
    fn sync_all(&self) -> std::io::Result<SyncStats> {
        Ok(SyncStats { files: 1, oldest_change: Some(SystemTime::now()), ..SyncStats::default() })
    }

    fn sync_paths(&self, paths: &mut dyn Iterator<Item = &Path>) -> std::io::Result<SyncStats> {
        let mut stats = SyncStats::default();
        for path in paths {
            // A deleted path changed now; a written one when its mtime says.
            let changed =
                std::fs::symlink_metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
            stats.files += 1;
            stats.oldest_change = Some(stats.oldest_change.map_or(changed, |oldest| oldest.min(changed)));
        }
        Ok(stats)
    }
}

/// The follow loop of a replica on an S3 or Azure target (blocking): each recovery point is an
/// incremental backup of the source into the target's repository, taken once changes settle
/// and at most every half RPO, recorded as a snapshot (restorable like any other) and as the
/// replica's point; points beyond `keep_points` are handed to the storage service to forget.
fn follow_into_target(
    ctx: &JobContext,
    spec: &TargetSpec,
    settings: &FollowSettings,
    work: &Replicated,
    stop: &AtomicBool,
    behind: &Watched,
    runtime: &tokio::runtime::Handle,
) -> Result<JobOutcome, JobError> {
    let repo = spec.open().map_err(repo_error)?;
    let point_every = Duration::from_secs((work.replica.rpo_seconds / 2).clamp(1, 300));
    let lag = LagMetrics::new(work.id);
    let changes = Changes { source: work.source.clone() };
    let mut oldest: Option<SystemTime> = None;
    let mut last_point: Option<Instant> = None;
    let mut settled_since = Instant::now();
    let mut outcome = JobOutcome::default();
    let mut failure = None;
    let followed = follow(&changes, settings, stop, &behind.passes, |pass| {
        if let Some(changed) = pass.stats.oldest_change {
            oldest = Some(oldest.map_or(changed, |o| o.min(changed)));
            behind.unsaved.changed_at(changed);
            settled_since = Instant::now();
        }
        let Some(since) = oldest else { return !stop.load(Ordering::Relaxed) };
        let waited = SystemTime::now().duration_since(since).unwrap_or_default();
        lag.now(waited);
        // As for a folder replica: once settled or after half the RPO, at most every half RPO.
        let due = last_point.is_none_or(|at| at.elapsed() >= point_every);
        if due && (settled_since.elapsed() >= settings.debounce || pass.full || waited >= point_every) {
            match target_point(ctx, spec, &repo, work, since, runtime) {
                Ok((bytes_read, bytes_added, carried)) => {
                    outcome.bytes_read += bytes_read;
                    outcome.bytes_added += bytes_added;
                    lag.made_durable(carried);
                    lag.now(Duration::ZERO);
                    behind.unsaved.in_step();
                    last_point = Some(Instant::now());
                    oldest = None;
                }
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
        }
        !stop.load(Ordering::Relaxed)
    });
    if let Some(failure) = failure {
        return Err(failure);
    }
    followed.map_err(|e| io_error("follow the source", e))?;
    Ok(outcome)
}

/// One point of a replica on a target; returns bytes read, bytes added and the lag it had.
fn target_point(
    ctx: &JobContext,
    spec: &TargetSpec,
    repo: &Repository,
    work: &Replicated,
    oldest_change: SystemTime,
    runtime: &tokio::runtime::Handle,
) -> Result<(u64, u64, Duration), JobError> {
    let tag = point_tag(work.id);
    let what = if work.source.is_dir() {
        BackupSource::Paths(vec![work.source.clone()])
    } else {
        BackupSource::Image(work.source.clone())
    };
    let options = BackupOptions {
        tags: vec![tag.clone(), format!("source:{}", work.replica.source)],
        hostname: Some(format!("replica-{}", work.id)),
        ..BackupOptions::default()
    };
    let outcome = arca_repo::backup(repo, what, &options).map_err(repo_error)?;
    let lag = SystemTime::now().duration_since(oldest_change).unwrap_or_default();
    let summary = &outcome.snapshot.summary;
    let snapshot = snapshot_id(spec.target, &outcome.snapshot_id);
    let commit = SnapshotCommand::Commit {
        target: spec.target,
        repo_snapshot: outcome.snapshot_id.clone(),
        time: outcome.snapshot.time,
        host: outcome.snapshot.hostname.clone(),
        paths: outcome.snapshot.paths.clone(),
        tags: outcome.snapshot.tags.clone(),
        source: Some(work.replica.source),
        policy: None,
        job: Some(ctx.job_id),
        files: summary.files_new + summary.files_changed + summary.files_unmodified,
        size_bytes: summary.bytes_total,
        added_bytes: summary.bytes_stored,
        partial: outcome.snapshot.partial,
    };
    runtime.block_on(async {
        match ctx.store.execute::<Snapshot>(ctx.tenant, snapshot, &commit, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(DomainError::AlreadyExists { .. })) => {}
            Err(e) => return Err(JobError::from(e)),
        }
        usage::add(&ctx.store, ctx.tenant, spec.target, summary.bytes_stored, &ctx.meta).await?;
        let point = ReplicaCommand::RecordPoint {
            point: snapshot.to_string(),
            at: outcome.snapshot.time,
            lag_ms: lag.as_millis() as u64,
        };
        let (before, _) = ctx.store.load_state::<Replica>(ctx.tenant, work.id.as_uuid()).await?;
        ctx.store.execute::<Replica>(ctx.tenant, work.id, &point, &ctx.meta).await?;
        // The points the replica no longer keeps: forgotten by the storage service (the only
        // one that deletes).
        let (after, _) = ctx.store.load_state::<Replica>(ctx.tenant, work.id.as_uuid()).await?;
        for dropped in before.points.iter().filter(|p| !after.points.iter().any(|kept| kept.point == p.point)) {
            let Ok(old) = dropped.point.parse::<uuid::Uuid>() else { continue };
            let forget = JobCommand::request(JobKind::Forget, Trigger::Replica { replica: work.id })
                .with_target(spec.target)
                .with_snapshot(old.into());
            // One forget per dropped point, the same id if this step is retried.
            let id = follow_up_job_id(ctx.job_id, JobKind::Forget, Some(TargetId::from(old)));
            match start_job(&ctx.store, ctx.tenant, id, &forget, &ctx.meta).await {
                Ok(()) | Err(ExecuteError::Domain(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok::<_, JobError>(())
    })?;
    Ok((summary.bytes_read, summary.bytes_stored, lag))
}

/// Snapshots the live copy into the points repository, records the point, drops points beyond
/// the replica's `keep_points` (counting them in `dropped`) and prunes once enough were dropped.
fn record_point(
    ctx: &JobContext,
    repo: &Repository,
    work: &Replicated,
    live: &Path,
    lag: Duration,
    runtime: &tokio::runtime::Handle,
    dropped: &mut usize,
) -> Result<(), JobError> {
    let tag = point_tag(work.id);
    let what = if live.is_dir() {
        BackupSource::Paths(vec![live.to_path_buf()])
    } else {
        BackupSource::Image(live.to_path_buf())
    };
    let options = BackupOptions {
        tags: vec![tag.clone()],
        hostname: Some(format!("replica-{}", work.id)),
        ..BackupOptions::default()
    };
    let outcome = arca_repo::backup(repo, what, &options).map_err(repo_error)?;
    let command = ReplicaCommand::RecordPoint {
        point: outcome.snapshot_id.clone(),
        at: outcome.snapshot.time,
        lag_ms: lag.as_millis() as u64,
    };
    runtime.block_on(ctx.store.execute::<Replica>(ctx.tenant, work.id, &command, &ctx.meta))?;
    tracing::debug!(replica = %work.id, point = %outcome.snapshot_id, lag_ms = lag.as_millis() as u64, "recovery point");
    let mut points: Vec<(String, chrono::DateTime<Utc>)> = repo
        .snapshots()
        .map_err(repo_error)?
        .into_iter()
        .filter(|(_, s)| s.tags.contains(&tag))
        .map(|(id, s)| (id, s.time))
        .collect();
    points.sort_by_key(|(_, time)| *time);
    let keep = work.replica.keep_points as usize;
    if points.len() > keep {
        for (id, _) in &points[..points.len() - keep] {
            repo.delete_snapshot(id).map_err(repo_error)?;
            *dropped += 1;
        }
    }
    // Reclaim the space of dropped points now and then (prune reads the whole index).
    if *dropped >= keep.max(8) {
        arca_repo::prune::prune(repo, &arca_repo::prune::PruneOptions::default()).map_err(repo_error)?;
        *dropped = 0;
    }
    Ok(())
}

/// Makes the point a replica was failed over to its live copy.
pub struct FailoverHandler {
    targets: Targets,
}

impl FailoverHandler {
    pub fn new(targets: Targets) -> Self {
        FailoverHandler { targets }
    }
}

impl JobHandler for FailoverHandler {
    fn kind(&self) -> JobKind {
        JobKind::Failover
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let Some(work) = load(&ctx, self.targets.folders()).await? else {
            return Err(JobError::Permanent("the replica was deleted".into()));
        };
        let Some(point) = work.replica.failed_over_to.clone() else {
            return Err(JobError::Permanent("the replica is not failed over (it was failed back meanwhile)".into()));
        };
        // The follower must not write into the live copy while it is replaced.
        let cancel = JobCommand::Cancel { reason: Some("the replica is failing over".into()) };
        let follower = replicate_job_id(work.id, work.replica.failbacks);
        match ctx.store.execute::<Job>(ctx.tenant, follower, &cancel, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let targets = self.targets.clone();
        let tenant = ctx.tenant;
        tokio::task::spawn_blocking(move || {
            let layout = layout(work.folder()?, &work.source);
            // Waits for the cancelled follower to let go of the live copy.
            let _lock = lock_folder(&layout)?;
            let repo = targets.local_repository(tenant, &layout.points).map_err(repo_error)?;
            let (_, snapshot) = repo.find_snapshot(&point).map_err(repo_error)?;
            if layout.staging.exists() {
                std::fs::remove_dir_all(&layout.staging)
                    .map_err(|e| io_error("clear the failover staging folder", e))?;
            }
            let summary = restore(&repo, &snapshot, &layout.staging, &RestoreOptions::default()).map_err(repo_error)?;
            // The restore recreates the point's absolute path below the staging folder.
            let restored = layout.staging.join(layout.live.strip_prefix("/").unwrap_or(&layout.live));
            let old = layout.staging.with_extension("old");
            if layout.live.exists() {
                std::fs::rename(&layout.live, &old).map_err(|e| io_error("move the live copy aside", e))?;
            }
            std::fs::rename(&restored, &layout.live).map_err(|e| io_error("make the point live", e))?;
            let _ = std::fs::remove_dir_all(&old);
            let _ = std::fs::remove_dir_all(&layout.staging);
            tracing::info!(replica = %work.id, %point, live = %layout.live.display(), "failed over");
            Ok(JobOutcome {
                snapshot: None,
                bytes_read: summary.bytes,
                bytes_added: summary.bytes,
                files: summary.files,
            })
        })
        .await
        .map_err(|e| JobError::Temporary(format!("the failover thread stopped: {e}")))?
    }
}

/// Copies a failed-over replica's live copy back over its source, then follows it again.
pub struct FailbackHandler {
    folders: Folders,
}

impl FailbackHandler {
    pub fn new(folders: Folders) -> Self {
        FailbackHandler { folders }
    }
}

impl JobHandler for FailbackHandler {
    fn kind(&self) -> JobKind {
        JobKind::Failback
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let Some(work) = load(&ctx, &self.folders).await? else {
            return Err(JobError::Permanent("the replica was deleted".into()));
        };
        if !work.replica.is_failed_over() {
            return Ok(JobOutcome::default());
        }
        let layout = layout(work.folder()?, &work.source);
        let source = work.source.clone();
        let stats = tokio::task::spawn_blocking(move || {
            let _lock = lock_folder(&layout)?;
            Mirror::new(&layout.live, &source)
                .sync_all()
                .map_err(|e| io_error("copy the live copy back to the source", e))
        })
        .await
        .map_err(|e| JobError::Temporary(format!("the failback thread stopped: {e}")))??;
        match ctx.store.execute::<Replica>(ctx.tenant, work.id, &ReplicaCommand::FailBack, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Follow the source again, with the next generation's job.
        let (replica, _) = ctx.store.load_state::<Replica>(ctx.tenant, work.id.as_uuid()).await?;
        let follower = replicate_job_id(work.id, replica.failbacks);
        let request = JobCommand::request(JobKind::Replicate, Trigger::Replica { replica: work.id })
            .with_source(replica.source)
            .with_site(ctx.job.site.clone());
        match start_job(&ctx.store, ctx.tenant, follower, &request, &ctx.meta).await {
            Ok(()) | Err(ExecuteError::Domain(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(JobOutcome {
            snapshot: None,
            bytes_read: stats.bytes_read,
            bytes_added: stats.bytes_written,
            files: stats.files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_alert_is_raised_once_per_time_over_the_rpo() {
        let rpo = Duration::from_secs(60);
        let mut alerted = false;
        let seen: Vec<bool> = [10, 61, 90, 120, 30, 0, 61, 75]
            .into_iter()
            .map(|seconds| lag_alert(Duration::from_secs(seconds), rpo, &mut alerted))
            .collect();
        assert_eq!(seen, [false, true, false, false, false, false, true, false]);
    }
}
