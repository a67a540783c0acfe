//! The recovery service moves data *out*: it runs restore jobs — a whole snapshot or chosen
//! paths, into a folder on the host of this instance — and then reads every restored file
//! back and checks it chunk by chunk against the snapshot (`arca_repo::restore::verify_restore`)
//! before it reports the restore as verified. A snapshot of a PostgreSQL source is restored
//! into a new database instead ([`postgres`]): its dump is streamed from the repository into
//! `pg_restore` (reported as not verified: every chunk of the dump is authenticated on the
//! way, but the database is not read back).
//!
//! A restore is requested as a `RestoreRequested` on the restore aggregate whose id is the
//! job's id, plus a restore job on the queue (its site is the destination's site, so the
//! instance on that host takes it).
//!
//! It also serves image snapshots over NBD (instant recovery, [`nbd`]): an export is an
//! `ExportRequested` on the export aggregate plus an export job that runs, holding the export
//! open on this instance's NBD listener, until the job is cancelled (the API's "stop").

pub mod nbd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig, BusError, ExecuteError};
use arca_domain::export::{Export, ExportCommand, ExportStatus};
use arca_domain::restore::{Restore, RestoreCommand, RestoreStatus};
use arca_domain::snapshot::Snapshot;
use arca_events::{JobKind, RestoreDestination, RestoreSucceeded, SnapshotId};
use arca_repo::reader::{FileReader, image_node};
use arca_repo::restore::{RestoreOptions, RestoreProgress, restore, verify_restore};
use arca_worker::copy::copy_snapshot;
use arca_worker::keys::ServerKey;
use arca_worker::runner::{ProgressReading, run_worker};
use arca_worker::{Folders, JobContext, JobError, JobHandler, JobOutcome, TargetSpec, Targets, WorkerSettings};
use nbd::NbdServer;

pub mod postgres;

/// How to run a recovery worker.
#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    pub nats_url: String,
    pub replicas: usize,
    pub key: ServerKey,
    pub worker: WorkerSettings,
    /// Where to serve NBD exports; `None`: this instance takes no export jobs.
    pub nbd_addr: Option<SocketAddr>,
    /// The host clients reach the NBD listener at (default: the listener's IP).
    pub nbd_host: Option<String>,
    /// Exports served at once.
    pub exports: usize,
    /// On a host shared by tenants: each tenant restores only into a new or empty folder
    /// inside `<tenant_root>/<tenant id>` (and reads `fs://` targets only there).
    pub tenant_root: Option<PathBuf>,
}

impl RecoveryConfig {
    pub fn new(nats_url: impl Into<String>, key: ServerKey) -> Self {
        RecoveryConfig {
            nats_url: nats_url.into(),
            replicas: 1,
            key,
            worker: WorkerSettings::default(),
            nbd_addr: None,
            nbd_host: None,
            exports: 64,
            tenant_root: None,
        }
    }
}

/// A built recovery worker, ready to run.
pub struct Recovery {
    targets: Targets,
    config: RecoveryConfig,
    nbd: Option<Arc<NbdServer>>,
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
        let nbd = match config.nbd_addr {
            Some(address) => Some(Arc::new(NbdServer::bind(address).await.map_err(|e| BusError::Unavailable {
                operation: format!("listen for NBD clients on {address}"),
                reason: e.to_string(),
            })?)),
            None => None,
        };
        let folders = config.tenant_root.clone().map(Folders::confined_to).unwrap_or_default();
        let targets = Targets::new(store, secrets, config.key.clone()).with_folders(folders);
        Ok(Recovery { targets, config, nbd })
    }

    /// Where NBD clients connect, when this instance serves exports.
    pub fn nbd_address(&self) -> Option<SocketAddr> {
        self.nbd.as_ref().map(|nbd| nbd.address())
    }

    /// Takes restore jobs until `shutdown` completes.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BusError> {
        let store = self.targets.store().clone();
        let exports = match self.nbd {
            Some(nbd) => {
                let host = self.config.nbd_host.clone().unwrap_or_else(|| nbd.address().ip().to_string());
                let address = format!("{host}:{}", nbd.address().port());
                let handler = Arc::new(ExportHandler { targets: self.targets.clone(), nbd, address });
                let settings = WorkerSettings { parallel: self.config.exports, ..self.config.worker.clone() };
                futures_or_pending(Some(run_worker(handler, store.clone(), settings)))
            }
            None => futures_or_pending(None),
        };
        let handler = Arc::new(RestoreHandler { targets: self.targets });
        tokio::select! {
            () = shutdown => Ok(()),
            result = run_worker(handler, store, self.config.worker) => result,
            result = exports => result,
        }
    }
}

/// Runs restore jobs.
pub struct RestoreHandler {
    targets: Targets,
}

/// What a restore did, and whether it read the result back.
struct Finished {
    outcome: JobOutcome,
    verified: bool,
}

impl RestoreHandler {
    async fn restore(&self, ctx: &JobContext, request: &Restore) -> Result<Finished, JobError> {
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
                let outcome = copy_snapshot(&self.targets, ctx, request.snapshot, *target).await?;
                return Ok(Finished { outcome, verified: true });
            }
            Some(RestoreDestination::Database { name, from, .. }) => {
                let outcome = self.restore_database(ctx, request, name, from.as_deref()).await?;
                return Ok(Finished { outcome, verified: false });
            }
            None => return Err(JobError::Permanent(format!("no restore was requested for job {}", ctx.job_id))),
        };
        let (spec, repo_snapshot) = committed(ctx, &self.targets, request.snapshot).await?;
        let progress = restore_progress(ctx);
        let options = RestoreOptions { include: request.paths.clone(), progress: Some(progress) };
        let folders = self.targets.folders();
        let destination = folders.check(ctx.tenant, Path::new(path), "the restore destination")?;
        // On a shared host a restore never writes into what is already there: a symlink left
        // in a folder by an earlier restore could lead its writes out of the tenant's folder.
        if folders.is_confined() && std::fs::read_dir(&destination).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(JobError::Permanent(format!(
                "the restore destination `{path}` is not empty; on a shared host restores go into a new or empty folder"
            )));
        }
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
        Ok(Finished {
            outcome: JobOutcome {
                snapshot: Some(request.snapshot),
                bytes_read: summary.bytes,
                bytes_added: 0,
                files: summary.files,
            },
            verified: true,
        })
    }

    /// A PostgreSQL dump of the snapshot into a new database (see [`postgres`]).
    async fn restore_database(
        &self,
        ctx: &JobContext,
        request: &Restore,
        name: &str,
        from: Option<&str>,
    ) -> Result<JobOutcome, JobError> {
        let (spec, repo_snapshot) = committed(ctx, &self.targets, request.snapshot).await?;
        let progress = restore_progress(ctx);
        let database = postgres::DatabaseRestore {
            name: name.to_owned(),
            from: from.map(str::to_owned),
            marker: format!("arca restore job {}", ctx.job_id),
            environment: Vec::new(),
        };
        let (cancel, cancel_watcher) = postgres::cancel_on(ctx);
        let restored = tokio::task::spawn_blocking(move || {
            let repo = spec.open()?;
            let (_, snapshot) = repo.find_snapshot(&repo_snapshot)?;
            postgres::restore_database(
                &repo,
                &snapshot,
                &database,
                &progress.bytes_total,
                &progress.bytes_done,
                &cancel,
            )
        })
        .await;
        cancel_watcher.abort();
        let restored = restored.map_err(|e| JobError::Temporary(format!("the restore thread stopped: {e}")))??;
        tracing::info!(job = %ctx.job_id, database = %restored.database, bytes = restored.bytes, "dump restored into a new database");
        Ok(JobOutcome { snapshot: Some(request.snapshot), bytes_read: restored.bytes, bytes_added: 0, files: 1 })
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
        match request.status {
            // An attempt after the restore was recorded (its job's end was not): report it again
            // instead of doing it twice — a database restore would find its own database.
            RestoreStatus::Succeeded => {
                let outcome = request.outcome.unwrap_or(RestoreSucceeded { files: 0, bytes: 0, verified: false });
                return Ok(JobOutcome {
                    snapshot: Some(request.snapshot),
                    bytes_read: outcome.bytes,
                    bytes_added: 0,
                    files: outcome.files,
                });
            }
            RestoreStatus::Failed => {
                return Err(JobError::Permanent(request.error.unwrap_or_else(|| "the restore failed".into())));
            }
            RestoreStatus::Missing | RestoreStatus::Requested => {}
        }
        let result = self.restore(&ctx, &request).await;
        let command = match &result {
            Ok(Finished { outcome, verified }) => {
                RestoreCommand::Succeed { files: outcome.files, bytes: outcome.bytes_read, verified: *verified }
            }
            Err(JobError::Permanent(error)) => RestoreCommand::Fail { error: error.clone() },
            Err(JobError::Temporary(_)) => return result.map(|finished| finished.outcome),
        };
        match ctx.store.execute::<Restore>(ctx.tenant, ctx.job_id, &command, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(_)) => result.map(|finished| finished.outcome),
            Err(e) => Err(e.into()),
        }
    }
}

/// A committed, not forgotten snapshot's target and its id in the repository there.
async fn committed(ctx: &JobContext, targets: &Targets, id: SnapshotId) -> Result<(TargetSpec, String), JobError> {
    let (snapshot, _) = ctx.store.load_state::<Snapshot>(ctx.tenant, id.as_uuid()).await?;
    let Some(commit) = snapshot.commit.filter(|_| !snapshot.forgotten) else {
        return Err(JobError::Permanent(format!("snapshot {id} does not exist or was forgotten")));
    };
    Ok((targets.describe(ctx.tenant, commit.target).await?, commit.repo_snapshot))
}

/// Restore counters the job's live progress reads.
fn restore_progress(ctx: &JobContext) -> Arc<RestoreProgress> {
    let progress = Arc::new(RestoreProgress::default());
    let reading = progress.clone();
    ctx.report_progress(move || ProgressReading {
        bytes_done: reading.bytes_done.load(Ordering::Relaxed),
        bytes_total: Some(reading.bytes_total.load(Ordering::Relaxed)),
        files_done: 0,
    });
    progress
}

/// The future, or one that never completes.
async fn futures_or_pending<F: std::future::Future<Output = Result<(), BusError>>>(
    future: Option<F>,
) -> Result<(), BusError> {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Serves export jobs: each holds its image snapshot open on the NBD listener until the job
/// is cancelled.
pub struct ExportHandler {
    targets: Targets,
    nbd: Arc<NbdServer>,
    /// `host:port` as clients reach the listener.
    address: String,
}

impl ExportHandler {
    async fn serve(&self, ctx: &JobContext, export: &Export) -> Result<JobOutcome, JobError> {
        let mut name_hash = [0u8; 32];
        hex::decode_to_slice(&export.name_hash, &mut name_hash)
            .map_err(|_| JobError::Permanent("the export's name hash is not 64 hex digits".into()))?;
        let (spec, repo_snapshot) = committed(ctx, &self.targets, export.snapshot).await?;
        let reader = tokio::task::spawn_blocking(move || {
            let repo = spec.open()?;
            let (_, snapshot) = repo.find_snapshot(&repo_snapshot)?;
            if snapshot.source_kind != arca_repo::SourceKind::Image {
                return Err(arca_repo::Error::Refused(
                    "only image snapshots are exported over NBD; restore or download a file tree instead".into(),
                ));
            }
            let index = Arc::new(repo.load_index()?);
            let (_, node) = image_node(&repo, &index, &snapshot)?;
            FileReader::new(repo, index, &node)
        })
        .await
        .map_err(|e| JobError::Temporary(format!("the export thread stopped: {e}")))??;
        let size = reader.size();
        let _served = self
            .nbd
            .add(name_hash, reader, export.writable)
            .map_err(|e| JobError::Temporary(format!("make the write overlay: {e}")))?;
        let serve = ExportCommand::Serve { address: self.address.clone() };
        match ctx.store.execute::<Export>(ctx.tenant, ctx.job_id, &serve, &ctx.meta).await {
            Ok(_) => {}
            // Stopped before it started serving.
            Err(ExecuteError::Domain(_)) => return Ok(JobOutcome::default()),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(job = %ctx.job_id, address = %self.address, size, writable = export.writable, "export serving");
        ctx.cancelled().await;
        Ok(JobOutcome { snapshot: Some(export.snapshot), bytes_read: 0, bytes_added: 0, files: 1 })
    }
}

impl JobHandler for ExportHandler {
    fn kind(&self) -> JobKind {
        JobKind::Export
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let (export, _) = ctx.store.load_state::<Export>(ctx.tenant, ctx.job_id.as_uuid()).await?;
        match export.status {
            ExportStatus::Missing => {
                return Err(JobError::Permanent(format!("no export was requested for job {}", ctx.job_id)));
            }
            status if status.is_over() => return Ok(JobOutcome::default()),
            _ => {}
        }
        let result = self.serve(&ctx, &export).await;
        let stop = match &result {
            Ok(_) => ExportCommand::Stop { error: None },
            Err(JobError::Permanent(error)) => ExportCommand::Stop { error: Some(error.clone()) },
            Err(JobError::Temporary(_)) => return result,
        };
        match ctx.store.execute::<Export>(ctx.tenant, ctx.job_id, &stop, &ctx.meta).await {
            Ok(_) | Err(ExecuteError::Domain(_)) => result,
            Err(e) => Err(e.into()),
        }
    }
}
