use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{BOOTSTRAP_KEY, TestApp, assert_problem, spawn_app};

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let app = spawn_app().await;
    let health = app.request(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["status"], "ready");
    assert!(ready.body["catalog"]["last_applied"].is_u64(), "{ready:?}");
    let metrics = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK, "{metrics:?}");
    assert!(metrics.content_type.starts_with("text/plain"), "{metrics:?}");
}

#[tokio::test]
async fn requests_without_a_good_key_are_401() {
    let app = spawn_app().await;
    for key in [None, Some("arca_not_a_key_at_all_0000000000")] {
        let answer = app.request(Method::GET, "/v1/targets", key, None).await;
        assert_problem(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let answer = app.request(Method::POST, "/v1/tenants", None, Some(json!({ "name": "x" }))).await;
    assert_problem(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn define_backup(app: &TestApp, key: &str) -> (String, String, String) {
    let target = app.create("/v1/targets", key, json!({ "name": "primary", "location": "fs:///srv/backup/a" })).await;
    let source = app.create("/v1/sources", key, json!({ "name": "docs", "paths": ["/home", "/etc"] })).await;
    let (target, source) = (target["id"].as_str().unwrap().to_owned(), source["id"].as_str().unwrap().to_owned());
    let policy = app
        .create(
            "/v1/policies",
            key,
            json!({
                "name": "nightly", "source": source, "target": target,
                "schedule": { "type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin" },
                "retention": { "keep_daily": 7 }
            }),
        )
        .await;
    (target, source, policy["id"].as_str().unwrap().to_owned())
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect()
}

async fn listed(app: &TestApp, path: &str, key: &str, count: usize) -> Value {
    app.eventually(Method::GET, path, Some(key), None, |a| {
        a.status == StatusCode::OK && a.body["items"].as_array().is_some_and(|items| items.len() == count)
    })
    .await
    .body
}

#[tokio::test]
async fn a_tenant_admin_defines_a_backup_and_lists_it() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_key("acme", "tenant_admin").await;
    let (target, source, policy) = define_backup(&app, &key).await;
    assert_eq!(ids(&listed(&app, "/v1/targets", &key, 1).await), [target.as_str()]);
    assert_eq!(ids(&listed(&app, "/v1/sources", &key, 1).await), [source.as_str()]);
    let policies = listed(&app, "/v1/policies", &key, 1).await;
    assert_eq!(ids(&policies), [policy.as_str()]);
    assert_eq!(policies["items"][0]["schedule"]["timezone"], "Europe/Berlin");
    // Credentials are write-only: the list says only that there are none.
    let targets = listed(&app, "/v1/targets", &key, 1).await;
    assert_eq!(targets["items"][0]["has_credentials"], false);

    // Run now: a backup job of that policy appears in the jobs list and by id.
    let job =
        app.create(&format!("/v1/policies/{policy}/run"), &key, json!(null)).await["job"].as_str().unwrap().to_owned();
    assert_eq!(ids(&listed(&app, "/v1/jobs", &key, 1).await), [job.as_str()]);
    let shown = app.request(Method::GET, &format!("/v1/jobs/{job}"), Some(&key), None).await;
    assert_eq!(shown.status, StatusCode::OK, "{shown:?}");
    assert_eq!(shown.body["kind"], "backup");
    assert_eq!(shown.body["policy_id"], policy.as_str());
    assert_eq!(listed(&app, "/v1/snapshots", &key, 0).await["next_cursor"], Value::Null);

    // The MSP admin sees the same by naming the tenant, and gets 400 without it.
    assert_eq!(ids(&listed(&app, &format!("/v1/targets?tenant={tenant}"), BOOTSTRAP_KEY, 1).await), [target.as_str()]);
    let unnamed = app.request(Method::GET, "/v1/targets", Some(BOOTSTRAP_KEY), None).await;
    assert_problem(&unnamed, StatusCode::BAD_REQUEST, "tenant_required");
    let tenants = listed(&app, "/v1/tenants", BOOTSTRAP_KEY, 1).await;
    assert_eq!(ids(&tenants), [tenant.as_str()]);
}

#[tokio::test]
async fn another_tenant_sees_nothing_of_it() {
    let app = spawn_app().await;
    let (tenant_a, key_a) = app.tenant_with_key("a", "tenant_admin").await;
    let (_, key_b) = app.tenant_with_key("b", "tenant_admin").await;
    let (_, source_a, policy_a) = define_backup(&app, &key_a).await;
    let job_a = app.create(&format!("/v1/policies/{policy_a}/run"), &key_a, json!(null)).await["job"]
        .as_str()
        .unwrap()
        .to_owned();
    listed(&app, "/v1/jobs", &key_a, 1).await;
    listed(&app, "/v1/policies", &key_a, 1).await;

    let run = app.request(Method::POST, &format!("/v1/policies/{policy_a}/run"), Some(&key_b), None).await;
    assert_problem(&run, StatusCode::NOT_FOUND, "not_found");
    let job = app.request(Method::GET, &format!("/v1/jobs/{job_a}"), Some(&key_b), None).await;
    assert_problem(&job, StatusCode::NOT_FOUND, "not_found");
    for list in ["/v1/targets", "/v1/sources", "/v1/policies", "/v1/jobs", "/v1/snapshots"] {
        let page = app.request(Method::GET, list, Some(&key_b), None).await;
        assert_eq!(page.status, StatusCode::OK, "{list}: {page:?}");
        assert_eq!(page.body["items"], json!([]), "{list}: {page:?}");
        // Naming tenant A does not help.
        let named = app.request(Method::GET, &format!("{list}?tenant={tenant_a}"), Some(&key_b), None).await;
        assert_problem(&named, StatusCode::NOT_FOUND, "not_found");
    }
    // Nor can B build on A's objects, or make keys for A.
    let policy = app
        .request(
            Method::POST,
            "/v1/policies",
            Some(&key_b),
            Some(json!({ "name": "steal", "source": source_a, "target": source_a,
                         "schedule": { "type": "interval", "seconds": 3600 } })),
        )
        .await;
    assert_problem(&policy, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let key = app
        .request(
            Method::POST,
            &format!("/v1/tenants/{tenant_a}/api-keys"),
            Some(&key_b),
            Some(json!({ "name": "x", "role": "viewer" })),
        )
        .await;
    assert_problem(&key, StatusCode::NOT_FOUND, "not_found");
    // Tenants are the MSP's.
    let tenants = app.request(Method::GET, "/v1/tenants", Some(&key_b), None).await;
    assert_problem(&tenants, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_viewer_reads_but_every_write_is_403() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_key("acme", "tenant_admin").await;
    let (_, _, policy) = define_backup(&app, &admin).await;
    let viewer = app.key_for(&tenant, "viewer").await;
    let operator = app.key_for(&tenant, "operator").await;
    let writes = [
        ("/v1/tenants".to_owned(), json!({ "name": "x" })),
        (format!("/v1/tenants/{tenant}/api-keys"), json!({ "name": "x", "role": "viewer" })),
        ("/v1/targets".to_owned(), json!({ "name": "t", "location": "fs:///x" })),
        ("/v1/sources".to_owned(), json!({ "name": "s", "paths": ["/x"] })),
        ("/v1/policies".to_owned(), json!({})),
        (format!("/v1/policies/{policy}/run"), json!(null)),
    ];
    for (path, body) in &writes {
        let answer = app.request(Method::POST, path, Some(&viewer), Some(body.clone())).await;
        assert_problem(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    // An operator runs jobs but does not change configuration.
    let answer = app.request(Method::POST, &writes[2].0, Some(&operator), Some(writes[2].1.clone())).await;
    assert_problem(&answer, StatusCode::FORBIDDEN, "forbidden");
    let run = app.request(Method::POST, &writes[5].0, Some(&operator), None).await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{run:?}");
    let page = listed(&app, "/v1/policies", &viewer, 1).await;
    assert_eq!(ids(&page), [policy.as_str()]);
}

#[tokio::test]
async fn bad_input_gets_a_problem_document_and_changes_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_key("acme", "tenant_admin").await;
    // A rule of the domain: its machine code and the field.
    let answer =
        app.request(Method::POST, "/v1/sources", Some(&key), Some(json!({ "name": " ", "paths": ["/home"] }))).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert_eq!(answer.body["field"], "name");
    // Unknown fields, wrong types, unknown enum values, malformed JSON, huge bodies.
    let unknown = json!({ "name": "t", "location": "fs:///x", "password": "hunter2" });
    assert_problem(
        &app.request(Method::POST, "/v1/targets", Some(&key), Some(unknown)).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    let wrong_type = json!({ "name": "s", "paths": "/home" });
    assert_problem(
        &app.request(Method::POST, "/v1/sources", Some(&key), Some(wrong_type)).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    let bad_enum = json!({ "name": "s", "paths": ["/x"], "kind": "floppy" });
    assert_problem(
        &app.request(Method::POST, "/v1/sources", Some(&key), Some(bad_enum)).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_problem(
        &app.raw("/v1/sources", &key, "{\"name\": ".into()).await,
        StatusCode::BAD_REQUEST,
        "malformed_body",
    );
    let huge = json!({ "name": "s", "paths": vec!["/x".repeat(1000); 100] }).to_string();
    assert_problem(&app.raw("/v1/sources", &key, huge).await, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let bad_id = app.request(Method::GET, "/v1/jobs/not-an-id", Some(&key), None).await;
    assert_problem(&bad_id, StatusCode::BAD_REQUEST, "invalid_path");
    let bad_location = json!({ "name": "t", "location": "ftp://x" });
    let answer = app.request(Method::POST, "/v1/targets", Some(&key), Some(bad_location)).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert_eq!(answer.body["field"], "location");
    // None of it was written: a good source after all the bad ones is the only one.
    app.create("/v1/sources", &key, json!({ "name": "docs", "paths": ["/home"] })).await;
    listed(&app, "/v1/sources", &key, 1).await;
    let targets = app.request(Method::GET, "/v1/targets", Some(&key), None).await;
    assert_eq!(targets.body["items"], json!([]));
}

#[tokio::test]
async fn target_credentials_need_a_server_key_and_are_never_returned() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_key("acme", "tenant_admin").await;
    let body = json!({ "name": "s3", "location": "s3://bucket/acme",
                       "credentials": { "access_key_id": "AKIA", "secret_access_key": "sekrit" } });
    // This gateway has no server key, so it cannot seal them: refused, nothing stored.
    let answer = app.request(Method::POST, "/v1/targets", Some(&key), Some(body)).await;
    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE, "no_server_key");
    let targets = app.request(Method::GET, "/v1/targets", Some(&key), None).await;
    assert!(!targets.body.to_string().contains("sekrit"));
}
