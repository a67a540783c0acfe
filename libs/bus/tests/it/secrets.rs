use arca_bus::secrets::SecretStore;
use arca_domain::target::{Target, TargetCommand};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::*;

use crate::harness;

#[tokio::test]
async fn credentials_are_sealed_and_never_travel_in_events() {
    let h = harness().await;
    let secrets = SecretStore::open(&h.bus, &[7u8; 32]).await.unwrap();
    let tenant = TenantId::new();
    let create = TenantCommand::Create { name: "sealed".into(), quota_bytes: None };
    h.store.execute::<Tenant>(tenant, tenant, &create, &Metadata::new_root()).await.unwrap();

    let secret = b"AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let reference = secrets.put(tenant, secret).await.unwrap();
    let target = TargetId::new();
    let add = TargetCommand::Add {
        name: "offsite".into(),
        kind: TargetKind::S3,
        location: "s3://backups/acme".into(),
        settings: [("endpoint".to_string(), "https://s3.example.com".to_string())].into(),
        credentials: Some(reference),
    };
    h.store.execute::<Target>(tenant, target, &add, &Metadata::new_root()).await.unwrap();

    assert_eq!(secrets.get(tenant, reference).await.unwrap().as_deref(), Some(&secret[..]));
    assert_eq!(secrets.get(TenantId::new(), reference).await.unwrap(), None, "another tenant's key path");

    // Nothing on any stream holds the secret, in clear or as its parts.
    let mut stream = h.bus.jetstream().get_stream(arca_bus::EVENTS_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.unwrap();
        let text = String::from_utf8_lossy(&message.payload);
        assert!(!text.contains("wJalrXUtnFEMI") && !text.contains("AKIAEXAMPLE"), "secret in event {seq}: {text}");
    }
    let mut kv = h.bus.jetstream().get_stream("KV_arca-secrets").await.unwrap();
    let last = kv.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let message = kv.get_raw_message(seq).await.unwrap();
        assert!(!message.payload.windows(11).any(|w| w == b"AKIAEXAMPLE"), "sealed at rest");
    }

    secrets.delete(tenant, reference).await.unwrap();
    assert_eq!(secrets.get(tenant, reference).await.unwrap(), None);
}

#[tokio::test]
async fn a_secret_sealed_with_another_key_does_not_open() {
    let h = harness().await;
    let tenant = TenantId::new();
    let reference = SecretStore::open(&h.bus, &[1u8; 32]).await.unwrap().put(tenant, b"s3cr3t").await.unwrap();
    let other = SecretStore::open(&h.bus, &[2u8; 32]).await.unwrap();
    let error = other.get(tenant, reference).await.unwrap_err();
    assert!(error.to_string().contains("secret key"), "{error}");
}
