//! Backup jobs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arca_domain::Lifecycle;
use arca_domain::job::Job;
use arca_domain::policy::Policy;
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_domain::source::Source;
use arca_domain::{DomainError, TenantFacts};
use arca_events::{BackupMode, JobKind, SourceKind};
use arca_repo::{BackupOptions, BackupSource, NamedCommand};
use arca_worker::hooks::run_hook;
use arca_worker::ids::snapshot_id;
use arca_worker::runner::ProgressReading;
use arca_worker::usage;
use arca_worker::{FollowUp, JobContext, JobError, JobHandler, JobOutcome, TargetSpec, Targets};

/// Runs backup jobs.
pub struct BackupHandler {
    targets: Targets,
    hook_timeout: Duration,
}

impl BackupHandler {
    pub fn new(targets: Targets, hook_timeout: Duration) -> Self {
        BackupHandler { targets, hook_timeout }
    }
}

/// Refuses to start a backup while the tenant is at or over its quota.
fn check_quota(facts: &TenantFacts) -> Result<(), JobError> {
    match facts.quota_bytes {
        Some(quota) if facts.used_bytes >= quota => Err(JobError::Permanent(format!(
            "the tenant is over its quota ({} of {quota} bytes used): nothing was written",
            facts.used_bytes
        ))),
        _ => Ok(()),
    }
}

/// A shell word that `sh` reads back as `text`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A libpq connection string naming only `database`: the rest (host, port, user, password
/// file, service) comes from the worker's `PG*` environment. Given as a connection string so
/// no database name is ever read as one.
fn connection_string(database: &str) -> String {
    format!("dbname='{}'", database.replace('\\', r"\\").replace('\'', r"\'"))
}

/// The command that dumps `database`: pg_dump's custom format, which `pg_restore` restores
/// whole or in part, taken in one repeatable-read transaction, so the dump is the database as
/// it was at one moment while writes go on. Uncompressed (`--compress=0`): the repository
/// compresses, and unchanged tables dedup against the previous dump. `--no-password` makes a
/// missing password fail at once instead of waiting for a prompt; a failed pg_dump fails the
/// backup and commits no snapshot.
fn pg_dump(database: &str) -> String {
    format!("pg_dump --no-password --format=custom --compress=0 --dbname={}", shell_quote(&connection_string(database)))
}

fn backup_source(source: &Source) -> Result<BackupSource, JobError> {
    match source.kind {
        Some(SourceKind::Files) => Ok(BackupSource::Paths(source.paths.iter().map(PathBuf::from).collect())),
        Some(SourceKind::Image) => match &source.paths[..] {
            [image] => Ok(BackupSource::Image(PathBuf::from(image))),
            _ => Err(JobError::Permanent("an image source names exactly one image".into())),
        },
        // One dump per database, one after another (each consistent in itself: pg_dump takes no
        // snapshot across databases), all in one repository snapshot.
        Some(SourceKind::Postgres) => Ok(BackupSource::Commands(
            source
                .paths
                .iter()
                .map(|database| NamedCommand { name: format!("{database}.pgdump"), command: pg_dump(database) })
                .collect(),
        )),
        None => Err(JobError::Permanent("the source does not exist".into())),
    }
}

/// On a host shared by tenants, nothing a tenant wrote runs there: hooks are shell commands
/// and a PostgreSQL source dumps through the host's own database connection.
fn refuse_host_commands(source: &Source) -> Result<(), JobError> {
    if source.pre_hook.is_some() || source.post_hook.is_some() {
        return Err(JobError::Permanent(
            "this host is shared by tenants (it has a tenant root): a source's hooks do not run here; \
             give the source a site of its own"
                .into(),
        ));
    }
    if source.kind == Some(SourceKind::Postgres) {
        return Err(JobError::Permanent(
            "this host is shared by tenants (it has a tenant root): PostgreSQL sources are backed up by a \
             worker of their own site"
                .into(),
        ));
    }
    Ok(())
}

/// The snapshot an earlier attempt of this job wrote into the repository, if any.
async fn written_by_job(spec: &TargetSpec, ctx: &JobContext) -> Result<Option<arca_repo::BackupOutcome>, JobError> {
    let (spec, job) = (spec.clone(), ctx.job_id.to_string());
    tokio::task::spawn_blocking(move || {
        let repo = spec.open()?;
        let found = repo.snapshots()?.into_iter().find(|(_, s)| s.job.as_deref() == Some(job.as_str()));
        Ok::<_, arca_repo::Error>(found.map(|(snapshot_id, snapshot)| arca_repo::BackupOutcome {
            snapshot_id,
            snapshot,
            warnings: Vec::new(),
        }))
    })
    .await
    .map_err(|e| JobError::Temporary(format!("the repository thread stopped: {e}")))?
    .map_err(JobError::from)
}

fn engine_mode(mode: Option<BackupMode>) -> arca_repo::BackupMode {
    match mode.unwrap_or_default() {
        BackupMode::Incremental => arca_repo::BackupMode::Incremental,
        BackupMode::Full => arca_repo::BackupMode::Full,
        BackupMode::Differential => arca_repo::BackupMode::Differential,
    }
}

impl JobHandler for BackupHandler {
    fn kind(&self) -> JobKind {
        JobKind::Backup
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let store = &ctx.store;
        let job = &ctx.job;
        let (Some(source_id), Some(target_id)) = (job.source, job.target) else {
            return Err(JobError::Permanent("a backup job names a source and a target".into()));
        };
        let (source, _) = store.load_state::<Source>(ctx.tenant, source_id.as_uuid()).await?;
        if source.status != Lifecycle::Active {
            return Err(JobError::Permanent(format!("source {source_id} does not exist or was removed")));
        }
        check_quota(&store.tenant_facts(ctx.tenant).await?)?;
        if self.targets.folders().is_confined() {
            refuse_host_commands(&source)?;
        }
        let spec = self.targets.describe(ctx.tenant, target_id).await?;
        self.targets.ensure_repository(&spec).await?;
        let what = match backup_source(&source)? {
            BackupSource::Paths(paths) => BackupSource::Paths(
                paths
                    .iter()
                    .map(|path| self.targets.folders().check(ctx.tenant, path, "the source path"))
                    .collect::<Result<_, _>>()?,
            ),
            BackupSource::Image(image) => {
                BackupSource::Image(self.targets.folders().check(ctx.tenant, &image, "the source image")?)
            }
            other => other,
        };

        // A retried job first looks for the snapshot an earlier attempt wrote but could not
        // record (its worker died in between): that one is adopted, not written again, so
        // the repository never holds a snapshot the catalog does not know.
        let adopted = if ctx.attempt > 1 { written_by_job(&spec, &ctx).await? } else { None };
        let adopting = adopted.is_some();
        let result = async {
            if let Some(outcome) = adopted {
                tracing::info!(job = %ctx.job_id, snapshot = %outcome.snapshot_id, "adopting the snapshot an earlier attempt wrote");
                return Ok(outcome);
            }
            if let Some(hook) = &source.pre_hook {
                run_hook("pre", hook, self.hook_timeout).await.map_err(|e| JobError::Permanent(e.to_string()))?;
            }
            let progress = Arc::new(arca_repo::Progress::default());
            let reading = progress.clone();
            ctx.report_progress(move || ProgressReading {
                bytes_done: reading.bytes_done.load(Ordering::Relaxed),
                bytes_total: reading
                    .walk_finished
                    .load(Ordering::Relaxed)
                    .then(|| reading.bytes_total.load(Ordering::Relaxed)),
                files_done: reading.files_done.load(Ordering::Relaxed),
            });
            let options = BackupOptions {
                mode: engine_mode(job.mode),
                tags: vec![format!("source:{source_id}")],
                hostname: Some(source.host.clone()),
                progress: Some(progress.clone()),
                job: Some(ctx.job_id.to_string()),
                excludes: source.excludes.clone(),
                ..BackupOptions::default()
            };
            let spec = spec.clone();
            // A cancel stops the engine: it ends with `Cancelled` and writes no snapshot.
            if ctx.is_cancelled() {
                progress.cancel();
            }
            let stop = tokio::spawn({
                let (ctx, progress) = (ctx.clone(), progress.clone());
                async move {
                    ctx.cancelled().await;
                    progress.cancel();
                }
            });
            let result = tokio::task::spawn_blocking(move || {
                let repo = spec.open()?;
                arca_repo::backup(&repo, what, &options)
            })
            .await;
            stop.abort();
            result.map_err(|e| JobError::Temporary(format!("the backup thread stopped: {e}")))?.map_err(JobError::from)
        }
        .await;
        if let Some(hook) = source.post_hook.as_ref().filter(|_| !adopting) {
            // The post-hook always runs after the pre-hook; its failure is logged, the backup stands.
            if let Err(e) = run_hook("post", hook, self.hook_timeout).await {
                tracing::warn!(job = %ctx.job_id, error = %e, "post-hook failed");
            }
        }
        let outcome = result?;

        let summary = &outcome.snapshot.summary;
        let snapshot = snapshot_id(target_id, &outcome.snapshot_id);
        let commit = SnapshotCommand::Commit {
            target: target_id,
            repo_snapshot: outcome.snapshot_id.clone(),
            time: outcome.snapshot.time,
            host: outcome.snapshot.hostname.clone(),
            paths: outcome.snapshot.paths.clone(),
            tags: outcome.snapshot.tags.clone(),
            source: Some(source_id),
            policy: job.policy,
            job: Some(ctx.job_id),
            files: summary.files_new + summary.files_changed + summary.files_unmodified,
            size_bytes: summary.bytes_total,
            added_bytes: summary.bytes_stored,
            partial: outcome.snapshot.partial,
        };
        match store.execute::<Snapshot>(ctx.tenant, snapshot, &commit, &ctx.meta).await {
            Ok(_) | Err(arca_bus::ExecuteError::Domain(DomainError::AlreadyExists { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        usage::add(store, ctx.tenant, target_id, summary.bytes_stored, &ctx.meta).await?;
        Ok(JobOutcome {
            snapshot: Some(snapshot),
            bytes_read: summary.bytes_read,
            bytes_added: summary.bytes_stored,
            files: summary.files_new + summary.files_changed + summary.files_unmodified,
        })
    }

    async fn follow_ups(&self, ctx: &JobContext, job: &Job) -> Result<Vec<FollowUp>, JobError> {
        let Some(policy_id) = job.policy else { return Ok(Vec::new()) };
        let (policy, _) = ctx.store.load_state::<Policy>(ctx.tenant, policy_id.as_uuid()).await?;
        let mut follow_ups = Vec::new();
        if !policy.retention.keeps_everything() {
            follow_ups.push(FollowUp {
                kind: JobKind::Forget,
                policy: Some(policy_id),
                target: job.target,
                snapshot: None,
                site: None,
            });
        }
        let snapshot = job.outcome.as_ref().and_then(|outcome| outcome.snapshot);
        for copy_target in &policy.copy_targets {
            follow_ups.push(FollowUp {
                kind: JobKind::Copy,
                policy: Some(policy_id),
                target: Some(*copy_target),
                snapshot,
                site: None,
            });
        }
        Ok(follow_ups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("app"), "'app'");
        assert_eq!(shell_quote("o'brien"), r"'o'\''brien'");
    }

    #[test]
    fn a_database_name_is_never_read_as_connection_settings() {
        assert_eq!(connection_string("app"), "dbname='app'");
        assert_eq!(connection_string("host=evil"), "dbname='host=evil'");
        assert_eq!(connection_string(r"o'b\x"), r"dbname='o\'b\\x'");
        // What the shell hands pg_dump is the connection string itself.
        let command = pg_dump("o'b");
        let argument = command.strip_prefix("pg_dump --no-password --format=custom --compress=0 --dbname=").unwrap();
        let output = std::process::Command::new("sh").args(["-c", &format!("printf %s {argument}")]).output().unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), r"dbname='o\'b'");
    }

    #[test]
    fn a_postgres_source_dumps_each_database_in_custom_format() {
        let paths = vec!["app".to_owned(), "billing".to_owned()];
        let source = Source { kind: Some(SourceKind::Postgres), paths, ..Source::default() };
        match backup_source(&source) {
            Ok(BackupSource::Commands(commands)) => assert_eq!(
                commands,
                [
                    NamedCommand { name: "app.pgdump".into(), command: pg_dump("app") },
                    NamedCommand { name: "billing.pgdump".into(), command: pg_dump("billing") },
                ]
            ),
            _ => panic!("a PostgreSQL source is its databases' dumps"),
        }
    }
}
