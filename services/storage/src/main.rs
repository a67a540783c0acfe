//! `arca-storage`: the storage service as its own process.

use std::path::PathBuf;

use anyhow::Context;
use arca_storage::{Storage, StorageConfig};
use arca_worker::keys::ServerKey;
use clap::Parser;

/// Creates repositories for added targets; runs forget, prune and verify jobs.
#[derive(Parser)]
#[command(name = "arca-storage", version)]
struct Args {
    /// NATS server(s)
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Serve Prometheus metrics on http://ADDR/metrics
    #[arg(long, env = "ARCA_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The deployment's secret key file (64 hex digits), shared by every service
    #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
    /// Jobs of each kind run at once
    #[arg(long, env = "ARCA_PARALLEL_JOBS", default_value_t = 2)]
    parallel: usize,
    /// On a host shared by tenants: `fs://` targets only inside DIR/<tenant id>
    #[arg(long, env = "ARCA_TENANT_ROOT", value_name = "DIR")]
    tenant_root: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = arca_telemetry::init("arca-storage", "info,async_nats=warn")?;
    if let Some(addr) = args.metrics_addr {
        arca_telemetry::serve_metrics(addr)?;
    }
    let mut config = StorageConfig::new(args.nats, ServerKey::load(&args.secret_key_file)?);
    config.worker.parallel = args.parallel;
    config.tenant_root = args.tenant_root;
    let storage = Storage::build(config).await.context("start the storage service")?;
    storage.run_until_stopped(arca_telemetry::shutdown_signal()).await?;
    Ok(())
}
