//! The gateway's caches (API keys by hash, snapshot pages) against changes made elsewhere:
//! with a TTL of an hour, only the events the gateway follows can make it let go, so these
//! fail if it stops following them.

use std::time::Duration;

use arca_bus::{Bus, BusConfig, EventStore, Version};
use arca_domain::api_key::{ApiKey, ApiKeyCommand};
use arca_events::{AggregateRef, AggregateType, Event, Metadata, SnapshotCommitted, SnapshotId, TargetId, TenantId};
use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{BOOTSTRAP_KEY, TestApp, spawn_app_with};

async fn app_with_long_cache() -> TestApp {
    spawn_app_with(|config| {
        config.key_cache_ttl = Duration::from_secs(3600);
        config.page_cache_ttl = Duration::from_secs(3600);
    })
    .await
}

async fn event_store(app: &TestApp) -> EventStore {
    let bus = Bus::connect(BusConfig::new(app.nats_url())).await.expect("connect to NATS");
    bus.event_store().await.expect("open the event store")
}

#[tokio::test]
async fn a_cached_key_revoked_elsewhere_is_refused_once_its_event_arrives() {
    let app = app_with_long_cache().await;
    let (tenant, admin) = app.tenant_with_key("revoked-elsewhere", "tenant_admin").await;
    let viewer = app.key_for(&tenant, "viewer").await;
    // The viewer key answered, so the gateway holds it.
    assert_eq!(app.request(Method::GET, "/v1/jobs", Some(&viewer), None).await.status, StatusCode::OK);
    let keys = app.request(Method::GET, &format!("/v1/tenants/{tenant}/api-keys"), Some(&admin), None).await;
    let id = keys.body["items"].as_array().unwrap().iter().find(|k| k["role"] == "viewer").unwrap()["id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();

    // Revoked the way `arca` control commands do it: straight through the event store.
    let store = event_store(&app).await;
    let tenant_id: TenantId = tenant.parse().unwrap();
    let revoke = ApiKeyCommand::Revoke { reason: Some("revoked elsewhere".into()) };
    store.execute::<ApiKey>(tenant_id, id, &revoke, &Metadata::new_root()).await.expect("revoke the key");

    app.eventually(Method::GET, "/v1/jobs", Some(&viewer), None, |a| a.status == StatusCode::UNAUTHORIZED).await;
    // And it stays refused: the catalog has it revoked too by now, the cache never brings it back.
    app.eventually(Method::GET, &format!("/v1/tenants/{tenant}/api-keys"), Some(&admin), None, |a| {
        a.body["items"].as_array().is_some_and(|items| items.iter().any(|k| k["status"] == "revoked"))
    })
    .await;
    assert_eq!(app.request(Method::GET, "/v1/jobs", Some(&viewer), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.request(Method::GET, "/v1/jobs", Some(&admin), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_cached_snapshot_page_follows_the_tenants_snapshots_and_no_other_tenants() {
    let app = app_with_long_cache().await;
    let (tenant, admin) = app.tenant_with_key("pages", "tenant_admin").await;
    let (other, other_admin) = app.tenant_with_key("other-pages", "tenant_admin").await;
    let store = event_store(&app).await;
    let items = |answer: &crate::helpers::Answer| answer.body["items"].as_array().cloned().unwrap_or_default();

    // Both tenants' first pages are empty, and now cached.
    for key in [&admin, &other_admin] {
        let page = app.request(Method::GET, "/v1/snapshots", Some(key), None).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        assert!(items(&page).is_empty(), "{page:?}");
    }

    let first = commit_snapshot(&store, tenant.parse().unwrap(), 1).await;
    let page = app.eventually(Method::GET, "/v1/snapshots", Some(&admin), None, |a| items(a).len() == 1).await;
    assert_eq!(items(&page)[0]["id"], first.to_string());
    assert_eq!(items(&page)[0]["locked_until"], Value::Null);
    let of_other = app.request(Method::GET, "/v1/snapshots", Some(&other_admin), None).await;
    assert!(items(&of_other).is_empty(), "another tenant's page shows none of it: {of_other:?}");

    // A change to a listed snapshot (a lock through the API) shows on the cached page.
    let until = "2031-01-01T00:00:00Z";
    let locked = app
        .request(Method::POST, &format!("/v1/snapshots/{first}/lock"), Some(&admin), Some(json!({ "until": until })))
        .await;
    assert_eq!(locked.status, StatusCode::OK, "{locked:?}");
    app.eventually(Method::GET, "/v1/snapshots", Some(&admin), None, |a| {
        items(a).first().is_some_and(|s| s["locked_until"].as_str().is_some_and(|t| t.starts_with("2031-01-01")))
    })
    .await;

    // The other tenant's own snapshot shows on its page, and an MSP admin naming it sees the same.
    commit_snapshot(&store, other.parse().unwrap(), 2).await;
    app.eventually(Method::GET, "/v1/snapshots", Some(&other_admin), None, |a| items(a).len() == 1).await;
    let as_msp = app.request(Method::GET, &format!("/v1/snapshots?tenant={other}"), Some(BOOTSTRAP_KEY), None).await;
    assert_eq!(items(&as_msp).len(), 1, "{as_msp:?}");
    assert_eq!(items(&app.request(Method::GET, "/v1/snapshots", Some(&admin), None).await).len(), 1);
}

/// Appends a committed snapshot of `tenant` (as the transport service does after a backup).
async fn commit_snapshot(store: &EventStore, tenant: TenantId, n: u64) -> SnapshotId {
    let id = SnapshotId::new();
    let event = Event::from(SnapshotCommitted {
        target: TargetId::new(),
        repo_snapshot: format!("{n:064x}"),
        time: Utc::now(),
        host: "cache-test".into(),
        paths: vec!["/home".into()],
        tags: vec![],
        source: None,
        policy: None,
        job: None,
        files: n,
        size_bytes: n * 1000,
        added_bytes: n * 10,
        partial: false,
    });
    let aggregate = AggregateRef::new(tenant, AggregateType::Snapshot, id);
    store.append(aggregate, Version::default(), &[event], &Metadata::new_root(), Utc::now()).await.expect("append");
    id
}
