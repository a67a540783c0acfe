//! Starting, following and cancelling work; Idempotency-Key; ETag and If-Match.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{BOOTSTRAP_KEY, TestApp, assert_problem, spawn_app};

async fn backup_policy(app: &TestApp, key: &str) -> String {
    let target =
        app.create("/v1/targets", key, json!({ "name": "primary", "location": "fs:///srv/j" })).await["id"].clone();
    let source = app.create("/v1/sources", key, json!({ "name": "docs", "paths": ["/home"] })).await["id"].clone();
    let policy = app
        .create(
            "/v1/policies",
            key,
            json!({ "name": "hourly", "source": source, "target": target, "schedule": { "type": "interval", "seconds": 3600 } }),
        )
        .await;
    policy["id"].as_str().unwrap().to_owned()
}

/// Reads the event stream until `needle` has arrived; returns all that was read.
async fn read_until(response: &mut reqwest::Response, text: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` in the event stream: {text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the event stream ended without `{needle}`: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn run_now_is_idempotent_and_a_followed_job_can_be_cancelled() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_key("jobs", "tenant_admin").await;
    let policy = backup_policy(&app, &admin).await;
    let run = format!("{}/v1/policies/{policy}/run", app.base);
    let send = |key: &'static str| app.http.post(&run).bearer_auth(&admin).header("Idempotency-Key", key).send();

    // The same key twice: one job, the second answer replayed.
    let first = send("nightly-2026-11-30").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let job = first.json::<serde_json::Value>().await.unwrap()["job"].as_str().unwrap().to_owned();
    let again = send("nightly-2026-11-30").await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["Idempotent-Replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.unwrap()["job"], job.as_str());
    // The same key on another request is refused; a new key starts a new job.
    let other = app
        .http
        .post(format!("{}/v1/restores", app.base))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "nightly-2026-11-30")
        .json(&json!({ "snapshot": job, "to": { "type": "directory", "path": "/tmp/r" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let second = send("nightly-2026-12-01").await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_ne!(second["job"], job.as_str());
    let jobs = app
        .eventually(Method::GET, "/v1/jobs", Some(&admin), None, |a| {
            a.status == StatusCode::OK && a.body["items"].as_array().unwrap().len() >= 2
        })
        .await;
    assert_eq!(jobs.body["items"].as_array().unwrap().len(), 2, "{jobs:?}");

    // Follow the job live, cancel it, and see the stream end with it.
    let mut events =
        app.http.get(format!("{}/v1/jobs/{job}/events", app.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    read_until(&mut events, &mut text, "\n\n").await;
    assert!(text.starts_with("event: state\ndata: ") && text.contains("\"status\":\"requested\""), "{text}");
    let viewer = app.key_for(&tenant, "viewer").await;
    let refused = app.request(Method::POST, &format!("/v1/jobs/{job}/cancel"), Some(&viewer), None).await;
    assert_problem(&refused, StatusCode::FORBIDDEN, "forbidden");
    let cancelled = app.request(Method::POST, &format!("/v1/jobs/{job}/cancel"), Some(&admin), None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.body["status"], "cancelled");
    read_until(&mut events, &mut text, "event: end").await;
    assert!(text.contains("\"event\":\"JobCancelled\"") && text.contains("\"status\":\"cancelled\""), "{text}");
    assert!(events.chunk().await.unwrap().is_none(), "the stream closes after `end`");
    // An ended job cannot be cancelled again; its events are its state and the end.
    let again = app.request(Method::POST, &format!("/v1/jobs/{job}/cancel"), Some(&admin), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    let ended = app.http.get(format!("{}/v1/jobs/{job}/events", app.base)).bearer_auth(&admin).send().await.unwrap();
    let ended = ended.text().await.unwrap();
    assert!(
        ended.contains("event: state") && ended.ends_with("event: end\ndata: {\"status\":\"cancelled\"}\n\n"),
        "{ended}"
    );
}

#[tokio::test]
async fn objects_carry_an_etag_and_a_stale_if_match_is_412() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_key("etags", "tenant_admin").await;
    let policy = backup_policy(&app, &admin).await;
    let read = app.http.get(format!("{}/v1/policies/{policy}", app.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["etag"], "\"1\"");

    // A key revoked with a stale version stays; with its current version it is revoked.
    let doomed = app.key_for(&tenant, "operator").await;
    let keys = app
        .eventually(Method::GET, &format!("/v1/tenants/{tenant}/api-keys"), Some(&admin), None, |a| {
            a.body["items"].as_array().is_some_and(|items| items.len() == 2)
        })
        .await;
    assert!(keys.body.to_string().find("hash").is_none(), "key hashes never leave: {keys:?}");
    let id = keys.body["items"].as_array().unwrap().iter().find(|k| k["role"] == "operator").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = |version: &'static str| {
        app.http
            .delete(format!("{}/v1/tenants/{tenant}/api-keys/{id}", app.base))
            .bearer_auth(&admin)
            .header("If-Match", version)
            .send()
    };
    let stale = revoke("\"7\"").await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.json::<serde_json::Value>().await.unwrap()["code"], "stale_version");
    assert_eq!(app.request(Method::GET, "/v1/jobs", Some(&doomed), None).await.status, StatusCode::OK);
    assert_eq!(revoke("\"1\"").await.unwrap().status(), StatusCode::NO_CONTENT);
    // Refused from the very next request, though the gateway had the key cached and the
    // catalog may not have applied the revocation yet.
    let refused = app.request(Method::GET, "/v1/jobs", Some(&doomed), None).await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "unauthorized");
    let bad = revoke("yesterday").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let _ = BOOTSTRAP_KEY;
}

#[tokio::test]
async fn an_expired_key_is_401_and_paths_that_are_not_ids_are_400() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_key("expiry", "tenant_admin").await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let created = app
        .create(
            &format!("/v1/tenants/{tenant}/api-keys"),
            &admin,
            json!({ "name": "short", "role": "viewer", "expires_at": expires_at }),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    app.eventually(Method::GET, "/v1/jobs", Some(&key), None, |a| a.status == StatusCode::OK).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = app.request(Method::GET, "/v1/jobs", Some(&key), None).await;
    assert_problem(&expired, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"), "{expired:?}");

    for path in ["/v1/jobs/not-an-id", "/v1/policies/42/run", "/v1/snapshots/%00/tree"] {
        let method = if path.ends_with("/run") { Method::POST } else { Method::GET };
        let answer = app.request(method, path, Some(&admin), None).await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_path");
    }
}
