//! The recovery service moves data *out*: it runs restore jobs — a whole snapshot or chosen
//! paths, into a folder on the host of this instance — and then reads every restored file
//! back and checks it chunk by chunk against the snapshot (`arca_repo::restore::verify_restore`)
//! before it reports the restore as verified.
//!
//! A restore is requested as a `RestoreRequested` on the restore aggregate whose id is the
//! job's id, plus a restore job on the queue (its site is the destination's site, so the
//! instance on that host takes it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig, BusError, ExecuteError};
use arca_domain::restore::{Restore, RestoreCommand};
use arca_domain::snapshot::Snapshot;
use arca_events::{JobKind, RestoreDestination};
use arca_repo::restore::{RestoreOptions, RestoreProgress, restore, verify_restore};
use arca_worker::copy::copy_snapshot;
use arca_worker::keys::ServerKey;
use arca_worker::runner::{ProgressReading, run_worker};
use arca_worker::{JobContext, JobError, JobHandler, JobOutcome, Targets, WorkerSettings};

/// How to run a recovery worker.
#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    pub nats_url: String,
    pub replicas: usize,
    pub key: ServerKey,
    pub worker: WorkerSettings,
}

impl RecoveryConfig {
    pub fn new(nats_url: impl Into<String>, key: ServerKey) -> Self {
        RecoveryConfig { nats_url: nats_url.into(), replicas: 1, key, worker: WorkerSettings::default() }
    }
}

/// A built recovery worker, ready to run.
pub struct Recovery {
    targets: Targets,
    config: RecoveryConfig,
}

impl Recovery {
    pub async fn build(config: RecoveryConfig) -> Result<Recovery, BusError> {
        let bus = Bus::connect(BusConfig {
            replicas: config.replicas,
            client_name: "arca-recovery".into(),
            ..BusConfig::new(&config.nats_url)
        })
        .await?;
        let store = bus.event_store().await?;
        let secrets = SecretStore::open(&bus, &config.key.secret_store_key()).await?;
        Ok(Recovery { targets: Targets::new(store, secrets, config.key.clone()), config })
    }

    /// Takes restore jobs until `shutdown` completes.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BusError> {
        let store = self.targets.store().clone();
        let handler = Arc::new(RestoreHandler { targets: self.targets });
        tokio::select! {
            () = shutdown => Ok(()),
            result = run_worker(handler, store, self.config.worker) => result,
        }
    }
}

/// Runs restore jobs.
pub struct RestoreHandler {
    targets: Targets,
}

impl RestoreHandler {
    async fn restore(&self, ctx: &JobContext, request: &Restore) -> Result<JobOutcome, JobError> {
        let path = match &request.destination {
            Some(RestoreDestination::Directory { path, .. }) => path,
            // Into another repository: a copy, every blob authenticated and checked against
            // its id on the way.
            Some(RestoreDestination::Target { target }) => {
                if !request.paths.is_empty() {
                    return Err(JobError::Permanent(
                        "a restore into a target takes the whole snapshot; choose paths when restoring to a folder"
                            .into(),
                    ));
                }
                return copy_snapshot(&self.targets, ctx, request.snapshot, *target).await;
            }
            None => return Err(JobError::Permanent(format!("no restore was requested for job {}", ctx.job_id))),
        };
        let (snapshot, _) = ctx.store.load_state::<Snapshot>(ctx.tenant, request.snapshot.as_uuid()).await?;
        let Some(commit) = snapshot.commit.filter(|_| !snapshot.forgotten) else {
            return Err(JobError::Permanent(format!("snapshot {} does not exist or was forgotten", request.snapshot)));
        };
        let spec = self.targets.describe(ctx.tenant, commit.target).await?;
        let progress = Arc::new(RestoreProgress::default());
        let reading = progress.clone();
        ctx.report_progress(move || ProgressReading {
            bytes_done: reading.bytes_done.load(Ordering::Relaxed),
            bytes_total: Some(reading.bytes_total.load(Ordering::Relaxed)),
            files_done: 0,
        });
        let options = RestoreOptions { include: request.paths.clone(), progress: Some(progress) };
        let destination = PathBuf::from(path);
        let repo_snapshot = commit.repo_snapshot.clone();
        let (summary, verification) = tokio::task::spawn_blocking(move || {
            let repo = spec.open()?;
            let (_, snapshot) = repo.find_snapshot(&repo_snapshot)?;
            let summary = restore(&repo, &snapshot, &destination, &options)?;
            let verification = verify_restore(&repo, &snapshot, &destination, &options)?;
            Ok::<_, arca_repo::Error>((summary, verification))
        })
        .await
        .map_err(|e| JobError::Temporary(format!("the restore thread stopped: {e}")))??;
        if !verification.is_ok() {
            return Err(JobError::Permanent(format!(
                "the restored data does not match the snapshot: {}",
                verification.mismatches.join("; ")
            )));
        }
        Ok(JobOutcome {
            snapshot: Some(request.snapshot),
            bytes_read: summary.bytes,
            bytes_added: 0,
            files: summary.files,
        })
    }
}

impl JobHandler for RestoreHandler {
    fn kind(&self) -> JobKind {
        JobKind::Restore
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let (request, _) = ctx.store.load_state::<Restore>(ctx.tenant, ctx.job_id.as_uuid()).await?;
        if request.destination.is_none() {
            return Err(JobError::Permanent(format!("no restore was requested for job {}", ctx.job_id)));
        }
        let result = self.restore(&ctx, &request).await;
        let command = match &result {
            Ok(outcome) => RestoreCommand::Succeed { files: outcome.files, bytes: outcome.bytes_read, verified: true },
            Err(JobError::Permanent(error)) => RestoreCommand::Fail { error: error.clone() },
            Err(JobError::Temporary(_)) => return result,
        };
        match ctx.store.execute::<Restore>(ctx.tenant, ctx.job_id, &command, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(_)) => result,
            Err(e) => Err(e.into()),
        }
    }
}
