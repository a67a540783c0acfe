//! `arca server`: the platform on one machine — a local nats-server it starts itself (unless
//! given one), the catalog on SQLite under the data folder, the scheduler, the transport,
//! storage and recovery workers, the dead-letter watcher and the REST API gateway
//! (`--http-addr`, default 127.0.0.1:8080), all in this process over the
//! same NATS the separate services use. The deployment's secret key is `secret.key` in the
//! data folder (created on the first start) unless `--secret-key-file` names one.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arca_api_gateway::{Application, HttpArgs};
use arca_catalog::service::{Catalog, CatalogConfig};
use arca_recovery::{Recovery, RecoveryConfig};
use arca_scheduler::{Scheduler, SchedulerConfig};
use arca_storage::{Storage, StorageConfig};
use arca_transport::{Transport, TransportConfig};
use arca_worker::keys::ServerKey;
use clap::Args;

#[derive(Args)]
pub struct ServerArgs {
    /// Folder for the NATS store, the catalog database and logs
    #[arg(long, env = "ARCA_DATA_DIR", default_value = "var")]
    data_dir: PathBuf,
    /// Use this NATS server instead of starting one
    #[arg(long, env = "ARCA_NATS_URL")]
    nats: Option<String>,
    /// Loopback port for the nats-server this command starts
    #[arg(long, default_value_t = 4250)]
    nats_port: u16,
    /// Catalog database (default: SQLite in the data folder)
    #[arg(long, env = "ARCA_CATALOG_DATABASE")]
    database: Option<String>,
    /// The deployment's secret key (default: secret.key in the data folder, created if missing)
    #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Jobs of each kind run at once
    #[arg(long, env = "ARCA_PARALLEL_JOBS", default_value_t = 2)]
    parallel: usize,
    /// Seconds without a sign of life after which a worker's job is redelivered
    #[arg(long, default_value_t = 30)]
    ack_wait_seconds: u64,
    /// Deliveries of a job before it is dead-lettered
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Pause before a failed job is tried again, in seconds (repeatable: one per retry, the last repeats)
    #[arg(long = "retry-backoff-seconds", default_values_t = [5, 30, 120])]
    retry_backoff_seconds: Vec<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics
    #[arg(long, env = "ARCA_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve instant-recovery NBD exports on this address; port 0 picks a free one
    #[arg(long, env = "ARCA_NBD_ADDR", default_value = "127.0.0.1:10809")]
    nbd_addr: std::net::SocketAddr,
    /// On a host shared by tenants: every folder a tenant names (sources, restore and replica
    /// folders, `fs://` targets) must be inside DIR/<tenant id>
    #[arg(long, env = "ARCA_TENANT_ROOT", value_name = "DIR")]
    tenant_root: Option<PathBuf>,
    #[command(flatten)]
    http: HttpArgs,
}

/// A nats-server child process, stopped when dropped.
struct NatsChild(Child);

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: ServerArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create the data folder {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let (nats_url, nats_child) = match &args.nats {
        Some(url) => (url.clone(), None),
        None => {
            let (url, child) = start_nats(&data_dir, args.nats_port)?;
            (url, Some(child))
        }
    };
    let database =
        args.database.clone().unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("catalog.db").display()));
    let key_path = args.secret_key_file.clone().unwrap_or_else(|| data_dir.join("secret.key"));
    let key = ServerKey::load_or_create(&key_path)?;
    let mut worker = arca_worker::WorkerSettings { parallel: args.parallel, ..Default::default() };
    worker.ack_wait = Duration::from_secs(args.ack_wait_seconds);
    worker.max_deliver = args.max_attempts.max(1);
    worker.backoff = args.retry_backoff_seconds.iter().map(|s| Duration::from_secs(*s)).collect();
    let _telemetry = arca_telemetry::init("arca-server", "info,async_nats=warn,sqlx=warn,sea_orm=warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        if let Some(addr) = args.metrics_addr {
            arca_telemetry::serve_metrics(addr)?;
        }
        let catalog_config = CatalogConfig { server_key: Some(key.clone()), ..CatalogConfig::new(&nats_url, &database) };
        let catalog = Catalog::build(catalog_config).await.context("start the catalog")?;
        let scheduler = Scheduler::build(SchedulerConfig::new(&nats_url)).await.context("start the scheduler")?;
        let tenant_root = args.tenant_root.clone();
        let transport = Transport::build(TransportConfig {
            worker: worker.clone(),
            tenant_root: tenant_root.clone(),
            ..TransportConfig::new(&nats_url, key.clone())
        })
            .await
            .context("start the transport")?;
        let storage = Storage::build(StorageConfig {
            worker: worker.clone(),
            tenant_root: tenant_root.clone(),
            ..StorageConfig::new(&nats_url, key.clone())
        })
            .await
            .context("start the storage service")?;
        let recovery_config =
            RecoveryConfig { worker, nbd_addr: Some(args.nbd_addr), tenant_root, ..RecoveryConfig::new(&nats_url, key.clone()) };
        let recovery = Recovery::build(recovery_config)
            .await
            .context("start the recovery service")?;
        let store = catalog.bus.event_store().await?;
        let _dead_letters = arca_bus::jobs::watch_dead_letters(store).await?;
        let mut gateway = args.http.config(&nats_url);
        gateway.server_key = Some(key);
        let gateway = Application::build(gateway).await.context("start the API gateway")?;
        if let Some(key) = gateway.new_bootstrap_key() {
            eprintln!("arca server: bootstrap MSP admin API key (shown once, keep it safe): {key}");
        }
        let api = format!("{}://{}:{}", args.http.scheme(), args.http.http_addr.ip(), gateway.port());
        let nbd = recovery.nbd_address().map(|a| a.to_string()).unwrap_or_default();
        eprintln!(
            "arca server: API {api}; NBD {nbd}; NATS {nats_url}; catalog {database}; secret key {}; scheduler, transport, storage and recovery running. Ctrl-C stops.",
            key_path.display()
        );
        tokio::select! {
            result = catalog.run_until_stopped(std::future::pending()) => result.context("the catalog stopped")?,
            result = scheduler.run_until_stopped(std::future::pending()) => result.context("the scheduler stopped")?,
            result = transport.run_until_stopped(std::future::pending()) => result.context("the transport stopped")?,
            result = storage.run_until_stopped(std::future::pending()) => result.context("the storage service stopped")?,
            result = recovery.run_until_stopped(std::future::pending()) => result.context("the recovery service stopped")?,
            result = gateway.run_until_stopped(std::future::pending()) => result.context("the API gateway stopped")?,
            () = arca_telemetry::shutdown_signal() => eprintln!("arca server: stopping"),
        }
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(nats_child);
    result.map(|()| 0)
}

/// Where `arca server` notes the process id of the nats-server it started.
const NATS_PID_FILE: &str = "nats.pid";

/// Has the kernel stop the child (SIGTERM) when this process dies, however it dies.
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Stops a nats-server that an earlier `arca server` on this data folder started and that
/// outlived it (the kernel signals it when its parent dies, but it may still be stopping).
fn stop_leftover_nats(data_dir: &Path) -> Result<()> {
    let Ok(pid) = std::fs::read_to_string(data_dir.join(NATS_PID_FILE)) else { return Ok(()) };
    let Ok(pid) = pid.trim().parse::<u32>() else { return Ok(()) };
    let ours = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let store = data_dir.join("nats");
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.iter().any(|a| a.ends_with(b"nats-server")) && args.contains(&store.as_os_str().as_encoded_bytes())
        })
    };
    if !ours(pid) {
        return Ok(());
    }
    eprintln!("arca server: stopping the nats-server (pid {pid}) an earlier run left behind");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut signal = "-TERM";
    while ours(pid) {
        Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status()?;
        if Instant::now() > deadline {
            signal = "-KILL";
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts `nats-server -js` on `127.0.0.1:port` with its store in `data_dir/nats`.
fn start_nats(data_dir: &Path, port: u16) -> Result<(String, NatsChild)> {
    stop_leftover_nats(data_dir)?;
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("port {port} is taken: pass --nats URL to use that server, or --nats-port for another port");
    }
    let program = nats_server_program()?;
    let log_path = data_dir.join("nats.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut command = Command::new(&program);
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(data_dir.join("nats"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    stop_with_parent(&mut command);
    let child = command.spawn().with_context(|| format!("start {}", program.display()))?;
    std::fs::write(data_dir.join(NATS_PID_FILE), child.id().to_string())?;
    let mut child = NatsChild(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.0.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("nats-server exited ({status}): {}", log.lines().last().unwrap_or("no output"));
        }
        if Instant::now() > deadline {
            bail!("nats-server did not listen on 127.0.0.1:{port} within 10 s (log: {})", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((format!("nats://127.0.0.1:{port}"), child))
}

/// `$ARCA_NATS_SERVER`, the pinned build from `infra/dev/ensure-tools.sh`, else `PATH`.
fn nats_server_program() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ARCA_NATS_SERVER") {
        return Ok(path.into());
    }
    let tools = std::env::var_os("ARCA_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/arca/tools")));
    let pinned = tools.map(|dir| dir.join("bin/nats-server")).filter(|p| p.is_file());
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    pinned.or(on_path).context("no nats-server found: run infra/dev/ensure-tools.sh, or set ARCA_NATS_SERVER")
}
