//! Control-plane commands: define tenants, targets, sources and policies, run jobs and
//! follow them — over NATS, through the same domain rules and event store the services use.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arca_bus::jobs::{self, JobTicket};
use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig, EventStore};
use arca_domain::job::{Job, JobCommand};
use arca_domain::policy::{Policy, PolicyCommand};
use arca_domain::restore::RestoreCommand;
use arca_domain::source::{Source, SourceCommand};
use arca_domain::target::TargetCommand;
use arca_domain::tenant::TenantCommand;
use arca_events::{
    BackupMode, JobId, JobKind, Metadata, Misfire, PolicyId, QemuDisk, RestoreDestination, Retention, Schedule,
    SnapshotId, SourceId, SourceKind, TargetId, TargetKind, TenantId, Trigger,
};
use arca_worker::keys::ServerKey;
use arca_worker::targets::TargetCredentials;
use clap::{Args, Subcommand, ValueEnum};

#[derive(Args)]
pub struct Connection {
    /// NATS server of the platform
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4250")]
    nats: String,
}

#[derive(Args)]
pub struct TenantArg {
    /// The tenant (id)
    #[arg(long, env = "ARCA_TENANT")]
    tenant: TenantId,
}

#[derive(Subcommand)]
pub enum TenantCommandArgs {
    /// Create a tenant; prints its id
    Create {
        name: String,
        /// Stored bytes allowed across the tenant's repositories
        #[arg(long)]
        quota_bytes: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum TargetCommandArgs {
    /// Add a target (the storage service creates the tenant's repository there); prints its id
    Add {
        #[command(flatten)]
        tenant: TenantArg,
        name: String,
        /// fs:///abs/path, s3://bucket/prefix or azblob://container/prefix
        location: String,
        /// Object-store endpoint URL
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region
        #[arg(long)]
        region: Option<String>,
        /// Azure storage account
        #[arg(long)]
        account_name: Option<String>,
        /// S3 access key id (the secret key comes from ARCA_TARGET_SECRET_ACCESS_KEY)
        #[arg(long)]
        access_key_id: Option<String>,
        /// The deployment's secret key file (seals the target's credentials)
        #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
        secret_key_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Files,
    Image,
    Postgres,
}

#[derive(Subcommand)]
pub enum SourceCommandArgs {
    /// Add a source; prints its id
    Add {
        #[command(flatten)]
        tenant: TenantArg,
        name: String,
        /// Paths (files), the image (image) or database names (postgres)
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long, value_enum, default_value = "files")]
        kind: KindArg,
        /// Host the data is read on
        #[arg(long, default_value = "localhost")]
        host: String,
        /// Only transport workers with this site label read it
        #[arg(long)]
        site: Option<String>,
        /// Command run before the backup (quiesce); its failure fails the job
        #[arg(long)]
        pre_hook: Option<String>,
        /// Command run after the backup, whatever happened
        #[arg(long)]
        post_hook: Option<String>,
        /// Leave out what matches (repeatable), as `arca backup --exclude`
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        #[command(flatten)]
        qemu: QemuArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Incremental,
    Full,
    Differential,
}

#[derive(Subcommand)]
pub enum PolicyCommandArgs {
    /// Create a policy (source → target on a schedule); prints its id
    Create(Box<PolicyCreateArgs>),
    /// Run a policy's backup now; prints the job id
    Run {
        #[command(flatten)]
        tenant: TenantArg,
        policy: PolicyId,
    },
}

/// The running qemu that has an image source open, as flags (`arca source add` and `arca
/// sources add|update`): replicas then copy only the blocks qemu marks as written.
#[derive(Args, Clone, Debug, Default)]
pub struct QemuArgs {
    /// QMP monitor socket of a running qemu that has the (raw) image open
    #[arg(long, requires = "qemu_node", value_name = "SOCKET")]
    pub qemu_monitor: Option<String>,
    /// The image's block node (node-name) in that qemu
    #[arg(long, requires = "qemu_monitor", value_name = "NODE")]
    pub qemu_node: Option<String>,
    /// Socket of an NBD server that qemu already runs (otherwise replicas start one)
    #[arg(long, requires = "qemu_monitor", value_name = "SOCKET")]
    pub qemu_nbd: Option<String>,
}

impl QemuArgs {
    pub fn disk(&self) -> Option<QemuDisk> {
        let (monitor, node) = (self.qemu_monitor.clone()?, self.qemu_node.clone()?);
        Some(QemuDisk { monitor, node, nbd: self.qemu_nbd.clone() })
    }
}

/// A policy's retention rules as flags (`arca policy create` and `arca policies add|update`).
#[derive(Args, Clone, Copy, Debug)]
pub struct RetentionArgs {
    #[arg(long)]
    keep_last: Option<u32>,
    #[arg(long)]
    keep_hourly: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
    #[arg(long)]
    keep_yearly: Option<u32>,
}

impl RetentionArgs {
    pub fn rules(&self) -> Retention {
        Retention {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
        }
    }
}

#[derive(Args)]
pub struct PolicyCreateArgs {
    #[command(flatten)]
    tenant: TenantArg,
    name: String,
    #[arg(long)]
    source: SourceId,
    #[arg(long)]
    target: TargetId,
    /// Interval schedule in seconds (at least 60)
    #[arg(long, conflicts_with = "cron")]
    every: Option<u64>,
    /// Cron schedule (5 or 6 fields)
    #[arg(long)]
    cron: Option<String>,
    /// Time zone of the cron schedule
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Run one late firing when the scheduler was down (else skip)
    #[arg(long)]
    run_once_when_late: bool,
    #[arg(long, value_enum, default_value = "incremental")]
    mode: ModeArg,
    #[command(flatten)]
    retention: RetentionArgs,
    /// Copy each backup to this target too (repeatable)
    #[arg(long = "copy-to")]
    copy_to: Vec<TargetId>,
    /// Verify the target every this many seconds
    #[arg(long)]
    verify_every: Option<u64>,
}

#[derive(Subcommand)]
pub enum SnapshotCommandArgs {
    /// Lock a snapshot: every forget and prune keeps it until then (a lock can be extended,
    /// never shortened)
    Lock {
        #[command(flatten)]
        tenant: TenantArg,
        snapshot: SnapshotId,
        /// Keep it this many days from now
        #[arg(long, conflicts_with = "until")]
        days: Option<u32>,
        /// Keep it until this time (RFC 3339)
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Subcommand)]
pub enum JobCommandArgs {
    /// Show a job (JSON); with --wait, wait until it has ended
    Show {
        #[command(flatten)]
        tenant: TenantArg,
        job: JobId,
        /// Seconds to wait for the job to end (exit 1 if it failed)
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Verify a target now; prints the job id
    Verify {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        target: TargetId,
    },
    /// Restore a snapshot into a folder on the recovery instance's host, or into another
    /// target; prints the job id
    Restore {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        snapshot: SnapshotId,
        /// Folder (absolute) to restore into
        #[arg(long, required_unless_present_any = ["to_target", "to_database"], conflicts_with_all = ["to_target", "to_database"])]
        to: Option<String>,
        /// Target to restore the whole snapshot into
        #[arg(long, conflicts_with = "to_database")]
        to_target: Option<TargetId>,
        /// New PostgreSQL database to restore a `postgres` snapshot's dump into (refused if it
        /// exists); the recovery worker connects as its PG* environment says
        #[arg(long)]
        to_database: Option<String>,
        /// With --to-database: which dump of the snapshot, by its database's name (when it holds several)
        #[arg(long, requires = "to_database")]
        from: Option<String>,
        /// Only paths matching this glob (repeatable)
        #[arg(long)]
        include: Vec<String>,
        /// The site of the host that should restore
        #[arg(long)]
        site: Option<String>,
    },
}

async fn connect(connection: &Connection) -> Result<EventStore> {
    let bus = Bus::connect(BusConfig { client_name: "arca-cli".into(), ..BusConfig::new(&connection.nats) })
        .await
        .context("connect to the platform")?;
    Ok(bus.event_store().await?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?)
}

fn print_id(json: bool, what: &str, id: impl std::fmt::Display) {
    if json {
        println!("{}", serde_json::json!({ what: id.to_string() }));
    } else {
        println!("{id}");
    }
}

pub fn tenant(connection: Connection, command: TenantCommandArgs, json: bool) -> Result<u8> {
    let TenantCommandArgs::Create { name, quota_bytes } = command;
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        let id = TenantId::new();
        store
            .execute::<arca_domain::tenant::Tenant>(
                id,
                id,
                &TenantCommand::Create { name, quota_bytes },
                &Metadata::new_root(),
            )
            .await?;
        print_id(json, "tenant", id);
        Ok(0)
    })
}

pub fn target(connection: Connection, command: TargetCommandArgs, json: bool) -> Result<u8> {
    let TargetCommandArgs::Add {
        tenant,
        name,
        location,
        endpoint,
        region,
        account_name,
        access_key_id,
        secret_key_file,
    } = command;
    let kind = match location.split_once("://").map(|(scheme, _)| scheme) {
        Some("fs") => TargetKind::Fs,
        Some("s3") => TargetKind::S3,
        Some("azblob") => TargetKind::Azblob,
        _ => bail!("`{location}` is not a target location (fs:///path, s3://bucket/prefix, azblob://container/prefix)"),
    };
    let mut settings = arca_events::TargetSettings::new();
    for (key, value) in [("endpoint", endpoint), ("region", region), ("account_name", account_name)] {
        if let Some(value) = value {
            settings.insert(key.into(), value);
        }
    }
    let secret = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = TargetCredentials {
        access_key_id,
        secret_access_key: secret("ARCA_TARGET_SECRET_ACCESS_KEY"),
        account_key: secret("ARCA_TARGET_ACCOUNT_KEY"),
    };
    let has_credentials = credentials.access_key_id.is_some()
        || credentials.secret_access_key.is_some()
        || credentials.account_key.is_some();
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        let credentials = if has_credentials {
            let path = secret_key_file.context("credentials are sealed with the server key: pass --secret-key-file")?;
            let key = ServerKey::load(&path)?;
            let secrets = SecretStore::open(store.bus(), &key.secret_store_key()).await?;
            let sealed = serde_json::to_vec(&credentials).expect("credentials serialise");
            Some(secrets.put(tenant.tenant, &sealed).await?)
        } else {
            None
        };
        let id = TargetId::new();
        let command = TargetCommand::Add { name, kind, location, settings, credentials };
        store.execute::<arca_domain::target::Target>(tenant.tenant, id, &command, &Metadata::new_root()).await?;
        print_id(json, "target", id);
        Ok(0)
    })
}

pub fn source(connection: Connection, command: SourceCommandArgs, json: bool) -> Result<u8> {
    let SourceCommandArgs::Add { tenant, name, paths, kind, host, site, pre_hook, post_hook, exclude, qemu } = command;
    let kind = match kind {
        KindArg::Files => SourceKind::Files,
        KindArg::Image => SourceKind::Image,
        KindArg::Postgres => SourceKind::Postgres,
    };
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        let id = SourceId::new();
        let qemu = qemu.disk();
        let command =
            SourceCommand::Add { name, kind, host, paths, excludes: exclude, site, pre_hook, post_hook, qemu };
        store.execute::<Source>(tenant.tenant, id, &command, &Metadata::new_root()).await?;
        print_id(json, "source", id);
        Ok(0)
    })
}

pub fn policy(connection: Connection, command: PolicyCommandArgs, json: bool) -> Result<u8> {
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        match command {
            PolicyCommandArgs::Create(args) => {
                let args = *args;
                let schedule = match (args.every, args.cron) {
                    (Some(seconds), None) => Schedule::Interval { seconds },
                    (None, Some(expression)) => Schedule::Cron { expression, timezone: args.timezone },
                    _ => bail!("give a schedule: --every SECONDS or --cron EXPRESSION"),
                };
                let command = PolicyCommand::Create {
                    name: args.name,
                    source: args.source,
                    target: args.target,
                    schedule,
                    misfire: if args.run_once_when_late { Misfire::RunOnce } else { Misfire::Skip },
                    mode: match args.mode {
                        ModeArg::Incremental => BackupMode::Incremental,
                        ModeArg::Full => BackupMode::Full,
                        ModeArg::Differential => BackupMode::Differential,
                    },
                    retention: args.retention.rules(),
                    copy_targets: args.copy_to,
                    verify_schedule: args.verify_every.map(|seconds| Schedule::Interval { seconds }),
                };
                let id = PolicyId::new();
                store.execute::<Policy>(args.tenant.tenant, id, &command, &Metadata::new_root()).await?;
                print_id(json, "policy", id);
            }
            PolicyCommandArgs::Run { tenant, policy } => {
                let (state, _) = store.load_state::<Policy>(tenant.tenant, policy.as_uuid()).await?;
                if state.schedule.is_none() {
                    bail!("policy {policy} does not exist");
                }
                let (source, _) = store.load_state::<Source>(tenant.tenant, state.source.as_uuid()).await?;
                let command = JobCommand::Request {
                    kind: JobKind::Backup,
                    trigger: Trigger::Manual,
                    policy: Some(policy),
                    source: Some(state.source),
                    target: Some(state.target),
                    snapshot: None,
                    mode: Some(state.mode),
                    site: source.site.clone(),
                };
                let id = request(&store, tenant.tenant, command, JobKind::Backup, source.site).await?;
                print_id(json, "job", id);
            }
        }
        Ok(0)
    })
}

/// Requests a job and puts its ticket on the queue.
async fn request(
    store: &EventStore,
    tenant: TenantId,
    command: JobCommand,
    kind: JobKind,
    site: Option<String>,
) -> Result<JobId> {
    let id = JobId::new();
    let meta = Metadata::new_root();
    store.execute::<Job>(tenant, id, &command, &meta).await?;
    let ticket = JobTicket { tenant, job: id, kind, site, trace: meta.trace };
    jobs::enqueue(store.bus(), &ticket, &id.to_string()).await?;
    Ok(id)
}

pub fn snapshot(connection: Connection, command: SnapshotCommandArgs, json: bool) -> Result<u8> {
    let SnapshotCommandArgs::Lock { tenant, snapshot, days, until } = command;
    let until = match (days, until) {
        (Some(days), _) => chrono::Utc::now() + chrono::TimeDelta::days(i64::from(days)),
        (None, Some(until)) => until,
        (None, None) => bail!("give --days N or --until TIME"),
    };
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        let command = arca_domain::snapshot::SnapshotCommand::Lock { until };
        store
            .execute::<arca_domain::snapshot::Snapshot>(tenant.tenant, snapshot, &command, &Metadata::new_root())
            .await?;
        if json {
            println!("{}", serde_json::json!({ "snapshot": snapshot.to_string(), "locked_until": until }));
        } else {
            println!("snapshot {snapshot} is locked until {until}");
        }
        Ok(0)
    })
}

fn job_json(id: JobId, job: &Job) -> serde_json::Value {
    let outcome = job.outcome.as_ref();
    serde_json::json!({
        "id": id.to_string(),
        "kind": job.kind.map(|k| k.as_str()),
        "status": job.status.as_str(),
        "attempt": job.attempt,
        "worker": job.worker,
        "snapshot": outcome.and_then(|o| o.snapshot).map(|s| s.to_string()),
        "bytes_read": outcome.map(|o| o.bytes_read),
        "bytes_added": outcome.map(|o| o.bytes_added),
        "files": outcome.map(|o| o.files),
        "duration_ms": outcome.map(|o| o.duration_ms),
        "error": job.error,
        "dead_lettered": job.dead_lettered,
    })
}

pub fn job(connection: Connection, command: JobCommandArgs, json: bool) -> Result<u8> {
    runtime()?.block_on(async {
        let store = connect(&connection).await?;
        match command {
            JobCommandArgs::Show { tenant, job, wait } => {
                let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
                loop {
                    let (state, _) = store.load_state::<Job>(tenant.tenant, job.as_uuid()).await?;
                    if state.kind.is_none() {
                        bail!("job {job} does not exist");
                    }
                    let ended = state.status.is_terminal();
                    if ended || wait.is_none() || Instant::now() >= deadline {
                        println!("{}", job_json(job, &state));
                        if wait.is_some() && !ended {
                            bail!("job {job} is still {} after {} s", state.status.as_str(), wait.unwrap_or(0));
                        }
                        let failed = matches!(state.status, arca_domain::job::JobStatus::Failed);
                        return Ok(if failed && wait.is_some() { 1 } else { 0 });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            JobCommandArgs::Verify { tenant, target } => {
                let command = JobCommand::Request {
                    kind: JobKind::Verify,
                    trigger: Trigger::Manual,
                    policy: None,
                    source: None,
                    target: Some(target),
                    snapshot: None,
                    mode: None,
                    site: None,
                };
                let id = request(&store, tenant.tenant, command, JobKind::Verify, None).await?;
                print_id(json, "job", id);
            }
            JobCommandArgs::Restore { tenant, snapshot, to, to_target, to_database, from, include, site } => {
                let id = JobId::new();
                let meta = Metadata::new_root();
                let destination = match (to, to_target, to_database) {
                    (Some(path), _, _) => RestoreDestination::Directory { path, site: site.clone() },
                    (None, Some(target), _) => RestoreDestination::Target { target },
                    (None, None, Some(name)) => RestoreDestination::Database { name, from, site: site.clone() },
                    (None, None, None) => bail!("give --to FOLDER, --to-target TARGET or --to-database NAME"),
                };
                let restore = RestoreCommand::Request { snapshot, paths: include, destination, job: id };
                store.execute::<arca_domain::restore::Restore>(tenant.tenant, id, &restore, &meta).await?;
                let command = JobCommand::Request {
                    kind: JobKind::Restore,
                    trigger: Trigger::Manual,
                    policy: None,
                    source: None,
                    target: None,
                    snapshot: Some(snapshot),
                    mode: None,
                    site: site.clone(),
                };
                store.execute::<Job>(tenant.tenant, id, &command, &meta).await?;
                let ticket =
                    JobTicket { tenant: tenant.tenant, job: id, kind: JobKind::Restore, site, trace: meta.trace };
                jobs::enqueue(store.bus(), &ticket, &id.to_string()).await?;
                print_id(json, "job", id);
            }
        }
        Ok(0)
    })
}
