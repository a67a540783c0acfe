//! Copying a committed snapshot into another target of its tenant: only the blobs the
//! destination lacks move (the tenant's repositories share one blob-id identity), the
//! destination is created when it does not exist yet, and the copy is recorded as a snapshot
//! of the destination. Used by copy jobs (offsite copies) and restores into a target.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_domain::DomainError;
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_events::{SnapshotId, TargetId};
use arca_repo::copy::{CopyOptions, CopyProgress, copy_snapshots};

use crate::ids::snapshot_id;
use crate::runner::ProgressReading;
use crate::usage;
use crate::{JobContext, JobError, JobOutcome, Targets};

/// Copies `snapshot` into `destination` for the job in `ctx`; the outcome names the copy.
pub async fn copy_snapshot(
    targets: &Targets,
    ctx: &JobContext,
    snapshot: SnapshotId,
    destination: TargetId,
) -> Result<JobOutcome, JobError> {
    let store = &ctx.store;
    let (state, _) = store.load_state::<Snapshot>(ctx.tenant, snapshot.as_uuid()).await?;
    let Some(commit) = state.commit.filter(|_| !state.forgotten) else {
        return Err(JobError::Permanent(format!("snapshot {snapshot} does not exist or was forgotten")));
    };
    if commit.target == destination {
        return Err(JobError::Permanent("a snapshot cannot be copied into its own target".into()));
    }
    let from = targets.describe(ctx.tenant, commit.target).await?;
    let to = targets.describe(ctx.tenant, destination).await?;
    targets.ensure_repository(&to).await?;
    let progress = Arc::new(CopyProgress::default());
    let reading = progress.clone();
    ctx.report_progress(move || ProgressReading {
        bytes_done: reading.bytes_done.load(Ordering::Relaxed),
        bytes_total: Some(reading.bytes_total.load(Ordering::Relaxed)),
        files_done: reading.blobs_done.load(Ordering::Relaxed),
    });
    let repo_snapshot = commit.repo_snapshot.clone();
    let report = tokio::task::spawn_blocking(move || {
        let source = from.open()?;
        let destination = to.open()?;
        copy_snapshots(&source, &destination, &[repo_snapshot], &CopyOptions { progress: Some(progress) })
    })
    .await
    .map_err(|e| JobError::Temporary(format!("the copy thread stopped: {e}")))??;
    let copied = report.snapshots.first().ok_or_else(|| JobError::Permanent("the copy reported no snapshot".into()))?;
    let copy_id = snapshot_id(destination, &copied.destination_id);
    let record = SnapshotCommand::Commit {
        target: destination,
        repo_snapshot: copied.destination_id.clone(),
        time: commit.time,
        host: commit.host.clone(),
        paths: commit.paths.clone(),
        tags: commit.tags.clone(),
        source: commit.source,
        policy: commit.policy,
        job: Some(ctx.job_id),
        files: commit.files,
        size_bytes: commit.size_bytes,
        added_bytes: report.bytes_stored,
        partial: commit.partial,
    };
    match store.execute::<Snapshot>(ctx.tenant, copy_id, &record, &ctx.meta).await {
        Ok(_) | Err(arca_bus::ExecuteError::Domain(DomainError::AlreadyExists { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    usage::add(store, ctx.tenant, destination, report.bytes_stored, &ctx.meta).await?;
    tracing::info!(job = %ctx.job_id, blobs = report.blobs_copied, skipped = report.blobs_skipped, "copied");
    Ok(JobOutcome {
        snapshot: Some(copy_id),
        bytes_read: report.bytes_read,
        bytes_added: report.bytes_stored,
        files: report.blobs_copied,
    })
}
