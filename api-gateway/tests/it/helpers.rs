//! `spawn_app()`: the platform's read side and the gateway, and a small HTTP client.

use std::sync::Once;
use std::time::{Duration, Instant};

use arca_api_gateway::{Application, GatewayConfig};
use arca_catalog::service::{Catalog, CatalogConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The MSP admin key every test gateway registers.
pub const BOOTSTRAP_KEY: &str = "arca_test_bootstrap_key_0123456789";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    _nats: arca_testkit::NatsServer,
}

/// What a request answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with a say in the gateway's configuration (the base URL stays `http://`).
pub async fn spawn_app_with(configure: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    init_logging();
    // reqwest is built without a rustls provider in this workspace: pick ring, like the services.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let nats = arca_testkit::nats_server();
    let catalog = Catalog::build(CatalogConfig::new(&nats.url, "sqlite::memory:")).await.expect("build the catalog");
    tokio::spawn(catalog.run_until_stopped(std::future::pending()));
    let mut config = GatewayConfig::new(&nats.url, "127.0.0.1:0".parse().unwrap());
    config.bootstrap_key = Some(BOOTSTRAP_KEY.into());
    config.json_limit = 16 * 1024;
    configure(&mut config);
    let app = Application::build(config).await.expect("build the gateway");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let test = TestApp { base, http: reqwest::Client::new(), _nats: nats };
    // The bootstrap key works once the catalog has projected it.
    test.eventually(Method::GET, "/v1/tenants", Some(BOOTSTRAP_KEY), None, |a| a.status == StatusCode::OK).await;
    test
}

impl TestApp {
    /// The private nats-server the platform runs on.
    pub fn nats_url(&self) -> &str {
        &self._nats.url
    }

    pub async fn request(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        answer(request.send().await.expect("send a request")).await
    }

    pub async fn raw(&self, path: &str, key: &str, body: String) -> Answer {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body);
        answer(request.send().await.expect("send a request")).await
    }

    /// Repeats a request until `done` says yes (the catalog is eventually consistent).
    pub async fn eventually(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        done: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.request(method.clone(), path, key, body.clone()).await;
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{method} {path} never got there; last answer {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs and expects 201 or 202; returns the body.
    pub async fn create(&self, path: &str, key: &str, body: Value) -> Value {
        let answer = self.request(Method::POST, path, Some(key), Some(body)).await;
        assert!(answer.status == StatusCode::CREATED || answer.status == StatusCode::ACCEPTED, "{path}: {answer:?}");
        answer.body
    }

    /// A new tenant and a key of it with `role`, usable once this returns.
    pub async fn tenant_with_key(&self, name: &str, role: &str) -> (String, String) {
        let tenant =
            self.create("/v1/tenants", BOOTSTRAP_KEY, json!({ "name": name })).await["id"].as_str().unwrap().to_owned();
        let key = self.key_for(&tenant, role).await;
        (tenant, key)
    }

    /// A new key of `tenant` with `role`, usable once this returns.
    pub async fn key_for(&self, tenant: &str, role: &str) -> String {
        let created = self
            .create(&format!("/v1/tenants/{tenant}/api-keys"), BOOTSTRAP_KEY, json!({ "name": role, "role": role }))
            .await;
        let key = created["key"].as_str().unwrap().to_owned();
        self.eventually(Method::GET, "/v1/jobs", Some(&key), None, |a| a.status == StatusCode::OK).await;
        key
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default();
    let text = response.text().await.expect("read the body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, content_type, body }
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info,sqlx=warn").with_test_writer().init();
        }
    });
}

/// Asserts an RFC 9457 problem with `status` and machine `code`.
pub fn assert_problem(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.content_type, "application/problem+json", "{answer:?}");
    assert_eq!(answer.body["status"], status.as_u16(), "{answer:?}");
    assert_eq!(answer.body["code"], code, "{answer:?}");
    assert!(answer.body["title"].is_string() && answer.body["detail"].is_string(), "{answer:?}");
}
