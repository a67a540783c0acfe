use arca_bus::{BusError, Version};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::*;
use chrono::Utc;

use crate::harness;

fn tenant_ref(tenant: TenantId) -> AggregateRef {
    AggregateRef::new(tenant, AggregateType::Tenant, tenant)
}

async fn create_tenant(h: &crate::Harness, name: &str) -> TenantId {
    let tenant = TenantId::new();
    let command = TenantCommand::Create { name: name.into(), quota_bytes: None };
    h.store.execute::<Tenant>(tenant, tenant, &command, &Metadata::new_root()).await.expect("create tenant");
    tenant
}

#[tokio::test]
async fn appended_events_load_back_in_order_with_versions() {
    let h = harness().await;
    let tenant = create_tenant(&h, "acme").await;
    let renamed = h
        .store
        .execute::<Tenant>(tenant, tenant, &TenantCommand::Rename { name: "acme corp".into() }, &Metadata::new_root())
        .await
        .unwrap();
    assert_eq!(renamed.version.sequence, 2);
    let loaded = h.store.load(tenant_ref(tenant)).await.unwrap();
    let types: Vec<_> = loaded.events.iter().map(|e| e.envelope.event_type.as_str()).collect();
    assert_eq!(types, ["TenantCreated", "TenantRenamed"]);
    assert_eq!(loaded.events.iter().map(|e| e.envelope.sequence).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(loaded.version, renamed.version);
    let (state, _) = h.store.load_state::<Tenant>(tenant, tenant.as_uuid()).await.unwrap();
    assert_eq!(state, renamed.state);

    let empty = h.store.load(tenant_ref(TenantId::new())).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.version, Version::default());
    // The last event's stream sequence, in one read: what a read model must have applied.
    assert_eq!(h.store.last_stream_sequence(tenant_ref(tenant)).await.unwrap(), Some(renamed.version.stream_sequence));
    assert_eq!(h.store.last_stream_sequence(tenant_ref(TenantId::new())).await.unwrap(), None);
}

#[tokio::test]
async fn two_writers_at_one_version_exactly_one_wins() {
    let h = harness().await;
    let tenant = create_tenant(&h, "race").await;
    let loaded = h.store.load(tenant_ref(tenant)).await.unwrap();
    let meta = Metadata::new_root();
    let a = Event::from(TenantRenamed { name: "a".into() });
    let b = Event::from(TenantRenamed { name: "b".into() });
    let (ra, rb) = tokio::join!(
        h.store.append(tenant_ref(tenant), loaded.version, std::slice::from_ref(&a), &meta, Utc::now()),
        h.store.append(tenant_ref(tenant), loaded.version, std::slice::from_ref(&b), &meta, Utc::now()),
    );
    let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{ra:?} {rb:?}");
    let loser = if ra.is_err() { ra } else { rb };
    assert!(matches!(loser, Err(BusError::Conflict { .. })), "{loser:?}");
    assert!(loser.unwrap_err().is_retryable());
    assert_eq!(h.store.load(tenant_ref(tenant)).await.unwrap().events.len(), 2);
}

#[tokio::test]
async fn racing_commands_all_end_correctly_through_retries() {
    let h = harness().await;
    let tenant = create_tenant(&h, "busy").await;
    let mut tasks = Vec::new();
    for used in 1..=16u64 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let command = TenantCommand::ReportUsage { used_bytes: used * 1000 };
            store.execute::<Tenant>(tenant, tenant, &command, &Metadata::new_root()).await
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap().expect("every command ends correctly").conflicts;
    }
    let loaded = h.store.load(tenant_ref(tenant)).await.unwrap();
    assert_eq!(loaded.events.len(), 17, "one creation and sixteen usage reports");
    let sequences: Vec<u64> = loaded.events.iter().map(|e| e.envelope.sequence).collect();
    assert_eq!(sequences, (1..=17).collect::<Vec<_>>(), "no gaps, no duplicates");
    let mut reported: Vec<u64> = loaded.events[1..]
        .iter()
        .map(|e| match e.envelope.event().unwrap() {
            Event::TenantUsageReported(r) => r.used_bytes,
            other => panic!("{other:?}"),
        })
        .collect();
    reported.sort();
    assert_eq!(reported, (1..=16).map(|u| u * 1000).collect::<Vec<_>>());
    assert!(conflicts > 0, "sixteen concurrent writers on one aggregate should have raced");
}

#[tokio::test]
async fn the_same_event_published_twice_is_stored_once() {
    let h = harness().await;
    let tenant = TenantId::new();
    let envelope = Envelope::new(
        tenant_ref(tenant),
        1,
        &TenantCreated { name: "once".into(), quota_bytes: None }.into(),
        Utc::now(),
        &Metadata::new_root(),
    );
    let first = h.store.append_envelopes(tenant_ref(tenant), Version::default(), vec![envelope.clone()]).await.unwrap();
    // A retry after a lost ack: same event id, same expectation.
    let second = h.store.append_envelopes(tenant_ref(tenant), Version::default(), vec![envelope]).await.unwrap();
    assert_eq!(first[0].stream_sequence, second[0].stream_sequence);
    assert_eq!(h.store.load(tenant_ref(tenant)).await.unwrap().events.len(), 1);
    assert_eq!(h.store.last_sequence().await.unwrap(), first[0].stream_sequence);
}

#[tokio::test]
async fn several_events_of_one_command_are_stored_together_or_not_at_all() {
    let h = harness().await;
    let tenant = create_tenant(&h, "batch").await;
    let loaded = h.store.load(tenant_ref(tenant)).await.unwrap();
    let events: Vec<Event> =
        vec![TenantRenamed { name: "x".into() }.into(), TenantQuotaSet { quota_bytes: Some(10) }.into()];
    let stored =
        h.store.append(tenant_ref(tenant), loaded.version, &events, &Metadata::new_root(), Utc::now()).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].stream_sequence, stored[0].stream_sequence + 1);
    assert_eq!((stored[0].envelope.sequence, stored[1].envelope.sequence), (2, 3));

    // A stale batch: nothing of it is stored.
    let stale = h.store.append(tenant_ref(tenant), loaded.version, &events, &Metadata::new_root(), Utc::now()).await;
    assert!(matches!(stale, Err(BusError::Conflict { .. })), "{stale:?}");
    let after = h.store.load(tenant_ref(tenant)).await.unwrap();
    assert_eq!(after.events.len(), 3);
}

#[tokio::test]
async fn a_refused_command_writes_nothing() {
    let h = harness().await;
    let tenant = create_tenant(&h, "gone").await;
    h.store.execute::<Tenant>(tenant, tenant, &TenantCommand::Delete, &Metadata::new_root()).await.unwrap();
    let result = h
        .store
        .execute::<Tenant>(tenant, tenant, &TenantCommand::Rename { name: "back".into() }, &Metadata::new_root())
        .await;
    assert!(matches!(result, Err(arca_bus::ExecuteError::Domain(_))), "{result:?}");
    assert_eq!(h.store.load(tenant_ref(tenant)).await.unwrap().events.len(), 2);
}

#[tokio::test]
async fn trace_context_travels_in_the_envelope_and_the_headers() {
    let h = harness().await;
    let meta = Metadata::new_root();
    let tenant = TenantId::new();
    let command = TenantCommand::Create { name: "traced".into(), quota_bytes: None };
    h.store.execute::<Tenant>(tenant, tenant, &command, &meta).await.unwrap();
    let stream = h.bus.jetstream().get_stream(arca_bus::EVENTS_STREAM).await.unwrap();
    let message = stream.direct_get_last_for_subject(tenant_ref(tenant).subject()).await.unwrap();
    let from_headers = arca_bus::headers::trace_of(Some(&message.headers)).expect("traceparent header");
    assert_eq!(Some(&from_headers), meta.trace.as_ref());
    let envelope = Envelope::from_json(&message.payload).unwrap();
    assert_eq!(envelope.trace, meta.trace);
    assert_eq!(envelope.correlation_id, meta.correlation_id);
}

#[tokio::test]
async fn a_retried_batch_whose_ack_was_lost_is_not_a_conflict() {
    let h = harness().await;
    let tenant = create_tenant(&h, "retry").await;
    let loaded = h.store.load(tenant_ref(tenant)).await.unwrap();
    let meta = Metadata::new_root();
    let envelopes: Vec<Envelope> =
        [Event::from(TenantRenamed { name: "y".into() }), TenantQuotaSet { quota_bytes: Some(5) }.into()]
            .iter()
            .enumerate()
            .map(|(i, event)| {
                Envelope::new(tenant_ref(tenant), loaded.version.sequence + 1 + i as u64, event, Utc::now(), &meta)
            })
            .collect();
    let first = h.store.append_envelopes(tenant_ref(tenant), loaded.version, envelopes.clone()).await.unwrap();
    let retried = h.store.append_envelopes(tenant_ref(tenant), loaded.version, envelopes).await.unwrap();
    assert_eq!(first, retried);
    assert_eq!(h.store.load(tenant_ref(tenant)).await.unwrap().events.len(), 3, "stored once");
}
