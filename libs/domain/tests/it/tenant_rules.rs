//! The rules every aggregate shares: nothing of a deleted or missing tenant accepts a command.
//!
//! Each case is a history and a command that an active tenant may carry out (checked first, so
//! the refusals below are the tenant's doing and nothing else's).

use arca_domain::api_key::{ApiKey, ApiKeyCommand};
use arca_domain::job::{Job, JobCommand};
use arca_domain::policy::{Policy, PolicyCommand};
use arca_domain::replica::{Replica, ReplicaCommand};
use arca_domain::restore::{Restore, RestoreCommand};
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_domain::source::{Source, SourceCommand};
use arca_domain::target::{Target, TargetCommand};
use arca_domain::testing::{AggregateTest, T0};
use arca_domain::{Aggregate, DomainError, TenantFacts, TenantStatus};
use arca_events::*;
use chrono::TimeDelta;

fn facts(status: TenantStatus) -> TenantFacts {
    TenantFacts { status, quota_bytes: None, used_bytes: 0 }
}

/// Accepted for an active tenant, refused for a deleted or missing one.
#[track_caller]
fn check<A: Aggregate>(cases: Vec<(Vec<Event>, A::Command)>) {
    assert!(!cases.is_empty());
    for (given, command) in cases {
        AggregateTest::<A>::given(given.clone())
            .with_tenant(facts(TenantStatus::Active))
            .when(command.clone())
            .then_expect_ok();
        AggregateTest::<A>::given(given.clone())
            .with_tenant(facts(TenantStatus::Deleted))
            .when(command.clone())
            .then_expect_error(DomainError::TenantDeleted);
        AggregateTest::<A>::given(given)
            .with_tenant(facts(TenantStatus::Missing))
            .when(command)
            .then_expect_error(DomainError::TenantNotFound);
    }
}

#[test]
fn api_keys() {
    let created: Event = ApiKeyCreated {
        name: "ci".into(),
        role: Role::Operator,
        prefix: "arca_1".into(),
        hash: "0".repeat(64),
        expires_at: None,
    }
    .into();
    check::<ApiKey>(vec![
        (
            vec![],
            ApiKeyCommand::Create {
                tenant: TenantId::new(),
                name: "ci".into(),
                role: Role::Operator,
                prefix: "arca_1".into(),
                hash: "0".repeat(64),
                expires_at: None,
            },
        ),
        (vec![created], ApiKeyCommand::Revoke { reason: None }),
    ]);
}

#[test]
fn targets() {
    let added: Event = TargetAdded {
        name: "local".into(),
        kind: TargetKind::Fs,
        location: "fs:///srv/backups".into(),
        settings: Default::default(),
        credentials: None,
    }
    .into();
    check::<Target>(vec![
        (
            vec![],
            TargetCommand::Add {
                name: "local".into(),
                kind: TargetKind::Fs,
                location: "fs:///srv/backups".into(),
                settings: Default::default(),
                credentials: None,
            },
        ),
        (
            vec![added.clone()],
            TargetCommand::Update { name: "renamed".into(), settings: Default::default(), credentials: None },
        ),
        (vec![added], TargetCommand::Remove),
    ]);
}

#[test]
fn sources() {
    let added: Event = SourceAdded {
        name: "web".into(),
        kind: SourceKind::Files,
        host: "web-1".into(),
        paths: vec!["/srv".into()],
        excludes: vec![],
        site: None,
        pre_hook: None,
        post_hook: None,
        qemu: None,
    }
    .into();
    check::<Source>(vec![
        (
            vec![],
            SourceCommand::Add {
                name: "web".into(),
                kind: SourceKind::Files,
                host: "web-1".into(),
                paths: vec!["/srv".into()],
                excludes: vec![],
                site: None,
                pre_hook: None,
                post_hook: None,
                qemu: None,
            },
        ),
        (
            vec![added.clone()],
            SourceCommand::Update {
                name: "web".into(),
                paths: vec!["/home".into()],
                excludes: vec![],
                site: None,
                pre_hook: None,
                post_hook: None,
                qemu: None,
            },
        ),
        (vec![added], SourceCommand::Remove),
    ]);
}

#[test]
fn policies() {
    let schedule = Schedule::Interval { seconds: 3600 };
    let created: Event = PolicyCreated {
        name: "hourly".into(),
        source: SourceId::new(),
        target: TargetId::new(),
        schedule: schedule.clone(),
        misfire: Misfire::Skip,
        mode: BackupMode::Incremental,
        retention: Retention::default(),
        copy_targets: vec![],
        verify_schedule: None,
    }
    .into();
    let paused = vec![created.clone(), PolicyPaused {}.into()];
    check::<Policy>(vec![
        (
            vec![],
            PolicyCommand::Create {
                name: "hourly".into(),
                source: SourceId::new(),
                target: TargetId::new(),
                schedule: schedule.clone(),
                misfire: Misfire::Skip,
                mode: BackupMode::Incremental,
                retention: Retention::default(),
                copy_targets: vec![],
                verify_schedule: None,
            },
        ),
        (
            vec![created.clone()],
            PolicyCommand::Update {
                name: "renamed".into(),
                schedule,
                misfire: Misfire::Skip,
                mode: BackupMode::Full,
                retention: Retention::default(),
                copy_targets: vec![],
                verify_schedule: None,
            },
        ),
        (vec![created.clone()], PolicyCommand::Pause),
        (paused, PolicyCommand::Resume),
        (vec![created], PolicyCommand::Delete),
    ]);
}

#[test]
fn jobs() {
    let requested: Event = JobRequested {
        kind: JobKind::Verify,
        trigger: Trigger::Manual,
        policy: None,
        source: None,
        target: Some(TargetId::new()),
        snapshot: None,
        mode: None,
        site: None,
    }
    .into();
    let running = vec![requested.clone(), JobStarted { worker: "w".into(), attempt: 1 }.into()];
    check::<Job>(vec![
        (
            vec![],
            JobCommand::Request {
                kind: JobKind::Verify,
                trigger: Trigger::Manual,
                policy: None,
                source: None,
                target: Some(TargetId::new()),
                snapshot: None,
                mode: None,
                site: None,
            },
        ),
        (vec![requested.clone()], JobCommand::Start { worker: "w".into(), attempt: 1 }),
        (running.clone(), JobCommand::Checkpoint { bytes_done: 1, files_done: 1, packs_uploaded: 1 }),
        (
            running.clone(),
            JobCommand::Succeed { snapshot: None, bytes_read: 1, bytes_added: 0, files: 1, duration_ms: 1 },
        ),
        (running, JobCommand::Fail { error: "boom".into(), attempts: 1, dead_lettered: false }),
        (vec![requested], JobCommand::Cancel { reason: None }),
    ]);
}

#[test]
fn snapshots() {
    let committed = SnapshotCommitted {
        target: TargetId::new(),
        repo_snapshot: "ab".repeat(32),
        time: T0,
        host: "web-1".into(),
        paths: vec!["/srv".into()],
        tags: vec![],
        source: None,
        policy: None,
        job: None,
        files: 1,
        size_bytes: 1,
        added_bytes: 1,
        partial: false,
    };
    let c = committed.clone();
    check::<Snapshot>(vec![
        (
            vec![],
            SnapshotCommand::Commit {
                target: c.target,
                repo_snapshot: c.repo_snapshot,
                time: c.time,
                host: c.host,
                paths: c.paths,
                tags: c.tags,
                source: c.source,
                policy: c.policy,
                job: c.job,
                files: c.files,
                size_bytes: c.size_bytes,
                added_bytes: c.added_bytes,
                partial: c.partial,
            },
        ),
        (vec![committed.clone().into()], SnapshotCommand::Lock { until: T0 + TimeDelta::days(1) }),
        (vec![committed.into()], SnapshotCommand::Forget { job: None }),
    ]);
}

#[test]
fn replicas() {
    let created: Event = ReplicaCreated {
        name: "standby".into(),
        source: SourceId::new(),
        destination: ReplicaDestination::Directory { path: "/srv/standby".into() },
        rpo_seconds: 60,
        keep_points: 3,
    }
    .into();
    let recorded = vec![created.clone(), ReplicaPointRecorded { point: "p1".into(), at: T0, lag_ms: 1 }.into()];
    let failed_over = [recorded.clone(), vec![ReplicaFailedOver { point: "p1".into() }.into()]].concat();
    check::<Replica>(vec![
        (
            vec![],
            ReplicaCommand::Create {
                name: "standby".into(),
                source: SourceId::new(),
                destination: ReplicaDestination::Directory { path: "/srv/standby".into() },
                rpo_seconds: 60,
                keep_points: 3,
            },
        ),
        (vec![created.clone()], ReplicaCommand::RecordPoint { point: "p1".into(), at: T0, lag_ms: 5 }),
        (recorded, ReplicaCommand::FailOver { point: "p1".into() }),
        (failed_over, ReplicaCommand::FailBack),
        (vec![created], ReplicaCommand::Delete),
    ]);
}

#[test]
fn restores() {
    let requested: Event = RestoreRequested {
        snapshot: SnapshotId::new(),
        paths: vec![],
        destination: RestoreDestination::Directory { path: "/srv/restore".into(), site: None },
        job: JobId::new(),
    }
    .into();
    check::<Restore>(vec![
        (
            vec![],
            RestoreCommand::Request {
                snapshot: SnapshotId::new(),
                paths: vec![],
                destination: RestoreDestination::Directory { path: "/srv/restore".into(), site: None },
                job: JobId::new(),
            },
        ),
        (vec![requested.clone()], RestoreCommand::Succeed { files: 1, bytes: 1, verified: true }),
        (vec![requested], RestoreCommand::Fail { error: "boom".into() }),
    ]);
}

#[test]
fn system_facts_are_an_active_tenant_without_quota() {
    let system = TenantFacts::system();
    assert_eq!((system.status, system.quota_bytes), (TenantStatus::Active, None));
    assert_eq!(system.require_active(), Ok(()));
}
