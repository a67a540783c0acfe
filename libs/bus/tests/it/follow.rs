use std::time::Duration;

use arca_bus::follow::durable_consumer;
use arca_events::*;
use futures::StreamExt;

use crate::harness;

async fn append_tenants(h: &crate::Harness, count: usize) {
    for _ in 0..count {
        let tenant = TenantId::new();
        let event = Event::from(TenantCreated { name: "t".into(), quota_bytes: None });
        let aggregate = AggregateRef::new(tenant, AggregateType::Tenant, tenant);
        h.store
            .append(aggregate, Default::default(), &[event], &Metadata::new_root(), chrono::Utc::now())
            .await
            .unwrap();
    }
}

async fn next_sequences(consumer: &async_nats::jetstream::consumer::PullConsumer, count: usize) -> Vec<u64> {
    let mut batch = consumer.fetch().max_messages(count).expires(Duration::from_secs(1)).messages().await.unwrap();
    let mut sequences = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        sequences.push(message.info().unwrap().stream_sequence);
        if sequences.len() == count {
            message.ack().await.unwrap();
        }
    }
    sequences
}

#[tokio::test]
async fn a_durable_reader_continues_from_its_own_position() {
    let h = harness().await;
    append_tenants(&h, 6).await;
    let consumer = durable_consumer(&h.bus, "reader", None, 2).await.unwrap();
    assert_eq!(next_sequences(&consumer, 2).await, [3, 4]);
    // A clean stop at 4: reused, continues at 5.
    let consumer = durable_consumer(&h.bus, "reader", None, 4).await.unwrap();
    assert_eq!(next_sequences(&consumer, 1).await, [5]);
    // The reader lost its last event (crash before commit): delivered 5, applied 4 → back to 5.
    let consumer = durable_consumer(&h.bus, "reader", None, 4).await.unwrap();
    assert_eq!(next_sequences(&consumer, 2).await, [5, 6]);
    // A reader rebuilt from nothing starts at the beginning.
    let consumer = durable_consumer(&h.bus, "reader", None, 0).await.unwrap();
    assert_eq!(next_sequences(&consumer, 6).await, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_filtered_reader_sees_only_its_subjects() {
    let h = harness().await;
    append_tenants(&h, 2).await;
    let tenant = TenantId::new();
    let job = JobId::new();
    let aggregate = AggregateRef::new(tenant, AggregateType::Job, job);
    let event = Event::from(JobCancelled { reason: None });
    let stored = h
        .store
        .append(aggregate, Default::default(), &[event], &Metadata::new_root(), chrono::Utc::now())
        .await
        .unwrap();
    let consumer = durable_consumer(&h.bus, "jobs-only", Some("arca.evt.*.job.*"), 0).await.unwrap();
    assert_eq!(next_sequences(&consumer, 1).await, [stored[0].stream_sequence]);
}
