//! `arca-scheduler`: the scheduler service as its own process.

use anyhow::Context as _;
use arca_scheduler::{Scheduler, SchedulerConfig};
use clap::Parser;

#[derive(Parser)]
#[command(name = "arca-scheduler", version, about = "Arca scheduler: policies' schedules → jobs on the work queue")]
struct Cli {
    /// NATS server with JetStream.
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Serve Prometheus metrics on http://ADDR/metrics
    #[arg(long, env = "ARCA_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Stream replicas: 1 on a single node, 3 in a JetStream cluster.
    #[arg(long, env = "ARCA_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = arca_telemetry::init("arca-scheduler", "info,async_nats=warn")?;
    if let Some(addr) = cli.metrics_addr {
        arca_telemetry::serve_metrics(addr)?;
    }
    let config = SchedulerConfig { replicas: cli.stream_replicas, ..SchedulerConfig::new(cli.nats) };
    let scheduler = Scheduler::build(config).await.context("start the scheduler")?;
    tracing::info!("scheduler running");
    scheduler.run_until_stopped(arca_telemetry::shutdown_signal()).await.context("scheduler stopped")?;
    Ok(())
}
