//! Replacing and removing targets, sources and policies: `ETag` from `GET`, `If-Match` on
//! `PUT` and `DELETE` (412 when stale, and nothing changes), roles, write-only credentials,
//! and what is still in use is not removed.

use arca_worker::keys::ServerKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, TestApp, assert_problem, spawn_app_with};

/// What a request with an `If-Match` answered, with its `ETag`.
struct Tagged {
    answer: Answer,
    etag: Option<String>,
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Tagged {
    let mut request = app.http.request(method, format!("{}{path}", app.base)).bearer_auth(key);
    if let Some(version) = if_match {
        request = request.header("If-Match", version);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Tagged { answer: Answer { status, content_type, body }, etag }
}

/// `GET path` once the catalog shows `version` of it.
async fn read_version(app: &TestApp, path: &str, key: &str, version: u64) -> Value {
    app.eventually(Method::GET, path, Some(key), None, |a| a.body["version"] == version).await.body
}

fn with_server_key(config: &mut arca_api_gateway::GatewayConfig) {
    config.server_key = Some(ServerKey::from_bytes([9; 32]));
}

#[tokio::test]
async fn a_target_is_read_replaced_and_removed_by_its_etag_and_a_stale_one_changes_nothing() {
    let app = spawn_app_with(with_server_key).await;
    let (tenant, admin) = app.tenant_with_key("acme", "tenant_admin").await;
    let created = app
        .create(
            "/v1/targets",
            &admin,
            json!({ "name": "offsite", "location": "s3://acme-backups/arca",
                    "settings": { "endpoint": "https://s3.example.com", "region": "eu-central-1" },
                    "credentials": { "access_key_id": "AKIAFIRST", "secret_access_key": "first-sekrit" } }),
        )
        .await;
    let path = format!("/v1/targets/{}", created["id"].as_str().unwrap());
    app.eventually(Method::GET, &path, Some(&admin), None, |a| a.status == StatusCode::OK).await;
    let read = send(&app, Method::GET, &path, &admin, None, None).await;
    assert_eq!(read.etag.as_deref(), Some("\"1\""), "{:?}", read.answer);
    assert_eq!(read.answer.body["has_credentials"], true);

    // Replaced with the version read: the new version comes back as the ETag; the
    // credentials, left out, stay (they are never shown, so a client cannot send them back).
    let replace = json!({ "name": "offsite-eu", "settings": { "region": "eu-west-1" } });
    let replaced = send(&app, Method::PUT, &path, &admin, Some("\"1\""), Some(replace)).await;
    assert_eq!(replaced.answer.status, StatusCode::OK, "{:?}", replaced.answer);
    assert_eq!(replaced.etag.as_deref(), Some("\"2\""));
    assert_eq!(replaced.answer.body["version"], 2);
    // A read right after the change sees it (the read waits for the catalog to apply it).
    let now = send(&app, Method::GET, &path, &admin, None, None).await;
    assert_eq!(
        (now.etag.as_deref(), &now.answer.body["name"]),
        (Some("\"2\""), &json!("offsite-eu")),
        "{:?}",
        now.answer
    );
    let now = read_version(&app, &path, &admin, 2).await;
    assert_eq!((now["name"].as_str(), now["settings"].clone()), (Some("offsite-eu"), json!({ "region": "eu-west-1" })));
    assert_eq!(
        (now["location"].as_str(), now["has_credentials"].as_bool()),
        (Some("s3://acme-backups/arca"), Some(true))
    );

    // A change based on version 1 is refused and writes nothing: version 2 is still current.
    let stale =
        send(&app, Method::PUT, &path, &admin, Some("\"1\""), Some(json!({ "name": "stale", "settings": {} }))).await;
    assert_problem(&stale.answer, StatusCode::PRECONDITION_FAILED, "stale_version");
    let stale_delete = send(&app, Method::DELETE, &path, &admin, Some("\"1\""), None).await;
    assert_problem(&stale_delete.answer, StatusCode::PRECONDITION_FAILED, "stale_version");

    // Bad input: refused with the field named, and nothing changes either.
    let unknown_field = json!({ "name": "moved", "location": "s3://elsewhere/arca" });
    let refused = send(&app, Method::PUT, &path, &admin, None, Some(unknown_field)).await;
    assert_eq!(refused.answer.status, StatusCode::BAD_REQUEST, "{:?}", refused.answer);
    let wrong_setting = json!({ "name": "offsite-eu", "settings": { "account_name": "azure-only" } });
    let refused = send(&app, Method::PUT, &path, &admin, None, Some(wrong_setting)).await;
    assert_problem(&refused.answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert_eq!(refused.answer.body["field"], "settings");
    let not_an_etag = send(&app, Method::PUT, &path, &admin, Some("yesterday"), Some(json!({ "name": "x" }))).await;
    assert_problem(&not_an_etag.answer, StatusCode::BAD_REQUEST, "invalid_if_match");

    // A viewer reads it but changes nothing; an operator neither.
    let viewer = app.key_for(&tenant, "viewer").await;
    let operator = app.key_for(&tenant, "operator").await;
    assert_eq!(send(&app, Method::GET, &path, &viewer, None, None).await.answer.status, StatusCode::OK);
    for key in [&viewer, &operator] {
        let put = send(&app, Method::PUT, &path, key, None, Some(json!({ "name": "mine" }))).await;
        assert_problem(&put.answer, StatusCode::FORBIDDEN, "forbidden");
        let delete = send(&app, Method::DELETE, &path, key, None, None).await;
        assert_problem(&delete.answer, StatusCode::FORBIDDEN, "forbidden");
    }

    // Version 2 is current: the stale and refused requests wrote nothing.
    let rotate = json!({ "name": "offsite-eu", "settings": { "region": "eu-west-1" },
                         "credentials": { "access_key_id": "AKIASECOND", "secret_access_key": "second-sekrit" } });
    let rotated = send(&app, Method::PUT, &path, &admin, Some("\"2\""), Some(rotate)).await;
    assert_eq!(rotated.answer.status, StatusCode::OK, "{:?}", rotated.answer);
    assert_eq!(rotated.etag.as_deref(), Some("\"3\""));
    let now = read_version(&app, &path, &admin, 3).await;
    assert_eq!(now["name"], "offsite-eu");
    let shown = format!("{now}{}", app.request(Method::GET, "/v1/targets", Some(&admin), None).await.body);
    for secret in ["first-sekrit", "second-sekrit", "AKIAFIRST", "AKIASECOND"] {
        assert!(!shown.contains(secret), "credentials are write-only: {shown}");
    }
    // `{}` removes them.
    let cleared = send(
        &app,
        Method::PUT,
        &path,
        &admin,
        Some("\"3\""),
        Some(json!({ "name": "offsite-eu",
        "settings": { "region": "eu-west-1" }, "credentials": {} })),
    )
    .await;
    assert_eq!(cleared.etag.as_deref(), Some("\"4\""), "{:?}", cleared.answer);
    assert_eq!(read_version(&app, &path, &admin, 4).await["has_credentials"], false);

    // Removed with the current version; then it is gone, and stays gone.
    let removed = send(&app, Method::DELETE, &path, &admin, Some("\"4\""), None).await;
    assert_eq!(removed.answer.status, StatusCode::NO_CONTENT, "{:?}", removed.answer);
    assert_problem(&app.request(Method::GET, &path, Some(&admin), None).await, StatusCode::NOT_FOUND, "not_found");
    assert_problem(&send(&app, Method::DELETE, &path, &admin, None, None).await.answer, StatusCode::GONE, "removed");
    let again = send(&app, Method::PUT, &path, &admin, None, Some(json!({ "name": "back" }))).await;
    assert_problem(&again.answer, StatusCode::GONE, "removed");
}

#[tokio::test]
async fn what_a_policy_or_replica_uses_is_not_removed_until_they_are_deleted() {
    let app = spawn_app_with(with_server_key).await;
    let (_, admin) = app.tenant_with_key("acme", "tenant_admin").await;
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let target = id(app.create("/v1/targets", &admin, json!({ "name": "primary", "location": "fs:///srv/a" })).await);
    let offsite = id(app.create("/v1/targets", &admin, json!({ "name": "copy", "location": "fs:///srv/b" })).await);
    let source = id(app.create("/v1/sources", &admin, json!({ "name": "docs", "paths": ["/home"] })).await);
    let policy = json!({ "name": "nightly", "source": source, "target": target,
                         "schedule": { "type": "interval", "seconds": 3600 } });
    let policy = id(app.create("/v1/policies", &admin, policy).await);
    let (target_path, offsite_path) = (format!("/v1/targets/{target}"), format!("/v1/targets/{offsite}"));
    let (source_path, policy_path) = (format!("/v1/sources/{source}"), format!("/v1/policies/{policy}"));

    // In use: refused at once, naming the user (the check waits for the catalog to have
    // seen the policy just created).
    for path in [&target_path, &source_path] {
        let refused = send(&app, Method::DELETE, path, &admin, None, None).await;
        assert_problem(&refused.answer, StatusCode::CONFLICT, "in_use");
        assert!(refused.answer.body["detail"].as_str().unwrap().contains(&policy), "{:?}", refused.answer);
    }

    // The policy, replaced: schedule, retention and copies; its source and target stay.
    app.eventually(Method::GET, &policy_path, Some(&admin), None, |a| a.status == StatusCode::OK).await;
    let replace = json!({ "name": "hourly", "schedule": { "type": "cron", "expression": "0 * * * *" },
                          "retention": { "keep_last": 3 }, "copy_targets": [offsite], "verify_every_seconds": 86400 });
    let replaced = send(&app, Method::PUT, &policy_path, &admin, Some("\"1\""), Some(replace)).await;
    assert_eq!(replaced.etag.as_deref(), Some("\"2\""), "{:?}", replaced.answer);
    let now = read_version(&app, &policy_path, &admin, 2).await;
    assert_eq!(now["schedule"], json!({ "type": "cron", "expression": "0 * * * *", "timezone": "UTC" }));
    assert_eq!(now["retention"], json!({ "keep_last": 3 }));
    assert_eq!(now["copy_targets"], json!([offsite]));
    assert_eq!((now["source_id"].as_str(), now["target_id"].as_str()), (Some(&*source), Some(&*target)));
    // The copy target is in use now too.
    let refused = send(&app, Method::DELETE, &offsite_path, &admin, None, None).await;
    assert_problem(&refused.answer, StatusCode::CONFLICT, "in_use");
    // A copy target the tenant does not have, or the policy's own target: refused, nothing changes.
    for copy in [json!("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"), json!(target)] {
        let body =
            json!({ "name": "hourly", "schedule": { "type": "interval", "seconds": 3600 }, "copy_targets": [copy] });
        let refused = send(&app, Method::PUT, &policy_path, &admin, None, Some(body)).await;
        assert_problem(&refused.answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert_eq!(refused.answer.body["field"], "copy_targets");
    }
    let too_often = json!({ "name": "hourly", "schedule": { "type": "interval", "seconds": 5 } });
    let refused = send(&app, Method::PUT, &policy_path, &admin, None, Some(too_often)).await;
    assert_eq!(refused.answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", refused.answer);

    // The source, replaced; a stale version is refused.
    let paths = json!({ "name": "docs", "paths": ["/home", "/srv"], "excludes": ["*.tmp"] });
    let replaced = send(&app, Method::PUT, &source_path, &admin, Some("\"1\""), Some(paths.clone())).await;
    assert_eq!(replaced.etag.as_deref(), Some("\"2\""), "{:?}", replaced.answer);
    let stale =
        send(&app, Method::PUT, &source_path, &admin, Some("\"1\""), Some(json!({ "name": "x", "paths": ["/"] })))
            .await;
    assert_problem(&stale.answer, StatusCode::PRECONDITION_FAILED, "stale_version");
    let now = read_version(&app, &source_path, &admin, 2).await;
    assert_eq!((now["paths"].clone(), now["excludes"].clone()), (json!(["/home", "/srv"]), json!(["*.tmp"])));

    // A replica following the source keeps it too, until it is deleted.
    let replica = json!({ "name": "standby", "source": source,
                          "destination": { "type": "directory", "path": "/srv/standby" } });
    let replica = id(app.create("/v1/replicas", &admin, replica).await);

    // Deleted (a stale version first, refused), the policy frees its source and targets.
    let stale = send(&app, Method::DELETE, &policy_path, &admin, Some("\"1\""), None).await;
    assert_problem(&stale.answer, StatusCode::PRECONDITION_FAILED, "stale_version");
    let deleted = send(&app, Method::DELETE, &policy_path, &admin, Some("\"2\""), None).await;
    assert_eq!(deleted.answer.status, StatusCode::NO_CONTENT, "{:?}", deleted.answer);
    let refused = send(&app, Method::DELETE, &source_path, &admin, None, None).await;
    assert_problem(&refused.answer, StatusCode::CONFLICT, "in_use");
    let detail = refused.answer.body["detail"].as_str().unwrap();
    assert!(detail.contains(&replica) && !detail.contains(&policy), "only the replica uses it now: {detail}");
    let deleted = app.request(Method::DELETE, &format!("/v1/replicas/{replica}"), Some(&admin), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    for path in [&source_path, &target_path, &offsite_path] {
        let removed = send(&app, Method::DELETE, path, &admin, None, None).await;
        assert_eq!(removed.answer.status, StatusCode::NO_CONTENT, "{path}: {:?}", removed.answer);
    }
    assert_problem(
        &send(&app, Method::DELETE, &policy_path, &admin, None, None).await.answer,
        StatusCode::GONE,
        "removed",
    );
    for list in ["/v1/policies", "/v1/sources", "/v1/targets", "/v1/replicas"] {
        app.eventually(Method::GET, list, Some(&admin), None, |a| a.body["items"] == json!([])).await;
    }
}

#[tokio::test]
async fn an_msp_admin_changes_a_tenants_name_quota_and_suspension_with_if_match() {
    let app = spawn_app_with(with_server_key).await;
    let bootstrap = crate::helpers::BOOTSTRAP_KEY;
    let (tenant, tenant_key) = app.tenant_with_key("acme", "tenant_admin").await;
    let path = format!("/v1/tenants/{tenant}");
    let quota = json!({ "quota_bytes": 2_199_023_255_552_u64 });

    // The tenant's own admin may read it, not change it.
    let refused = send(&app, Method::PATCH, &path, &tenant_key, None, Some(quota.clone())).await;
    assert_problem(&refused.answer, StatusCode::FORBIDDEN, "forbidden");

    let changed = send(&app, Method::PATCH, &path, bootstrap, Some("\"1\""), Some(quota)).await;
    assert_eq!(changed.answer.status, StatusCode::OK, "{:?}", changed.answer);
    assert_eq!(changed.etag.as_deref(), Some("\"2\""));
    let read = read_version(&app, &path, bootstrap, 2).await;
    assert_eq!(read["quota_bytes"], 2_199_023_255_552_u64, "{read}");

    // A stale version changes nothing.
    let stale = send(&app, Method::PATCH, &path, bootstrap, Some("\"1\""), Some(json!({ "name": "Globex" }))).await;
    assert_problem(&stale.answer, StatusCode::PRECONDITION_FAILED, "stale_version");

    // Several changes at once; `null` removes the quota; suspended, then resumed.
    let body = json!({ "name": "Acme Inc", "quota_bytes": null, "suspended": true, "reason": "invoice overdue" });
    let changed = send(&app, Method::PATCH, &path, bootstrap, Some("\"2\""), Some(body)).await;
    assert_eq!(changed.etag.as_deref(), Some("\"5\""), "{:?}", changed.answer);
    let read = read_version(&app, &path, bootstrap, 5).await;
    assert_eq!((read["name"].as_str(), read["quota_bytes"].is_null()), (Some("Acme Inc"), true), "{read}");
    assert_eq!(
        (read["status"].as_str(), read["suspended_reason"].as_str()),
        (Some("suspended"), Some("invoice overdue"))
    );
    let resumed = send(&app, Method::PATCH, &path, bootstrap, None, Some(json!({ "suspended": false }))).await;
    assert_eq!(resumed.etag.as_deref(), Some("\"6\""), "{:?}", resumed.answer);
    assert_eq!(read_version(&app, &path, bootstrap, 6).await["status"], "active");

    // Nothing to change, a reason without suspending, an unknown field: 400, nothing written.
    for body in [json!({}), json!({ "reason": "why" }), json!({ "plan": "gold" })] {
        let refused = send(&app, Method::PATCH, &path, bootstrap, None, Some(body.clone())).await;
        assert_eq!(refused.answer.status, StatusCode::BAD_REQUEST, "{body}: {:?}", refused.answer);
    }
    let missing = send(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{}", uuid::Uuid::now_v7()),
        bootstrap,
        None,
        Some(json!({ "name": "x" })),
    )
    .await;
    assert_eq!(missing.answer.status, StatusCode::NOT_FOUND, "{:?}", missing.answer);
    assert_eq!(read_version(&app, &path, bootstrap, 6).await["name"], "Acme Inc");
}
