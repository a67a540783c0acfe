//! `arca-transport`: a transport worker as its own process.

use std::path::PathBuf;

use anyhow::Context;
use arca_transport::{Transport, TransportConfig};
use arca_worker::keys::ServerKey;
use clap::Parser;

/// Runs backup and copy jobs from the work queue.
#[derive(Parser)]
#[command(name = "arca-transport", version)]
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
    /// Take only this site's jobs
    #[arg(long, env = "ARCA_SITE")]
    site: Option<String>,
    /// Jobs run at once
    #[arg(long, env = "ARCA_PARALLEL_JOBS", default_value_t = 2)]
    parallel: usize,
    /// Name recorded in job events (default: host:pid)
    #[arg(long)]
    worker_name: Option<String>,
    /// Seconds without a sign of life after which a job is redelivered
    #[arg(long, default_value_t = 30)]
    ack_wait_seconds: u64,
    /// Milliseconds between live progress messages of a running job
    #[arg(long, default_value_t = 1000)]
    progress_interval_ms: u64,
    /// On a host shared by tenants: every folder a tenant names (sources, restore and replica
    /// folders, `fs://` targets) must be inside DIR/<tenant id>
    #[arg(long, env = "ARCA_TENANT_ROOT", value_name = "DIR")]
    tenant_root: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = arca_telemetry::init("arca-transport", "info,async_nats=warn")?;
    if let Some(addr) = args.metrics_addr {
        arca_telemetry::serve_metrics(addr)?;
    }
    let key = ServerKey::load(&args.secret_key_file)?;
    let mut config = TransportConfig::new(args.nats, key);
    config.worker.site = args.site;
    config.worker.parallel = args.parallel;
    config.tenant_root = args.tenant_root;
    config.worker.ack_wait = std::time::Duration::from_secs(args.ack_wait_seconds);
    config.worker.progress_every = std::time::Duration::from_millis(args.progress_interval_ms.max(10));
    if let Some(name) = args.worker_name {
        config.worker.name = name;
    }
    let transport = Transport::build(config).await.context("start the transport")?;
    transport.run_until_stopped(arca_telemetry::shutdown_signal()).await?;
    Ok(())
}
