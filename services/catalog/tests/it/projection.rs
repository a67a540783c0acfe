//! The projector: rows, exactly-once application, bad events, determinism, speed.

use std::time::Instant;

use arca_catalog::entities::*;
use arca_catalog::projector::PROJECTION_NAME;
use arca_catalog::{Projector, RawEvent};
use arca_events::*;
use sea_orm::{EntityTrait, PaginatorTrait};

use crate::helpers::*;

crate::on_both_backends!(
    a_history_projects_to_the_expected_rows,
    redelivered_and_overlapping_batches_apply_each_event_once,
    bad_events_are_recorded_and_skipped,
    batch_sizes_and_rebuilds_give_identical_tables,
    large_batches_of_a_mixed_history_are_all_projected,
);

async fn a_history_projects_to_the_expected_rows(backend: Backend) {
    let db = test_db(backend).await;
    let (history, facts) = mixed_history(2, 10);
    project(&db, &history.raw(), 500).await;

    let f = &facts[1];
    let tenant = tenants::Entity::find_by_id(f.tenant.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((tenant.name.as_str(), tenant.status.as_str()), (f.name.as_str(), "suspended"));
    assert_eq!(tenant.suspended_reason.as_deref(), Some("unpaid invoice"));
    assert_eq!(tenant.quota_bytes, Some(5 << 40));
    assert_eq!(tenant.used_bytes, 8 << 20, "usage of the last successful round");
    let tenant_events: Vec<&Envelope> =
        history.envelopes.iter().filter(|e| e.aggregate_id == f.tenant.as_uuid()).collect();
    assert_eq!(tenant.version, tenant_events.len() as i64);
    assert_eq!(tenant.created_at, tenant_events[0].time, "times come from the events");
    assert_eq!(tenant.updated_at, tenant_events.last().unwrap().time);
    let first = tenants::Entity::find_by_id(facts[0].tenant.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!(first.status, "active");

    let key = api_keys::Entity::find_by_id(f.revoked_key.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((key.status.as_str(), key.role.as_str()), ("revoked", "viewer"));
    assert_eq!(key.revoked_reason.as_deref(), Some("leaked"));
    assert_eq!(key.tenant_id, f.tenant.as_uuid());
    let key_json = serde_json::to_value(&key).unwrap();
    assert!(key_json.get("hash").is_none(), "a key's hash never leaves the catalog: {key_json}");

    let target = targets::Entity::find_by_id(f.targets[0].as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((target.name.as_str(), target.kind.as_str(), target.has_credentials), ("offsite", "s3", true));
    assert_eq!((target.version, target.location.as_str()), (2, "s3://bucket-1/repo-0"));
    let target_json = serde_json::to_value(&target).unwrap();
    assert_eq!(target_json["settings"], serde_json::json!({"region": "eu-central-1"}));
    let mut columns: Vec<&str> = target_json.as_object().unwrap().keys().map(String::as_str).collect();
    columns.sort_unstable();
    assert_eq!(
        columns,
        [
            "created_at",
            "has_credentials",
            "id",
            "kind",
            "location",
            "name",
            "settings",
            "tenant_id",
            "updated_at",
            "version"
        ],
        "targets have no secret columns"
    );
    let plain = targets::Entity::find_by_id(f.targets[1].as_uuid()).one(&*db).await.unwrap().unwrap();
    assert!(!plain.has_credentials);
    assert!(targets::Entity::find_by_id(f.removed_target.as_uuid()).one(&*db).await.unwrap().is_none());

    let source = sources::Entity::find_by_id(f.sources[0].as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Vec<String>>(&source.paths).unwrap(), ["/etc", "/home", "/srv"]);
    assert_eq!((source.site.as_deref(), source.kind.as_str()), (Some("dc1"), "files"));

    let policy = policies::Entity::find_by_id(f.policy.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((policy.status.as_str(), policy.misfire.as_str(), policy.version), ("active", "run_once", 4));
    let retention: Retention = serde_json::from_str(&policy.retention).unwrap();
    assert_eq!((retention.keep_last, retention.keep_daily), (Some(14), Some(30)));
    let verify: Schedule = serde_json::from_str(policy.verify_schedule.as_deref().unwrap()).unwrap();
    assert_eq!(verify, Schedule::Interval { seconds: 86_400 });
    assert_eq!(policy.source_id, f.sources[0].as_uuid());

    for (job, status, kind) in &f.jobs {
        let row = jobs::Entity::find_by_id(job.as_uuid()).one(&*db).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.kind.as_str()), (*status, kind.as_str()), "{row:?}");
        assert_eq!(row.tenant_id, f.tenant.as_uuid());
        match *status {
            "succeeded" if *kind == JobKind::Backup => {
                assert_eq!((row.checkpoints, row.bytes_done, row.files, row.attempt), (2, 2 << 20, 200, 1));
                assert!(row.result_snapshot_id.is_some() && row.finished_at.is_some());
                assert_eq!(row.worker.as_deref(), Some("transport-1"));
            }
            "failed" => {
                assert_eq!((row.attempt, row.dead_lettered), (3, true));
                assert_eq!(row.error.as_deref(), Some("target `offsite`: bucket not found"));
            }
            "cancelled" => {
                assert_eq!((row.checkpoints, row.started_at), (0, None));
                assert_eq!(row.error.as_deref(), Some("maintenance window"));
            }
            _ => {}
        }
    }

    for (snapshot, forgotten) in &f.snapshots {
        let row = snapshots::Entity::find_by_id(snapshot.as_uuid()).one(&*db).await.unwrap().unwrap();
        assert_eq!(row.status, if *forgotten { "forgotten" } else { "committed" });
        assert_eq!((row.target_id, row.files), (f.targets[0].as_uuid(), 200));
        assert_eq!(row.forgotten_by_job_id.is_some(), *forgotten);
    }
    assert!(f.snapshots.iter().any(|(_, forgotten)| *forgotten));
    let locked = f.locked_snapshot.unwrap();
    let locked = snapshots::Entity::find_by_id(locked.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert!(locked.locked_until.unwrap() > locked.time);
    assert_eq!((locked.status.as_str(), locked.version), ("committed", 2));

    let replica = replicas::Entity::find_by_id(f.replica.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((replica.status.as_str(), replica.points_recorded), ("active", f.replica_points as i64));
    assert_eq!((replica.lag_ms, replica.failed_over_point.as_deref()), (Some(900_000), None));
    assert!(replica.lag_exceeded_at.is_some());
    assert_eq!(replica.last_point.as_deref(), Some("point-7"), "rounds 8 and 9 fail or are cancelled");

    assert!(f.restores.len() >= 2);
    for (restore, status) in &f.restores {
        let row = restores::Entity::find_by_id(restore.as_uuid()).one(&*db).await.unwrap().unwrap();
        assert_eq!(row.status, *status);
        assert_eq!(row.verified, *status == "succeeded");
    }

    // One audit row per event, faithful to its envelope.
    assert_eq!(audit_events::Entity::find().count(&*db).await.unwrap(), history.envelopes.len() as u64);
    let envelope = &history.envelopes[10];
    let audit = audit_events::Entity::find_by_id(11).one(&*db).await.unwrap().unwrap();
    assert_eq!((audit.event_id, audit.aggregate_id), (envelope.id, envelope.aggregate_id));
    assert_eq!(
        (audit.event_type.as_str(), audit.aggregate_type.as_str()),
        (envelope.event_type.as_str(), envelope.aggregate.as_str())
    );
    assert_eq!(
        (audit.sequence, audit.time, audit.correlation_id),
        (envelope.sequence as i64, envelope.time, envelope.correlation_id)
    );
    assert_eq!(serde_json::from_str::<serde_json::Value>(&audit.payload).unwrap(), envelope.payload);

    let state = projection_state::Entity::find_by_id(PROJECTION_NAME).one(&*db).await.unwrap().unwrap();
    let n = history.envelopes.len() as i64;
    assert_eq!((state.last_sequence, state.events_applied, state.events_skipped), (n, n, 0));
    assert_eq!(Projector::new(db.db.clone()).last_sequence().await.unwrap(), n as u64);
}

async fn redelivered_and_overlapping_batches_apply_each_event_once(backend: Backend) {
    let (history, facts) = mixed_history(2, 6);
    let events = history.raw();
    let n = events.len();

    let reference = test_db(backend).await;
    project(&reference, &events, 500).await;
    let expected = dump(&reference).await;

    // The same batch twice: the second time every event is a duplicate.
    let db = test_db(backend).await;
    let projector = Projector::new(db.db.clone());
    let first = projector.apply_batch(&events).await.unwrap();
    assert_eq!((first.applied, first.skipped_duplicates, first.last_sequence), (n as u64, 0, n as u64));
    let again = projector.apply_batch(&events).await.unwrap();
    assert_eq!((again.applied, again.skipped_duplicates, again.malformed), (0, n as u64, 0));
    assert_eq!(again.last_sequence, n as u64);
    assert_eq!(dump(&db).await, expected);

    // Overlapping batches, as after a crash between commit and acknowledgement.
    let db = test_db(backend).await;
    let projector = Projector::new(db.db.clone());
    let cuts = [(0, n / 2), (n / 3, 2 * n / 3), (n / 2, n), (n - 5, n)];
    for (start, end) in cuts {
        let outcome = projector.apply_batch(&events[start..end]).await.unwrap();
        let already = projector_position_before(&cuts, start, end);
        assert_eq!(
            outcome.skipped_duplicates as usize,
            already.clamp(start, end) - start,
            "{start}..{end}: {outcome:?}"
        );
    }
    assert_eq!(audit_events::Entity::find().count(&*db).await.unwrap(), n as u64);
    let (job, _, _) = facts[0].jobs[0];
    let row = jobs::Entity::find_by_id(job.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!(row.checkpoints, 2, "checkpoints counted once");
    let replica = replicas::Entity::find_by_id(facts[0].replica.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!(replica.points_recorded, facts[0].replica_points as i64);
    assert_eq!(dump(&db).await, expected);

    // The same event published again under a new stream sequence is audited but not re-applied.
    let checkpoint = history.envelopes.iter().position(|e| e.event_type == "JobCheckpointed").unwrap();
    let republished = RawEvent::from_envelope(n as u64 + 1, &history.envelopes[checkpoint]);
    let outcome = projector.apply_batch(&[republished]).await.unwrap();
    assert_eq!(outcome.applied, 1);
    let job = history.envelopes[checkpoint].aggregate_id;
    let row = jobs::Entity::find_by_id(job).one(&*db).await.unwrap().unwrap();
    assert_eq!(row.checkpoints, 2, "an event older than its row is not applied again");
}

/// The furthest stream position stored before the batch `start..end` of `cuts` is applied.
fn projector_position_before(cuts: &[(usize, usize)], start: usize, end: usize) -> usize {
    cuts.iter().take_while(|cut| **cut != (start, end)).map(|(_, e)| *e).max().unwrap_or(0)
}

async fn bad_events_are_recorded_and_skipped(backend: Backend) {
    let db = test_db(backend).await;
    let mut history = History::new();
    let t = TenantId::new();
    history.record(t, t, TenantCreated { name: "acme".into(), quota_bytes: None });
    let mut events = history.raw();

    let mut unknown = history.record(t, t, TenantRenamed { name: "never".into() }).clone();
    unknown.event_type = "TenantExploded".into();
    events.push(RawEvent::from_envelope(2, &unknown));

    let mut malformed = history.record(t, t, TenantRenamed { name: "never".into() }).clone();
    malformed.payload = serde_json::json!({"nom": 42});
    events.push(RawEvent::from_envelope(3, &malformed));

    events.push(RawEvent {
        stream_sequence: 4,
        subject: format!("arca.evt.{t}.tenant.{t}"),
        payload: "{not json".into(),
    });

    let misrouted = history.record(t, t, TenantRenamed { name: "never".into() }).clone();
    let mut misrouted = RawEvent::from_envelope(5, &misrouted);
    misrouted.subject = format!("arca.evt.{}.tenant.{t}", TenantId::new());
    events.push(misrouted);

    let mut future = history.record(t, t, TenantRenamed { name: "never".into() }).clone();
    future.schema_version = 99;
    events.push(RawEvent::from_envelope(6, &future));

    // Later good events still apply; their aggregate sequences continue after the bad ones.
    let good = history.record(t, t, TenantRenamed { name: "acme corp".into() }).clone();
    events.push(RawEvent::from_envelope(7, &good));

    let projector = Projector::new(db.db.clone());
    let outcome = projector.apply_batch(&events[..3]).await.unwrap();
    assert_eq!((outcome.applied, outcome.malformed, outcome.last_sequence), (1, 2, 3));
    let outcome = projector.apply_batch(&events[3..]).await.unwrap();
    assert_eq!((outcome.applied, outcome.malformed, outcome.last_sequence), (1, 3, 7));

    let errors = projection_errors::Entity::find().all(&*db).await.unwrap();
    let sequences: Vec<i64> = errors.iter().map(|e| e.stream_sequence).collect();
    assert_eq!(sequences, [2, 3, 4, 5, 6]);
    assert!(errors.iter().all(|e| e.subject.starts_with("arca.evt.")), "{errors:?}");
    let reasons: Vec<&str> = errors.iter().map(|e| e.error.as_str()).collect();
    assert!(reasons[0].contains("unknown event type `TenantExploded`"), "{reasons:?}");
    assert!(reasons[1].contains("malformed `TenantRenamed` payload"), "{reasons:?}");
    assert!(reasons[2].contains("not an event envelope"), "{reasons:?}");
    assert!(reasons[3].contains("does not match"), "{reasons:?}");
    assert!(reasons[4].contains("version 99"), "{reasons:?}");

    let tenant = tenants::Entity::find_by_id(t.as_uuid()).one(&*db).await.unwrap().unwrap();
    assert_eq!((tenant.name.as_str(), tenant.version), ("acme corp", good.sequence as i64));
    let audited: Vec<i64> =
        audit_events::Entity::find().all(&*db).await.unwrap().into_iter().map(|a| a.stream_sequence).collect();
    assert_eq!(audited, [1, 7]);
    let state = projection_state::Entity::find_by_id(PROJECTION_NAME).one(&*db).await.unwrap().unwrap();
    assert_eq!((state.last_sequence, state.events_applied, state.events_skipped), (7, 2, 5));

    // Redelivering the bad ones records nothing twice.
    let outcome = projector.apply_batch(&events).await.unwrap();
    assert_eq!((outcome.skipped_duplicates, outcome.malformed), (7, 0));
    assert_eq!(projection_errors::Entity::find().count(&*db).await.unwrap(), 5);
}

async fn batch_sizes_and_rebuilds_give_identical_tables(backend: Backend) {
    let (mut history, facts) = mixed_history(3, 6);
    // A bad event in the middle, so projection_errors takes part too.
    let mut bad = history.envelopes[40].clone();
    bad.event_type = "SnapshotTeleported".into();
    history.envelopes.insert(41, bad);
    let events = history.raw();

    let reference = test_db(backend).await;
    project(&reference, &events, 500).await;
    let expected = dump(&reference).await;
    assert_eq!(expected["audit_events"].len(), events.len() - 1);
    assert_eq!(expected["projection_errors"].len(), 1);
    assert_eq!(expected["tenants"].len(), facts.len());
    let empty: Vec<&String> = expected.iter().filter(|(_, rows)| rows.is_empty()).map(|(table, _)| table).collect();
    // The file index is filled from repositories, not from events.
    assert_eq!(empty, ["indexed_snapshots", "snapshot_files"], "every other table has rows");
    assert_eq!(expected.len(), 14, "every table: {:?}", expected.keys());
    let dumped: Vec<serde_json::Value> = expected["tenants"].iter().map(|row| row["id"].clone()).collect();
    let mut tenants: Vec<String> = facts.iter().map(|f| f.tenant.to_string()).collect();
    tenants.sort();
    assert_eq!(
        dumped,
        tenants.iter().map(|t| serde_json::json!(t)).collect::<Vec<_>>(),
        "rows sorted by key, ids as text"
    );
    let state = &expected["projection_state"][0];
    assert_eq!((&state["name"], &state["events_skipped"]), (&serde_json::json!("catalog"), &serde_json::json!(1)));

    for batch_size in [1, 7] {
        let db = test_db(backend).await;
        project(&db, &events, batch_size).await;
        assert_eq!(dump(&db).await, expected, "batches of {batch_size}");
    }
    let rebuild = test_db(backend).await;
    project(&rebuild, &events, 500).await;
    assert_eq!(dump(&rebuild).await, expected, "a rebuild into a fresh database");
}

/// Batches of 500 mixed events all land (the rate is printed; `--release -- --nocapture` shows
/// the real one, `make bench-control-plane` measures it).
async fn large_batches_of_a_mixed_history_are_all_projected(backend: Backend) {
    let db = test_db(backend).await;
    let (history, _) = mixed_history(20, 40);
    let events = history.raw();
    let projector = Projector::new(db.db.clone());
    let started = Instant::now();
    for batch in events.chunks(500) {
        projector.apply_batch(batch).await.unwrap();
    }
    let elapsed = started.elapsed();
    let rate = events.len() as f64 / elapsed.as_secs_f64();
    eprintln!("{backend:?}: projected {} events in batches of 500 in {elapsed:?}: {rate:.0} events/s", events.len());
    // The rate is printed, not asserted: speed lives in `make bench-control-plane`, and a
    // shared CI machine is no place for a timed assertion.
    assert_eq!(audit_events::Entity::find().count(&*db).await.unwrap(), events.len() as u64);
}
