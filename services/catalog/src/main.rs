//! `arca-catalog`: the catalog service as its own process.

use anyhow::Context as _;
use arca_catalog::service::{self, Catalog, CatalogConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "arca-catalog", version, about = "Arca catalog: event log → SQL read models, and queries")]
struct Cli {
    /// NATS server with JetStream.
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    nats: String,
    /// Catalog database: `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    #[arg(long, env = "ARCA_CATALOG_DATABASE", default_value = "sqlite://var/catalog.db?mode=rwc", global = true)]
    database: String,
    /// Stream replicas: 1 on a single node, 3 in a JetStream cluster.
    #[arg(long, env = "ARCA_STREAM_REPLICAS", default_value_t = 1, global = true)]
    stream_replicas: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Project events and answer queries until stopped.
    Run {
        /// Durable consumer name (default: derived from the database URL; one per database).
        #[arg(long)]
        consumer: Option<String>,
        /// The deployment's secret key file: lets the catalog read repositories to index files
        #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
        secret_key_file: Option<std::path::PathBuf>,
        /// Serve Prometheus metrics on http://ADDR/metrics
        #[arg(long, env = "ARCA_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Replay the whole event log into an empty database.
    Rebuild,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = arca_telemetry::init("arca-catalog", "info,async_nats=warn,sqlx=warn,sea_orm=warn")?;
    match cli.command {
        Command::Run { consumer, secret_key_file, metrics_addr } => {
            if let Some(addr) = metrics_addr {
                arca_telemetry::serve_metrics(addr)?;
            }
            let mut config =
                CatalogConfig { replicas: cli.stream_replicas, ..CatalogConfig::new(cli.nats, cli.database) };
            if let Some(consumer) = consumer {
                config.consumer = consumer;
            }
            if let Some(path) = secret_key_file {
                config.server_key = Some(arca_worker::keys::ServerKey::load(&path)?);
            }
            let catalog = Catalog::build(config).await.context("start the catalog")?;
            tracing::info!("catalog running");
            catalog.run_until_stopped(arca_telemetry::shutdown_signal()).await.context("catalog stopped")?;
        }
        Command::Rebuild => {
            let config = CatalogConfig { replicas: cli.stream_replicas, ..CatalogConfig::new(cli.nats, cli.database) };
            let catalog = Catalog::build(config).await.context("open the catalog")?;
            let events = service::rebuild(&catalog.bus, catalog.db.clone()).await.context("rebuild the catalog")?;
            println!("rebuilt the catalog from {events} events");
        }
    }
    Ok(())
}
