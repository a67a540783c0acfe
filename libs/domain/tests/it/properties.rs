//! Property tests: random command sequences and random event histories.
//!
//! For random commands at random times and with random tenant facts, whatever `handle`
//! accepts is applied, and at the end `replay` of every produced event must equal the state
//! built step by step: the state depends on the events alone. Along the way each aggregate's
//! own invariants are checked. For random events (valid or not), `apply` must never panic and
//! must ignore events of other aggregates.

use arca_domain::job::{Job, JobCommand, JobStatus};
use arca_domain::policy::{Policy, PolicyCommand, PolicyStatus};
use arca_domain::replica::{Replica, ReplicaCommand};
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_domain::testing::T0;
use arca_domain::{Aggregate, Context, TenantFacts, TenantStatus, replay, schedule};
use arca_events::*;
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use uuid::Uuid;

const CASES: u32 = 200;

fn fixed<T: From<Uuid>>(n: u128) -> T {
    T::from(Uuid::from_u128(n))
}

fn maybe_id<T: From<Uuid> + Clone + std::fmt::Debug>(n: u128) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(Just(n)).prop_map(|n| n.map(fixed))
}

// ---- contexts ----

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (-86_400i64..60 * 86_400).prop_map(|seconds| T0 + TimeDelta::seconds(seconds))
}

fn tenant_facts() -> impl Strategy<Value = TenantFacts> {
    let status = prop_oneof![
        8 => Just(TenantStatus::Active),
        1 => Just(TenantStatus::Suspended),
        1 => Just(TenantStatus::Missing),
        1 => Just(TenantStatus::Deleted),
    ];
    (status, proptest::option::of(0u64..100), 0u64..100).prop_map(|(status, quota_bytes, used_bytes)| TenantFacts {
        status,
        quota_bytes,
        used_bytes,
    })
}

fn context() -> impl Strategy<Value = Context> {
    (time(), tenant_facts()).prop_map(|(now, facts)| Context::new(now, facts))
}

fn steps<C: std::fmt::Debug>(command: impl Strategy<Value = C>) -> impl Strategy<Value = Vec<(C, Context)>> {
    proptest::collection::vec((command, context()), 0..40)
}

/// Runs the commands, applying what each produced; `check` sees every accepted step
/// (before, command, context, events, after). Returns the final state.
fn run<A: Aggregate>(
    steps: &[(A::Command, Context)],
    mut check: impl FnMut(&A, &A::Command, &Context, &[Event], &A) -> Result<(), TestCaseError>,
) -> Result<A, TestCaseError> {
    let mut state = A::default();
    let mut log = Vec::new();
    for (command, ctx) in steps {
        let Ok(events) = state.handle(command, ctx) else { continue };
        let before = state.clone();
        for event in &events {
            prop_assert_eq!(event.aggregate(), A::TYPE, "{:?}", event);
            state.apply(event);
        }
        check(&before, command, ctx, &events, &state)?;
        log.extend(events);
    }
    prop_assert_eq!(&replay::<A>(&log), &state);
    Ok(state)
}

/// Applies events in order; only there to not panic.
fn apply_all<A: Aggregate>(events: &[Event]) -> A {
    replay(events)
}

/// Events of aggregates other than `A` leave its state as it is.
fn ignores_foreign<A: Aggregate>(events: &[Event]) -> Result<(), TestCaseError> {
    let own: Vec<Event> = events.iter().filter(|e| e.aggregate() == A::TYPE).cloned().collect();
    let state = replay::<A>(&own);
    for event in events.iter().filter(|e| e.aggregate() != A::TYPE) {
        let mut after = state.clone();
        after.apply(event);
        prop_assert_eq!(&after, &state, "{:?} changed a {:?}", event, A::TYPE);
    }
    Ok(())
}

// ---- random values ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![select(vec!["acme", " acme ", "beta", "", " ", "a\nb"]).prop_map(String::from), ".{0,12}",]
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..5, any::<u32>()]
}

fn small_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5, any::<u64>()]
}

fn target_ids() -> impl Strategy<Value = TargetId> {
    (1u128..4).prop_map(fixed)
}

fn schedules() -> impl Strategy<Value = Schedule> {
    let cron = select(vec![
        ("0 2 * * *", "Europe/Berlin"),
        ("*/5 * * * *", "UTC"),
        ("0 30 1 * * MON", "America/New_York"),
        ("0 0 30 2 *", "UTC"),
        ("61 * * * *", "UTC"),
        ("* * *", "UTC"),
        ("0 2 * * *", "Nowhere/Land"),
    ])
    .prop_map(|(expression, timezone)| Schedule::Cron { expression: expression.into(), timezone: timezone.into() });
    let interval = prop_oneof![Just(0u64), Just(59), Just(60), 61u64..100_000, any::<u64>()]
        .prop_map(|seconds| Schedule::Interval { seconds });
    prop_oneof![cron, interval]
}

fn retention() -> impl Strategy<Value = Retention> {
    let keep = || proptest::option::of(0u32..4);
    (keep(), keep(), keep(), keep(), keep(), keep()).prop_map(
        |(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)| Retention {
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
        },
    )
}

fn misfire() -> impl Strategy<Value = Misfire> {
    select(vec![Misfire::Skip, Misfire::RunOnce])
}

fn mode() -> impl Strategy<Value = BackupMode> {
    select(vec![BackupMode::Incremental, BackupMode::Full, BackupMode::Differential])
}

fn job_kind() -> impl Strategy<Value = JobKind> {
    select(JobKind::ALL.to_vec())
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        Just(Trigger::Manual),
        time().prop_map(|at| Trigger::Schedule { at }),
        Just(Trigger::FollowUp { after: fixed(9) }),
    ]
}

fn site() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![Just("berlin".to_owned()), Just("a.b".to_owned()), "[a-z.*]{0,4}"])
}

// ---- Tenant ----

fn tenant_command() -> impl Strategy<Value = TenantCommand> {
    let quota = || proptest::option::of(0u64..200);
    prop_oneof![
        (text(), quota()).prop_map(|(name, quota_bytes)| TenantCommand::Create { name, quota_bytes }),
        text().prop_map(|name| TenantCommand::Rename { name }),
        quota().prop_map(|quota_bytes| TenantCommand::SetQuota { quota_bytes }),
        (0u64..300).prop_map(|used_bytes| TenantCommand::ReportUsage { used_bytes }),
        text().prop_map(|reason| TenantCommand::Suspend { reason }),
        Just(TenantCommand::Resume),
        Just(TenantCommand::Delete),
    ]
}

fn tenant_events() -> impl Strategy<Value = Event> {
    prop_oneof![
        (".{0,8}", any::<Option<u64>>()).prop_map(|(name, quota_bytes)| TenantCreated { name, quota_bytes }.into()),
        ".{0,8}".prop_map(|name| TenantRenamed { name }.into()),
        any::<Option<u64>>().prop_map(|quota_bytes| TenantQuotaSet { quota_bytes }.into()),
        any::<u64>().prop_map(|used_bytes| TenantUsageReported { used_bytes }.into()),
        ".{0,8}".prop_map(|reason| TenantSuspended { reason }.into()),
        Just(TenantResumed {}.into()),
        Just(TenantDeleted {}.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn tenant_state_is_its_events(steps in steps(tenant_command())) {
        run::<Tenant>(&steps, |before, _, _, _, after| {
            prop_assert_ne!(before.status, TenantStatus::Deleted, "a deleted tenant accepted a command");
            prop_assert_ne!(after.quota_bytes, Some(0));
            if after.status != TenantStatus::Missing {
                prop_assert_eq!(after.name.trim(), after.name.as_str());
                prop_assert!(!after.name.is_empty());
            }
            Ok(())
        })?;
    }
}

// ---- Policy ----

fn policy_command() -> impl Strategy<Value = PolicyCommand> {
    let copy_targets = || proptest::collection::vec(target_ids(), 0..3);
    let create = (
        text(),
        target_ids(),
        schedules(),
        misfire(),
        mode(),
        retention(),
        copy_targets(),
        proptest::option::of(schedules()),
    )
        .prop_map(|(name, target, schedule, misfire, mode, retention, copy_targets, verify_schedule)| {
            PolicyCommand::Create {
                name,
                source: fixed(7),
                target,
                schedule,
                misfire,
                mode,
                retention,
                copy_targets,
                verify_schedule,
            }
        });
    let update =
        (text(), schedules(), misfire(), mode(), retention(), copy_targets(), proptest::option::of(schedules()))
            .prop_map(|(name, schedule, misfire, mode, retention, copy_targets, verify_schedule)| {
                PolicyCommand::Update { name, schedule, misfire, mode, retention, copy_targets, verify_schedule }
            });
    prop_oneof![
        2 => create,
        3 => update,
        1 => Just(PolicyCommand::Pause),
        1 => Just(PolicyCommand::Resume),
        1 => Just(PolicyCommand::Delete),
    ]
}

fn policy_events() -> impl Strategy<Value = Event> {
    let copy_targets = || proptest::collection::vec(target_ids(), 0..3);
    prop_oneof![
        (target_ids(), schedules(), retention(), copy_targets(), proptest::option::of(schedules())).prop_map(
            |(target, schedule, retention, copy_targets, verify_schedule)| {
                PolicyCreated {
                    name: "p".into(),
                    source: fixed(7),
                    target,
                    schedule,
                    misfire: Misfire::Skip,
                    mode: BackupMode::Full,
                    retention,
                    copy_targets,
                    verify_schedule,
                }
                .into()
            }
        ),
        (schedules(), retention(), copy_targets()).prop_map(|(schedule, retention, copy_targets)| {
            PolicyUpdated {
                name: "".into(),
                schedule,
                misfire: Misfire::RunOnce,
                mode: BackupMode::Incremental,
                retention,
                copy_targets,
                verify_schedule: None,
            }
            .into()
        }),
        Just(PolicyPaused {}.into()),
        Just(PolicyResumed {}.into()),
        Just(PolicyDeleted {}.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn policy_state_is_its_events(steps in steps(policy_command())) {
        run::<Policy>(&steps, |before, _, ctx, _, after| {
            prop_assert!(matches!(ctx.tenant.status, TenantStatus::Active | TenantStatus::Suspended));
            prop_assert_ne!(before.status, PolicyStatus::Deleted, "a deleted policy accepted a command");
            if after.status != PolicyStatus::Deleted {
                let schedule = after.schedule.as_ref().expect("a created policy has a schedule");
                prop_assert_eq!(schedule::check(schedule), Ok(()));
                prop_assert!(schedule::next_after(schedule, ctx.now).is_some_and(|next| next > ctx.now));
                if let Some(verify) = &after.verify_schedule {
                    prop_assert_eq!(schedule::check(verify), Ok(()));
                }
                let r = after.retention;
                let rules = [r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly];
                prop_assert!(!rules.contains(&Some(0)), "{:?}", r);
                prop_assert!(!after.copy_targets.contains(&after.target));
            }
            Ok(())
        })?;
    }
}

// ---- Job ----

fn job_command() -> impl Strategy<Value = JobCommand> {
    let ids = (maybe_id(1), maybe_id(2), maybe_id(3), maybe_id(4));
    let request = (job_kind(), trigger(), ids, proptest::option::of(mode()), site()).prop_map(
        |(kind, trigger, (policy, source, target, snapshot), mode, site)| JobCommand::Request {
            kind,
            trigger,
            policy,
            source,
            target,
            snapshot,
            mode,
            site,
        },
    );
    prop_oneof![
        2 => request,
        2 => (select(vec!["w1", "w2", ""]), 0u32..5)
            .prop_map(|(worker, attempt)| JobCommand::Start { worker: worker.into(), attempt }),
        2 => (0u64..3, 0u64..3, 0u64..3).prop_map(|(bytes_done, files_done, packs_uploaded)| {
            JobCommand::Checkpoint { bytes_done, files_done, packs_uploaded }
        }),
        1 => (proptest::option::of(Just(fixed::<SnapshotId>(5))), small_u64()).prop_map(|(snapshot, bytes)| {
            JobCommand::Succeed { snapshot, bytes_read: bytes, bytes_added: bytes, files: 1, duration_ms: 5 }
        }),
        1 => (select(vec!["boom", " "]), small_u32(), any::<bool>()).prop_map(|(error, attempts, dead_lettered)| {
            JobCommand::Fail { error: error.into(), attempts, dead_lettered }
        }),
        1 => proptest::option::of(".{0,4}").prop_map(|reason| JobCommand::Cancel { reason }),
    ]
}

fn job_events() -> impl Strategy<Value = Event> {
    prop_oneof![
        (job_kind(), trigger(), proptest::option::of(mode()), site()).prop_map(|(kind, trigger, mode, site)| {
            JobRequested { kind, trigger, policy: None, source: None, target: None, snapshot: None, mode, site }.into()
        }),
        (".{0,4}", any::<u32>()).prop_map(|(worker, attempt)| JobStarted { worker, attempt }.into()),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(bytes_done, files_done, packs_uploaded)| {
            JobCheckpointed { bytes_done, files_done, packs_uploaded }.into()
        }),
        (proptest::option::of(Just(fixed::<SnapshotId>(5))), any::<u64>()).prop_map(|(snapshot, n)| {
            JobSucceeded { snapshot, bytes_read: n, bytes_added: n, files: n, duration_ms: n }.into()
        }),
        (".{0,4}", any::<u32>(), any::<bool>()).prop_map(|(error, attempts, dead_lettered)| JobFailed {
            error,
            attempts,
            dead_lettered
        }
        .into()),
        proptest::option::of(".{0,4}").prop_map(|reason| JobCancelled { reason }.into()),
    ]
}

/// The moves the job state machine allows.
fn job_move_allowed(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    matches!(
        (from, to),
        (Missing, Requested)
            | (Requested, Running | Failed | Cancelled)
            | (Running, Running | Succeeded | Failed | Cancelled)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn job_state_is_its_events(steps in steps(job_command())) {
        run::<Job>(&steps, |before, command, ctx, events, after| {
            prop_assert!(!before.status.is_terminal(), "a finished job accepted {:?}", command);
            if !events.is_empty() {
                prop_assert!(job_move_allowed(before.status, after.status), "{:?} → {:?}", before.status, after.status);
            }
            prop_assert!(after.attempt >= before.attempt, "the attempt went back");
            if before.status == JobStatus::Missing && after.status == JobStatus::Requested {
                prop_assert_eq!(ctx.tenant.status, TenantStatus::Active);
                let kind = after.kind.expect("a requested job has a kind");
                prop_assert!(!(kind.adds_data() && ctx.tenant.is_over_quota()), "over quota yet {:?} requested", kind);
            }
            Ok(())
        })?;
    }
}

// ---- Snapshot ----

fn snapshot_command() -> impl Strategy<Value = SnapshotCommand> {
    let commit =
        (select(vec!["ab12", "XY", ""]), select(vec!["web-1", ""]), 0usize..2).prop_map(|(id, host, paths)| {
            SnapshotCommand::Commit {
                target: fixed(1),
                repo_snapshot: id.into(),
                time: T0,
                host: host.into(),
                paths: vec!["/srv".to_owned(); paths],
                tags: vec![],
                source: None,
                policy: None,
                job: None,
                files: 1,
                size_bytes: 1,
                added_bytes: 1,
                partial: false,
            }
        });
    prop_oneof![
        1 => commit,
        3 => time().prop_map(|until| SnapshotCommand::Lock { until }),
        2 => proptest::option::of(Just(fixed::<JobId>(3))).prop_map(|job| SnapshotCommand::Forget { job }),
    ]
}

fn snapshot_events() -> impl Strategy<Value = Event> {
    prop_oneof![
        (".{0,4}", any::<bool>()).prop_map(|(repo_snapshot, partial)| {
            SnapshotCommitted {
                target: fixed(1),
                repo_snapshot,
                time: T0,
                host: "".into(),
                paths: vec![],
                tags: vec![],
                source: None,
                policy: None,
                job: None,
                files: 0,
                size_bytes: 0,
                added_bytes: 0,
                partial,
            }
            .into()
        }),
        time().prop_map(|until| SnapshotLocked { until }.into()),
        proptest::option::of(Just(fixed::<JobId>(3))).prop_map(|job| SnapshotForgotten { job }.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn snapshot_state_is_its_events(steps in steps(snapshot_command())) {
        run::<Snapshot>(&steps, |before, command, ctx, events, after| {
            prop_assert!(after.locked_until >= before.locked_until, "a lock was shortened");
            if !before.forgotten && after.forgotten {
                prop_assert!(!before.is_locked_at(ctx.now), "forgotten while locked: {:?}", command);
            }
            if before.forgotten {
                prop_assert!(events.is_empty(), "a forgotten snapshot changed: {:?}", events);
            }
            Ok(())
        })?;
    }
}

// ---- Replica ----

fn replica_command() -> impl Strategy<Value = ReplicaCommand> {
    let destination = prop_oneof![
        4 => select(vec!["/srv/standby", "relative"]).prop_map(|path| ReplicaDestination::Directory { path: path.into() }),
        1 => Just(ReplicaDestination::Target { target: fixed(1) }),
    ];
    let point = || select(vec!["p1", "p2", "p3", "p4", "p5", ""]).prop_map(String::from);
    prop_oneof![
        1 => (destination, prop_oneof![9 => 1u64..3, 1 => Just(0)], prop_oneof![9 => 1u32..4, 1 => Just(0)]).prop_map(|(destination, rpo_seconds, keep_points)| {
            ReplicaCommand::Create { name: "standby".into(), source: fixed(2), destination, rpo_seconds, keep_points }
        }),
        4 => (point(), time(), 0u64..4000).prop_map(|(point, at, lag_ms)| ReplicaCommand::RecordPoint { point, at, lag_ms }),
        2 => point().prop_map(|point| ReplicaCommand::FailOver { point }),
        1 => Just(ReplicaCommand::FailBack),
        1 => Just(ReplicaCommand::Delete),
    ]
}

fn replica_events() -> impl Strategy<Value = Event> {
    prop_oneof![
        (any::<u64>(), any::<u32>()).prop_map(|(rpo_seconds, keep_points)| {
            ReplicaCreated {
                name: "".into(),
                source: fixed(2),
                destination: ReplicaDestination::Directory { path: "".into() },
                rpo_seconds,
                keep_points,
            }
            .into()
        }),
        (".{0,3}", time(), any::<u64>())
            .prop_map(|(point, at, lag_ms)| ReplicaPointRecorded { point, at, lag_ms }.into()),
        (any::<u64>(), any::<u64>())
            .prop_map(|(lag_ms, rpo_seconds)| ReplicaLagExceeded { lag_ms, rpo_seconds }.into()),
        ".{0,3}".prop_map(|point| ReplicaFailedOver { point }.into()),
        Just(ReplicaFailedBack {}.into()),
        Just(ReplicaDeleted {}.into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn replica_state_is_its_events(steps in steps(replica_command())) {
        run::<Replica>(&steps, |_, _, _, _, after| {
            prop_assert!(after.points.len() <= after.keep_points as usize);
            if let Some(point) = &after.failed_over_to {
                prop_assert!(after.points.iter().any(|kept| kept.point == *point), "failed over to a point no longer kept");
            }
            Ok(())
        })?;
    }
}

// ---- random histories ----

fn any_event() -> impl Strategy<Value = Event> {
    let others = prop_oneof![
        Just(ApiKeyRevoked { reason: None }.into()),
        Just(TargetRemoved {}.into()),
        Just(SourceRemoved {}.into()),
        Just(RestoreFailed { error: "x".into() }.into()),
    ];
    prop_oneof![tenant_events(), policy_events(), job_events(), snapshot_events(), replica_events(), others]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn apply_takes_any_history(events in proptest::collection::vec(any_event(), 0..40)) {
        apply_all::<Tenant>(&events);
        apply_all::<Policy>(&events);
        apply_all::<Job>(&events);
        apply_all::<Snapshot>(&events);
        apply_all::<Replica>(&events);
        apply_all::<arca_domain::api_key::ApiKey>(&events);
        apply_all::<arca_domain::target::Target>(&events);
        apply_all::<arca_domain::source::Source>(&events);
        apply_all::<arca_domain::restore::Restore>(&events);
    }

    #[test]
    fn apply_ignores_other_aggregates(events in proptest::collection::vec(any_event(), 0..30)) {
        ignores_foreign::<Tenant>(&events)?;
        ignores_foreign::<Policy>(&events)?;
        ignores_foreign::<Job>(&events)?;
        ignores_foreign::<Snapshot>(&events)?;
        ignores_foreign::<Replica>(&events)?;
    }

    #[test]
    fn handle_after_any_history_never_panics(
        events in proptest::collection::vec(any_event(), 0..20),
        job in job_command(),
        snapshot in snapshot_command(),
        replica in replica_command(),
        policy in policy_command(),
        tenant in tenant_command(),
        ctx in context(),
    ) {
        let _ = replay::<Job>(&events).handle(&job, &ctx);
        let _ = replay::<Snapshot>(&events).handle(&snapshot, &ctx);
        let _ = replay::<Replica>(&events).handle(&replica, &ctx);
        let _ = replay::<Policy>(&events).handle(&policy, &ctx);
        let _ = replay::<Tenant>(&events).handle(&tenant, &ctx);
    }
}
