//! `arca-recovery`: the recovery service as its own process.

use std::path::PathBuf;

use anyhow::Context;
use arca_recovery::{Recovery, RecoveryConfig};
use arca_worker::keys::ServerKey;
use clap::Parser;

/// Runs restore jobs on this host and verifies what they wrote; serves NBD exports.
#[derive(Parser)]
#[command(name = "arca-recovery", version)]
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
    /// Take only this site's restores (the host's site label)
    #[arg(long, env = "ARCA_SITE")]
    site: Option<String>,
    /// Restores run at once
    #[arg(long, env = "ARCA_PARALLEL_JOBS", default_value_t = 2)]
    parallel: usize,
    /// Serve instant-recovery NBD exports on this address (none: take no export jobs)
    #[arg(long, env = "ARCA_NBD_ADDR")]
    nbd_addr: Option<std::net::SocketAddr>,
    /// The host name NBD clients reach this instance at (default: the listener's IP)
    #[arg(long, env = "ARCA_NBD_HOST")]
    nbd_host: Option<String>,
    /// On a host shared by tenants: every folder a tenant names (sources, restore and replica
    /// folders, `fs://` targets) must be inside DIR/<tenant id>
    #[arg(long, env = "ARCA_TENANT_ROOT", value_name = "DIR")]
    tenant_root: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = arca_telemetry::init("arca-recovery", "info,async_nats=warn")?;
    if let Some(addr) = args.metrics_addr {
        arca_telemetry::serve_metrics(addr)?;
    }
    let mut config = RecoveryConfig::new(args.nats, ServerKey::load(&args.secret_key_file)?);
    config.worker.parallel = args.parallel;
    config.worker.site = args.site;
    config.nbd_addr = args.nbd_addr;
    config.nbd_host = args.nbd_host;
    config.tenant_root = args.tenant_root;
    let recovery = Recovery::build(config).await.context("start the recovery service")?;
    recovery.run_until_stopped(arca_telemetry::shutdown_signal()).await?;
    Ok(())
}
