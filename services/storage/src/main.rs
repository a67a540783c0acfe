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
    /// The deployment's secret key file (64 hex digits), shared by every service
    #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
    /// Jobs of each kind run at once
    #[arg(long, env = "ARCA_PARALLEL_JOBS", default_value_t = 2)]
    parallel: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = StorageConfig::new(args.nats, ServerKey::load(&args.secret_key_file)?);
    config.worker.parallel = args.parallel;
    let storage = Storage::build(config).await.context("start the storage service")?;
    storage.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
