//! The running catalog against a real nats-server: live projection, rebuild, a killed
//! and restarted process, garbage on the stream, and queries over request/reply.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arca_bus::{Bus, BusConfig, EventStore, Version};
use arca_catalog::service::{self, CatalogConfig};
use arca_events::*;
use chrono::{TimeZone, Utc};

/// Where a test's catalog database lives.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(arca_testkit::PgDatabase),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    pub fn postgres() -> Db {
        Db::Postgres(arca_testkit::postgres_database())
    }

    /// A fresh database of the same kind (dumps compare only within one kind).
    pub fn same_kind(&self) -> Db {
        match self {
            Db::Sqlite(_) => Db::sqlite(),
            Db::Postgres(_) => Db::postgres(),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display()),
            Db::Postgres(db) => db.url.clone(),
        }
    }
}

pub struct Log {
    pub store: EventStore,
    pub bus: Bus,
}

pub async fn log(server: &arca_testkit::NatsServer) -> Log {
    let bus = Bus::connect(BusConfig::new(server.url.clone())).await.unwrap();
    Log { store: bus.event_store().await.unwrap(), bus }
}

impl Log {
    /// Appends `events` as the whole history of a new aggregate.
    pub async fn aggregate(&self, tenant: TenantId, kind: AggregateType, id: uuid::Uuid, events: Vec<Event>) {
        let time = Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap();
        self.store
            .append(AggregateRef::new(tenant, kind, id), Version::default(), &events, &Metadata::new_root(), time)
            .await
            .unwrap();
    }

    /// A tenant with a target, a source, a policy, `jobs` finished backup jobs and their snapshots.
    pub async fn tenant_history(&self, name: &str, jobs: usize) -> TenantId {
        let tenant = TenantId::new();
        self.aggregate(
            tenant,
            AggregateType::Tenant,
            tenant.0,
            vec![TenantCreated { name: name.into(), quota_bytes: Some(1 << 40) }.into()],
        )
        .await;
        let (target, source, policy) = (TargetId::new(), SourceId::new(), PolicyId::new());
        self.aggregate(
            tenant,
            AggregateType::Target,
            target.0,
            vec![
                TargetAdded {
                    name: "local".into(),
                    kind: TargetKind::Fs,
                    location: "fs:///srv/backups".into(),
                    settings: Default::default(),
                    credentials: Some(SecretRef { id: SecretId::new() }),
                }
                .into(),
            ],
        )
        .await;
        self.aggregate(
            tenant,
            AggregateType::Source,
            source.0,
            vec![
                SourceAdded {
                    name: "web".into(),
                    kind: SourceKind::Files,
                    host: "web-1".into(),
                    paths: vec!["/var/www".into()],
                    excludes: vec![],
                    site: None,
                    pre_hook: None,
                    post_hook: None,
                    qemu: None,
                }
                .into(),
            ],
        )
        .await;
        self.aggregate(
            tenant,
            AggregateType::Policy,
            policy.0,
            vec![
                PolicyCreated {
                    name: "nightly".into(),
                    source,
                    target,
                    schedule: Schedule::Cron { expression: "0 2 * * *".into(), timezone: "Europe/Berlin".into() },
                    misfire: Misfire::RunOnce,
                    mode: BackupMode::Incremental,
                    retention: Retention { keep_daily: Some(7), ..Default::default() },
                    copy_targets: vec![],
                    verify_schedule: None,
                }
                .into(),
            ],
        )
        .await;
        for i in 0..jobs {
            let (job, snapshot) = (JobId::new(), SnapshotId::new());
            self.aggregate(
                tenant,
                AggregateType::Job,
                job.0,
                vec![
                    JobRequested {
                        kind: JobKind::Backup,
                        trigger: Trigger::Manual,
                        policy: Some(policy),
                        source: Some(source),
                        target: Some(target),
                        snapshot: None,
                        mode: None,
                        site: None,
                    }
                    .into(),
                    JobStarted { worker: "w1".into(), attempt: 1 }.into(),
                    JobCheckpointed { bytes_done: 10, files_done: 1, packs_uploaded: 1 }.into(),
                    JobSucceeded {
                        snapshot: Some(snapshot),
                        bytes_read: 100,
                        bytes_added: 10,
                        files: 5,
                        duration_ms: 42,
                    }
                    .into(),
                ],
            )
            .await;
            self.aggregate(
                tenant,
                AggregateType::Snapshot,
                snapshot.0,
                vec![
                    SnapshotCommitted {
                        target,
                        repo_snapshot: format!("{i:064x}"),
                        time: Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, i as u32 % 60).unwrap(),
                        host: "web-1".into(),
                        paths: vec!["/var/www".into()],
                        tags: vec![],
                        source: Some(source),
                        policy: Some(policy),
                        job: Some(job),
                        files: 5,
                        size_bytes: 100,
                        added_bytes: 10,
                        partial: false,
                    }
                    .into(),
                ],
            )
            .await;
        }
        tenant
    }
}

/// Waits until the catalog behind `stats` has applied everything in the log.
async fn caught_up(log: &Log, last_applied: impl Fn() -> u64) {
    let end = log.store.last_sequence().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while last_applied() < end {
        assert!(tokio::time::Instant::now() < deadline, "catalog stuck at {} of {end}", last_applied());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn live_projection_equals_rebuild(live: Db, rebuilt: Db) {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    log.tenant_history("acme", 5).await;
    let config = CatalogConfig::new(server.url.clone(), live.url());
    let (stats, _task) = service::spawn(config).await.unwrap();
    // Events that arrive while it runs, too.
    log.tenant_history("globex", 7).await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;

    let live_db = arca_catalog::db::connect(&live.url()).await.unwrap();
    let rebuilt_db = arca_catalog::db::connect(&rebuilt.url()).await.unwrap();
    let events = service::rebuild(&log.bus, rebuilt_db.clone()).await.unwrap();
    assert_eq!(events, log.store.last_sequence().await.unwrap());
    let live_tables = arca_catalog::dump::dump_all(&live_db).await.unwrap();
    let rebuilt_tables = arca_catalog::dump::dump_all(&rebuilt_db).await.unwrap();
    assert!(live_tables["audit_events"].len() as u64 == events, "every event audited once");
    for (table, rows) in &live_tables {
        assert!(rows == &rebuilt_tables[table], "table {table} differs after rebuild");
    }
    assert_eq!(live_tables.keys().collect::<Vec<_>>(), rebuilt_tables.keys().collect::<Vec<_>>());

    // A rebuild refuses a database that already holds a projection.
    let again = service::rebuild(&log.bus, live_db).await;
    assert!(matches!(again, Err(arca_catalog::error::CatalogError::NotEmpty)), "{again:?}");
}

#[tokio::test]
async fn live_projection_equals_rebuild_on_sqlite() {
    live_projection_equals_rebuild(Db::sqlite(), Db::sqlite()).await;
}

#[tokio::test]
async fn live_projection_equals_rebuild_on_postgres() {
    live_projection_equals_rebuild(Db::postgres(), Db::postgres()).await;
}

fn start_catalog(nats: &str, database: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_arca-catalog"))
        .args(["--nats", nats, "--database", database, "run"])
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("start arca-catalog")
}

async fn status(bus: &Bus) -> Option<serde_json::Value> {
    bus.request("arca.q.catalog.status", &serde_json::json!({}), None, Duration::from_secs(1)).await.ok()
}

async fn killed_catalog_catches_up_without_applying_twice(db: Db) {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let mut catalog = start_catalog(&server.url, &db.url());
    let writer = {
        let store = log.store.clone();
        let bus = log.bus.clone();
        tokio::spawn(async move {
            let log = Log { store, bus };
            for i in 0..12 {
                log.tenant_history(&format!("t{i}"), 8).await;
            }
        })
    };
    // Kill it mid-stream, once it has applied something.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(&log.bus).await
            && s["last_applied"].as_u64().unwrap_or(0) > 20
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the catalog never started applying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    catalog.kill().unwrap();
    catalog.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut catalog = start_catalog(&server.url, &db.url());
    writer.await.unwrap();
    let end = log.store.last_sequence().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let final_status = loop {
        if let Some(s) = status(&log.bus).await
            && s["last_applied"].as_u64() == Some(end)
        {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up to {end}: {:?}", status(&log.bus).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(final_status["lag"], 0, "{final_status}");
    catalog.kill().unwrap();
    catalog.wait().unwrap();

    let tables = arca_catalog::dump::dump_all(&arca_catalog::db::connect(&db.url()).await.unwrap()).await.unwrap();
    assert_eq!(tables["audit_events"].len() as u64, end, "each event audited exactly once");
    assert_eq!(tables["jobs"].len(), 12 * 8);
    let state = &tables["projection_state"][0];
    assert_eq!(state["last_sequence"].as_u64(), Some(end), "{state}");
    assert_eq!(state["events_applied"].as_u64(), Some(end), "no event applied twice: {state}");
    // And a rebuild agrees with what the killed-and-restarted catalog built.
    let fresh = db.same_kind();
    let fresh_db = arca_catalog::db::connect(&fresh.url()).await.unwrap();
    service::rebuild(&log.bus, fresh_db.clone()).await.unwrap();
    let rebuilt = arca_catalog::dump::dump_all(&fresh_db).await.unwrap();
    for table in ["jobs", "snapshots", "tenants", "audit_events"] {
        assert!(rebuilt[table] == tables[table], "table {table} differs between the restarted catalog and a rebuild");
    }
}

#[tokio::test]
async fn killed_catalog_catches_up_without_applying_twice_on_sqlite() {
    killed_catalog_catches_up_without_applying_twice(Db::sqlite()).await;
}

#[tokio::test]
async fn killed_catalog_catches_up_without_applying_twice_on_postgres() {
    killed_catalog_catches_up_without_applying_twice(Db::postgres()).await;
}

#[tokio::test]
async fn garbage_on_the_stream_is_recorded_and_skipped() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let db = Db::sqlite();
    let (stats, _task) = service::spawn(CatalogConfig::new(server.url.clone(), db.url())).await.unwrap();
    let tenant = log.tenant_history("before", 1).await;
    let js = log.bus.jetstream();
    let subject = AggregateRef::new(tenant, AggregateType::Job, JobId::new()).subject();
    let bad_seq = js.publish(subject.clone(), "this is not json".into()).await.unwrap().await.unwrap().sequence;
    let mut unknown = Envelope::new(
        AggregateRef::from_subject(&subject).unwrap(),
        1,
        &JobCancelled { reason: None }.into(),
        Utc::now(),
        &Metadata::new_root(),
    );
    unknown.event_type = "JobTeleported".into();
    let unknown_seq = js.publish(subject.clone(), unknown.to_json().into()).await.unwrap().await.unwrap().sequence;
    log.tenant_history("after", 1).await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    assert_eq!(stats.malformed.load(std::sync::atomic::Ordering::Relaxed), 2);

    let tables = arca_catalog::dump::dump_all(&arca_catalog::db::connect(&db.url()).await.unwrap()).await.unwrap();
    let errors: Vec<u64> =
        tables["projection_errors"].iter().map(|row| row["stream_sequence"].as_u64().unwrap()).collect();
    assert_eq!(errors, [bad_seq, unknown_seq]);
    assert_eq!(tables["tenants"].len(), 2, "events before and after the garbage are applied");
    let status = status(&log.bus).await.expect("status answers");
    assert_eq!(status["malformed"], 2);
}

#[tokio::test]
async fn queries_are_scoped_by_tenant_and_paginated() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let db = Db::sqlite();
    let (stats, _task) = service::spawn(CatalogConfig::new(server.url.clone(), db.url())).await.unwrap();
    let a = log.tenant_history("a", 7).await;
    let b = log.tenant_history("b", 2).await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page: serde_json::Value = log
            .bus
            .request(
                "arca.q.catalog.jobs.list",
                &serde_json::json!({ "tenant": a, "limit": 3, "cursor": cursor }),
                None,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        for job in page["items"].as_array().unwrap() {
            assert_eq!(job["tenant_id"].as_str(), Some(a.to_string().as_str()), "{job}");
            seen.push(job["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (7, 7), "every job of A exactly once");

    // B cannot read A's job by id: not found, as if it did not exist.
    let get = log
        .bus
        .request::<_, serde_json::Value>(
            "arca.q.catalog.jobs.get",
            &serde_json::json!({ "tenant": b, "id": seen[0] }),
            None,
            Duration::from_secs(2),
        )
        .await;
    assert!(matches!(&get, Err(arca_bus::BusError::Remote { code, .. }) if code == "not_found"), "{get:?}");
    let own: serde_json::Value = log
        .bus
        .request(
            "arca.q.catalog.jobs.get",
            &serde_json::json!({ "tenant": a, "id": seen[0] }),
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(own["status"], "succeeded");

    let bad = log
        .bus
        .request::<_, serde_json::Value>(
            "arca.q.catalog.jobs.list",
            &serde_json::json!({ "limit": 3 }),
            None,
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(&bad, Err(arca_bus::BusError::Remote { code, .. }) if code == "bad_request"),
        "a query without a tenant: {bad:?}"
    );
}

#[tokio::test]
async fn one_tenant_cannot_change_another_tenants_rows_by_reusing_an_id() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let db = Db::sqlite();
    let (stats, _task) = service::spawn(CatalogConfig::new(server.url.clone(), db.url())).await.unwrap();
    let a = log.tenant_history("a", 0).await;
    let b = log.tenant_history("b", 0).await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    let connection = arca_catalog::db::connect(&db.url()).await.unwrap();
    let before = arca_catalog::dump::dump_all(&connection).await.unwrap();
    let a_target = before["targets"]
        .iter()
        .find(|row| row["tenant_id"] == a.to_string())
        .map(|row| row["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .unwrap();
    // B appends to its own subject, but with A's target id and A's tenant id.
    let update =
        Event::from(TargetUpdated { name: "hijacked".into(), settings: Default::default(), credentials: None });
    let stored = log
        .store
        .append(
            AggregateRef::new(b, AggregateType::Target, a_target),
            Version::default(),
            &[update],
            &Metadata::new_root(),
            Utc::now(),
        )
        .await
        .unwrap();
    let rename = Event::from(TenantRenamed { name: "hijacked".into() });
    log.store
        .append(
            AggregateRef::new(b, AggregateType::Tenant, a.0),
            Version::default(),
            &[rename],
            &Metadata::new_root(),
            Utc::now(),
        )
        .await
        .unwrap();
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    assert!(stored[0].stream_sequence > 0);
    let after = arca_catalog::dump::dump_all(&connection).await.unwrap();
    assert!(after["targets"] == before["targets"], "A's target is untouched");
    assert!(after["tenants"] == before["tenants"], "A's tenant is untouched");
}

#[tokio::test]
async fn the_audit_log_never_shows_an_api_key_hash() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let db = Db::sqlite();
    let (stats, _task) = service::spawn(CatalogConfig::new(server.url.clone(), db.url())).await.unwrap();
    let tenant = log.tenant_history("keys", 0).await;
    let hash = "ab".repeat(32);
    log.aggregate(
        tenant,
        AggregateType::ApiKey,
        ApiKeyId::new().0,
        vec![
            ApiKeyCreated {
                name: "ci".into(),
                role: Role::Operator,
                prefix: "arca_ab".into(),
                hash: hash.clone(),
                expires_at: None,
            }
            .into(),
        ],
    )
    .await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    for subject in ["arca.q.catalog.audit.list", "arca.q.catalog.api_keys.list"] {
        let page: serde_json::Value = log
            .bus
            .request(subject, &serde_json::json!({ "tenant": tenant, "limit": 500 }), None, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(!page["items"].as_array().unwrap().is_empty(), "{subject}");
        assert!(!page.to_string().contains(&hash), "{subject} shows the hash: {page}");
    }
}

#[tokio::test]
async fn an_event_the_database_refuses_is_recorded_and_skipped_not_retried_forever() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let db = Db::postgres();
    let (stats, _task) = service::spawn(CatalogConfig::new(server.url.clone(), db.url())).await.unwrap();
    log.tenant_history("before", 1).await;
    // Valid JSON that PostgreSQL text columns refuse: a NUL character.
    let poisoned = TenantId::new();
    let event = Event::from(TenantCreated { name: "nul\u{0}name".into(), quota_bytes: None });
    let stored = log
        .store
        .append(
            AggregateRef::new(poisoned, AggregateType::Tenant, poisoned),
            Version::default(),
            &[event],
            &Metadata::new_root(),
            Utc::now(),
        )
        .await
        .unwrap();
    log.tenant_history("after", 1).await;
    caught_up(&log, || stats.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;

    let tables = arca_catalog::dump::dump_all(&arca_catalog::db::connect(&db.url()).await.unwrap()).await.unwrap();
    let errors: Vec<u64> =
        tables["projection_errors"].iter().map(|row| row["stream_sequence"].as_u64().unwrap()).collect();
    assert_eq!(errors, [stored[0].stream_sequence]);
    let names: Vec<&str> = tables["tenants"].iter().map(|row| row["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"after"), "events after the refused one are applied: {names:?}");
}

#[tokio::test]
async fn two_catalogs_with_their_own_databases_each_see_every_event() {
    let server = arca_testkit::nats_server();
    let log = log(&server).await;
    let (first_db, second_db) = (Db::sqlite(), Db::sqlite());
    let (first, _a) = service::spawn(CatalogConfig::new(server.url.clone(), first_db.url())).await.unwrap();
    let (second, _b) = service::spawn(CatalogConfig::new(server.url.clone(), second_db.url())).await.unwrap();
    for i in 0..4 {
        log.tenant_history(&format!("t{i}"), 3).await;
    }
    caught_up(&log, || first.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    caught_up(&log, || second.last_applied.load(std::sync::atomic::Ordering::Relaxed)).await;
    let end = log.store.last_sequence().await.unwrap();
    for db in [&first_db, &second_db] {
        let tables = arca_catalog::dump::dump_all(&arca_catalog::db::connect(&db.url()).await.unwrap()).await.unwrap();
        assert_eq!(tables["audit_events"].len() as u64, end, "every event in each database");
    }
}
