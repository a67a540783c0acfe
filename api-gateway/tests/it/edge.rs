//! What sits in front of every handler: rate limits, TLS, the API reference.

use std::num::NonZeroU32;
use std::process::Command;

use arca_api_gateway::limit::RateLimit;
use arca_api_gateway::{Application, GatewayConfig, TlsFiles};
use reqwest::{Method, StatusCode};

use crate::helpers::{BOOTSTRAP_KEY, assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let limit = RateLimit { per_second: NonZeroU32::new(1).unwrap(), burst: NonZeroU32::new(20).unwrap() };
    let app = spawn_app_with(|config| config.rate_limit = Some(limit)).await;
    let (_, key) = app.tenant_with_key("busy", "viewer").await;
    let mut limited = None;
    for _ in 0..40 {
        let response = app.http.get(format!("{}/v1/jobs", app.base)).bearer_auth(&key).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = limited.expect("the key was limited within 40 requests");
    let wait: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let problem = limited.json::<serde_json::Value>().await.unwrap();
    assert_eq!(problem["code"], "rate_limited", "{problem}");
    // Another key is not held back by this one.
    let other = app.request(Method::GET, "/v1/tenants", Some(BOOTSTRAP_KEY), None).await;
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    // The limit refills.
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(app.request(Method::GET, "/v1/jobs", Some(&key), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_docs_and_the_spec_are_served_without_a_cdn() {
    let app = spawn_app().await;
    let spec = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(spec.status, StatusCode::OK);
    assert_eq!(spec.body, serde_json::from_str::<serde_json::Value>(&arca_api_gateway::openapi_json()).unwrap());
    let page = app.http.get(format!("{}/docs/", app.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui") && !html.contains("https://"), "the page loads nothing from elsewhere: {html}");
    let script = app.http.get(format!("{}/docs/swagger-ui-bundle.js", app.base)).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.bytes().await.unwrap().len() > 100_000, "the UI is served from the binary");
    let missing = app.request(Method::GET, "/nothing-here", None, None).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn with_a_certificate_the_api_speaks_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let nats = arca_testkit::nats_server();
    let mut config = GatewayConfig::new(&nats.url, "127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsFiles { certificate: cert.clone(), key: key.clone() });
    let app = Application::build(config).await.unwrap();
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let https = curl(&cert, format!("https://127.0.0.1:{port}/healthz")).await;
    assert!(https.status.success(), "{}", String::from_utf8_lossy(&https.stderr));
    assert_eq!(String::from_utf8_lossy(&https.stdout), r#"{"status":"ok"}"#);
    let plain = curl(&cert, format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"), "plain HTTP is not served");

    // A key that does not match its certificate is a clear error at start.
    let other = dir.path().join("other.pem");
    let made = Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let mut config = GatewayConfig::new(&nats.url, "127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsFiles { certificate: dir.path().join("cert.pem"), key: other });
    let error = Application::build(config).await.err().expect("a mismatched key is refused").to_string();
    assert!(error.contains("certificate and key"), "{error}");
}

/// `curl` trusting `ca`, off the async runtime.
async fn curl(ca: &std::path::Path, url: String) -> std::process::Output {
    let ca = ca.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-sS", "--max-time", "10", "--cacert"]).arg(ca).arg(url).output().unwrap()
    })
    .await
    .unwrap()
}
