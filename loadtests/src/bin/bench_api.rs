//! API gateway benchmark: in one run on this machine, a plain actix-web "hello" handler (the
//! limit) against the gateway's `GET /v1/snapshots` on a tenant with 10,000 snapshots and
//! against `POST /v1/policies/{id}/run` (run now).
//!
//! The process starts a private nats-server, the catalog (SQLite in a temp dir, then
//! PostgreSQL), the gateway on a free port with a bootstrap MSP admin key, and the hello
//! server. It creates a tenant, target, source and policy through the API, appends the
//! snapshots' `SnapshotCommitted` events to the event store, waits until the catalog has
//! projected them and pages through all of them over HTTP. Then, repeated and interleaved:
//!
//! - closed loop (N keep-alive connections, each sends its next request when the last is
//!   answered) for the maximum rate: hello, the same actix server answering a stored copy of
//!   the first snapshot page (the bound for a body that size), the gateway's `/healthz` (its
//!   HTTP stack without NATS), the first snapshot page and a page deep in the cursor chain,
//!   the first page through two more gateways — one without its page cache (every list asks
//!   the catalog), one without page or key cache (every request also looks its key up) —
//!   and run-now;
//! - open loop (requests start on a fixed schedule, whatever the answers do; latency counts
//!   from the scheduled start, so a stall is not hidden) for p50/p99 at a given rate: the
//!   first snapshot page at 500/s, run-now at 50/s;
//! - to show where the time goes: the catalog queries a snapshot request makes
//!   (`api_keys.by_hash`, `snapshots.list`) sent straight over NATS, and NATS request/reply
//!   alone (a responder answering at once with the page's bytes).
//!
//! The PostgreSQL pass stops the SQLite catalog, starts one on PostgreSQL that replays the
//! log, and repeats the snapshot-list measurements.
//!
//! The load generator is a minimal HTTP/1.1 client on its own Tokio runtime (one thread by
//! default), so it costs little of the CPU the servers need: the generator, the gateway, the
//! catalog, SQLite/PostgreSQL and nats-server all share the machine's cores. Prints Markdown
//! tables (one column per run, the median, the target) and where the CPU went.
//!
//! Usage: `bench-api [--snapshots N] [--seconds S] [--connections C] [--rate R] [--repeat K]
//! [--database sqlite|postgres|both]` (`--help` lists all).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use arca_api_gateway::{Application, GatewayConfig};
use arca_bus::{Bus, BusConfig, EventStore, Version};
use arca_catalog::service::{Catalog, CatalogConfig, Stats};
use arca_events::{
    AggregateRef, AggregateType, Event, Metadata, PolicyId, SnapshotCommitted, SnapshotId, SourceId, TargetId, TenantId,
};
use bytes::{Buf, Bytes, BytesMut};
use chrono::Utc;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The MSP admin key the gateway registers at start.
const BOOTSTRAP_KEY: &str = "arca_bench_api_bootstrap_key_0123456789";

#[derive(Parser)]
#[command(about = "The API gateway against a plain actix-web handler (prints Markdown tables)")]
struct Args {
    /// Snapshots of the tenant.
    #[arg(long, default_value_t = 10_000)]
    snapshots: usize,
    /// Seconds of each closed-loop and open-loop snapshot measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections of the closed-loop measurements.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests per second of the open-loop snapshot measurement.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Requests per second of the open-loop run-now measurement.
    #[arg(long, default_value_t = 50)]
    run_rate: u64,
    /// Seconds of each run-now measurement.
    #[arg(long, default_value_t = 5)]
    run_seconds: u64,
    /// Runs of everything, interleaved; tables show each and the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Catalog database(s) to measure the snapshot list on.
    #[arg(long, value_enum, default_value_t = Databases::Both)]
    database: Databases,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Databases {
    Sqlite,
    Postgres,
    Both,
}

/// Snapshot-list targets of the issue.
const MIN_SHARE_OF_HELLO: f64 = 30.0;
const MAX_P99_MS: f64 = 50.0;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.repeat > 0 && args.seconds > 0 && args.rate > 0 && args.run_rate > 0, "counts must be > 0");
    // Servers (catalog, the gateway's NATS client; actix runs its own worker threads) on one
    // runtime, the load generator on another, so neither queues behind the other's tasks.
    let servers = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("load-client")
        .enable_all()
        .build()?;
    let result = servers.block_on(run(&args, client.handle().clone()));
    client.shutdown_background();
    servers.shutdown_background();
    result
}

async fn run(args: &Args, client: tokio::runtime::Handle) -> anyhow::Result<()> {
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let _telemetry = arca_telemetry::init("arca-bench-api", "info,sqlx=warn,async_nats=warn")?;
    let started = Utc::now();
    let load_at_start = load_average();
    let nats = arca_testkit::nats_server();
    let dir = tempfile::Builder::new().prefix("arca-bench-api-").tempdir()?;
    let sqlite_url = format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display());
    let postgres = matches!(args.database, Databases::Postgres | Databases::Both).then(arca_testkit::postgres_database);

    let first_url = if args.database == Databases::Postgres {
        postgres.as_ref().expect("postgres").url.clone()
    } else {
        sqlite_url.clone()
    };
    let mut catalog = RunningCatalog::start(&nats.url, &first_url).await?;
    let mut config = GatewayConfig::new(&nats.url, "127.0.0.1:0".parse()?);
    config.bootstrap_key = Some(BOOTSTRAP_KEY.into());
    let gateway = start_gateway(config.clone()).await?;
    // The same gateway with its page cache off (every list asks the catalog), and with both
    // caches off (every request also looks its key up): what a page costs that is not hot.
    let no_page_cache = start_gateway(GatewayConfig { page_cache_ttl: Duration::ZERO, ..config.clone() }).await?;
    let no_cache =
        start_gateway(GatewayConfig { page_cache_ttl: Duration::ZERO, key_cache_ttl: Duration::ZERO, ..config })
            .await?;
    let stored_page = Arc::new(std::sync::OnceLock::new());
    let hello = start_hello(stored_page.clone())?;

    let setup = Setup::create(gateway).await?;
    let bus = Bus::connect(BusConfig::new(&nats.url)).await?;
    let store = bus.event_store().await?;
    let seeding = Instant::now();
    seed_snapshots(&store, &setup, args.snapshots).await?;
    let seeded_in = seeding.elapsed();
    let caught_up_in = catalog.wait_caught_up(&store).await?;
    let deep_cursor = setup.page_through(args.snapshots).await?;
    eprintln!(
        "seeded {} snapshots in {:.1} s, the catalog applied them {:.1} s later",
        args.snapshots,
        seeded_in.as_secs_f64(),
        caught_up_in.as_secs_f64()
    );

    let requests = Requests::new(&setup, &deep_cursor, hello.port());
    let first_page = Connection::open(gateway).await?.call(&requests.first_page).await?;
    anyhow::ensure!(first_page.status == 200, "the first page: status {}", first_page.status);
    eprintln!("the gateway's first page of 50 is {} bytes", first_page.body.len());
    let _ = stored_page.set(first_page.body);
    let nats_client = {
        let url = nats.url.clone();
        client.spawn(async move { Bus::connect(BusConfig::new(url)).await }).await??
    };
    // The transport alone: a responder that answers every request at once with the bytes the
    // catalog answers for the first page.
    let page: Bytes = nats_client
        .client()
        .request("arca.q.catalog.snapshots.list", Bytes::from(requests.list_query.to_string()))
        .await?
        .payload;
    eprintln!("the catalog's answer for a page of 50 is {} bytes", page.len());
    start_echo(&bus, page).await?;
    let measure = Measure { client, args, gateway, no_page_cache, no_cache, hello };
    let first_db = if args.database == Databases::Postgres { "PostgreSQL" } else { "SQLite" };
    let mut table = Table::default();
    let mut cpu = Vec::new();
    for run in 0..args.repeat {
        eprintln!("run {} of {} ({first_db}), load average {}", run + 1, args.repeat, load_average());
        let limit = measure.closed(Target::Hello, requests.hello.clone(), args.seconds).await?;
        table.rate("hello: plain actix-web handler, closed loop", &limit, "the limit");
        let stored = measure.closed(Target::Hello, requests.stored_page.clone(), args.seconds).await?;
        table.share(
            "plain actix-web handler answering a stored first page (same bytes), closed loop",
            &stored,
            &limit,
            false,
        );
        let health = measure.closed(Target::Gateway, requests.healthz.clone(), args.seconds).await?;
        table.rate("gateway `GET /healthz` (HTTP stack, no NATS), closed loop", &health, "");
        let (first, first_cpu) =
            measure.closed_with_cpu(Target::Gateway, requests.first_page.clone(), args.seconds).await?;
        cpu.push(first_cpu);
        table.snapshot_rate(&format!("`GET /v1/snapshots` first page of 50, {first_db}, closed loop"), &first, &limit);
        let deep = measure.closed(Target::Gateway, requests.deep_page.clone(), args.seconds).await?;
        table.snapshot_rate(&format!("`GET /v1/snapshots` page 101 (cursor), {first_db}, closed loop"), &deep, &limit);
        let keys_only = measure.closed(Target::GatewayNoPageCache, requests.first_page.clone(), args.seconds).await?;
        table.snapshot_rate(
            &format!("`GET /v1/snapshots` first page, {first_db}, gateway without its page cache, closed loop"),
            &keys_only,
            &limit,
        );
        let uncached = measure.closed(Target::GatewayNoCache, requests.first_page.clone(), args.seconds).await?;
        table.snapshot_rate(
            &format!("`GET /v1/snapshots` first page, {first_db}, gateway without page or key cache, closed loop"),
            &uncached,
            &limit,
        );
        let open = measure.open(requests.first_page.clone(), args.rate, args.seconds).await?;
        table.latency(
            &format!("`GET /v1/snapshots` first page at {}/s, {first_db}, open loop", args.rate),
            &open,
            true,
        );
        let key = measure.nats(&nats_client, "api_keys.by_hash", requests.key_query.clone()).await?;
        table.rate("breakdown: `api_keys.by_hash` straight over NATS, closed loop", &key, "");
        let list = measure.nats(&nats_client, "snapshots.list", requests.list_query.clone()).await?;
        table.rate(&format!("breakdown: `snapshots.list` straight over NATS, {first_db}, closed loop"), &list, "");
        let echo = measure.nats(&nats_client, ECHO, Value::Null).await?;
        table.rate("breakdown: NATS request/reply alone (a responder answers with a page's bytes)", &echo, "");
        let run_now = measure.open(requests.run_now.clone(), args.run_rate, args.run_seconds).await?;
        table.latency(&format!("`POST /v1/policies/{{id}}/run` at {}/s, open loop", args.run_rate), &run_now, false);
        let run_max = measure.closed(Target::Gateway, requests.run_now.clone(), args.run_seconds).await?;
        table.rate("`POST /v1/policies/{id}/run`, closed loop", &run_max, "");
    }

    if args.database == Databases::Both {
        let postgres = postgres.as_ref().expect("postgres");
        catalog.stop().await;
        catalog = RunningCatalog::start(&nats.url, &postgres.url).await?;
        let caught_up_in = catalog.wait_caught_up(&store).await?;
        eprintln!("the PostgreSQL catalog replayed the log in {:.1} s", caught_up_in.as_secs_f64());
        setup.page_through(args.snapshots).await?;
        for run in 0..args.repeat {
            eprintln!("run {} of {} (PostgreSQL), load average {}", run + 1, args.repeat, load_average());
            let limit = measure.closed(Target::Hello, requests.hello.clone(), args.seconds).await?;
            table.rate("hello again (beside the PostgreSQL runs), closed loop", &limit, "the limit");
            let first = measure.closed(Target::Gateway, requests.first_page.clone(), args.seconds).await?;
            table.snapshot_rate("`GET /v1/snapshots` first page of 50, PostgreSQL, closed loop", &first, &limit);
            let keys_only =
                measure.closed(Target::GatewayNoPageCache, requests.first_page.clone(), args.seconds).await?;
            table.snapshot_rate(
                "`GET /v1/snapshots` first page, PostgreSQL, gateway without its page cache, closed loop",
                &keys_only,
                &limit,
            );
            let open = measure.open(requests.first_page.clone(), args.rate, args.seconds).await?;
            table.latency(
                &format!("`GET /v1/snapshots` first page at {}/s, PostgreSQL, open loop", args.rate),
                &open,
                true,
            );
            let list = measure.nats(&nats_client, "snapshots.list", requests.list_query.clone()).await?;
            table.rate("breakdown: `snapshots.list` straight over NATS, PostgreSQL, closed loop", &list, "");
        }
    }
    catalog.stop().await;

    println!(
        "API gateway benchmark, {} UTC: {} snapshots in one tenant, {} keep-alive connections per closed loop \
         (open loops: up to {OPEN_LOOP_CONNECTIONS}), {} s per measurement (run-now {} s), {} run(s) interleaved, \
         load generator on {} thread(s). \
         Everything shares this machine's {} cores: nats-server, the catalog and its database, the gateway, \
         the hello server and the load generator. Load average at start: {}.",
        started.format("%Y-%m-%d %H:%M"),
        args.snapshots,
        args.connections,
        args.seconds,
        args.run_seconds,
        args.repeat,
        args.client_threads.max(1),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_at_start,
    );
    println!();
    table.print(args.repeat);
    println!();
    print_cpu(&cpu);
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// ---- The servers ----

/// A gateway in this process on a free port.
async fn start_gateway(config: GatewayConfig) -> anyhow::Result<SocketAddr> {
    let app = Application::build(config).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], app.port()));
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Ok(addr)
}

/// A plain actix-web server answering `GET /` with `hello` and `GET /page` with `page` (once set),
/// with actix's default workers (like the gateway).
fn start_hello(page: Arc<std::sync::OnceLock<Bytes>>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        let page = page.clone();
        App::new().route("/", web::get().to(|| async { "hello" })).route(
            "/page",
            web::get().to(move || {
                let body = page.get().cloned().unwrap_or_default();
                async move { HttpResponse::Ok().content_type("application/json").body(body) }
            }),
        )
    })
    .listen(listener)?
    .disable_signals()
    .run();
    tokio::spawn(server);
    Ok(addr)
}

/// The subject of the NATS echo responder.
const ECHO: &str = "bench.echo";

/// Answers every request on [`ECHO`] with `answer`, in one task.
async fn start_echo(bus: &Bus, answer: Bytes) -> anyhow::Result<()> {
    let mut requests = bus.client().subscribe(ECHO).await?;
    let client = bus.client().clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, answer.clone()).await;
            }
        }
    });
    Ok(())
}

/// A catalog running in this process, stoppable to start another on a different database.
struct RunningCatalog {
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), arca_catalog::CatalogError>>,
}

impl RunningCatalog {
    async fn start(nats_url: &str, database_url: &str) -> anyhow::Result<RunningCatalog> {
        let catalog = Catalog::build(CatalogConfig::new(nats_url, database_url)).await.context("build the catalog")?;
        let stats = catalog.stats.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(catalog.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(RunningCatalog { stats, stop: Some(stop), task })
    }

    /// Waits until everything in the log is applied; returns how long that took.
    async fn wait_caught_up(&self, store: &EventStore) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let end = store.last_sequence().await?;
        while self.stats.last_applied.load(Ordering::Relaxed) < end {
            anyhow::ensure!(!self.task.is_finished(), "the catalog stopped");
            anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "the catalog did not catch up in 10 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = (&mut self.task).await;
        }
    }
}

// ---- Setup through the API ----

/// The tenant and what its snapshots belong to, created through the API.
struct Setup {
    gateway: SocketAddr,
    tenant: TenantId,
    target: TargetId,
    source: SourceId,
    policy: PolicyId,
}

impl Setup {
    async fn create(gateway: SocketAddr) -> anyhow::Result<Setup> {
        let mut http = Connection::open(gateway).await?;
        // The bootstrap key works once the catalog has projected it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.json("GET", "/v1/tenants", None).await?.0 != 200 {
            anyhow::ensure!(Instant::now() < deadline, "the bootstrap key never worked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tenant: TenantId = http.create("/v1/tenants", json!({ "name": "bench" })).await?;
        let t = format!("?tenant={tenant}");
        let target: TargetId = http
            .create(&format!("/v1/targets{t}"), json!({ "name": "primary", "location": "fs:///srv/backup/bench" }))
            .await?;
        let source: SourceId =
            http.create(&format!("/v1/sources{t}"), json!({ "name": "docs", "paths": ["/home", "/etc"] })).await?;
        let policy: PolicyId = http
            .create(
                &format!("/v1/policies{t}"),
                json!({
                    "name": "nightly", "source": source, "target": target,
                    "schedule": { "type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin" },
                    "retention": { "keep_daily": 7 }
                }),
            )
            .await?;
        Ok(Setup { gateway, tenant, target, source, policy })
    }

    /// Pages through every snapshot 50 at a time, checks the count, and returns the cursor
    /// of page 101 (or of the last page, for fewer snapshots).
    async fn page_through(&self, expected: usize) -> anyhow::Result<String> {
        let mut http = Connection::open(self.gateway).await?;
        let (mut seen, mut pages, mut cursor, mut deep) = (0, 0, None::<String>, None);
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/snapshots?tenant={}&limit=50&cursor={c}", self.tenant),
                None => format!("/v1/snapshots?tenant={}&limit=50", self.tenant),
            };
            let (status, page) = http.json("GET", &path, None).await?;
            anyhow::ensure!(status == 200, "GET {path}: {status} {page}");
            seen += page["items"].as_array().map_or(0, Vec::len);
            pages += 1;
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_some() && (pages == 100 || deep.is_none()) {
                deep = cursor.clone();
            }
            if cursor.is_none() {
                break;
            }
        }
        anyhow::ensure!(seen == expected, "the API lists {seen} snapshots, not {expected}");
        deep.context("no page has a next cursor: too few snapshots")
    }
}

/// Appends one `SnapshotCommitted` per snapshot, 256 appends in flight, one a day back in time.
async fn seed_snapshots(store: &EventStore, setup: &Setup, count: usize) -> anyhow::Result<()> {
    let meta = Metadata::new_root();
    let now = Utc::now();
    let mut appends = futures::stream::iter(0..count)
        .map(|i| {
            let event = Event::from(SnapshotCommitted {
                target: setup.target,
                repo_snapshot: format!("{i:064x}"),
                time: now - chrono::Duration::hours(i as i64),
                host: "bench-host".into(),
                paths: vec!["/home".into(), "/etc".into()],
                tags: vec!["nightly".into()],
                source: Some(setup.source),
                policy: Some(setup.policy),
                job: None,
                files: 68_000 + i as u64,
                size_bytes: 2_100_000_000 + i as u64,
                added_bytes: 12_000_000,
                partial: false,
            });
            let aggregate = AggregateRef::new(setup.tenant, AggregateType::Snapshot, SnapshotId::new());
            let meta = &meta;
            async move { store.append(aggregate, Version::default(), &[event], meta, Utc::now()).await }
        })
        .buffer_unordered(256);
    while let Some(appended) = appends.next().await {
        appended?;
    }
    Ok(())
}

/// The requests of the measurements, as bytes on the wire.
struct Requests {
    hello: Bytes,
    stored_page: Bytes,
    healthz: Bytes,
    first_page: Bytes,
    deep_page: Bytes,
    run_now: Bytes,
    key_query: Value,
    list_query: Value,
}

impl Requests {
    fn new(setup: &Setup, deep_cursor: &str, hello_port: u16) -> Requests {
        let tenant = setup.tenant;
        let gateway_port = setup.gateway.port();
        let get = |path: &str, port| http_request("GET", path, port, Some(BOOTSTRAP_KEY), None);
        Requests {
            hello: get("/", hello_port),
            stored_page: get("/page", hello_port),
            healthz: get("/healthz", gateway_port),
            first_page: get(&format!("/v1/snapshots?tenant={tenant}&limit=50"), gateway_port),
            deep_page: get(&format!("/v1/snapshots?tenant={tenant}&limit=50&cursor={deep_cursor}"), gateway_port),
            run_now: http_request(
                "POST",
                &format!("/v1/policies/{}/run?tenant={tenant}", setup.policy),
                gateway_port,
                Some(BOOTSTRAP_KEY),
                None,
            ),
            key_query: json!({ "hash": arca_api_gateway::auth::hash_key(BOOTSTRAP_KEY) }),
            list_query: json!({ "tenant": tenant, "limit": 50, "cursor": null }),
        }
    }
}

// ---- A minimal HTTP/1.1 client ----

/// One request as bytes: what a keep-alive client writes for it.
fn http_request(method: &str, path: &str, port: u16, key: Option<&str>, body: Option<&Value>) -> Bytes {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    if let Some(key) = key {
        text.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        text.push_str("content-type: application/json\r\n");
    }
    if !body.is_empty() || method != "GET" {
        text.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(&body);
    Bytes::from(text)
}

struct Response {
    status: u16,
    body: Bytes,
    /// The server closes the connection after this response.
    close: bool,
}

/// A keep-alive HTTP/1.1 connection: one request at a time, the answer read whole
/// (`content-length` or chunked).
struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
    port: u16,
}

impl Connection {
    async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: BytesMut::with_capacity(64 * 1024), port: addr.port() })
    }

    async fn call(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    /// A JSON request for the setup: status and parsed body.
    async fn json(&mut self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let request = http_request(method, path, self.port, Some(BOOTSTRAP_KEY), body.as_ref());
        let response = self.call(&request).await.with_context(|| format!("{method} {path}"))?;
        let value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&response.body).into_owned()));
        Ok((response.status, value))
    }

    /// POSTs and expects 201 with `{"id": …}`.
    async fn create<Id: std::str::FromStr>(&mut self, path: &str, body: Value) -> anyhow::Result<Id> {
        let (status, answer) = self.json("POST", path, Some(body)).await?;
        anyhow::ensure!(status == 201, "POST {path}: {status} {answer}");
        answer["id"].as_str().and_then(|id| id.parse().ok()).with_context(|| format!("POST {path}: no id in {answer}"))
    }

    async fn fill(&mut self) -> io::Result<()> {
        // Without spare room, `read_buf` would grow the buffer 64 bytes at a time.
        if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
            self.buffer.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(())
    }

    /// The position of `needle` in the buffer, reading more until it is there.
    async fn find(&mut self, needle: &[u8]) -> io::Result<usize> {
        loop {
            if let Some(at) = self.buffer.windows(needle.len()).position(|w| w == needle) {
                return Ok(at);
            }
            self.fill().await?;
        }
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = self.find(b"\r\n\r\n").await?;
        let head = std::str::from_utf8(&self.buffer[..head_end]).map_err(|_| malformed("a head that is not UTF-8"))?;
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| malformed("no status"))?;
        let (mut length, mut chunked, mut close) = (0, false, false);
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| malformed("content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        self.buffer.advance(head_end + 4);
        let body = if chunked {
            self.read_chunked().await?
        } else {
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.split_to(length).freeze()
        };
        Ok(Response { status, body, close })
    }

    async fn read_chunked(&mut self) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let line_end = self.find(b"\r\n").await?;
            let line = std::str::from_utf8(&self.buffer[..line_end]).map_err(|_| malformed("chunk size"))?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| malformed("chunk size"))?;
            self.buffer.advance(line_end + 2);
            if size == 0 {
                // Trailer lines, if any, end with an empty line.
                loop {
                    let end = self.find(b"\r\n").await?;
                    self.buffer.advance(end + 2);
                    if end == 0 {
                        return Ok(body.freeze());
                    }
                }
            }
            while self.buffer.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buffer[..size]);
            self.buffer.advance(size + 2);
        }
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed HTTP response: {what}"))
}

// ---- Measurements ----

/// What one measurement saw.
#[derive(Default)]
struct Measured {
    /// Answers with a 2xx status inside the window.
    ok: u64,
    /// Answers with another status, and failed connections.
    errors: u64,
    /// Answers with a 5xx status (counted in `errors` too).
    server_errors: u64,
    first_error: Option<String>,
    /// Of every answer inside the window, microseconds.
    latencies_us: Vec<u32>,
    seconds: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// The `q` quantile of the latencies in milliseconds.
    fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((self.latencies_us.len() as f64 * q).ceil() as usize).clamp(1, self.latencies_us.len());
        f64::from(self.latencies_us[rank - 1]) / 1000.0
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        self.latencies_us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        if outcome.error.is_none() {
            self.ok += 1;
            return;
        }
        self.errors += 1;
        if outcome.status.is_some_and(|status| status >= 500) {
            self.server_errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = outcome.error;
        }
    }

    fn merge(&mut self, other: Measured) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.server_errors += other.server_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

#[derive(Clone, Copy)]
enum Target {
    Hello,
    Gateway,
    /// The gateway with its page cache off.
    GatewayNoPageCache,
    /// The gateway with its page and key caches off.
    GatewayNoCache,
}

/// Runs measurements on the load generator's runtime.
struct Measure<'a> {
    client: tokio::runtime::Handle,
    args: &'a Args,
    gateway: SocketAddr,
    no_page_cache: SocketAddr,
    no_cache: SocketAddr,
    hello: SocketAddr,
}

const WARM_UP: Duration = Duration::from_secs(1);

impl Measure<'_> {
    fn addr(&self, target: Target) -> SocketAddr {
        match target {
            Target::Hello => self.hello,
            Target::Gateway => self.gateway,
            Target::GatewayNoPageCache => self.no_page_cache,
            Target::GatewayNoCache => self.no_cache,
        }
    }

    /// Closed loop: `connections` keep-alive connections each send their next request when the
    /// last is answered; a second of warm-up, then `seconds` counted.
    async fn closed(&self, target: Target, request: Bytes, seconds: u64) -> anyhow::Result<Measured> {
        let (addr, connections) = (self.addr(target), self.args.connections);
        let measured = self.client.spawn(closed_loop(addr, request, connections, Duration::from_secs(seconds)));
        let measured = measured.await??;
        report_errors(&measured);
        Ok(measured)
    }

    /// [`Measure::closed`], and the CPU each thread group used meanwhile.
    async fn closed_with_cpu(
        &self,
        target: Target,
        request: Bytes,
        seconds: u64,
    ) -> anyhow::Result<(Measured, CpuUse)> {
        let (addr, connections) = (self.addr(target), self.args.connections);
        let measured = self.client.spawn(async move {
            // The window opens after the warm-up: sample the CPU over the same window.
            let sampler = tokio::spawn(async move {
                tokio::time::sleep(WARM_UP).await;
                let before = CpuSample::now();
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                CpuSample::now().since(&before)
            });
            let measured = closed_loop(addr, request, connections, Duration::from_secs(seconds)).await?;
            anyhow::Ok((measured, sampler.await?))
        });
        let (measured, mut cpu) = measured.await??;
        cpu.requests = measured.ok;
        report_errors(&measured);
        Ok((measured, cpu))
    }

    /// Open loop: request `i` starts at `i / rate` seconds whatever the answers do; latency
    /// counts from that scheduled start.
    async fn open(&self, request: Bytes, rate: u64, seconds: u64) -> anyhow::Result<Measured> {
        let measured = self.client.spawn(open_loop(self.gateway, request, rate, Duration::from_secs(seconds)));
        let measured = measured.await??;
        report_errors(&measured);
        Ok(measured)
    }

    /// Closed loop of catalog queries straight over NATS (what the gateway sends for one request).
    async fn nats(&self, bus: &Bus, query: &str, body: Value) -> anyhow::Result<Measured> {
        let subject = if query == ECHO { ECHO.to_owned() } else { format!("arca.q.catalog.{query}") };
        let (bus, body) = (bus.clone(), Bytes::from(body.to_string()));
        let (connections, seconds) = (self.args.connections, self.args.seconds);
        let measured = self.client.spawn(async move {
            let start = Instant::now() + WARM_UP;
            let end = start + Duration::from_secs(seconds);
            let mut workers = JoinSet::new();
            for _ in 0..connections {
                let (bus, subject, body) = (bus.clone(), subject.clone(), body.clone());
                workers.spawn(async move {
                    let mut measured = Measured::default();
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            return measured;
                        }
                        // The answer is not parsed: this measures the catalog and the transport,
                        // not the caller.
                        let answer = bus.client().request(subject.clone(), body.clone()).await;
                        let done = Instant::now();
                        if sent >= start && done <= end {
                            let outcome = match answer {
                                Ok(answer) if answer.payload.starts_with(br#"{"ok""#) => {
                                    Outcome { status: None, error: None, reconnect: false }
                                }
                                Ok(answer) => Outcome::failed(String::from_utf8_lossy(&answer.payload)),
                                Err(e) => Outcome::failed(e),
                            };
                            measured.record(done - sent, outcome);
                        }
                    }
                });
            }
            let mut total = Measured { seconds: seconds as f64, ..Measured::default() };
            while let Some(worker) = workers.join_next().await {
                total.merge(worker?);
            }
            anyhow::Ok(total)
        });
        let measured = measured.await??;
        report_errors(&measured);
        Ok(measured)
    }
}

fn report_errors(measured: &Measured) {
    if let Some(error) = &measured.first_error {
        eprintln!("  {} errors ({} 5xx), the first: {error}", measured.errors, measured.server_errors);
    }
}

async fn closed_loop(
    addr: SocketAddr,
    request: Bytes,
    connections: usize,
    window: Duration,
) -> anyhow::Result<Measured> {
    let start = Instant::now() + WARM_UP;
    let end = start + window;
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        let request = request.clone();
        workers.spawn(async move {
            let mut measured = Measured::default();
            let mut connection = None;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return measured;
                }
                let outcome = match &mut connection {
                    Some(c) => call(c, &request).await,
                    None => match Connection::open(addr).await {
                        Ok(c) => call(connection.insert(c), &request).await,
                        Err(e) => Outcome::failed(e),
                    },
                };
                let done = Instant::now();
                if outcome.reconnect {
                    connection = None;
                }
                if sent >= start && done <= end {
                    measured.record(done - sent, outcome);
                }
            }
        });
    }
    let mut total = Measured { seconds: window.as_secs_f64(), ..Measured::default() };
    while let Some(worker) = workers.join_next().await {
        total.merge(worker?);
    }
    Ok(total)
}

/// What one request got: its status (none when the connection failed), what went wrong, and
/// whether the connection is done for.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    reconnect: bool,
}

impl Outcome {
    fn failed(error: impl ToString) -> Outcome {
        Outcome { status: None, error: Some(error.to_string()), reconnect: true }
    }
}

async fn call(connection: &mut Connection, request: &[u8]) -> Outcome {
    match connection.call(request).await {
        Ok(response) => {
            let error = (!(200..300).contains(&response.status))
                .then(|| format!("status {}: {}", response.status, String::from_utf8_lossy(&response.body)));
            Outcome { status: Some(response.status), error, reconnect: response.close }
        }
        Err(e) => Outcome::failed(e),
    }
}

/// The most connections an open loop opens; further requests wait for one (and the wait counts).
const OPEN_LOOP_CONNECTIONS: usize = 256;

async fn open_loop(addr: SocketAddr, request: Bytes, rate: u64, window: Duration) -> anyhow::Result<Measured> {
    // Idle keep-alive connections, used in turn (oldest first, so none sits idle long enough
    // for the server to close it: actix answers 408 to a connection that sends nothing for
    // 5 s); a request finding none opens a new one (and pays for it).
    let idle = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_CONNECTIONS));
    for _ in 0..16 {
        let connection = Connection::open(addr).await?;
        idle.lock().expect("idle").push_back(connection);
    }
    let total = (rate as f64 * window.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut requests = JoinSet::new();
    for i in 0..total {
        let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let (idle, request, in_flight) = (idle.clone(), request.clone(), in_flight.clone());
        requests.spawn(async move {
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return (scheduled.elapsed(), Outcome::failed("the connection limit closed"));
            };
            let reused = idle.lock().expect("idle").pop_front();
            let mut connection = match reused {
                Some(c) => c,
                None => match Connection::open(addr).await {
                    Ok(c) => c,
                    Err(e) => return (scheduled.elapsed(), Outcome::failed(e)),
                },
            };
            let outcome = call(&mut connection, &request).await;
            let latency = scheduled.elapsed();
            if !outcome.reconnect {
                idle.lock().expect("idle").push_back(connection);
            }
            (latency, outcome)
        });
    }
    let mut measured = Measured::default();
    while let Some(finished) = requests.join_next().await {
        let (latency, outcome) = finished?;
        measured.record(latency, outcome);
    }
    measured.seconds = start.elapsed().as_secs_f64();
    Ok(measured)
}

// ---- Where the CPU goes ----

/// CPU ticks of the machine and of this process's threads, grouped by thread name.
struct CpuSample {
    machine_busy: u64,
    machine_total: u64,
    threads: std::collections::BTreeMap<String, u64>,
    at: Instant,
}

/// CPU used over a window, in clock ticks (1/100 s on Linux).
struct CpuUse {
    machine_busy: u64,
    threads: std::collections::BTreeMap<String, u64>,
    seconds: f64,
    cores: f64,
    requests: u64,
}

impl CpuSample {
    fn now() -> CpuSample {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal …
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let machine_total: u64 = fields.iter().take(8).sum();
        let mut threads = std::collections::BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let name = thread_group(&stat[open + 1..close]);
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // After the name: state (field 3) … utime (14) and stime (15).
            let ticks = rest.get(11).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
                + rest.get(12).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            *threads.entry(name).or_insert(0) += ticks;
        }
        CpuSample { machine_busy: machine_total - idle, machine_total, threads, at: Instant::now() }
    }

    fn since(&self, before: &CpuSample) -> CpuUse {
        let threads = self
            .threads
            .iter()
            .map(|(name, ticks)| (name.clone(), ticks.saturating_sub(before.threads.get(name).copied().unwrap_or(0))))
            .collect();
        let seconds = self.at.duration_since(before.at).as_secs_f64();
        let total = self.machine_total.saturating_sub(before.machine_total) as f64;
        CpuUse {
            machine_busy: self.machine_busy.saturating_sub(before.machine_busy),
            threads,
            seconds,
            // Ticks of all cores over the window: cores = total ticks / (100 × seconds).
            cores: total / (100.0 * seconds),
            requests: 0,
        }
    }
}

/// Threads named alike (`tokio-runtime-w`, `sqlx-sqlite-wor…`, `actix-rt|system:0|arbiter:3`) in
/// one group.
fn thread_group(name: &str) -> String {
    let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ':' || c == '|');
    let name = name.split('|').next().unwrap_or(name);
    match name {
        "load-client" => "load generator".into(),
        "tokio-runtime-w" | "tokio-rt-worker" => "server runtime (catalog, NATS clients)".into(),
        n if n.starts_with("actix") => "actix workers (gateway, hello)".into(),
        n if n.starts_with("sqlx-sqlite") => "SQLite workers".into(),
        n => n.to_owned(),
    }
}

fn print_cpu(samples: &[CpuUse]) {
    if samples.is_empty() {
        return;
    }
    // The run with the median request count.
    let mut order: Vec<&CpuUse> = samples.iter().collect();
    order.sort_by_key(|s| s.requests);
    let cpu = order[order.len() / 2];
    let ticks_to_cores = |ticks: u64| ticks as f64 / 100.0 / cpu.seconds;
    let own: u64 = cpu.threads.values().sum();
    let per_request_us = |ticks: u64| ticks as f64 * 10_000.0 / cpu.requests.max(1) as f64;
    println!(
        "Where the CPU went during the first-page closed loop (the run with the median rate: {} requests \
         in {:.1} s, {:.0} cores; from /proc, 10 ms ticks):",
        cpu.requests, cpu.seconds, cpu.cores
    );
    println!();
    println!("| thread group | cores | CPU µs per request |");
    println!("|---|---:|---:|");
    let mut groups: Vec<(&String, &u64)> = cpu.threads.iter().filter(|(_, t)| **t > 0).collect();
    groups.sort_by(|a, b| b.1.cmp(a.1));
    for (name, ticks) in groups {
        println!("| {name} | {:.2} | {:.0} |", ticks_to_cores(*ticks), per_request_us(*ticks));
    }
    let others = cpu.machine_busy.saturating_sub(own);
    println!(
        "| outside this process (nats-server, PostgreSQL, anything else running) | {:.2} | {:.0} |",
        ticks_to_cores(others),
        per_request_us(others)
    );
    println!(
        "| **whole machine** | {:.2} | {:.0} |",
        ticks_to_cores(cpu.machine_busy),
        per_request_us(cpu.machine_busy)
    );
}

// ---- The table ----

/// One cell: the value the median and the target judge, and its text.
struct Cell {
    value: f64,
    text: String,
}

/// Whether a median meets its target; `None` for rows without one.
type Check = Option<fn(f64) -> bool>;

struct Row {
    measure: String,
    target: String,
    check: Check,
    cells: Vec<Cell>,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn push(&mut self, measure: &str, target: &str, check: Check, cell: Cell) {
        match self.rows.iter_mut().find(|r| r.measure == measure) {
            Some(row) => row.cells.push(cell),
            None => self.rows.push(Row { measure: measure.into(), target: target.into(), check, cells: vec![cell] }),
        }
    }

    fn rate(&mut self, measure: &str, measured: &Measured, target: &str) {
        let mut m = Measured { latencies_us: measured.latencies_us.clone(), ..Measured::default() };
        let text = format!("{} /s (p99 {})", thousands(measured.rate()), ms(m.latency_ms(0.99)));
        let text = with_errors(text, measured);
        self.push(measure, target, None, Cell { value: measured.rate(), text });
    }

    /// The rate and its share of the hello rate of the same run, against the target.
    fn snapshot_rate(&mut self, measure: &str, measured: &Measured, hello: &Measured) {
        self.share(measure, measured, hello, true);
    }

    /// The rate and its share of the hello rate of the same run; `judged` against the target.
    fn share(&mut self, measure: &str, measured: &Measured, hello: &Measured, judged: bool) {
        self.rate(measure, measured, "");
        let share = 100.0 * measured.rate() / hello.rate();
        let errors_ok = measured.errors == 0;
        let cell = Cell { value: if errors_ok { share } else { 0.0 }, text: format!("{share:.1} %") };
        let (target, check): (String, Check) = if judged {
            (format!("≥ {MIN_SHARE_OF_HELLO:.0} %"), Some(|share| share >= MIN_SHARE_OF_HELLO))
        } else {
            ("(bound for a page this size)".into(), None)
        };
        self.push(&format!("{measure}: share of hello"), &target, check, cell);
    }

    /// p50 / p99 / max and errors; with `judged`, against the p99 target.
    fn latency(&mut self, measure: &str, measured: &Measured, judged: bool) {
        let mut m = Measured { latencies_us: measured.latencies_us.clone(), ..Measured::default() };
        let (p50, p99, max) = (m.latency_ms(0.5), m.latency_ms(0.99), m.latency_ms(1.0));
        let text = with_errors(format!("{} / {} / {} ms", trim(p50), trim(p99), trim(max)), measured);
        // Errors fail the target whatever the latency.
        let value = if measured.errors == 0 { p99 } else { f64::INFINITY };
        let (target, check): (String, Check) = if judged {
            (format!("p99 < {MAX_P99_MS:.0} ms, no errors"), Some(|p99| p99 < MAX_P99_MS))
        } else {
            ("no errors".into(), Some(f64::is_finite))
        };
        self.push(&format!("{measure} (p50 / p99 / max)"), &target, check, Cell { value, text });
    }

    fn print(&self, runs: usize) {
        let run_columns: String = (1..=runs).map(|r| format!(" run {r} |")).collect();
        println!("| measure |{run_columns} median | target | met? |");
        println!("|---|{}---:|---|---|", "---:|".repeat(runs));
        for row in &self.rows {
            let mut order: Vec<&Cell> = row.cells.iter().collect();
            order.sort_by(|a, b| a.value.total_cmp(&b.value));
            let median = order[(order.len() - 1) / 2];
            let cells: String = row.cells.iter().map(|c| format!(" {} |", c.text)).collect();
            let met = match row.check {
                Some(check) if check(median.value) => "yes",
                Some(_) => "**no**",
                None => "",
            };
            println!("| {} |{cells} **{}** | {} | {met} |", row.measure, median.text, row.target);
        }
    }
}

fn with_errors(text: String, measured: &Measured) -> String {
    if measured.errors == 0 {
        text
    } else {
        format!("{text}, {} errors ({} 5xx)", measured.errors, measured.server_errors)
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(value: f64) -> String {
    format!("{} ms", trim(value))
}

/// Milliseconds with one decimal below 10, none above.
fn trim(value: f64) -> String {
    if value < 10.0 { format!("{value:.1}") } else { format!("{value:.0}") }
}
