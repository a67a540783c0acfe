//! Schemathesis (property-based testing from the spec) against the running gateway, with the
//! committed `openapi/openapi.json`: no 5xx, every response (status, content type, body)
//! as the spec describes it, and invalid input refused with a 4xx.
//!
//! The gateway is the real one on a free port, with its catalog and a private nats-server,
//! and a tenant with one object of each kind, so generated ids sometimes name real objects
//! (Schemathesis dictionaries, bound to the id parameters with a probability: the rest of the
//! time the ids are generated, mostly unknown ones, or invalid ones). No worker runs, so jobs
//! stay queued; `GET /v1/jobs/{id}/events` is only asked about a cancelled job, whose stream
//! ends at once (a queued job's stream would last as long as the job).
//!
//! The pinned Schemathesis comes from `infra/dev/ensure-schemathesis.sh`, run here so a
//! fresh machine installs it on first use. The run is bounded (test cases per operation, a
//! timeout) and seeded, so a failure shows up again on the next run. To look further:
//! `ARCA_SCHEMATHESIS_SEED=N` runs another seed, `ARCA_SCHEMATHESIS_ARGS="-n 100 --checks all"`
//! adds `st run` options.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use arca_worker::keys::ServerKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{BOOTSTRAP_KEY, TestApp, spawn_app_with};

/// The seed of every run (`ARCA_SCHEMATHESIS_SEED` picks another).
const SEED: u64 = 20261130;
/// Test cases per operation and phase.
const MAX_EXAMPLES: u32 = 25;
/// The longest a run may take, in seconds (it takes about a minute).
const MAX_SECONDS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_spec_does_not_allow() {
    let st = ensure_schemathesis().await;
    // With a server key, targets with credentials are accepted too.
    let app = spawn_app_with(|config| config.server_key = Some(ServerKey::from_bytes([7; 32]))).await;
    let objects = objects(&app).await;
    let work = std::env::temp_dir().join(format!("arca-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, objects.config()).unwrap();

    let started = Instant::now();
    let seed = std::env::var("ARCA_SCHEMATHESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let (success, output) = run_schemathesis(&st, &config, &app.base, &objects, seed, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    assert!(success, "Schemathesis found failures (seed {seed}):\n{output}");
    // A run that tested nothing passes too: make sure it tested every operation.
    let operations = spec_operations();
    assert!(output.contains(&format!("Tested: {operations}\n")), "not every operation was tested:\n{output}");
    // Its warnings (operations that mostly got 404 or 4xx) and summary, for `--no-capture`.
    let tail = ["WARNINGS ===", "SUMMARY ==="].iter().find_map(|title| output.find(title)).unwrap_or(0);
    eprintln!("{}\nschemathesis: passed in {:.0?}", &output[tail..], started.elapsed());
}

/// The `st` command of the pinned Schemathesis, installed on first use.
async fn ensure_schemathesis() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/dev/ensure-schemathesis.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(output.status.success(), "{} failed: {}", script.display(), output.status);
    let st = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    assert!(st.is_file(), "{} printed no `st` path: {}", script.display(), st.display());
    st
}

/// How many operations the committed spec has.
fn spec_operations() -> usize {
    let spec: Value = serde_json::from_str(&arca_api_gateway::openapi_json()).unwrap();
    spec["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum()
}

async fn run_schemathesis(
    st: &Path,
    config: &Path,
    base: &str,
    objects: &Objects,
    seed: u64,
    work: &Path,
) -> (bool, String) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let mut command = tokio::process::Command::new(st);
    command
        .arg("--config-file")
        .arg(config)
        .arg("--no-color")
        .arg("run")
        .arg(&spec)
        .args(["--url", base])
        // Not `positive_data_acceptance`: the spec is looser than the server (a name of only
        // spaces, a cron expression that never fires). Not `ensure_resource_availability`:
        // the catalog is eventually consistent, so a GET right after a POST may be 404.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection,\
             missing_required_header,ignored_auth,unsupported_method,allow_header_conformance",
        ])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &seed.to_string()])
        // One worker: Python 3.11's `ast` is not thread-safe (CPython gh-106905), and the
        // hypothesis Schemathesis runs on parses source in every worker thread.
        .args(["--workers", "1", "--request-timeout", "10", "--generation-database", "none"])
        .arg("--continue-on-failure")
        .args(std::env::var("ARCA_SCHEMATHESIS_ARGS").unwrap_or_default().split_whitespace())
        .env("ARCA_ST_TENANT_KEY", &objects.tenant_key)
        .env("ARCA_ST_BOOTSTRAP_KEY", BOOTSTRAP_KEY)
        // Its reports and caches go to the work dir, not the checkout.
        .current_dir(work)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = command.output();
    let output = tokio::time::timeout(Duration::from_secs(MAX_SECONDS), run)
        .await
        .unwrap_or_else(|_| panic!("Schemathesis ran for more than {MAX_SECONDS} s"))
        .unwrap_or_else(|e| panic!("run {}: {e}", st.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// A tenant with one object of each kind the API can make without a worker, each one
/// visible in the catalog.
async fn objects(app: &TestApp) -> Objects {
    let id = |v: &Value, field: &str| v[field].as_str().unwrap_or_else(|| panic!("no `{field}` in {v}")).to_owned();
    let (tenant, tenant_key) = app.tenant_with_key("schemathesis", "tenant_admin").await;
    let keys = format!("/v1/tenants/{tenant}/api-keys");
    let spare_key = id(&app.create(&keys, &tenant_key, json!({ "name": "spare", "role": "viewer" })).await, "id");
    let target = json!({ "name": "primary", "location": "fs:///srv/schemathesis" });
    let target = id(&app.create("/v1/targets", &tenant_key, target).await, "id");
    let source = id(&app.create("/v1/sources", &tenant_key, json!({ "name": "docs", "paths": ["/home"] })).await, "id");
    let policy = json!({
        "name": "hourly", "source": source, "target": target,
        "schedule": { "type": "interval", "seconds": 3600 },
    });
    let policy = id(&app.create("/v1/policies", &tenant_key, policy).await, "id");
    let run = format!("/v1/policies/{policy}/run");
    let job = id(&app.create(&run, &tenant_key, Value::Null).await, "job");
    let ended = id(&app.create(&run, &tenant_key, Value::Null).await, "job");
    let cancelled = app.request(Method::POST, &format!("/v1/jobs/{ended}/cancel"), Some(&tenant_key), None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    let restore = json!({ "snapshot": job, "to": { "type": "directory", "path": "/tmp/schemathesis" } });
    let restore = id(&app.create("/v1/restores", &tenant_key, restore).await, "job");
    for path in [
        format!("/v1/targets/{target}"),
        format!("/v1/sources/{source}"),
        format!("/v1/policies/{policy}"),
        format!("/v1/jobs/{job}"),
        format!("/v1/restores/{restore}"),
    ] {
        app.eventually(Method::GET, &path, Some(&tenant_key), None, |a| a.status == StatusCode::OK).await;
    }
    let jobs = vec![job, ended.clone(), restore.clone()];
    Objects { tenant, tenant_key, spare_key, target, source, policy, jobs, ended, restore }
}

/// The ids of the tenant's objects.
struct Objects {
    tenant: String,
    tenant_key: String,
    /// A viewer key of the tenant, for `DELETE …/api-keys/{id}` to revoke.
    spare_key: String,
    target: String,
    source: String,
    policy: String,
    jobs: Vec<String>,
    /// A cancelled job: its event stream ends at once.
    ended: String,
    restore: String,
}

impl Objects {
    /// `schemathesis.toml`: the keys (the spec's `api_key` bearer scheme; MSP routes with the
    /// MSP admin key), and the real ids bound to the parameters that name them.
    fn config(&self) -> String {
        let list = |ids: &[&String]| ids.iter().map(|id| format!("\"{id}\"")).collect::<Vec<_>>().join(", ");
        let mut toml = String::new();
        let t = &mut toml;
        writeln!(t, "[auth.openapi.api_key]\nbearer = \"${{ARCA_ST_TENANT_KEY}}\"\n").unwrap();
        let dictionaries: [(&str, Vec<&String>); 7] = [
            ("tenant", vec![&self.tenant]),
            ("key", vec![&self.spare_key]),
            ("target", vec![&self.target]),
            ("source", vec![&self.source]),
            ("policy", vec![&self.policy]),
            ("job", self.jobs.iter().collect()),
            ("restore", vec![&self.restore]),
        ];
        for (name, ids) in &dictionaries {
            writeln!(t, "[dictionaries.{name}]\nvalues = [{}]\n", list(ids)).unwrap();
        }
        // A tenant key acts on its own tenant: naming it is allowed, any other is 404.
        writeln!(
            t,
            "[parameters]\n\"query.tenant\" = {{ dictionary = \"tenant\", probability = 0.5 }}\n\
             \"path.tenant\" = {{ dictionary = \"tenant\", probability = 0.8 }}\n\
             \"query.source\" = {{ dictionary = \"source\", probability = 0.5 }}\n\
             \"body.source\" = {{ dictionary = \"source\", probability = 0.8 }}\n\
             \"body.target\" = {{ dictionary = \"target\", probability = 0.8 }}\n\
             \"body.copy_targets[*]\" = {{ dictionary = \"target\", probability = 0.8 }}\n\
             \"body.to.target\" = {{ dictionary = \"target\", probability = 0.8 }}\n"
        )
        .unwrap();
        for (path_regex, dictionary) in [
            ("^/v1/targets/", "target"),
            ("^/v1/sources/", "source"),
            ("^/v1/policies/", "policy"),
            ("^/v1/jobs/\\\\{id\\\\}(/cancel)?$", "job"),
            ("^/v1/restores/", "restore"),
            ("^/v1/tenants/\\\\{tenant\\\\}/api-keys/", "key"),
        ] {
            writeln!(
                t,
                "[[operations]]\ninclude-path-regex = \"{path_regex}\"\n\
                 parameters = {{ \"path.id\" = {{ dictionary = \"{dictionary}\", probability = 0.6 }} }}\n"
            )
            .unwrap();
        }
        // A queued job's event stream lasts as long as the job: only ever ask about one that ended.
        writeln!(
            t,
            "[[operations]]\ninclude-path = \"/v1/jobs/{{id}}/events\"\nparameters = {{ \"path.id\" = \"{}\" }}\n",
            self.ended
        )
        .unwrap();
        // Tenants are the MSP's.
        writeln!(
            t,
            "[[operations]]\ninclude-path = \"/v1/tenants\"\nheaders = {{ Authorization = \"Bearer ${{ARCA_ST_BOOTSTRAP_KEY}}\" }}\n"
        )
        .unwrap();
        toml
    }
}
