//! Databases per backend, and a generator of realistic event histories.

use std::collections::HashMap;
use std::sync::Once;

use arca_catalog::RawEvent;
use arca_catalog::dump::dump_all;
use arca_events::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, migrated catalog database; the PostgreSQL database is dropped with it.
pub struct TestDb {
    pub db: DatabaseConnection,
    _pg: Option<arca_testkit::PgDatabase>,
}

impl std::ops::Deref for TestDb {
    type Target = DatabaseConnection;

    fn deref(&self) -> &DatabaseConnection {
        &self.db
    }
}

pub async fn test_db(backend: Backend) -> TestDb {
    init_logging();
    match backend {
        Backend::Sqlite => {
            let db = arca_catalog::db::connect("sqlite::memory:").await.expect("connect to SQLite");
            TestDb { db, _pg: None }
        }
        Backend::Postgres => {
            let pg = arca_testkit::postgres_database();
            let db = arca_catalog::db::connect(&pg.url).await.expect("connect to PostgreSQL");
            TestDb { db, _pg: Some(pg) }
        }
    }
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info").with_test_writer().init();
        }
    });
}

/// Runs `async fn $name(backend: Backend)` as `sqlite::$name` and `postgres::$name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

pub type Dump = std::collections::BTreeMap<String, Vec<serde_json::Value>>;

pub async fn dump(db: &DatabaseConnection) -> Dump {
    dump_all(db).await.expect("dump the catalog")
}

/// Projects `events` in batches of `batch_size` and checks each batch is taken whole.
pub async fn project(db: &DatabaseConnection, events: &[RawEvent], batch_size: usize) {
    let projector = arca_catalog::Projector::new(db.clone());
    for batch in events.chunks(batch_size) {
        let outcome = projector.apply_batch(batch).await.expect("apply a batch");
        assert_eq!(outcome.skipped_duplicates, 0, "{outcome:?}");
        assert_eq!(outcome.last_sequence, batch.last().unwrap().stream_sequence, "{outcome:?}");
    }
}

/// An event log in the making: per-aggregate sequences, and a clock that ticks one second per
/// event (whole seconds, so PostgreSQL's microsecond timestamps hold them exactly).
pub struct History {
    pub envelopes: Vec<Envelope>,
    sequences: HashMap<Uuid, u64>,
    clock: DateTime<Utc>,
}

impl History {
    pub fn new() -> Self {
        Self {
            envelopes: Vec::new(),
            sequences: HashMap::new(),
            clock: Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap(),
        }
    }

    /// Appends `event` as the next event of the aggregate; returns its envelope.
    pub fn record(&mut self, tenant: TenantId, id: impl Into<Uuid>, event: impl Into<Event>) -> &Envelope {
        let event = event.into();
        let id = id.into();
        self.clock += Duration::seconds(1);
        let sequence = self.sequences.entry(id).or_insert(0);
        *sequence += 1;
        let envelope = Envelope::new(
            AggregateRef::new(tenant, event.aggregate(), id),
            *sequence,
            &event,
            self.clock,
            &Metadata::new_root(),
        );
        self.envelopes.push(envelope);
        self.envelopes.last().unwrap()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock
    }

    /// The log as stream messages, stream sequences from 1.
    pub fn raw(&self) -> Vec<RawEvent> {
        self.envelopes.iter().enumerate().map(|(i, envelope)| RawEvent::from_envelope(i as u64 + 1, envelope)).collect()
    }
}

/// What [`mixed_history`] created for one tenant, to check rows and queries against.
#[derive(Clone, Debug, Default)]
pub struct TenantFacts {
    pub tenant: TenantId,
    pub name: String,
    pub api_keys: Vec<ApiKeyId>,
    pub revoked_key: ApiKeyId,
    /// Targets that still exist; the first one has credentials.
    pub targets: Vec<TargetId>,
    pub removed_target: TargetId,
    pub sources: Vec<SourceId>,
    pub policy: PolicyId,
    pub replica: ReplicaId,
    /// Every job with the status it ends in.
    pub jobs: Vec<(JobId, &'static str, JobKind)>,
    /// Every snapshot, and whether it was forgotten.
    pub snapshots: Vec<(SnapshotId, bool)>,
    pub locked_snapshot: Option<SnapshotId>,
    pub restores: Vec<(RestoreId, &'static str)>,
    pub replica_points: u64,
}

/// A realistic log: `tenants` tenants set up with keys, targets, sources, a policy and a
/// replica, then `rounds` rounds in which each tenant runs a job (requested, running,
/// checkpointed, then succeeded with a snapshot, failed or cancelled), with locks, forgets,
/// restores, replica points and usage reports mixed in. Tenants interleave.
pub fn mixed_history(tenants: usize, rounds: usize) -> (History, Vec<TenantFacts>) {
    let mut h = History::new();
    let mut facts: Vec<TenantFacts> = (0..tenants).map(|i| setup_tenant(&mut h, i)).collect();
    for round in 0..rounds {
        for f in facts.iter_mut() {
            run_round(&mut h, f, round);
        }
    }
    for (i, f) in facts.iter_mut().enumerate() {
        let t = f.tenant;
        h.record(t, f.replica, ReplicaLagExceeded { lag_ms: 900_000, rpo_seconds: 600 });
        h.record(t, f.replica, ReplicaFailedOver { point: "point-last".into() });
        h.record(t, f.replica, ReplicaFailedBack {});
        if i % 2 == 1 {
            h.record(t, t, TenantSuspended { reason: "unpaid invoice".into() });
        }
    }
    (h, facts)
}

fn setup_tenant(h: &mut History, i: usize) -> TenantFacts {
    let t = TenantId::new();
    let name = format!("tenant-{i}");
    h.record(t, t, TenantCreated { name: name.clone(), quota_bytes: None });
    h.record(t, t, TenantQuotaSet { quota_bytes: Some(5 << 40) });

    let keys: Vec<ApiKeyId> = (0..3).map(|_| ApiKeyId::new()).collect();
    for (k, key) in keys.iter().enumerate() {
        let role = [Role::TenantAdmin, Role::Operator, Role::Viewer][k];
        h.record(
            t,
            *key,
            ApiKeyCreated {
                name: format!("key-{k}"),
                role,
                prefix: format!("arca_{i}{k}"),
                hash: format!("{:064x}", i * 10 + k),
                expires_at: None,
            },
        );
    }
    h.record(t, keys[2], ApiKeyRevoked { reason: Some("leaked".into()) });

    let targets: Vec<TargetId> = (0..3).map(|_| TargetId::new()).collect();
    for (k, target) in targets.iter().enumerate() {
        let settings = [("region".to_owned(), "eu-west-1".to_owned())].into_iter().collect();
        h.record(
            t,
            *target,
            TargetAdded {
                name: format!("target-{k}"),
                kind: TargetKind::S3,
                location: format!("s3://bucket-{i}/repo-{k}"),
                settings,
                credentials: (k == 0).then(|| SecretRef { id: SecretId::new() }),
            },
        );
    }
    let updated_settings = [("region".to_owned(), "eu-central-1".to_owned())].into_iter().collect();
    h.record(
        t,
        targets[0],
        TargetUpdated {
            name: "offsite".into(),
            settings: updated_settings,
            credentials: Some(SecretRef { id: SecretId::new() }),
        },
    );
    h.record(t, targets[2], TargetRemoved {});

    let sources: Vec<SourceId> = (0..2).map(|_| SourceId::new()).collect();
    for (k, source) in sources.iter().enumerate() {
        h.record(
            t,
            *source,
            SourceAdded {
                name: format!("source-{k}"),
                kind: SourceKind::Files,
                host: format!("host-{i}-{k}"),
                paths: vec!["/etc".into(), "/home".into()],
                excludes: vec![],
                site: None,
                pre_hook: None,
                post_hook: None,
                qemu: None,
            },
        );
    }
    h.record(
        t,
        sources[0],
        SourceUpdated {
            name: "source-0".into(),
            paths: vec!["/etc".into(), "/home".into(), "/srv".into()],
            excludes: vec!["*.tmp".into()],
            site: Some("dc1".into()),
            pre_hook: None,
            post_hook: None,
            qemu: None,
        },
    );

    let policy = PolicyId::new();
    let schedule = Schedule::Cron { expression: "0 2 * * *".into(), timezone: "Europe/Paris".into() };
    h.record(
        t,
        policy,
        PolicyCreated {
            name: "nightly".into(),
            source: sources[0],
            target: targets[0],
            schedule: schedule.clone(),
            misfire: Misfire::RunOnce,
            mode: BackupMode::Incremental,
            retention: Retention { keep_last: Some(7), ..Default::default() },
            copy_targets: vec![targets[1]],
            verify_schedule: None,
        },
    );
    h.record(
        t,
        policy,
        PolicyUpdated {
            name: "nightly".into(),
            schedule,
            misfire: Misfire::RunOnce,
            mode: BackupMode::Incremental,
            retention: Retention { keep_last: Some(14), keep_daily: Some(30), ..Default::default() },
            copy_targets: vec![targets[1]],
            verify_schedule: Some(Schedule::Interval { seconds: 86_400 }),
        },
    );
    h.record(t, policy, PolicyPaused {});
    h.record(t, policy, PolicyResumed {});

    let replica = ReplicaId::new();
    h.record(
        t,
        replica,
        ReplicaCreated {
            name: "standby".into(),
            source: sources[1],
            destination: ReplicaDestination::Target { target: targets[1] },
            rpo_seconds: 600,
            keep_points: 24,
        },
    );

    TenantFacts {
        tenant: t,
        name,
        api_keys: keys.clone(),
        revoked_key: keys[2],
        targets: targets[..2].to_vec(),
        removed_target: targets[2],
        sources,
        policy,
        replica,
        ..Default::default()
    }
}

fn run_round(h: &mut History, f: &mut TenantFacts, round: usize) {
    let t = f.tenant;
    let job = JobId::new();
    let at = h.now();
    h.record(
        t,
        job,
        JobRequested {
            kind: JobKind::Backup,
            trigger: Trigger::Schedule { at },
            policy: Some(f.policy),
            source: Some(f.sources[0]),
            target: Some(f.targets[0]),
            snapshot: None,
            mode: Some(BackupMode::Incremental),
            site: None,
        },
    );
    if round % 5 == 4 {
        h.record(t, job, JobCancelled { reason: Some("maintenance window".into()) });
        f.jobs.push((job, "cancelled", JobKind::Backup));
        return;
    }
    h.record(t, job, JobStarted { worker: "transport-1".into(), attempt: 1 });
    h.record(t, job, JobCheckpointed { bytes_done: 1 << 20, files_done: 100, packs_uploaded: 1 });
    h.record(t, job, JobCheckpointed { bytes_done: 2 << 20, files_done: 200, packs_uploaded: 2 });
    if round % 5 == 3 {
        h.record(
            t,
            job,
            JobFailed { error: "target `offsite`: bucket not found".into(), attempts: 3, dead_lettered: true },
        );
        f.jobs.push((job, "failed", JobKind::Backup));
        return;
    }
    let snapshot = SnapshotId::new();
    let time = h.now();
    h.record(
        t,
        snapshot,
        SnapshotCommitted {
            target: f.targets[0],
            repo_snapshot: format!("{:064x}", round),
            time,
            host: "host".into(),
            paths: vec!["/etc".into()],
            tags: vec!["nightly".into()],
            source: Some(f.sources[0]),
            policy: Some(f.policy),
            job: Some(job),
            files: 200,
            size_bytes: 2 << 20,
            added_bytes: 1 << 20,
            partial: round % 7 == 6,
        },
    );
    h.record(
        t,
        job,
        JobSucceeded {
            snapshot: Some(snapshot),
            bytes_read: 2 << 20,
            bytes_added: 1 << 20,
            files: 200,
            duration_ms: 1_234,
        },
    );
    f.jobs.push((job, "succeeded", JobKind::Backup));
    f.snapshots.push((snapshot, false));
    h.record(t, t, TenantUsageReported { used_bytes: (round as u64 + 1) << 20 });
    h.record(t, f.replica, ReplicaPointRecorded { point: format!("point-{round}"), at: h.now(), lag_ms: 1_500 });
    f.replica_points += 1;

    if round == 0 {
        let until = h.now() + Duration::days(30);
        h.record(t, snapshot, SnapshotLocked { until });
        f.locked_snapshot = Some(snapshot);
    }
    // Every third round forgets the oldest unlocked snapshot, with a forget job.
    if round % 3 == 2
        && let Some(index) = f.snapshots.iter().position(|(s, forgotten)| !forgotten && Some(*s) != f.locked_snapshot)
    {
        let forget = JobId::new();
        h.record(
            t,
            forget,
            JobRequested {
                kind: JobKind::Forget,
                trigger: Trigger::FollowUp { after: job },
                policy: Some(f.policy),
                source: None,
                target: Some(f.targets[0]),
                snapshot: None,
                mode: None,
                site: None,
            },
        );
        h.record(t, forget, JobStarted { worker: "storage-1".into(), attempt: 1 });
        h.record(t, f.snapshots[index].0, SnapshotForgotten { job: Some(forget) });
        h.record(t, forget, JobSucceeded { snapshot: None, bytes_read: 0, bytes_added: 0, files: 0, duration_ms: 10 });
        f.snapshots[index].1 = true;
        f.jobs.push((forget, "succeeded", JobKind::Forget));
    }
    // Every fourth round restores the newest snapshot; every other restore fails.
    if round % 4 == 1 {
        let restore = RestoreId::new();
        let restore_job = JobId::new();
        h.record(
            t,
            restore,
            RestoreRequested {
                snapshot,
                paths: vec!["/etc/hosts".into()],
                destination: RestoreDestination::Directory { path: "/restore".into(), site: None },
                job: restore_job,
            },
        );
        if f.restores.len().is_multiple_of(2) {
            h.record(t, restore, RestoreSucceeded { files: 1, bytes: 200, verified: true });
            f.restores.push((restore, "succeeded"));
        } else {
            h.record(t, restore, RestoreFailed { error: "destination `/restore`: permission denied".into() });
            f.restores.push((restore, "failed"));
        }
    }
}
