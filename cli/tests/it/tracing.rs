//! One trace per job across services: the scheduler's firing (or the gateway's HTTP request,
//! continuing its client's trace), the transport's backup and the storage service's
//! follow-up forget are spans of one trace, the context carried in NATS (job tickets and
//! event headers). The services run in this process, each built as its own
//! service on its own NATS connection; spans go to an in-memory exporter.

use std::time::{Duration, Instant};

use arca_bus::{Bus, BusConfig};
use arca_domain::job::{Job, JobStatus};
use arca_domain::policy::{Policy, PolicyCommand};
use arca_domain::source::SourceCommand;
use arca_domain::target::TargetCommand;
use arca_domain::tenant::TenantCommand;
use arca_events::*;
use arca_worker::keys::ServerKey;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

use crate::helpers::{noise, write};

const ADMIN_KEY: &str = "arca-test-admin-key-0123456789";
/// The trace id a client of the API sends in its `traceparent`.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn wait_succeeded(store: &arca_bus::EventStore, tenant: TenantId, job: JobId) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (state, _) = store.load_state::<Job>(tenant, job.as_uuid()).await.unwrap();
        if state.status == JobStatus::Succeeded {
            return;
        }
        assert!(!state.status.is_terminal(), "job {job} ended {:?}: {:?}", state.status, state.error);
        assert!(Instant::now() < deadline, "job {job} is still {:?}", state.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn spans_of_the_gateway_scheduler_transport_and_storage_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let _telemetry = arca_telemetry::init_with_provider(
        "arca-test",
        provider,
        "warn,arca_worker=info,arca_scheduler=info,arca_api_gateway=info",
    );
    let nats = arca_testkit::nats_server();
    let work = tempfile::tempdir().unwrap();
    let source_dir = work.path().join("src");
    write(&source_dir.join("file.bin"), &noise(1 << 20, 7));
    let key = ServerKey::from_bytes([9u8; 32]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let transport = arca_transport::Transport::build(arca_transport::TransportConfig::new(&nats.url, key.clone()))
            .await
            .unwrap();
        let storage =
            arca_storage::Storage::build(arca_storage::StorageConfig::new(&nats.url, key.clone())).await.unwrap();
        tokio::spawn(transport.run_until_stopped(std::future::pending()));
        tokio::spawn(storage.run_until_stopped(std::future::pending()));
        let database = format!("sqlite://{}?mode=rwc", work.path().join("catalog.db").display());
        let catalog =
            arca_catalog::service::Catalog::build(arca_catalog::service::CatalogConfig::new(&nats.url, database))
                .await
                .unwrap();
        tokio::spawn(catalog.run_until_stopped(std::future::pending()));
        let mut gateway = arca_api_gateway::GatewayConfig::new(&nats.url, "127.0.0.1:0".parse().unwrap());
        gateway.bootstrap_key = Some(ADMIN_KEY.into());
        let gateway = arca_api_gateway::Application::build(gateway).await.unwrap();
        let api = format!("http://127.0.0.1:{}", gateway.port());
        tokio::spawn(gateway.run_until_stopped(std::future::pending()));

        let store = Bus::connect(BusConfig::new(&nats.url)).await.unwrap().event_store().await.unwrap();
        let meta = Metadata::new_root();
        let tenant = TenantId::new();
        store
            .execute::<arca_domain::tenant::Tenant>(
                tenant,
                tenant,
                &TenantCommand::Create { name: "traced".into(), quota_bytes: None },
                &meta,
            )
            .await
            .unwrap();
        let target = TargetId::new();
        let location = format!("fs://{}", work.path().join("repo").display());
        let add = TargetCommand::Add {
            name: "primary".into(),
            kind: TargetKind::Fs,
            location,
            settings: Default::default(),
            credentials: None,
        };
        store.execute::<arca_domain::target::Target>(tenant, target, &add, &meta).await.unwrap();
        let source = SourceId::new();
        let add = SourceCommand::Add {
            name: "docs".into(),
            kind: SourceKind::Files,
            host: "localhost".into(),
            paths: vec![source_dir.display().to_string()],
            excludes: vec![],
            site: None,
            pre_hook: None,
            post_hook: None,
            qemu: None,
        };
        store.execute::<arca_domain::source::Source>(tenant, source, &add, &meta).await.unwrap();
        let policy_id = PolicyId::new();
        let create = PolicyCommand::Create {
            name: "traced".into(),
            source,
            target,
            schedule: Schedule::Interval { seconds: 3600 },
            misfire: Misfire::Skip,
            mode: BackupMode::Incremental,
            retention: Retention { keep_last: Some(1), ..Retention::default() },
            copy_targets: vec![],
            verify_schedule: None,
        };
        let policy = store.execute::<Policy>(tenant, policy_id, &create, &meta).await.unwrap().state;

        let at = chrono::Utc::now();
        arca_scheduler::fire(&store, tenant, policy_id, &policy, at).await.unwrap();
        let backup = arca_scheduler::firing_job_id(policy_id, at);
        wait_succeeded(&store, tenant, backup).await;
        let forget = arca_worker::ids::follow_up_job_id(backup, JobKind::Forget, Some(target));
        wait_succeeded(&store, tenant, forget).await;

        // The same policy run through the API, by a client that sends its own trace.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let run = format!("{api}/v1/policies/{policy_id}/run?tenant={tenant}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = loop {
            let response = http
                .post(&run)
                .bearer_auth(ADMIN_KEY)
                .header("traceparent", format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01"))
                .send()
                .await
                .unwrap();
            // 401 until the catalog has projected the bootstrap key.
            if response.status() == reqwest::StatusCode::ACCEPTED {
                break response.json::<serde_json::Value>().await.unwrap();
            }
            assert!(Instant::now() < deadline, "run-now answered {}", response.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let backup: JobId = started["job"].as_str().unwrap().parse().unwrap();
        wait_succeeded(&store, tenant, backup).await;
        let forget = arca_worker::ids::follow_up_job_id(backup, JobKind::Forget, Some(target));
        wait_succeeded(&store, tenant, forget).await;
    });

    // A job's span ends (and is exported) just after its success is recorded: wait for the
    // last follow-up's span of each trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = exporter.get_finished_spans().unwrap();
        let forgets = spans
            .iter()
            .filter(|s| s.name == "job" && s.attributes.iter().any(|kv| kv.value.to_string() == "forget"))
            .count();
        if forgets >= 2 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fire = spans.iter().find(|s| s.name == "fire").expect("the scheduler's firing span");
    let trace = fire.span_context.trace_id();
    let job_kinds: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "job" && s.span_context.trace_id() == trace)
        .filter_map(|s| s.attributes.iter().find(|kv| kv.key.as_str() == "kind").map(|kv| kv.value.to_string()))
        .collect();
    assert!(job_kinds.contains(&"backup".to_owned()), "the transport's span is in the firing's trace: {job_kinds:?}");
    assert!(job_kinds.contains(&"forget".to_owned()), "the storage service's span is in it too: {job_kinds:?}");

    let request = spans
        .iter()
        .find(|s| {
            s.name == "http_request" && s.attributes.iter().any(|kv| kv.value.to_string() == "/v1/policies/{id}/run")
        })
        .expect("the gateway's request span");
    let trace = request.span_context.trace_id();
    assert_eq!(trace.to_string(), CLIENT_TRACE, "the request continues the client's trace");
    let job_kinds: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "job" && s.span_context.trace_id() == trace)
        .filter_map(|s| s.attributes.iter().find(|kv| kv.key.as_str() == "kind").map(|kv| kv.value.to_string()))
        .collect();
    assert!(job_kinds.contains(&"backup".to_owned()), "the transport's span is in the request's trace: {job_kinds:?}");
    assert!(job_kinds.contains(&"forget".to_owned()), "the storage service's span is in it too: {job_kinds:?}");
}
