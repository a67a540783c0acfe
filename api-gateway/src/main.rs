//! `arca-gateway`: the HTTP API of the platform (see the library's docs).

use std::path::PathBuf;

use anyhow::Context;
use arca_api_gateway::{Application, HttpArgs};
use clap::Parser;

#[derive(Parser)]
#[command(name = "arca-gateway", about = "Arca's REST API")]
struct Args {
    /// NATS server of the platform
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4250")]
    nats: String,
    #[command(flatten)]
    http: HttpArgs,
    /// The deployment's secret key file (seals target credentials)
    #[arg(long, env = "ARCA_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Print the OpenAPI document and exit
    #[arg(long)]
    print_openapi: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", arca_api_gateway::openapi_json());
        return Ok(());
    }
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let _telemetry = arca_telemetry::init("arca-gateway", "info")?;
    let mut config = args.http.config(&args.nats);
    if let Some(path) = &args.secret_key_file {
        config.server_key =
            Some(arca_worker::keys::ServerKey::load(path).with_context(|| format!("load {}", path.display()))?);
    }
    let app = Application::build(config).await?;
    if let Some(key) = app.new_bootstrap_key() {
        println!("bootstrap MSP admin key (shown once, keep it safe): {key}");
    }
    tracing::info!(port = app.port(), "serving the API");
    app.run_until_stopped(arca_telemetry::shutdown_signal()).await?;
    Ok(())
}
