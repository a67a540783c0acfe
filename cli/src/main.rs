//! The `arca` command. Standalone, it drives a repository directly through `arca-repo`
//! (the contract scripts rely on: `--repo`/`ARCA_REPO`, `ARCA_PASSWORD`/`--password-file`,
//! `--json`, exit code 0 on success and non-zero with a one-line reason otherwise).

mod api;
mod control;
mod copy;
mod progress;
mod server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arca_repo::check::{CheckOptions, check};
use arca_repo::crypto::KdfParams;
use arca_repo::format::{RetentionPolicy, SnapshotMap};
use arca_repo::prune::{PruneOptions, forget, forget_snapshot, prune};
use arca_repo::repository::TreeLoader;
use arca_repo::restore::{RestoreOptions, RestoreProgress, restore, walk_tree};
use arca_repo::{
    Backend, BackupMode, BackupOptions, BackupSource, InitOptions, NodeKind, Progress, Repository, Target,
    TargetOptions, backup,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code of a backup that made a snapshot but could not read some files.
const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(name = "arca", version, about = "Arca: deduplicated, compressed, encrypted backups")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Repository URL: fs:///abs/path, s3://bucket/prefix or azblob://container/prefix
    #[arg(long, global = true, env = "ARCA_REPO")]
    repo: Option<String>,
    /// File holding the passphrase (else ARCA_PASSWORD)
    #[arg(long, global = true, env = "ARCA_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// TOML file with target settings (s3_endpoint, s3_region, s3_access_key_id, s3_secret_access_key,
    /// azure_endpoint, azure_account, azure_key)
    #[arg(long, global = true, env = "ARCA_CONFIG")]
    config: Option<PathBuf>,
    /// S3 endpoint URL (else AWS_ENDPOINT_URL)
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// S3 region (else AWS_REGION)
    #[arg(long, global = true)]
    s3_region: Option<String>,
    /// S3 access key id (else AWS_ACCESS_KEY_ID)
    #[arg(long, global = true)]
    s3_access_key_id: Option<String>,
    /// S3 secret key; prefer AWS_SECRET_ACCESS_KEY or the config file (flags show in `ps`)
    #[arg(long, global = true)]
    s3_secret_access_key: Option<String>,
    /// Azure Blob endpoint (else AZURE_STORAGE_ENDPOINT)
    #[arg(long, global = true)]
    azure_endpoint: Option<String>,
    /// Azure storage account (else AZURE_STORAGE_ACCOUNT)
    #[arg(long, global = true)]
    azure_account: Option<String>,
    /// Azure account key; prefer AZURE_STORAGE_KEY or the config file
    #[arg(long, global = true)]
    azure_key: Option<String>,
    /// Machine-readable output: JSON (lines while working, one object or array at the end)
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create or inspect repositories
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Back up files, a disk image, standard input or a command's output
    Backup(BackupArgs),
    /// List snapshots (of the server's tenant when a profile is active and no --repo is given)
    Snapshots {
        #[command(flatten)]
        profile: api::ProfileArg,
    },
    /// List the files of a snapshot (through the server like `snapshots`)
    Ls {
        /// Snapshot id, id prefix or `latest`
        snapshot: String,
        /// Only below this path in the snapshot
        path: Option<String>,
        #[command(flatten)]
        profile: api::ProfileArg,
    },
    /// Restore a snapshot into a folder (through the server like `snapshots`: then the folder
    /// is on the host of the server's recovery worker)
    Restore {
        /// Snapshot id, id prefix or `latest`
        snapshot: String,
        /// Folder to restore into (created if missing)
        #[arg(long)]
        target: PathBuf,
        /// Restore only paths matching this glob (repeatable), e.g. `/home/*/docs/**`
        #[arg(long)]
        include: Vec<String>,
        #[command(flatten)]
        profile: api::ProfileArg,
    },
    /// Verify the repository
    Check {
        /// Also read and authenticate every pack
        #[arg(long)]
        read_data: bool,
        /// Read and authenticate only a share of the packs: `n/m` (part n of m, by pack id;
        /// parts 1/m to m/m together read every pack once) or a percentage such as `10%`
        #[arg(long, conflicts_with = "read_data")]
        read_data_subset: Option<arca_repo::check::Subset>,
    },
    /// Copy snapshots into another repository, moving only the data it lacks
    Copy(copy::CopyArgs),
    /// Remove snapshots by id or by retention rules
    Forget(ForgetArgs),
    /// Remove data no snapshot uses
    Prune {
        #[arg(long)]
        dry_run: bool,
        /// Delete a pack only once nothing has used it for this long, across two prunes
        /// (`30m`, `2h`, `0s` deletes at once; default 1h, or ARCA_GC_GRACE_SECS)
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Manage the passphrases that open the repository
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Remove stale leases left by killed processes
    Unlock,
    /// Repair a damaged repository (shows what it would change with --dry-run)
    Repair {
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// Run the platform on this machine: a local nats-server, the catalog (SQLite) and the scheduler
    Server(server::ServerArgs),
    /// The control plane's SQL catalog (read models of the event log)
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Tenants of the platform (`arca server`)
    Tenant {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::TenantCommandArgs,
    },
    /// A tenant's targets: where its repositories live
    Target {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::TargetCommandArgs,
    },
    /// A tenant's sources: what is backed up
    Source {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::SourceCommandArgs,
    },
    /// A tenant's policies: source to target on a schedule, with retention and copies
    Policy {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::PolicyCommandArgs,
    },
    /// A tenant's snapshots: lock them against forget and prune
    Snapshot {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::SnapshotCommandArgs,
    },
    /// Jobs: show and wait for them, verify and restore
    Job {
        #[command(flatten)]
        connection: control::Connection,
        #[command(subcommand)]
        command: control::JobCommandArgs,
    },
    /// Save a profile for the REST API (URL and key) that the plural commands use
    Login(api::LoginArgs),
    /// Targets, through the REST API: list, add, show, update, rm
    Targets {
        #[command(flatten)]
        profile: api::ProfileArg,
        #[command(subcommand)]
        command: api::TargetsCommand,
    },
    /// Sources, through the REST API: list, add, show, update, rm
    Sources {
        #[command(flatten)]
        profile: api::ProfileArg,
        #[command(subcommand)]
        command: api::SourcesCommand,
    },
    /// Policies, through the REST API: list, add, show, update, rm, run and follow
    Policies {
        #[command(flatten)]
        profile: api::ProfileArg,
        #[command(subcommand)]
        command: api::PoliciesCommand,
    },
    /// Jobs, through the REST API: list, watch, cancel
    Jobs {
        #[command(flatten)]
        profile: api::ProfileArg,
        #[command(subcommand)]
        command: api::JobsCommand,
    },
    /// Find a path across every snapshot, through the REST API (exit 1 when nothing is found)
    Find {
        #[command(flatten)]
        profile: api::ProfileArg,
        /// A path, a folder ending in `/`, or a glob
        path: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Replay the whole event log into an empty catalog database
    Rebuild {
        /// NATS server holding the event log
        #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Empty catalog database: `sqlite://path?mode=rwc` or `postgres://user@host/db`
        #[arg(long, env = "ARCA_CATALOG_DATABASE")]
        database: String,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create a new repository
    Init {
        /// Default zstd level for backups (1-19)
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
        compression: i32,
        /// Target pack size in MiB: larger packs mean fewer objects (cheaper on object stores)
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
        pack_size_mib: u32,
    },
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the packs' own headers (after index files were lost or damaged)
    Index {
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewrite snapshots without the files whose data is gone (tagged `repaired`); remove
    /// snapshot files that cannot be read and snapshots of which nothing is left
    Snapshots {
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add a passphrase (from ARCA_NEW_PASSWORD or --new-password-file)
    Add {
        #[arg(long, env = "ARCA_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// List keys
    List,
    /// Remove a key by id or id prefix (never the last one)
    Remove { id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Incremental,
    Full,
    Differential,
}

#[derive(Args)]
struct BackupArgs {
    /// Files or folders (or, with --image, one image file or block device)
    paths: Vec<PathBuf>,
    /// Back up a raw disk image or block device in fixed 4 MiB blocks
    #[arg(long, conflicts_with = "stdin_name")]
    image: bool,
    /// Read standard input (or --command's output) and store it as this file name
    #[arg(long)]
    stdin_name: Option<String>,
    /// Run this shell command and store its standard output (needs --stdin-name)
    #[arg(long, requires = "stdin_name")]
    command: Option<String>,
    /// incremental (default), full, or differential (parent = last full)
    #[arg(long, value_enum, default_value = "incremental")]
    mode: ModeArg,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    host: Option<String>,
    /// zstd level for this backup (default: the repository's)
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    compression: Option<i32>,
    /// Use this snapshot as the parent
    #[arg(long)]
    parent: Option<String>,
    /// Leave out what matches (repeatable): `*.tmp` or `.git` match an entry's name anywhere,
    /// a pattern with `/` the whole absolute path (`/home/*/.cache`, `**/node_modules`)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
}

#[derive(Args)]
struct ForgetArgs {
    /// Snapshots to remove by id (instead of rules)
    snapshots: Vec<String>,
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
    /// Show what would be removed
    #[arg(long)]
    dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    prune: bool,
}

/// The pipeline allocates chunk-sized buffers on one thread and frees them on another.
/// glibc gives every thread its own arena, and memory freed into one is not reused by the
/// others: measured on the 2 GB benchmark, peak memory fell from 196 to 140 MiB and CPU
/// time by a fifth with a single arena. Allocation is not frequent enough to contend.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn use_one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; it is called first thing in
    // `main`, before any other thread exists, with a valid parameter and value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn use_one_malloc_arena() {}

fn main() -> ExitCode {
    use_one_malloc_arena();
    let cli = Cli::parse();
    // `arca server` installs the services' telemetry (logs, traces, metrics) itself.
    if !matches!(cli.command, Command::Server(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ARCA_LOG").unwrap_or_else(|_| "error".into()))
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("arca: {}", one_line(&e));
            if e.is::<api::UsageError>() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn target_options(g: &Global) -> Result<TargetOptions> {
    let flags = TargetOptions {
        s3_endpoint: g.s3_endpoint.clone(),
        s3_region: g.s3_region.clone(),
        s3_access_key_id: g.s3_access_key_id.clone(),
        s3_secret_access_key: g.s3_secret_access_key.clone(),
        azure_endpoint: g.azure_endpoint.clone(),
        azure_account: g.azure_account.clone(),
        azure_key: g.azure_key.clone(),
    };
    let file = match &g.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("config file `{}`", path.display()))?;
            toml::from_str(&text).with_context(|| format!("config file `{}`", path.display()))?
        }
        None => TargetOptions::default(),
    };
    Ok(flags.or(file).or(TargetOptions::from_env()))
}

fn backend(g: &Global) -> Result<Backend> {
    let Some(url) = &g.repo else { bail!("no repository: give --repo URL or set ARCA_REPO") };
    Ok(Backend::open(&Target::parse(url)?, &target_options(g)?)?)
}

fn passphrase(file: Option<&PathBuf>, env: &str, flag: &str) -> Result<Vec<u8>> {
    if let Some(path) = file {
        let text = std::fs::read(path).with_context(|| format!("password file `{}`", path.display()))?;
        let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
        return Ok(trimmed.strip_suffix(b"\r").unwrap_or(trimmed).to_vec());
    }
    match std::env::var_os(env) {
        Some(v) => Ok(std::os::unix::ffi::OsStringExt::into_vec(v)),
        None => bail!("no passphrase: set {env} or give {flag}"),
    }
}

fn open(g: &Global) -> Result<Repository> {
    let pass = passphrase(g.password_file.as_ref(), "ARCA_PASSWORD", "--password-file")?;
    Ok(Repository::open(backend(g)?, &pass)?)
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("values serialize"));
}

fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Repo { command: RepoCommand::Init { compression, pack_size_mib } } => {
            let pass = passphrase(g.password_file.as_ref(), "ARCA_PASSWORD", "--password-file")?;
            let options = InitOptions {
                compression_level: compression,
                pack_size: pack_size_mib << 20,
                ..InitOptions::default()
            };
            let repo = Repository::init(backend(g)?, &pass, &options)?;
            if g.json {
                print_json(&serde_json::json!({ "id": repo.config().id, "repository": g.repo }));
            } else {
                println!("created repository {} at {}", repo.config().id, repo.backend().target());
            }
            Ok(0)
        }
        Command::Backup(args) => run_backup(g, args),
        Command::Copy(args) => copy::run(g, args),
        Command::Server(args) => server::run(args),
        Command::Tenant { connection, command } => control::tenant(connection, command, g.json),
        Command::Target { connection, command } => control::target(connection, command, g.json),
        Command::Source { connection, command } => control::source(connection, command, g.json),
        Command::Policy { connection, command } => control::policy(connection, command, g.json),
        Command::Snapshot { connection, command } => control::snapshot(connection, command, g.json),
        Command::Job { connection, command } => control::job(connection, command, g.json),
        Command::Login(args) => api::login(args, g.json),
        Command::Targets { profile, command } => api::targets(&profile, command, g.json),
        Command::Sources { profile, command } => api::sources(&profile, command, g.json),
        Command::Policies { profile, command } => api::policies(&profile, command, g.json),
        Command::Jobs { profile, command } => api::jobs(&profile, command, g.json),
        Command::Find { profile, path } => api::find(&profile, &path, g.json),
        Command::Catalog { command: CatalogCommand::Rebuild { nats, database } } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let events = runtime.block_on(async {
                let config = arca_catalog::service::CatalogConfig::new(nats, database);
                let catalog = arca_catalog::service::Catalog::build(config).await?;
                arca_catalog::service::rebuild(&catalog.bus, catalog.db.clone()).await
            })?;
            if g.json {
                print_json(&serde_json::json!({ "events": events }));
            } else {
                println!("rebuilt the catalog from {events} events");
            }
            Ok(0)
        }
        Command::Snapshots { profile } if api::through_server(g.repo.is_some(), &profile)? => {
            api::snapshots(&profile, g.json)
        }
        Command::Ls { snapshot, path, profile } if api::through_server(g.repo.is_some(), &profile)? => {
            api::ls(&profile, &snapshot, path, g.json)
        }
        Command::Restore { snapshot, target, include, profile } if api::through_server(g.repo.is_some(), &profile)? => {
            api::restore(&profile, &snapshot, &target, include, g.json)
        }
        Command::Snapshots { .. } => {
            let snapshots = open(g)?.snapshots()?;
            print_snapshots(g, &snapshots);
            Ok(0)
        }
        Command::Ls { snapshot, path, .. } => {
            let repo = open(g)?;
            let (_, snap) = repo.find_snapshot(&snapshot)?;
            let index = repo.load_index()?;
            let loader = TreeLoader::new(&repo, &index);
            let prefix = path.map(|p| p.trim_end_matches('/').to_string()).unwrap_or_default();
            let mut found = prefix.is_empty();
            let mut rows = Vec::new();
            walk_tree(&loader, &snap.tree, b"", &mut |p, node| {
                let shown = String::from_utf8_lossy(p).into_owned();
                let inside = prefix.is_empty() || shown == prefix || shown.starts_with(&format!("{prefix}/"));
                found |= shown == prefix;
                if inside {
                    rows.push((shown.clone(), node.clone()));
                }
                Ok(inside || prefix.starts_with(&format!("{shown}/")))
            })?;
            if !found {
                bail!("path `{prefix}` not found in snapshot {snapshot}");
            }
            for (path, node) in rows {
                if g.json {
                    print_json(&serde_json::json!({
                        "path": path, "type": node.kind, "size": node.size, "mode": node.mode,
                        "mtime_ns": node.mtime_ns, "uid": node.uid, "gid": node.gid,
                    }));
                } else {
                    let kind = match node.kind {
                        NodeKind::Dir => 'd',
                        NodeKind::Symlink => 'l',
                        NodeKind::File => '-',
                    };
                    println!("{kind} {:o} {:>12} {path}", node.mode & 0o7777, node.size);
                }
            }
            Ok(0)
        }
        Command::Restore { snapshot, target, include, .. } => {
            let repo = open(g)?;
            let (id, snap) = repo.find_snapshot(&snapshot)?;
            let progress = Arc::new(RestoreProgress::default());
            let bar = progress::show_restore(g.json || g.quiet, progress.clone());
            let summary = restore(&repo, &snap, &target, &RestoreOptions { include, progress: Some(progress) });
            drop(bar);
            let summary = summary?;
            for w in &summary.warnings {
                eprintln!("warning: {w}");
            }
            if g.json {
                print_json(&serde_json::json!({ "snapshot_id": id, "summary": summary }));
            } else {
                println!(
                    "restored {} files, {} folders, {} symlinks ({} bytes) from {} into {}",
                    summary.files,
                    summary.dirs,
                    summary.symlinks,
                    summary.bytes,
                    &id[..8],
                    target.display()
                );
            }
            Ok(0)
        }
        Command::Check { read_data, read_data_subset } => {
            let repo = open(g)?;
            let report = check(&repo, &CheckOptions { read_data, read_data_subset })?;
            if g.json {
                print_json(&report);
            } else {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &report.errors {
                    println!("error: {e}");
                }
                for a in &report.affected {
                    println!("snapshot {} is damaged:", &a.snapshot[..8]);
                    for p in &a.paths {
                        println!("  {p}");
                    }
                }
                if report.is_ok() {
                    println!(
                        "no errors: {} snapshots, {} packs{}",
                        report.snapshots,
                        report.packs,
                        if read_data || read_data_subset.is_some() {
                            format!(", {} packs and {} blobs read", report.packs_read, report.blobs_read)
                        } else {
                            String::new()
                        }
                    );
                }
            }
            if !report.is_ok() {
                eprintln!("arca: check found {} error(s)", report.errors.len());
                return Ok(1);
            }
            Ok(0)
        }
        Command::Forget(args) => run_forget(g, args),
        Command::Prune { dry_run, grace } => {
            let repo = open(g)?;
            let defaults = PruneOptions::default();
            let report = prune(&repo, &PruneOptions { dry_run, grace: grace.unwrap_or(defaults.grace), ..defaults })?;
            if g.json {
                print_json(&report);
            } else {
                println!(
                    "{}{} packs deleted, {} repacked, {} kept, {} unindexed removed, {} bytes freed",
                    if dry_run { "would be: " } else { "" },
                    report.packs_deleted,
                    report.packs_repacked,
                    report.packs_kept,
                    report.unindexed_packs_deleted,
                    report.bytes_freed
                );
                if let Some(after) = report.next_deletion_after {
                    println!(
                        "{} unused packs ({} bytes) wait for their grace period: a prune after {} deletes them",
                        report.packs_pending,
                        report.bytes_pending,
                        after.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                }
            }
            Ok(0)
        }
        Command::Key { command } => {
            let repo = open(g)?;
            match command {
                KeyCommand::Add { new_password_file } => {
                    let new = passphrase(new_password_file.as_ref(), "ARCA_NEW_PASSWORD", "--new-password-file")?;
                    let id = repo.add_key(&new, &KdfParams::from_env_or_default())?;
                    if g.json {
                        print_json(&serde_json::json!({ "id": id }));
                    } else {
                        println!("added key {}", &id[..8]);
                    }
                }
                KeyCommand::List => {
                    let keys = repo.list_keys()?;
                    if g.json {
                        print_json(&keys);
                    } else {
                        for k in keys {
                            let mark = if k.current { "*" } else { " " };
                            if k.damaged {
                                println!("{mark}{} damaged: the key file cannot be decoded (remove it)", &k.id[..8]);
                                continue;
                            }
                            println!(
                                "{mark}{} {} {}@{}",
                                &k.id[..8],
                                k.created.format("%Y-%m-%d %H:%M:%S"),
                                k.username,
                                k.hostname
                            );
                        }
                    }
                }
                KeyCommand::Remove { id } => {
                    let removed = repo.remove_key(&id)?;
                    if g.json {
                        print_json(&serde_json::json!({ "removed": removed }));
                    } else {
                        println!("removed key {}", &removed[..8]);
                    }
                }
            }
            Ok(0)
        }
        Command::Unlock => {
            let repo = open(g)?;
            let removed = arca_repo::lock::remove_stale_leases(&repo)?;
            println!("removed {removed} stale lease(s)");
            Ok(0)
        }
        Command::Repair { command } => run_repair(g, command),
    }
}

fn run_repair(g: &Global, command: RepairCommand) -> Result<u8> {
    let repo = open(g)?;
    match command {
        RepairCommand::Index { dry_run } => {
            let report = arca_repo::repair::repair_index(&repo, dry_run)?;
            if g.json {
                print_json(&report);
            } else {
                println!(
                    "{}{} packs indexed ({} no index listed before), {} missing packs dropped, {} index files replaced",
                    if dry_run { "would be: " } else { "" },
                    report.packs_indexed,
                    report.packs_added,
                    report.packs_missing,
                    report.index_files_replaced
                );
                for pack in &report.packs_unreadable {
                    println!("pack {pack}: header unreadable (kept as the old index listed it, if it did)");
                }
            }
        }
        RepairCommand::Snapshots { dry_run } => {
            let report = arca_repo::repair::repair_snapshots(&repo, dry_run)?;
            if g.json {
                print_json(&report);
            } else {
                for repair in &report.repairs {
                    let verb = match (repair.action, dry_run) {
                        ("rewritten", true) => "would rewrite",
                        (_, true) => "would remove",
                        (action, false) => action,
                    };
                    let why = repair.reason.as_deref().unwrap_or("its data is partly gone");
                    println!("{verb} snapshot {}: {why}", &repair.id[..8.min(repair.id.len())]);
                    for path in &repair.dropped {
                        println!("  without {path}");
                    }
                }
                println!("{} of {} snapshots need repair", report.repairs.len(), report.snapshots_checked);
            }
        }
    }
    Ok(0)
}

fn run_backup(g: &Global, args: BackupArgs) -> Result<u8> {
    let source = match (&args.stdin_name, &args.command, args.image) {
        (Some(name), Some(command), _) => BackupSource::Command { name: name.clone(), command: command.clone() },
        (Some(name), None, _) => {
            if !args.paths.is_empty() {
                bail!("--stdin-name reads standard input: give no paths");
            }
            BackupSource::Stdin { name: name.clone() }
        }
        (None, _, true) => match args.paths.as_slice() {
            [one] => BackupSource::Image(one.clone()),
            _ => bail!("--image takes exactly one image file or block device"),
        },
        (None, _, false) => {
            if args.paths.is_empty() {
                bail!("nothing to back up: give paths, --image PATH or --stdin-name NAME");
            }
            BackupSource::Paths(args.paths.clone())
        }
    };
    let repo = open(g)?;
    let progress = Arc::new(Progress::default());
    let options = BackupOptions {
        mode: match args.mode {
            ModeArg::Incremental => BackupMode::Incremental,
            ModeArg::Full => BackupMode::Full,
            ModeArg::Differential => BackupMode::Differential,
        },
        tags: args.tag,
        hostname: args.host,
        compression_level: args.compression,
        parent: args.parent,
        time: None,
        progress: Some(progress.clone()),
        excludes: args.exclude,
        job: None,
    };
    let reporter = progress::show_backup(g.json, g.quiet || !std::io::stderr().is_terminal(), progress);
    let outcome = backup(&repo, source, &options);
    drop(reporter);
    let outcome = outcome?;
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    let s = &outcome.snapshot.summary;
    if g.json {
        print_json(&serde_json::json!({
            "type": "summary",
            "snapshot_id": outcome.snapshot_id,
            "partial": outcome.snapshot.partial,
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs": s.dirs,
            "bytes_read": s.bytes_read,
            "bytes_total": s.bytes_total,
            "bytes_stored": s.bytes_stored,
            "blobs_new": s.blobs_new,
            "warnings": outcome.warnings,
            "duration_ms": s.duration_ms,
        }));
    } else if !g.quiet {
        println!(
            "snapshot {} saved: {} new, {} changed, {} unmodified files; {} bytes read, {} bytes stored in {:.1}s",
            &outcome.snapshot_id[..8],
            s.files_new,
            s.files_changed,
            s.files_unmodified,
            s.bytes_read,
            s.bytes_stored,
            s.duration_ms as f64 / 1000.0
        );
    }
    if outcome.snapshot.partial {
        eprintln!("arca: snapshot {} is partial: some files could not be read", &outcome.snapshot_id[..8]);
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

fn run_forget(g: &Global, args: ForgetArgs) -> Result<u8> {
    let repo = open(g)?;
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
    };
    if !args.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give snapshot ids or --keep-… rules, not both");
        }
        for id in &args.snapshots {
            if args.dry_run {
                let (full, _) = repo.find_snapshot(id)?;
                println!("would remove {}", &full[..8]);
            } else {
                let removed = forget_snapshot(&repo, id)?;
                println!("removed snapshot {}", &removed[..8]);
            }
        }
    } else {
        let decisions = forget(&repo, &policy, args.dry_run)?;
        if g.json {
            print_json(&decisions);
        } else {
            for d in &decisions {
                let verb = match (d.keep, args.dry_run) {
                    (true, _) => "keep",
                    (false, true) => "would remove",
                    (false, false) => "removed",
                };
                println!("{verb} {} {} {}", &d.id[..8], d.time.format("%Y-%m-%d %H:%M:%S"), d.reasons.join(","));
            }
        }
    }
    if args.prune && !args.dry_run {
        let report = prune(&repo, &PruneOptions::default())?;
        println!(
            "prune: {} packs deleted, {} repacked, {} bytes freed",
            report.packs_deleted, report.packs_repacked, report.bytes_freed
        );
    }
    Ok(0)
}

fn print_snapshots(g: &Global, snapshots: &SnapshotMap) {
    let mut rows: Vec<_> = snapshots.iter().collect();
    rows.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(b.0)));
    if g.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).expect("snapshot serializes");
                v["id"] = serde_json::Value::String((*id).clone());
                v["short_id"] = serde_json::Value::String(id[..8].to_string());
                v
            })
            .collect();
        print_json(&list);
        return;
    }
    println!("{:<8}  {:<19}  {:<12}  {:<7}  paths", "id", "time (UTC)", "host", "kind");
    for (id, s) in rows {
        println!(
            "{:<8}  {:<19}  {:<12}  {:<7}  {}{}{}",
            &id[..8],
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            format!("{:?}", s.source_kind).to_lowercase(),
            s.paths.join(" "),
            if s.tags.is_empty() { String::new() } else { format!(" [{}]", s.tags.join(",")) },
            if s.partial { " (partial)" } else { "" },
        );
    }
}
