//! Tenant isolation and roles, over every operation the generated spec lists: a new route is
//! covered the day it is added to the spec.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{BOOTSTRAP_KEY, TestApp, spawn_app};

/// Every (method, path template) in the committed spec.
fn operations() -> Vec<(Method, String)> {
    let spec: Value = serde_json::from_str(&arca_api_gateway::openapi_json()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    assert!(operations.len() >= 30, "the spec lists every operation: {operations:?}");
    operations
}

/// Tenant A's objects, one of each kind an id in a path can name.
struct Objects {
    tenant: String,
    target: String,
    source: String,
    policy: String,
    job: String,
    restore: String,
    replica: String,
    key: String,
}

impl Objects {
    /// `template` with A's ids in its `{…}` segments.
    fn fill(&self, template: &str) -> String {
        let id = if template.starts_with("/v1/targets/") {
            &self.target
        } else if template.starts_with("/v1/sources/") {
            &self.source
        } else if template.starts_with("/v1/policies/") {
            &self.policy
        } else if template.starts_with("/v1/jobs/") {
            &self.job
        } else if template.starts_with("/v1/restores/") {
            &self.restore
        } else if template.starts_with("/v1/replicas/") {
            &self.replica
        } else if template.starts_with("/v1/tenants/") {
            &self.key
        } else {
            // No snapshot (nor export of one) exists without a backup: any id will do to show
            // nothing leaks.
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        };
        let path = template.replace("{tenant}", &self.tenant).replace("{id}", id);
        // Downloads name a path in the snapshot.
        if template.ends_with("/content") || template.ends_with("/archive") { format!("{path}?path=/x") } else { path }
    }

    fn all(&self) -> [&str; 8] {
        [&self.tenant, &self.target, &self.source, &self.policy, &self.job, &self.restore, &self.replica, &self.key]
    }
}

/// A body each write accepts, so a refusal is about who asks, not what they sent.
fn body_for(template: &str) -> Value {
    match template {
        "/v1/targets/{id}" => json!({ "name": "renamed" }),
        "/v1/sources/{id}" => json!({ "name": "renamed", "paths": ["/y"] }),
        "/v1/policies/{id}" => json!({ "name": "renamed", "schedule": { "type": "interval", "seconds": 7200 } }),
        "/v1/snapshots/{id}/lock" => json!({ "until": "2031-01-01T00:00:00Z" }),
        "/v1/tenants/{tenant}/api-keys" => json!({ "name": "sneaky", "role": "viewer" }),
        "/v1/restores" => {
            json!({ "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "to": { "type": "directory", "path": "/tmp/x" } })
        }
        "/v1/targets" => json!({ "name": "t", "location": "fs:///srv/x" }),
        "/v1/sources" => json!({ "name": "s", "paths": ["/x"] }),
        "/v1/replicas" => json!({ "name": "r", "source": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                                  "destination": { "type": "directory", "path": "/srv/r" } }),
        "/v1/exports" => json!({ "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" }),
        "/v1/tenants" => json!({ "name": "t" }),
        _ => json!({}),
    }
}

async fn tenant_a(app: &TestApp) -> Objects {
    let (tenant, admin) = app.tenant_with_key("tenant-a", "tenant_admin").await;
    let target =
        app.create("/v1/targets", &admin, json!({ "name": "primary", "location": "fs:///srv/a" })).await["id"].clone();
    let source = app.create("/v1/sources", &admin, json!({ "name": "docs", "paths": ["/home"] })).await["id"].clone();
    let policy = app
        .create(
            "/v1/policies",
            &admin,
            json!({ "name": "nightly", "source": source, "target": target,
                    "schedule": { "type": "interval", "seconds": 3600 } }),
        )
        .await["id"]
        .clone();
    let policy = policy.as_str().unwrap().to_owned();
    let job = app.create(&format!("/v1/policies/{policy}/run"), &admin, json!({})).await["job"].clone();
    let snapshot = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let restore = app
        .create("/v1/restores", &admin, json!({ "snapshot": snapshot, "to": { "type": "target", "target": target } }))
        .await["job"]
        .clone();
    let keys = app
        .eventually(Method::GET, &format!("/v1/tenants/{tenant}/api-keys"), Some(&admin), None, |a| {
            a.status == StatusCode::OK && !a.body["items"].as_array().unwrap().is_empty()
        })
        .await;
    let key = keys.body["items"][0]["id"].as_str().unwrap().to_owned();
    let replica = app
        .create(
            "/v1/replicas",
            &admin,
            json!({ "name": "standby", "source": source, "destination": { "type": "directory", "path": "/srv/standby" } }),
        )
        .await["id"]
        .clone();
    let text = |v: Value| v.as_str().unwrap().to_owned();
    let objects = Objects {
        tenant,
        target: text(target),
        source: text(source),
        policy,
        job: text(job),
        restore: text(restore),
        replica: text(replica),
        key,
    };
    // Wait until the catalog shows A's job, restore and replica, so a 404 below is not just lag.
    for path in [
        format!("/v1/jobs/{}", objects.job),
        format!("/v1/restores/{}", objects.restore),
        format!("/v1/replicas/{}", objects.replica),
    ] {
        app.eventually(Method::GET, &path, Some(&admin), None, |a| a.status == StatusCode::OK).await;
    }
    objects
}

#[tokio::test]
async fn every_operation_with_another_tenants_key_finds_nothing_of_tenant_a() {
    let app = spawn_app().await;
    let a = tenant_a(&app).await;
    let (_b, b_admin) = app.tenant_with_key("tenant-b", "tenant_admin").await;
    let mut checked = 0;
    for (method, template) in operations() {
        let named = template.contains('{');
        // Operations without an id name tenant A in the query instead.
        let path = if named { a.fill(&template) } else { format!("{template}?tenant={}", a.tenant) };
        let body = (method != Method::GET && method != Method::DELETE).then(|| body_for(&template));
        let answer = app.request(method.clone(), &path, Some(&b_admin), body).await;
        assert!(
            answer.status == StatusCode::NOT_FOUND || answer.status == StatusCode::FORBIDDEN,
            "{method} {path} with tenant B's key: {answer:?}"
        );
        let text = answer.body.to_string();
        assert!(a.all().iter().all(|id| !text.contains(id) || path.contains(id)), "{method} {path} leaks: {text}");
        checked += 1;
    }
    // B's own lists never show A's objects.
    for (method, template) in operations() {
        if method != Method::GET || template.contains('{') || template == "/v1/tenants" {
            continue;
        }
        let path = if template == "/v1/files" { "/v1/files?path=/".to_owned() } else { template.clone() };
        let answer = app.request(Method::GET, &path, Some(&b_admin), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
        let text = answer.body.to_string();
        assert!(a.all().iter().all(|id| !text.contains(id)), "{path} shows tenant A's objects to B: {text}");
    }
    // Nothing of A changed: its job still waits, its key still works, its configuration is
    // as it was made (version 1: no replace or remove of B's reached it).
    for (path, name) in [
        (format!("/v1/targets/{}", a.target), "primary"),
        (format!("/v1/sources/{}", a.source), "docs"),
        (format!("/v1/policies/{}", a.policy), "nightly"),
    ] {
        let object = app.request(Method::GET, &format!("{path}?tenant={}", a.tenant), Some(BOOTSTRAP_KEY), None).await;
        assert_eq!(
            (object.body["name"].as_str(), object.body["version"].as_u64()),
            (Some(name), Some(1)),
            "{object:?}"
        );
    }
    let job =
        app.request(Method::GET, &format!("/v1/jobs/{}?tenant={}", a.job, a.tenant), Some(BOOTSTRAP_KEY), None).await;
    assert_eq!(job.body["status"], "requested", "{job:?}");
    let keys = app.request(Method::GET, &format!("/v1/tenants/{}/api-keys", a.tenant), Some(BOOTSTRAP_KEY), None).await;
    assert!(keys.body["items"].as_array().unwrap().iter().all(|k| k["status"] == "active"), "{keys:?}");
    assert!(checked >= 30);
}

#[tokio::test]
async fn every_write_with_a_viewer_key_is_403() {
    let app = spawn_app().await;
    let a = tenant_a(&app).await;
    let viewer = app.key_for(&a.tenant, "viewer").await;
    let operator = app.key_for(&a.tenant, "operator").await;
    for (method, template) in operations() {
        if method == Method::GET {
            continue;
        }
        let path = a.fill(&template);
        let body = (method != Method::DELETE).then(|| body_for(&template));
        let answer = app.request(method.clone(), &path, Some(&viewer), body.clone()).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path} with a viewer key: {answer:?}");
        assert_eq!(answer.body["code"], "forbidden");
        // Configuration is a tenant admin's: an operator may start work, not change it.
        let admin_only = matches!(
            template.as_str(),
            "/v1/targets"
                | "/v1/sources"
                | "/v1/policies"
                | "/v1/snapshots/{id}/forget"
                | "/v1/tenants"
                | "/v1/replicas"
        ) || template.starts_with("/v1/tenants/")
            || (template == "/v1/replicas/{id}" && method == Method::DELETE)
            || matches!(template.as_str(), "/v1/targets/{id}" | "/v1/sources/{id}" | "/v1/policies/{id}");
        if admin_only {
            let answer = app.request(method.clone(), &path, Some(&operator), body).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path} with an operator key: {answer:?}");
        }
    }
    // Every read works with the viewer key.
    for (method, template) in operations() {
        // (A job's events are a stream that lasts while the job does.)
        // (No snapshot exists, so no export of one either.)
        if method != Method::GET
            || template.starts_with("/v1/tenants")
            || template.contains("/snapshots/")
            || template.starts_with("/v1/exports/")
            || template.ends_with("/events")
        {
            continue;
        }
        let path = a.fill(&template);
        let path = if template == "/v1/files" { "/v1/files?path=/".to_owned() } else { path };
        let answer = app.request(Method::GET, &path, Some(&viewer), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {path} with a viewer key: {answer:?}");
    }
}
