//! `arca catalog rebuild` against a real nats-server and SQLite.

use std::process::Command;

use arca_bus::{Bus, BusConfig, Version};
use arca_events::*;
use chrono::Utc;

fn arca(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arca")).args(args).output().expect("run arca")
}

#[test]
fn rebuild_replays_the_log_into_an_empty_database_and_refuses_a_full_one() {
    let server = arca_testkit::nats_server();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = Bus::connect(BusConfig::new(server.url.clone())).await.unwrap();
        let store = bus.event_store().await.unwrap();
        for name in ["acme", "globex", "initech"] {
            let tenant = TenantId::new();
            let event = Event::from(TenantCreated { name: name.into(), quota_bytes: None });
            let aggregate = AggregateRef::new(tenant, AggregateType::Tenant, tenant);
            store.append(aggregate, Version::default(), &[event], &Metadata::new_root(), Utc::now()).await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display());

    let out = arca(&["catalog", "rebuild", "--nats", &server.url, "--database", &database, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events"], 3);

    let again = arca(&["catalog", "rebuild", "--nats", &server.url, "--database", &database]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not empty") || stderr.contains("empty database"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let unreachable = arca(&["catalog", "rebuild", "--nats", "nats://127.0.0.1:1", "--database", &database]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("127.0.0.1:1"));
}
