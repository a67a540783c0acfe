//! Control-plane benchmark: in one run on this machine, against a private nats-server,
//!
//! 1. raw async-nats JetStream publish rate (the limit),
//! 2. Arca appends with optimistic concurrency across N aggregates (as a share of 1),
//! 3. catalog projection rate (replaying the log) on SQLite and PostgreSQL,
//! 4. catalog lag while events arrive at a steady rate.
//!
//! Prints a Markdown table. Usage: `bench-control-plane [--events N] [--aggregates N] [--rate N] [--seconds N]`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arca_bus::{Bus, BusConfig, EventStore, Version};
use arca_catalog::service::{self, CatalogConfig};
use arca_events::*;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use bytes::Bytes;
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

#[derive(Parser)]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Aggregates the appends spread over.
    #[arg(long, default_value_t = 1_000)]
    aggregates: usize,
    /// Events per second for the lag measurement.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of steady load for the lag measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = arca_testkit::nats_server();
    let bus = Bus::connect(BusConfig::new(server.url.clone())).await?;
    let store = bus.event_store().await?;
    let tenant = TenantId::new();

    let raw = raw_publish_rate(&bus, args.events).await?;
    let (append, appended) = append_rate(&store, tenant, args.events, args.aggregates).await?;

    let sqlite_dir = tempfile_dir()?;
    let sqlite_url = format!("sqlite://{}/catalog.db?mode=rwc", sqlite_dir.display());
    let sqlite = projection_rate(&bus, &sqlite_url, appended).await?;
    let pg = arca_testkit::postgres_database();
    let postgres = projection_rate(&bus, &pg.url, appended).await?;

    let lag_url = format!("sqlite://{}/live.db?mode=rwc", sqlite_dir.display());
    let lag = catalog_lag(&bus, &store, tenant, &lag_url, args.rate, args.seconds).await?;

    println!("| measurement | result | target |");
    println!("|---|---:|---|");
    println!("| raw JetStream publish (async-nats, acked, pipelined) | {raw:.0} msg/s | the limit |");
    println!(
        "| Arca append, expected-sequence check, {} aggregates | {append:.0} events/s ({:.0} % of raw) | ≥ 50 % |",
        args.aggregates,
        100.0 * append / raw
    );
    println!("| catalog projection, SQLite | {sqlite:.0} events/s | ≥ 10,000 |");
    println!("| catalog projection, PostgreSQL | {postgres:.0} events/s | ≥ 5,000 |");
    println!(
        "| catalog lag at {} events/s for {} s (p50 / p99 / max) | {:.0} / {:.0} / {:.0} ms | < 1 s |",
        args.rate, args.seconds, lag.0, lag.1, lag.2
    );
    std::fs::remove_dir_all(&sqlite_dir).ok();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("arca-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A payload the size of a typical envelope.
fn sample_envelope(tenant: TenantId) -> Vec<u8> {
    let job = JobId::new();
    let event = Event::from(JobCheckpointed { bytes_done: 123_456_789, files_done: 4321, packs_uploaded: 17 });
    Envelope::new(AggregateRef::new(tenant, AggregateType::Job, job), 3, &event, Utc::now(), &Metadata::new_root())
        .to_json()
}

/// Publishes `count` messages to a scratch stream with up to 256 acks in flight.
async fn raw_publish_rate(bus: &Bus, count: usize) -> anyhow::Result<f64> {
    let js = bus.jetstream();
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(sample_envelope(TenantId::new()));
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for i in 0..count {
        let message = PublishMessage::build().payload(payload.clone()).message_id(format!("raw-{i}"));
        in_flight.push(js.send_publish(format!("bench.raw.{}", i % 1000), message).await?.into_future());
        if in_flight.len() >= 256 {
            in_flight.next().await.expect("in flight")?;
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("BENCH_RAW").await?;
    Ok(rate)
}

/// Job lifecycles spread over `aggregates` jobs, each job's events appended in order with
/// the expected-sequence check, all jobs concurrently. Returns events/s and the count.
async fn append_rate(
    store: &EventStore,
    tenant: TenantId,
    count: usize,
    aggregates: usize,
) -> anyhow::Result<(f64, usize)> {
    let per_job = count.div_ceil(aggregates).max(3);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..aggregates {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let job = JobId::new();
            let aggregate = AggregateRef::new(tenant, AggregateType::Job, job);
            let meta = Metadata::new_root();
            let mut version = Version::default();
            for i in 0..per_job {
                let event: Event = match i {
                    0 => JobRequested {
                        kind: JobKind::Backup,
                        trigger: Trigger::Manual,
                        policy: None,
                        source: Some(SourceId::new()),
                        target: Some(TargetId::new()),
                        snapshot: None,
                        mode: None,
                        site: None,
                    }
                    .into(),
                    1 => JobStarted { worker: "bench".into(), attempt: 1 }.into(),
                    i if i + 1 == per_job => {
                        JobSucceeded { snapshot: None, bytes_read: 1, bytes_added: 1, files: 1, duration_ms: 1 }.into()
                    }
                    i => {
                        JobCheckpointed { bytes_done: i as u64 * 1000, files_done: i as u64, packs_uploaded: i as u64 }
                            .into()
                    }
                };
                let stored = store.append(aggregate, version, &[event], &meta, Utc::now()).await?;
                let last = stored.last().expect("one event");
                version = Version { stream_sequence: last.stream_sequence, sequence: last.envelope.sequence };
            }
            anyhow::Ok(per_job)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Replays the whole log into a fresh catalog database.
async fn projection_rate(bus: &Bus, database_url: &str, expected: usize) -> anyhow::Result<f64> {
    let db = arca_catalog::db::connect(database_url).await.context("open the catalog database")?;
    let started = Instant::now();
    let events = service::rebuild(bus, db).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(events as usize >= expected, "replayed {events} of {expected} events");
    Ok(rate)
}

/// Runs a live catalog, appends at `rate` events/s for `seconds`, and samples how long
/// each event takes from its append being acknowledged to being projected.
async fn catalog_lag(
    bus: &Bus,
    store: &EventStore,
    tenant: TenantId,
    database_url: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let config =
        CatalogConfig { consumer: "bench-lag".into(), ..CatalogConfig::new(bus.config().url.clone(), database_url) };
    let (stats, _catalog) = service::spawn(config).await?;
    // Let it catch up with what is already in the log.
    let end = store.last_sequence().await?;
    while stats.last_applied.load(Ordering::Relaxed) < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One sampler: every millisecond, everything the catalog has applied since the last
    // look is done; its lag is the time since its append was acknowledged.
    let pending = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<(u64, Instant)>::new()));
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let total = rate * seconds;
    let sampler = {
        let (stats, pending, samples) = (stats.clone(), pending.clone(), samples.clone());
        tokio::spawn(async move {
            loop {
                let done = {
                    let applied = stats.last_applied.load(Ordering::Relaxed);
                    let now = Instant::now();
                    let mut pending = pending.lock().expect("pending");
                    let mut samples = samples.lock().expect("samples");
                    while pending.front().is_some_and(|(sequence, _)| *sequence <= applied) {
                        let (_, acked) = pending.pop_front().expect("front");
                        samples.push(now.duration_since(acked).as_secs_f64() * 1000.0);
                    }
                    samples.len() as u64 >= total
                };
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let meta = Metadata::new_root();
    for i in 0..total {
        ticker.tick().await;
        let tenant_ref = AggregateRef::new(tenant, AggregateType::Snapshot, SnapshotId::new());
        let event = Event::from(SnapshotCommitted {
            target: TargetId::new(),
            repo_snapshot: format!("{i:064x}"),
            time: Utc::now(),
            host: "bench".into(),
            paths: vec!["/data".into()],
            tags: vec![],
            source: None,
            policy: None,
            job: None,
            files: i,
            size_bytes: i,
            added_bytes: 0,
            partial: false,
        });
        let stored = store.append(tenant_ref, Version::default(), &[event], &meta, Utc::now()).await?;
        pending.lock().expect("pending").push_back((stored[0].stream_sequence, Instant::now()));
    }
    sampler.await?;
    let mut samples = samples.lock().expect("samples").clone();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99), *samples.last().expect("samples")))
}
