//! Reads every job's events from the `EVENTS` stream of a running platform and prints one
//! tab-separated line per job, for `loadtests/bench-services.sh` to compute latencies from:
//!
//! `tenant job kind trigger trigger_at requested started ended outcome attempt duration_ms`
//!
//! Times are Unix seconds with millisecond precision (`-` when the event is missing):
//! `trigger_at` is a scheduled job's firing time (`JobRequested.payload.trigger.at`),
//! `requested`/`started`/`ended` the envelope times of `JobRequested`, the first `JobStarted`
//! and the terminal event (`JobSucceeded`, `JobFailed` or `JobCancelled`, named in `outcome`).
//!
//! Usage: `bench-job-events [--nats URL]` (default `$ARCA_NATS_URL`, else nats://127.0.0.1:4250).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use arca_bus::EVENTS_STREAM;
use arca_events::Envelope;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// The platform's NATS server.
    #[arg(long, env = "ARCA_NATS_URL", default_value = "nats://127.0.0.1:4250")]
    nats: String,
}

/// What the events say about one job.
#[derive(Default)]
struct JobTimes {
    tenant: String,
    kind: String,
    trigger: String,
    trigger_at: Option<DateTime<Utc>>,
    requested: Option<DateTime<Utc>>,
    started: Option<DateTime<Utc>>,
    ended: Option<DateTime<Utc>>,
    outcome: String,
    attempt: u64,
    duration_ms: Option<u64>,
}

fn seconds(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(|| "-".into(), |t| format!("{:.3}", t.timestamp_millis() as f64 / 1000.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats).await.with_context(|| format!("connect to {}", args.nats))?;
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream(EVENTS_STREAM).await.context("open the EVENTS stream")?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}.*.job.*", arca_events::EVENT_SUBJECT_PREFIX),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("read the job events")?;
    let mut messages = consumer.messages().await.context("read the job events")?;
    let mut jobs: BTreeMap<(String, String), JobTimes> = BTreeMap::new();
    // No message within two seconds: there are no job events (or no more).
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
        let message = message.context("read the job events")?;
        let pending = message.info().map(|info| info.pending).unwrap_or(0);
        let envelope = Envelope::from_json(&message.payload).context("a job event that is not an envelope")?;
        let job = jobs.entry((envelope.tenant.to_string(), envelope.aggregate_id.to_string())).or_default();
        job.tenant = envelope.tenant.to_string();
        let payload = &envelope.payload;
        match envelope.event_type.as_str() {
            "JobRequested" => {
                job.requested = Some(envelope.time);
                job.kind = payload["kind"].as_str().unwrap_or("?").to_string();
                job.trigger = payload["trigger"]["type"].as_str().unwrap_or("?").to_string();
                job.trigger_at = payload["trigger"]["at"].as_str().and_then(|at| at.parse().ok());
            }
            "JobStarted" => {
                job.started.get_or_insert(envelope.time);
                job.attempt = payload["attempt"].as_u64().unwrap_or(0);
            }
            "JobSucceeded" | "JobFailed" | "JobCancelled" => {
                job.ended = Some(envelope.time);
                job.outcome = envelope.event_type.trim_start_matches("Job").to_lowercase();
                job.duration_ms = payload["duration_ms"].as_u64();
            }
            _ => {}
        }
        if pending == 0 {
            break;
        }
    }
    println!("tenant\tjob\tkind\ttrigger\ttrigger_at\trequested\tstarted\tended\toutcome\tattempt\tduration_ms");
    for ((_, id), job) in &jobs {
        println!(
            "{}\t{id}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            job.tenant,
            job.kind,
            job.trigger,
            seconds(job.trigger_at),
            seconds(job.requested),
            seconds(job.started),
            seconds(job.ended),
            if job.outcome.is_empty() { "-" } else { &job.outcome },
            job.attempt,
            job.duration_ms.map_or_else(|| "-".into(), |ms| ms.to_string()),
        );
    }
    Ok(())
}
