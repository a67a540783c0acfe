//! Stored events of old versions read as the current types.

use arca_events::*;

#[test]
fn a_stored_v1_policy_created_reads_as_the_current_type() {
    let bytes = include_bytes!("fixtures/policy_created_v1.json");
    let envelope = Envelope::from_json(bytes).unwrap();
    assert_eq!(envelope.schema_version, 1);
    let Event::PolicyCreated(policy) = envelope.event().unwrap() else { panic!("not a PolicyCreated") };
    assert_eq!(
        policy,
        PolicyCreated {
            name: "nightly".into(),
            source: "01938a6e-1111-7111-8111-111111111111".parse().unwrap(),
            target: "01938a6e-2222-7222-8222-222222222222".parse().unwrap(),
            schedule: Schedule::Cron { expression: "0 2 * * *".into(), timezone: "UTC".into() },
            misfire: Misfire::Skip,
            mode: BackupMode::Incremental,
            retention: Retention { keep_last: Some(14), ..Retention::default() },
            copy_targets: vec![],
            verify_schedule: None,
        }
    );
    assert_eq!(Event::PolicyCreated(policy).schema_version(), 2, "written back as the current version");
}

#[test]
fn a_v1_policy_without_keep_last_keeps_everything() {
    let mut envelope = Envelope::from_json(include_bytes!("fixtures/policy_created_v1.json")).unwrap();
    envelope.payload.as_object_mut().unwrap().remove("keep_last");
    let Event::PolicyCreated(policy) = envelope.event().unwrap() else { panic!("not a PolicyCreated") };
    assert!(policy.retention.keeps_everything());
}

#[test]
fn a_malformed_v1_payload_is_a_payload_error() {
    let mut envelope = Envelope::from_json(include_bytes!("fixtures/policy_created_v1.json")).unwrap();
    envelope.payload.as_object_mut().unwrap().insert("cron".into(), serde_json::json!(42));
    assert!(matches!(envelope.event(), Err(DecodeError::Payload { .. })));
}

#[test]
fn no_event_field_is_named_like_a_secret() {
    // A structural guard: credentials must travel as a `SecretRef`, never inline.
    let source = [include_str!("../src/event.rs"), include_str!("../src/types.rs")].concat();
    for line in source.lines().map(str::trim).filter(|l| l.starts_with("pub ") && l.contains(':')) {
        let field = line.trim_start_matches("pub ").split(':').next().unwrap().to_lowercase();
        for word in ["password", "secret_key", "access_key", "account_key", "token", "passphrase", "private"] {
            assert!(!field.contains(word), "event field `{field}` looks like a secret; carry a SecretRef instead");
        }
    }
}
