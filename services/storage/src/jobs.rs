//! Forget, prune and verify jobs.

use arca_bus::ExecuteError;
use arca_domain::DomainError;
use arca_domain::job::Job;
use arca_domain::policy::Policy;
use arca_domain::snapshot::SnapshotCommand;
use arca_events::{JobKind, Retention, TargetId};
use arca_repo::RetentionPolicy;
use arca_repo::check::{CheckOptions, Subset, check};
use arca_repo::format::SnapshotMap;
use arca_repo::prune::{PruneOptions, plan_forget, prune};
use arca_worker::ids::snapshot_id;
use arca_worker::usage::{self, repository_bytes};
use arca_worker::{FollowUp, JobContext, JobError, JobHandler, JobOutcome, TargetSpec, Targets};

fn target_of(ctx: &JobContext) -> Result<TargetId, JobError> {
    ctx.job.target.ok_or_else(|| JobError::Permanent(format!("a {} job names a target", ctx.job_kind())))
}

trait KindName {
    fn job_kind(&self) -> &'static str;
}

impl KindName for JobContext {
    fn job_kind(&self) -> &'static str {
        self.job.kind.map(|k| k.as_str()).unwrap_or("")
    }
}

/// Runs `work` on a blocking thread with the target's repository open.
async fn with_repository<T: Send + 'static>(
    spec: TargetSpec,
    work: impl FnOnce(&arca_repo::Repository) -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(move || {
        let repo = spec.open()?;
        work(&repo)
    })
    .await
    .map_err(|e| JobError::Temporary(format!("the repository thread stopped: {e}")))?
}

fn engine_retention(retention: &Retention) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: retention.keep_last.unwrap_or(0),
        keep_hourly: retention.keep_hourly.unwrap_or(0),
        keep_daily: retention.keep_daily.unwrap_or(0),
        keep_weekly: retention.keep_weekly.unwrap_or(0),
        keep_monthly: retention.keep_monthly.unwrap_or(0),
        keep_yearly: retention.keep_yearly.unwrap_or(0),
    }
}

/// Splits a target's snapshots into the restore points the user has (recorded in the log and
/// not forgotten), which retention counts, and those the log forgot but the repository still
/// holds (a forget stopped half-way), which go. A snapshot the log never recorded is neither
/// counted nor removed: the retried backup that wrote it adopts it.
async fn restore_points(
    ctx: &JobContext,
    target: TargetId,
    snapshots: SnapshotMap,
) -> Result<(SnapshotMap, Vec<String>), JobError> {
    let mut recorded = SnapshotMap::new();
    let mut half_forgotten = Vec::new();
    for (id, snapshot) in snapshots {
        let aggregate = snapshot_id(target, &id);
        let (state, _) =
            ctx.store.load_state::<arca_domain::snapshot::Snapshot>(ctx.tenant, aggregate.as_uuid()).await?;
        match (state.is_committed(), state.forgotten) {
            (true, false) => {
                recorded.insert(id, snapshot);
            }
            (true, true) => half_forgotten.push(id),
            (false, _) => tracing::warn!(snapshot = %id, "not counted by retention: no record of this snapshot yet"),
        }
    }
    Ok((recorded, half_forgotten))
}

/// Applies a policy's retention to the snapshots of its source.
pub struct ForgetHandler {
    targets: Targets,
}

impl ForgetHandler {
    pub fn new(targets: Targets) -> Self {
        ForgetHandler { targets }
    }
}

impl JobHandler for ForgetHandler {
    fn kind(&self) -> JobKind {
        JobKind::Forget
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let target = target_of(&ctx)?;
        let spec = self.targets.describe(ctx.tenant, target).await?;
        // One named snapshot (the API's forget), or what the policy's retention lets go.
        let candidates = if let Some(snapshot) = ctx.job.snapshot {
            let (state, _) =
                ctx.store.load_state::<arca_domain::snapshot::Snapshot>(ctx.tenant, snapshot.as_uuid()).await?;
            let commit =
                state.commit.ok_or_else(|| JobError::Permanent(format!("snapshot {snapshot} does not exist")))?;
            if commit.target != target {
                return Err(JobError::Permanent(format!("snapshot {snapshot} is not on target {target}")));
            }
            vec![commit.repo_snapshot]
        } else {
            let Some(policy_id) = ctx.job.policy else {
                return Err(JobError::Permanent(
                    "a forget job names a snapshot, or the policy whose retention it applies".into(),
                ));
            };
            let (policy, _) = ctx.store.load_state::<Policy>(ctx.tenant, policy_id.as_uuid()).await?;
            if policy.retention.keeps_everything() {
                return Ok(JobOutcome::default());
            }
            let tag = format!("source:{}", policy.source);
            let tagged = with_repository(spec.clone(), move |repo| {
                let mut snapshots = repo.snapshots()?;
                snapshots.retain(|_, s| s.tags.contains(&tag));
                Ok(snapshots)
            })
            .await?;
            let (recorded, half_forgotten) = restore_points(&ctx, target, tagged).await?;
            plan_forget(&recorded, &engine_retention(&policy.retention), chrono::Utc::now())
                .into_iter()
                .filter(|d| !d.keep)
                .map(|d| d.id)
                .chain(half_forgotten)
                .collect()
        };
        let mut forgotten = Vec::new();
        for id in candidates {
            // The log first: it refuses a snapshot locked in the control plane.
            let command = SnapshotCommand::Forget { job: Some(ctx.job_id) };
            match ctx
                .store
                .execute::<arca_domain::snapshot::Snapshot>(ctx.tenant, snapshot_id(target, &id), &command, &ctx.meta)
                .await
            {
                Ok(_) | Err(ExecuteError::Domain(DomainError::NotFound { .. })) => forgotten.push(id),
                Err(ExecuteError::Domain(DomainError::SnapshotLocked { until })) if ctx.job.snapshot.is_some() => {
                    return Err(JobError::Permanent(format!("the snapshot is locked until {until}")));
                }
                Err(ExecuteError::Domain(DomainError::SnapshotLocked { until })) => {
                    tracing::info!(snapshot = %id, %until, "kept: locked");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let count = forgotten.len() as u64;
        with_repository(spec, move |repo| {
            for id in &forgotten {
                match arca_repo::prune::forget_snapshot(repo, id) {
                    Ok(_) | Err(arca_repo::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(job = %ctx.job_id, count, "forgot snapshots");
        Ok(JobOutcome { files: count, ..JobOutcome::default() })
    }

    async fn follow_ups(&self, _ctx: &JobContext, job: &Job) -> Result<Vec<FollowUp>, JobError> {
        Ok(vec![FollowUp { kind: JobKind::Prune, policy: job.policy, target: job.target, snapshot: None, site: None }])
    }
}

/// Prune waits while the control plane knows of a backup or copy writing to `target`: the
/// catalog's running jobs on that target. The attempt fails as temporary and the queue tries
/// again after its backoff; the repository lease stays the last guard.
async fn wait_for_writers(ctx: &JobContext, target: TargetId) -> Result<(), JobError> {
    let request = serde_json::json!({ "tenant": ctx.tenant, "status": "running", "target": target, "limit": 100 });
    let page: serde_json::Value = ctx
        .store
        .bus()
        .request("arca.q.catalog.jobs.list", &request, ctx.meta.trace.as_ref(), std::time::Duration::from_secs(5))
        .await
        .map_err(|e| JobError::Temporary(format!("ask the catalog for running jobs: {e}")))?;
    let writers: Vec<String> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|job| matches!(job["kind"].as_str(), Some("backup" | "copy")))
        .filter_map(|job| job["id"].as_str().map(str::to_owned))
        .collect();
    if writers.is_empty() {
        return Ok(());
    }
    Err(JobError::Temporary(format!("prune waits: job(s) {} write to this target", writers.join(", "))))
}

/// Removes data no snapshot uses.
pub struct PruneHandler {
    targets: Targets,
}

impl PruneHandler {
    pub fn new(targets: Targets) -> Self {
        PruneHandler { targets }
    }
}

impl JobHandler for PruneHandler {
    fn kind(&self) -> JobKind {
        JobKind::Prune
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let target = target_of(&ctx)?;
        wait_for_writers(&ctx, target).await?;
        let spec = self.targets.describe(ctx.tenant, target).await?;
        // A backup that started since holds the shared lease: that makes this a temporary
        // `Locked` error, and the queue tries again after its backoff.
        let (report, stored) = with_repository(spec, |repo| {
            let report = prune(repo, &PruneOptions::default())?;
            Ok((report, repository_bytes(repo)?))
        })
        .await?;
        tracing::info!(job = %ctx.job_id, ?report, "pruned");
        usage::record(&ctx.store, ctx.tenant, target, stored, &ctx.meta).await?;
        Ok(JobOutcome::default())
    }
}

/// Each verify reads back this share of a repository's packs (part n of m, in turn), so every
/// pack is read once per `VERIFY_PARTS` verifies.
pub const VERIFY_PARTS: u32 = 10;

/// Checks a repository: its structure every time, and one part of its packs read back and
/// authenticated, the next part on the next run.
pub struct VerifyHandler {
    targets: Targets,
}

impl VerifyHandler {
    pub fn new(targets: Targets) -> Self {
        VerifyHandler { targets }
    }
}

/// How many verifies a target has had: which part of its packs comes next.
async fn verify_cursor(ctx: &JobContext) -> Result<async_nats::jetstream::kv::Store, JobError> {
    ctx.store
        .bus()
        .key_value("arca-verify")
        .await
        .map_err(|e| JobError::Temporary(format!("open the verify cursors: {e}")))
}

impl JobHandler for VerifyHandler {
    fn kind(&self) -> JobKind {
        JobKind::Verify
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let target = target_of(&ctx)?;
        let spec = self.targets.describe(ctx.tenant, target).await?;
        let cursors = verify_cursor(&ctx).await?;
        let key = format!("{}.{target}", ctx.tenant);
        let runs: u64 = cursors
            .get(&key)
            .await
            .map_err(|e| JobError::Temporary(format!("read the verify cursor: {e}")))?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        let part = Subset::Part { n: (runs % u64::from(VERIFY_PARTS)) as u32 + 1, m: VERIFY_PARTS };
        let options = CheckOptions { read_data: false, read_data_subset: Some(part) };
        let report = with_repository(spec, move |repo| Ok(check(repo, &options)?)).await?;
        if !report.is_ok() {
            let mut error = format!("verify found damage: {}", report.errors.join("; "));
            if !report.damaged_packs.is_empty() {
                error.push_str(&format!("; damaged packs: {}", report.damaged_packs.join(", ")));
            }
            for affected in &report.affected {
                error.push_str(&format!("; snapshot {} hurt at {}", affected.snapshot, affected.paths.join(", ")));
            }
            return Err(JobError::Permanent(error));
        }
        cursors
            .put(&key, (runs + 1).to_string().into_bytes().into())
            .await
            .map_err(|e| JobError::Temporary(format!("advance the verify cursor: {e}")))?;
        tracing::info!(job = %ctx.job_id, %part, packs_read = report.packs_read, packs = report.packs, "verified");
        Ok(JobOutcome { files: report.packs_read as u64, bytes_read: report.blobs_read, ..JobOutcome::default() })
    }
}
