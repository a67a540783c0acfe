//! The platform end to end, black-box: `arca server` (or each service as its own process)
//! on a private nats-server, driven with the `arca` control commands; backups land in real
//! repositories and are restored byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use arca_bus::{Bus, BusConfig};
use arca_events::{JobId, JobKind, TargetId};

use crate::helpers::{assert_same_tree, noise, write};

/// The MSP admin API key every test `arca server` registers (`ARCA_BOOTSTRAP_KEY`).
pub(crate) const API_KEY: &str = "arca-platform-test-admin-key-42";

/// A child process killed when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_arca")).with_file_name(name);
    assert!(path.is_file(), "{} is not built: run the tests with `cargo nextest run --workspace`", path.display());
    path
}

/// A nats-server this test can stop and start again on the same port and store.
struct RestartableNats {
    port: u16,
    store: tempfile::TempDir,
    process: Option<Process>,
}

impl RestartableNats {
    fn start() -> RestartableNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut nats = RestartableNats { port, store: tempfile::tempdir().unwrap(), process: None };
        nats.resume();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        self.process.take();
    }

    fn resume(&mut self) {
        let child = Command::new(arca_testkit::tool("nats-server"))
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(Process(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A platform under test: its NATS, its data folder, its processes.
pub(crate) struct Platform {
    pub(crate) nats: NatsUrl,
    _server: Option<arca_testkit::NatsServer>,
    data: tempfile::TempDir,
    processes: Vec<(String, Process)>,
    /// Set for every process it starts, on top of the test's own environment.
    env: Vec<(String, String)>,
}

impl Platform {
    /// Where the `label` process writes its log.
    pub(crate) fn log_path(&self, label: &str) -> PathBuf {
        self.data.path().join(format!("{label}.log"))
    }
}

pub(crate) struct NatsUrl {
    pub(crate) url: String,
}

impl Platform {
    pub(crate) fn new() -> Platform {
        let server = arca_testkit::nats_server();
        Platform::on(server.url.clone(), Some(server))
    }

    fn on(url: String, server: Option<arca_testkit::NatsServer>) -> Platform {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("secret.key"), "ab".repeat(32)).unwrap();
        Platform { nats: NatsUrl { url }, _server: server, data, processes: Vec::new(), env: Vec::new() }
    }

    /// Starts its processes with `key=value` in their environment too.
    pub(crate) fn with_env(mut self, key: &str, value: &str) -> Platform {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn key_file(&self) -> PathBuf {
        self.data.path().join("secret.key")
    }

    fn spawn(&mut self, label: &str, program: &Path, args: &[&str]) {
        let log = std::fs::File::create(self.data.path().join(format!("{label}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("ARCA_NATS_URL", &self.nats.url)
            .env("ARCA_SECRET_KEY_FILE", self.key_file())
            .env("ARCA_TEST_FAST_KDF", "1")
            .env("ARCA_BOOTSTRAP_KEY", API_KEY)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.processes.push((label.to_owned(), Process(child)));
    }

    /// The base URL of `arca server`'s API, once it serves.
    pub(crate) fn api(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log("server");
            if let Some(base) = log.split("arca server: API ").nth(1).and_then(|rest| rest.split(';').next()) {
                return base.to_owned();
            }
            assert!(Instant::now() < deadline, "arca server never said where its API is:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything in one `arca server` process.
    pub(crate) fn all_in_one(self) -> Platform {
        self.all_in_one_with(&[])
    }

    pub(crate) fn all_in_one_with(mut self, extra: &[&str]) -> Platform {
        let data = self.data.path().display().to_string();
        let nats = self.nats.url.clone();
        let mut args = vec![
            "server",
            "--data-dir",
            &data,
            "--nats",
            &nats,
            "--http-addr",
            "127.0.0.1:0",
            "--nbd-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        self.spawn("server", &binary("arca"), &args);
        self
    }

    fn kill(&mut self, label: &str) {
        let at = self.processes.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut process) = self.processes.remove(at);
        process.0.kill().unwrap();
        process.0.wait().unwrap();
    }

    pub(crate) fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.data.path().join(format!("{label}.log"))).unwrap_or_default()
    }

    fn arca_output(&self, args: &[&str]) -> std::process::Output {
        self.arca_output_with(args, &[])
    }

    fn arca_output_with(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(binary("arca"))
            .args(args)
            .env("ARCA_NATS_URL", &self.nats.url)
            .env("ARCA_SECRET_KEY_FILE", self.key_file())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    pub(crate) fn arca(&self, args: &[&str]) -> String {
        let output = self.arca_output(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "arca {args:?} failed: {stderr}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Waits for `job` to end; returns its JSON.
    pub(crate) fn wait_job(&self, tenant: &str, job: &str) -> serde_json::Value {
        let output = self.arca_output(&["job", "show", "--tenant", tenant, job, "--wait", "120"]);
        let text = String::from_utf8_lossy(&output.stdout);
        let logs: Vec<String> = self.processes.iter().map(|(l, _)| format!("--- {l}\n{}", self.log(l))).collect();
        assert!(!text.trim().is_empty(), "job {job}: {}\n{}", String::from_utf8_lossy(&output.stderr), logs.join("\n"));
        serde_json::from_str(text.trim()).unwrap()
    }

    pub(crate) fn wait_succeeded(&self, tenant: &str, job: &str) -> serde_json::Value {
        let job_json = self.wait_job(tenant, job);
        if job_json["status"] != "succeeded" {
            let logs: Vec<String> = self.processes.iter().map(|(l, _)| format!("--- {l}\n{}", self.log(l))).collect();
            panic!("job {job} did not succeed: {job_json}\n{}", logs.join("\n"));
        }
        job_json
    }
}

/// Tenant, fs target, source and policy; returns (tenant, target, source, policy).
pub(crate) fn define(
    platform: &Platform,
    source_dir: &Path,
    repo: &Path,
    extra_source: &[&str],
    extra_policy: &[&str],
) -> [String; 4] {
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let [target, source, policy] = define_in(platform, &tenant, source_dir, repo, extra_source, extra_policy);
    [tenant, target, source, policy]
}

/// A fs target, a source and a policy in `tenant`; returns (target, source, policy).
pub(crate) fn define_in(
    platform: &Platform,
    tenant: &str,
    source_dir: &Path,
    repo: &Path,
    extra_source: &[&str],
    extra_policy: &[&str],
) -> [String; 3] {
    let target_url = format!("fs://{}", repo.display());
    let target = platform.arca(&["target", "add", "--tenant", tenant, "primary", &target_url]);
    let source_path = source_dir.display().to_string();
    let mut args = vec!["source", "add", "--tenant", tenant, "docs", &source_path];
    args.extend_from_slice(extra_source);
    let source = platform.arca(&args);
    let mut args = vec!["policy", "create", "--tenant", tenant, "nightly", "--source", &source, "--target", &target];
    args.extend_from_slice(extra_policy);
    let policy = platform.arca(&args);
    [target, source, policy]
}

/// Adds an S3 target (on `endpoint`, or the emulator's own) named `name`; returns its id.
pub(crate) fn add_s3_target(
    platform: &Platform,
    tenant: &str,
    bucket: &arca_testkit::TestTarget,
    endpoint: Option<&str>,
) -> String {
    let env = bucket.env_map();
    let endpoint = endpoint.unwrap_or(&env["AWS_ENDPOINT_URL"]);
    let args = [
        "target",
        "add",
        "--tenant",
        tenant,
        "offsite",
        &bucket.url,
        "--endpoint",
        endpoint,
        "--region",
        "us-east-1",
        "--access-key-id",
        &env["AWS_ACCESS_KEY_ID"],
    ];
    let output = platform.arca_output_with(&args, &[("ARCA_TARGET_SECRET_ACCESS_KEY", &env["AWS_SECRET_ACCESS_KEY"])]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

pub(crate) fn make_source(dir: &Path) {
    write(&dir.join("a/one.bin"), &noise(3 << 20, 1));
    write(&dir.join("a/two.txt"), b"hello from acme\n");
    write(&dir.join("b/three.bin"), &noise(1 << 20, 2));
}

/// A catalog query's answer (`null` when it failed).
pub(crate) fn catalog_query(nats: &str, query: &str, request: serde_json::Value) -> serde_json::Value {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bus = Bus::connect(BusConfig::new(nats)).await.unwrap();
        bus.request(&format!("arca.q.catalog.{query}"), &request, None, Duration::from_secs(2))
            .await
            .unwrap_or_default()
    })
}

/// The progress messages of `tenant`'s jobs, as they arrive.
/// Live progress of `tenant`'s jobs: (job id, reading).
fn follow_progress(nats: &str, tenant: &str) -> std::sync::mpsc::Receiver<(String, serde_json::Value)> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let (nats, subject) = (nats.to_owned(), format!("arca.progress.{tenant}.>"));
    let (ready, subscribed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            use futures::StreamExt;
            let client = async_nats::connect(&nats).await.unwrap();
            let mut messages = client.subscribe(subject).await.unwrap();
            client.flush().await.unwrap();
            ready.send(()).unwrap();
            while let Some(message) = messages.next().await {
                let job = message.subject.rsplit('.').next().unwrap_or_default().to_owned();
                if sender.send((job, serde_json::from_slice(&message.payload).unwrap())).is_err() {
                    return;
                }
            }
        })
    });
    subscribed.recv().unwrap();
    receiver
}

/// The succeeded backup jobs of `tenant`, from the catalog.
fn succeeded_backups(nats: &str, tenant: &str) -> Vec<serde_json::Value> {
    let request = serde_json::json!({ "tenant": tenant, "kind": "backup", "status": "succeeded" });
    catalog_query(nats, "jobs.list", request)["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_scheduled_backup_is_copied_offsite_verified_incremental_and_restores_from_the_copy() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let pre = work.path().join("pre-ran");
    let post = work.path().join("post-ran");
    let pre_hook = format!("date >> {}", pre.display());
    let post_hook = format!("date >> {}", post.display());
    let offsite = arca_testkit::target(arca_testkit::Backend::S3);
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let offsite_id = add_s3_target(&platform, &tenant, &offsite, None);
    // The source's excludes are applied: its scratch files are in no snapshot.
    write(&source_dir.join("a/scratch.tmp"), b"left out");
    write(&source_dir.join("b/.cache/blob"), b"left out too");
    let [target, _source, policy] = define_in(
        &platform,
        &tenant,
        &source_dir,
        &repo,
        &["--pre-hook", &pre_hook, "--post-hook", &post_hook, "--exclude", "*.tmp", "--exclude", "**/b/.cache"],
        &["--every", "60", "--keep-last", "2", "--verify-every", "60", "--copy-to", &offsite_id],
    );

    // The schedule fires within a minute (interval schedules fire on multiples of 60 s).
    let deadline = Instant::now() + Duration::from_secs(100);
    let scheduled = loop {
        if let Some(job) = succeeded_backups(&platform.nats.url, &tenant).first() {
            break job.clone();
        }
        assert!(Instant::now() < deadline, "no scheduled backup succeeded:\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(scheduled["trigger"]["type"], "schedule", "{scheduled}");
    assert!(repo.join("config").is_file(), "the repository was created at the target");
    assert_eq!(std::fs::read_to_string(&pre).unwrap().lines().count(), 1, "the pre-hook ran once");
    assert_eq!(std::fs::read_to_string(&post).unwrap().lines().count(), 1, "the post-hook ran once");

    // The verify schedule fired too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let request = serde_json::json!({ "tenant": tenant, "kind": "verify", "status": "succeeded" });
    while catalog_query(&platform.nats.url, "jobs.list", request.clone())["items"].as_array().is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "no scheduled verify succeeded:\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A changed file: the next run reads only it; its progress is published live.
    write(&source_dir.join("a/two.txt"), b"hello again from acme, changed\n");
    let progress = follow_progress(&platform.nats.url, &tenant);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let second = platform.wait_succeeded(&tenant, &job);
    // (Other jobs of the tenant — the first run's copy, a verify — may report meanwhile.)
    let last = std::iter::from_fn(|| progress.recv_timeout(Duration::from_secs(10)).ok())
        .find(|(of, p)| *of == job && p["eta_seconds"] == 0)
        .map(|(_, p)| p)
        .expect("the job's final progress was published");
    assert_eq!(last["files_done"], 1, "{last}");
    assert_eq!(last["bytes_done"], 31, "{last}");
    assert_eq!(last["eta_seconds"], 0, "{last}");
    assert_eq!(second["bytes_read"], 31, "an incremental backup reads only the changed file: {second}");
    assert_eq!(second["files"], 3, "{second}");
    let snapshot = second["snapshot"].as_str().unwrap().to_owned();

    // The catalog indexed both snapshots' files: the changed file has two versions.
    let changed = source_dir.join("a/two.txt").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hits =
            catalog_query(&platform.nats.url, "files.search", serde_json::json!({ "tenant": tenant, "path": changed }));
        let versions = hits["items"].as_array().cloned().unwrap_or_default();
        if versions.len() == 2 {
            let sizes: Vec<u64> = versions.iter().map(|v| v["size"].as_u64().unwrap()).collect();
            assert!(sizes.contains(&16) && sizes.contains(&31), "{hits}");
            assert!(versions.iter().any(|v| v["snapshots"].as_array().unwrap().iter().any(|s| s["id"] == snapshot)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file index never showed both versions: {hits}\n{}",
            platform.log("server")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The incremental backup's copy landed in S3; restoring from the copy gives the source.
    let offsite_target: TargetId = offsite_id.parse().unwrap();
    let copy = arca_worker::ids::follow_up_job_id(job.parse().unwrap(), JobKind::Copy, Some(offsite_target));
    let copy = platform.wait_succeeded(&tenant, &copy.to_string());
    let copied_snapshot = copy["snapshot"].as_str().unwrap().to_owned();
    let restored = work.path().join("restored");
    let restore_to = restored.display().to_string();
    let job =
        platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &copied_snapshot, "--to", &restore_to]);
    let restore = platform.wait_succeeded(&tenant, &job);
    assert_eq!(restore["files"], 3, "{restore}");
    assert!(!restored.join(source_dir.strip_prefix("/").unwrap()).join("a/scratch.tmp").exists());
    // Without the excluded entries (their folders keep their times), the trees are equal.
    for (folder, excluded) in [("a", "a/scratch.tmp"), ("b", "b/.cache")] {
        let folder = source_dir.join(folder);
        let mtime = std::fs::metadata(&folder).unwrap().modified().unwrap();
        let excluded = source_dir.join(excluded);
        if excluded.is_dir() { std::fs::remove_dir_all(excluded) } else { std::fs::remove_file(excluded) }.unwrap();
        std::fs::File::open(&folder).unwrap().set_modified(mtime).unwrap();
    }
    assert_same_tree(&source_dir, &restored.join(source_dir.strip_prefix("/").unwrap()));

    // A third backup makes three snapshots; keep-last 2 forgets one, then prunes.
    write(&source_dir.join("b/four.bin"), &noise(1 << 20, 3));
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &job);
    let target_id: TargetId = target.parse().unwrap();
    let forget = arca_worker::ids::follow_up_job_id(job.parse::<JobId>().unwrap(), JobKind::Forget, Some(target_id));
    let forget = platform.wait_succeeded(&tenant, &forget.to_string());
    assert_eq!(forget["files"], 1, "keep-last 2 of 3 forgets one snapshot: {forget}");
    let snapshots = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(snapshots, 2, "the forgotten snapshot left the repository");
    let prune = arca_worker::ids::follow_up_job_id(
        forget["id"].as_str().unwrap().parse().unwrap(),
        JobKind::Prune,
        Some(target_id),
    );
    platform.wait_succeeded(&tenant, &prune.to_string());

    let job = platform.arca(&["job", "verify", "--tenant", &tenant, "--target", &target]);
    platform.wait_succeeded(&tenant, &job);
}

/// The Prometheus text a metrics endpoint serves.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_failing_pre_hook_fails_the_job_with_its_output_and_the_post_hook_still_runs() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let metrics =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let platform = Platform::new().all_in_one_with(&["--metrics-addr", &metrics]);
    let post = work.path().join("post-ran");
    let post_hook = format!("touch {}", post.display());
    let [tenant, _, _, policy] = define(
        &platform,
        &source_dir,
        &repo,
        &["--pre-hook", "echo database will not quiesce >&2; exit 4", "--post-hook", &post_hook],
        &["--every", "3600"],
    );
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let failed = platform.wait_job(&tenant, &job);
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("database will not quiesce") && error.contains("pre hook"), "{error}");
    assert!(post.exists(), "the post-hook ran after the failed pre-hook");
    let scraped = scrape(&metrics);
    assert!(scraped.contains(r#"arca_jobs_total{kind="backup",state="failed"} 1"#), "{scraped}");
    assert!(scraped.contains("arca_job_duration_seconds"), "{scraped}");
    assert!(!repo.join("snapshots").exists() || std::fs::read_dir(repo.join("snapshots")).unwrap().count() == 0);
}

#[test]
fn each_service_as_its_own_process_and_a_killed_worker_hands_its_job_on() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let mut platform = Platform::new();
    let db = format!("sqlite://{}?mode=rwc", platform.data.path().join("catalog.db").display());
    platform.spawn("catalog", &binary("arca-catalog"), &["--database", &db, "run"]);
    platform.spawn("scheduler", &binary("arca-scheduler"), &[]);
    platform.spawn("storage", &binary("arca-storage"), &[]);
    platform.spawn("recovery", &binary("arca-recovery"), &[]);
    platform.spawn(
        "transport-1",
        &binary("arca-transport"),
        &["--worker-name", "transport-1", "--ack-wait-seconds", "3"],
    );
    // The pre-hook holds the job long enough to kill the worker that took it.
    let started = work.path().join("started");
    let pre_hook = format!("touch {}; sleep 4", started.display());
    let [tenant, _, _, policy] =
        define(&platform, &source_dir, &repo, &["--pre-hook", &pre_hook], &["--every", "3600"]);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the job never started:\n{}", platform.log("transport-1"));
        std::thread::sleep(Duration::from_millis(50));
    }
    platform.kill("transport-1");
    platform.spawn(
        "transport-2",
        &binary("arca-transport"),
        &["--worker-name", "transport-2", "--ack-wait-seconds", "3"],
    );
    let done = platform.wait_succeeded(&tenant, &job);
    assert_eq!(done["worker"], "transport-2", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).unwrap().count(), 1, "one snapshot, no partial one");

    let restored = work.path().join("restored");
    let snapshot = done["snapshot"].as_str().unwrap().to_owned();
    let restore_to = restored.display().to_string();
    let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &snapshot, "--to", &restore_to]);
    platform.wait_succeeded(&tenant, &job);
    assert_same_tree(&source_dir, &restored.join(source_dir.strip_prefix("/").unwrap()));
}

#[test]
fn a_tenant_over_its_quota_gets_no_more_backups() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "small", "--quota-bytes", "1000000"]);
    let target = platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let source = platform.arca(&["source", "add", "--tenant", &tenant, "docs", &source_dir.display().to_string()]);
    let policy = platform.arca(&[
        "policy", "create", "--tenant", &tenant, "hourly", "--source", &source, "--target", &target, "--every", "3600",
    ]);
    // Under quota when it starts: it runs, and the usage it reports (about 4 MB) is over.
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &job);
    let snapshots = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    let output = platform.arca_output(&["policy", "run", "--tenant", &tenant, &policy]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("quota"), "{stderr}");
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).unwrap().count(), snapshots, "nothing more was written");
}

#[test]
fn a_policy_copies_each_backup_offsite_moving_only_new_chunks_and_the_copy_restores() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let offsite = arca_testkit::target(arca_testkit::Backend::S3);
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let offsite_id = add_s3_target(&platform, &tenant, &offsite, None);
    let primary =
        platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let source = platform.arca(&["source", "add", "--tenant", &tenant, "docs", &source_dir.display().to_string()]);
    let policy = platform.arca(&[
        "policy",
        "create",
        "--tenant",
        &tenant,
        "offsite-too",
        "--source",
        &source,
        "--target",
        &primary,
        "--every",
        "3600",
        "--copy-to",
        &offsite_id,
    ]);
    let offsite_target: TargetId = offsite_id.parse().unwrap();
    let copy_of = |backup: &str| {
        let id =
            arca_worker::ids::follow_up_job_id(backup.parse::<JobId>().unwrap(), JobKind::Copy, Some(offsite_target));
        platform.wait_succeeded(&tenant, &id.to_string())
    };

    let backup = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &backup);
    let first = copy_of(&backup);
    assert!(first["bytes_added"].as_u64().unwrap() > 1 << 20, "the first copy moves the data: {first}");

    write(&source_dir.join("a/two.txt"), b"changed after the first copy\n");
    let backup = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &backup);
    let second = copy_of(&backup);
    assert!(
        second["bytes_added"].as_u64().unwrap() < 64 << 10,
        "the second copy moves only the changed file's chunk and its trees: {second}"
    );

    // Restore from the copy: identical files.
    let restored = work.path().join("restored");
    let snapshot = second["snapshot"].as_str().unwrap().to_owned();
    let to = restored.display().to_string();
    let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &snapshot, "--to", &to]);
    platform.wait_succeeded(&tenant, &job);
    assert_same_tree(&source_dir, &restored.join(source_dir.strip_prefix("/").unwrap()));

    // Restore the copy into yet another target (Azure Blob), then from there into a folder.
    let azure = arca_testkit::target(arca_testkit::Backend::Azure);
    let env = azure.env_map();
    let args = [
        "target",
        "add",
        "--tenant",
        &tenant,
        "third",
        &azure.url,
        "--endpoint",
        &env["AZURE_STORAGE_ENDPOINT"],
        "--account-name",
        &env["AZURE_STORAGE_ACCOUNT"],
    ];
    let output = platform.arca_output_with(&args, &[("ARCA_TARGET_ACCOUNT_KEY", &env["AZURE_STORAGE_KEY"])]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let third = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &snapshot, "--to-target", &third]);
    let into_target = platform.wait_succeeded(&tenant, &job);
    let in_third = into_target["snapshot"].as_str().unwrap().to_owned();
    let again = work.path().join("again");
    let to = again.display().to_string();
    let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &in_third, "--to", &to]);
    platform.wait_succeeded(&tenant, &job);
    assert_same_tree(&source_dir, &again.join(source_dir.strip_prefix("/").unwrap()));
}

#[test]
fn verify_jobs_read_the_packs_back_part_by_part_and_name_a_damaged_one() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let [tenant, target, _, policy] = define(&platform, &source_dir, &repo, &[], &["--every", "3600"]);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &job);
    let mut packs: Vec<PathBuf> = walk_files(&repo.join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let damaged = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let damaged_id = damaged.file_name().unwrap().to_string_lossy().into_owned();

    let mut packs_read = 0;
    for run in 1..=10 {
        let job = platform.arca(&["job", "verify", "--tenant", &tenant, "--target", &target]);
        let verify = platform.wait_job(&tenant, &job);
        if verify["status"] == "failed" {
            let error = verify["error"].as_str().unwrap();
            assert!(error.contains(&damaged_id) && error.contains("hurt"), "run {run}: {error}");
            assert!(packs_read < packs.len(), "the damaged pack was found in its own part, not after every pack");
            return;
        }
        assert_eq!(verify["status"], "succeeded", "{verify}");
        packs_read += verify["files"].as_u64().unwrap() as usize;
    }
    panic!("ten verifies (every part once) never read the damaged pack");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk_files(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn a_malformed_job_message_is_dead_lettered_and_work_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let [tenant, _, _, policy] = define(&platform, &source_dir, &repo, &[], &["--every", "3600"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bus = runtime.block_on(Bus::connect(BusConfig::new(&platform.nats.url))).unwrap();
    // Not a ticket at all, and a ticket for a job nobody requested.
    let unknown = serde_json::json!({ "tenant": tenant, "job": JobId::new(), "kind": "backup" }).to_string();
    runtime.block_on(async {
        for payload in ["{not a ticket".to_owned(), unknown.clone()] {
            bus.jetstream().publish("arca.job.backup", payload.into()).await.unwrap().await.unwrap();
        }
    });
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &job);
    let dead = runtime.block_on(async {
        let mut stream = bus.jetstream().get_stream(arca_bus::DEAD_STREAM).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stream.info().await.unwrap().state.messages < 2 {
            assert!(Instant::now() < deadline, "not both reached the dead-letter stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut dead = Vec::new();
        for sequence in 1..=2 {
            dead.push(stream.get_raw_message(sequence).await.unwrap());
        }
        dead
    });
    let reason = |m: &async_nats::jetstream::message::StreamMessage| {
        m.headers.get("Arca-Dead-Reason").map(|v| v.as_str().to_owned()).unwrap_or_default()
    };
    let malformed = dead.iter().find(|m| &m.payload[..] == b"{not a ticket").expect("the malformed message is kept");
    assert!(reason(malformed).contains("not a job ticket"), "{}", reason(malformed));
    let orphan = dead.iter().find(|m| m.payload == unknown.as_bytes()).expect("the orphan ticket is kept");
    assert!(reason(orphan).contains("never requested"), "{}", reason(orphan));
}

#[test]
fn a_job_finishes_when_nats_restarts_while_it_runs() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let mut nats = RestartableNats::start();
    let platform = Platform::on(nats.url(), None).all_in_one();
    let started = work.path().join("started");
    let pre_hook = format!("touch {}; sleep 4", started.display());
    let [tenant, _, _, policy] =
        define(&platform, &source_dir, &repo, &["--pre-hook", &pre_hook], &["--every", "3600"]);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the job never started:\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_millis(50));
    }
    nats.stop();
    std::thread::sleep(Duration::from_secs(1));
    nats.resume();
    let done = platform.wait_succeeded(&tenant, &job);
    assert_eq!(done["attempt"], 1, "the same attempt finished after the restart: {done}");
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).unwrap().count(), 1);
}

/// A TCP proxy to a real server that the test can cut off (connections refused and dropped)
/// and restore, to stand for an object store outage.
struct Outage {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outage {
    fn new(upstream: &str) -> Outage {
        use std::sync::atomic::Ordering;
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let flag = flag.clone();
                std::thread::spawn(move || pipe(client, server, flag));
            }
        });
        Outage { port, up }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes or the outage begins.
fn pipe(client: std::net::TcpStream, server: std::net::TcpStream, up: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    let copy = |mut from: std::net::TcpStream,
                mut to: std::net::TcpStream,
                up: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if !up.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up2 = up.clone();
    let forward = std::thread::spawn(move || copy(client, server, up));
    copy(s2, c2, up2);
    let _ = forward.join();
}

#[test]
fn a_copy_retries_through_an_object_store_outage_then_fails_clearly_and_works_again() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let offsite = arca_testkit::target(arca_testkit::Backend::S3);
    let env = offsite.env_map();
    let outage = Outage::new(&env["AWS_ENDPOINT_URL"]);
    let mut platform = Platform::new();
    let data = platform.data.path().display().to_string();
    let nats = platform.nats.url.clone();
    let server_args = [
        "server",
        "--http-addr",
        "127.0.0.1:0",
        "--nbd-addr",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--nats",
        &nats,
        "--max-attempts",
        "3",
        "--retry-backoff-seconds",
        "1",
        "--ack-wait-seconds",
        "2",
    ];
    let log = std::fs::File::create(platform.data.path().join("server.log")).unwrap();
    let child = Command::new(binary("arca"))
        .args(server_args)
        .env("ARCA_STORAGE_RETRIES", "1")
        .env("ARCA_TEST_FAST_KDF", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    platform.processes.push(("server".into(), Process(child)));
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let offsite_id: TargetId = add_s3_target(&platform, &tenant, &offsite, Some(&outage.endpoint())).parse().unwrap();
    let primary =
        platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let source = platform.arca(&["source", "add", "--tenant", &tenant, "docs", &source_dir.display().to_string()]);
    let copy_to = offsite_id.to_string();
    let policy = platform.arca(&[
        "policy",
        "create",
        "--tenant",
        &tenant,
        "p",
        "--source",
        &source,
        "--target",
        &primary,
        "--every",
        "3600",
        "--copy-to",
        &copy_to,
    ]);
    let copy_of = |backup: &str| {
        arca_worker::ids::follow_up_job_id(backup.parse::<JobId>().unwrap(), JobKind::Copy, Some(offsite_id))
            .to_string()
    };
    let show = |job: &str| -> serde_json::Value {
        serde_json::from_str(&platform.arca(&["job", "show", "--tenant", &tenant, job])).unwrap()
    };

    // Down while the copy runs: it is retried, and finishes once the store is back.
    outage.set_up(false);
    let backup = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &backup);
    let copy = copy_of(&backup);
    let deadline = Instant::now() + Duration::from_secs(60);
    while show(&copy)["attempt"].as_u64().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "the copy was not retried: {}\n{}", show(&copy), platform.log("server"));
        std::thread::sleep(Duration::from_millis(100));
    }
    outage.set_up(true);
    let copied = platform.wait_succeeded(&tenant, &copy);
    assert!(copied["attempt"].as_u64().unwrap() >= 2, "{copied}");

    // Down for longer than every try: the copy fails, saying why.
    outage.set_up(false);
    write(&source_dir.join("a/two.txt"), b"changed while the store is down\n");
    let backup = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &backup);
    let failed = platform.wait_job(&tenant, &copy_of(&backup));
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("storage") || error.contains("connect"), "{error}");

    // Back again: the next copy works.
    outage.set_up(true);
    let backup = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &backup);
    platform.wait_succeeded(&tenant, &copy_of(&backup));
}

#[test]
fn a_site_worker_takes_only_its_sites_jobs_and_at_most_its_limit_at_once() {
    let work = tempfile::tempdir().unwrap();
    let mut platform = Platform::new();
    platform.spawn("central", &binary("arca-transport"), &["--worker-name", "central"]);
    platform.spawn(
        "branch",
        &binary("arca-transport"),
        &["--worker-name", "branch", "--site", "branch", "--parallel", "1"],
    );
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let target = platform.arca(&[
        "target",
        "add",
        "--tenant",
        &tenant,
        "primary",
        &format!("fs://{}", work.path().join("repo").display()),
    ]);
    // Each pre-hook fails if another of these jobs is running: two at once would fail one.
    let running = work.path().join("running");
    let hook = format!("mkdir {} || exit 9; sleep 1", running.display());
    let done = format!("rmdir {}", running.display());
    let mut jobs = Vec::new();
    for name in ["one", "two", "three"] {
        let dir = work.path().join(name);
        write(&dir.join("file"), name.as_bytes());
        let source = platform.arca(&[
            "source",
            "add",
            "--tenant",
            &tenant,
            name,
            &dir.display().to_string(),
            "--site",
            "branch",
            "--pre-hook",
            &hook,
            "--post-hook",
            &done,
        ]);
        let policy = platform.arca(&[
            "policy", "create", "--tenant", &tenant, name, "--source", &source, "--target", &target, "--every", "3600",
        ]);
        jobs.push(platform.arca(&["policy", "run", "--tenant", &tenant, &policy]));
    }
    for job in &jobs {
        let done = platform.wait_succeeded(&tenant, job);
        assert_eq!(done["worker"], "branch", "only the branch site's worker takes its jobs: {done}");
    }
}

/// The server is killed the moment a scheduled backup's snapshot reaches the repository,
/// before the catalog records it. The retried job adopts that snapshot instead of writing
/// another, and retention (keep-last 2) counts only recorded restore points: afterwards the
/// user still has two, and the repository holds exactly those.
#[test]
fn a_backup_retried_after_a_kill_keeps_every_restore_point() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let server_args = ["--ack-wait-seconds", "2", "--retry-backoff-seconds", "1"];
    let mut platform = Platform::new().all_in_one_with(&server_args);
    let [tenant, target, _, policy] =
        define(&platform, &source_dir, &repo, &[], &["--every", "3600", "--keep-last", "2"]);
    let target: TargetId = target.parse().unwrap();
    let mut kept = Vec::new();
    for round in 0..2u64 {
        write(&source_dir.join("a/changing.bin"), &noise(1 << 20, 10 + round));
        let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
        kept.push(platform.wait_succeeded(&tenant, &job)["snapshot"].as_str().unwrap().to_owned());
    }
    let repo_snapshots = || std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(repo_snapshots(), 2);

    write(&source_dir.join("a/changing.bin"), &noise(1 << 20, 12));
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo_snapshots() == 2 {
        assert!(Instant::now() < deadline, "the backup never wrote its snapshot:\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_micros(200));
    }
    platform.kill("server");
    let platform = platform.all_in_one_with(&server_args);
    let done = platform.wait_succeeded(&tenant, &job);
    assert!(done["attempt"].as_u64().unwrap() >= 2, "the kill came before the job ended: {done}");
    let forget = arca_worker::ids::follow_up_job_id(job.parse().unwrap(), JobKind::Forget, Some(target));
    let forget = platform.wait_succeeded(&tenant, &forget.to_string());
    assert_eq!(forget["files"], 1, "keep-last 2 of three restore points forgets one: {forget}");

    let mut expected = vec![kept[1].clone(), done["snapshot"].as_str().unwrap().to_owned()];
    expected.sort();
    // The catalog follows the log a moment later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = catalog_query(&platform.nats.url, "snapshots.list", serde_json::json!({ "tenant": tenant }));
        let mut restore_points: Vec<String> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "committed")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        restore_points.sort();
        if restore_points == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the previous restore point and the new one, got: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(repo_snapshots(), 2, "the repository holds exactly the recorded restore points");
}

#[test]
fn a_locked_snapshot_survives_retention_and_prune() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let [tenant, target, _, policy] =
        define(&platform, &source_dir, &repo, &[], &["--every", "3600", "--keep-last", "1"]);
    let target: TargetId = target.parse().unwrap();
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let first = platform.wait_succeeded(&tenant, &job);
    let locked = first["snapshot"].as_str().unwrap().to_owned();
    platform.arca(&["snapshot", "lock", "--tenant", &tenant, &locked, "--days", "30"]);
    let original = std::fs::read(source_dir.join("a/one.bin")).unwrap();
    write(&source_dir.join("a/one.bin"), &noise(3 << 20, 99));

    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    platform.wait_succeeded(&tenant, &job);
    let forget = arca_worker::ids::follow_up_job_id(job.parse().unwrap(), JobKind::Forget, Some(target));
    let forget = platform.wait_succeeded(&tenant, &forget.to_string());
    assert_eq!(forget["files"], 0, "keep-last 1 forgets nothing but the locked snapshot, which it keeps: {forget}");
    let prune = arca_worker::ids::follow_up_job_id(
        forget["id"].as_str().unwrap().parse().unwrap(),
        JobKind::Prune,
        Some(target),
    );
    platform.wait_succeeded(&tenant, &prune.to_string());
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).unwrap().count(), 2);

    let restored = work.path().join("restored");
    let to = restored.display().to_string();
    let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &locked, "--to", &to]);
    platform.wait_succeeded(&tenant, &job);
    let back = std::fs::read(restored.join(source_dir.strip_prefix("/").unwrap()).join("a/one.bin")).unwrap();
    assert!(back == original, "the locked snapshot's data survived the prune");
}

#[test]
fn prune_waits_for_a_backup_writing_to_its_target() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let platform = Platform::new().all_in_one_with(&[
        "--max-attempts",
        "20",
        "--retry-backoff-seconds",
        "1",
        "--ack-wait-seconds",
        "2",
        "--parallel",
        "4",
    ]);
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let target = platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let started = work.path().join("slow-started");
    let slow_hook = format!("touch {}; sleep 4", started.display());
    let mut policies = Vec::new();
    for (name, hook, keep) in [("slow", Some(slow_hook.as_str()), "10"), ("pruned", None, "1")] {
        let dir = work.path().join(name);
        make_source(&dir);
        let path = dir.display().to_string();
        let mut args = vec!["source", "add", "--tenant", &tenant, name, &path];
        if let Some(hook) = hook {
            args.extend(["--pre-hook", hook]);
        }
        let source = platform.arca(&args);
        policies.push(platform.arca(&[
            "policy",
            "create",
            "--tenant",
            &tenant,
            name,
            "--source",
            &source,
            "--target",
            &target,
            "--every",
            "3600",
            "--keep-last",
            keep,
        ]));
    }
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policies[1]]);
    platform.wait_succeeded(&tenant, &job);

    let slow = platform.arca(&["policy", "run", "--tenant", &tenant, &policies[0]]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the slow backup never started:\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policies[1]]);
    platform.wait_succeeded(&tenant, &job);
    let target: TargetId = target.parse().unwrap();
    let forget = arca_worker::ids::follow_up_job_id(job.parse().unwrap(), JobKind::Forget, Some(target));
    let forget = platform.wait_succeeded(&tenant, &forget.to_string());
    assert_eq!(forget["files"], 1, "{forget}");
    let prune = arca_worker::ids::follow_up_job_id(
        forget["id"].as_str().unwrap().parse().unwrap(),
        JobKind::Prune,
        Some(target),
    );
    let prune = platform.wait_succeeded(&tenant, &prune.to_string());
    let slow = platform.wait_succeeded(&tenant, &slow);
    assert!(prune["attempt"].as_u64().unwrap() >= 2, "the prune waited for the running backup: {prune}");
    assert_eq!(slow["attempt"], 1, "{slow}");
}

#[test]
fn a_backup_killed_mid_upload_resumes_on_another_worker_reusing_the_indexed_packs() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    const SIZE: usize = 480 << 20;
    for part in 0..6 {
        write(&source_dir.join(format!("part-{part}.bin")), &noise(SIZE / 6, 100 + part as u64));
    }
    let mut platform = Platform::new();
    let worker = ["--worker-name", "transport-1", "--ack-wait-seconds", "3", "--progress-interval-ms", "50"];
    platform.spawn("transport-1", &binary("arca-transport"), &worker);
    let [tenant, _, _, policy] = define(&platform, &source_dir, &repo, &[], &["--every", "3600"]);
    let progress = follow_progress(&platform.nats.url, &tenant);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    // Killed once the first index file (eight 16 MiB packs) must be written.
    let killed_at = loop {
        let (_, reading) = progress.recv_timeout(Duration::from_secs(60)).expect("the backup reports progress");
        let done = reading["bytes_done"].as_u64().unwrap_or(0);
        assert_ne!(reading["eta_seconds"], 0, "the backup finished before it could be killed: {reading}");
        if done >= 240 << 20 {
            break done;
        }
    };
    platform.kill("transport-1");
    platform.spawn(
        "transport-2",
        &binary("arca-transport"),
        &["--worker-name", "transport-2", "--ack-wait-seconds", "3"],
    );
    let done = platform.wait_succeeded(&tenant, &job);
    assert_eq!(done["worker"], "transport-2", "{done}");
    let added = done["bytes_added"].as_u64().unwrap();
    assert!(
        added + (120 << 20) < SIZE as u64,
        "the second attempt stored {added} of {SIZE} bytes: it reused what the first (killed at {killed_at}) indexed"
    );
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).unwrap().count(), 1, "one snapshot, no partial one");
}

/// A running backup cancelled through `arca server`'s REST API: the job ends cancelled, the
/// live event stream says so, no snapshot is committed (in the log or in the repository), and
/// the next run backs up as usual.
#[test]
fn a_backup_cancelled_through_the_api_stops_and_commits_no_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let started = work.path().join("started");
    let hook = format!("touch {}; sleep 2", started.display());
    let platform = Platform::new().all_in_one();
    let [tenant, _, _, policy] = define(&platform, &source_dir, &repo, &["--pre-hook", &hook], &["--every", "3600"]);
    let api = platform.api();
    // reqwest is built without a rustls provider in this workspace: pick ring, like the services.
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let response = http
                .post(format!("{api}/v1/policies/{policy}/run?tenant={tenant}"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap();
            // 401 until the catalog has the bootstrap key.
            if response.status() == reqwest::StatusCode::ACCEPTED {
                break response.json::<serde_json::Value>().await.unwrap()["job"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "run-now answered {}", response.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut events =
            http.get(format!("{api}/v1/jobs/{job}/events?tenant={tenant}")).bearer_auth(API_KEY).send().await.unwrap();
        assert_eq!(events.status(), reqwest::StatusCode::OK);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the backup never started:\n{}", platform.log("server"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cancel =
            http.post(format!("{api}/v1/jobs/{job}/cancel?tenant={tenant}")).bearer_auth(API_KEY).send().await.unwrap();
        assert_eq!(cancel.status(), reqwest::StatusCode::OK);
        let mut text = String::new();
        while !text.contains("event: end") {
            let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk()).await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream lasts until the end")));
        }
        assert!(
            text.contains("\"status\":\"running\"") && text.ends_with("data: {\"status\":\"cancelled\"}\n\n"),
            "{text}"
        );
        let job_json = platform.wait_job(&tenant, &job);
        assert_eq!(job_json["status"], "cancelled", "{job_json}");
        assert!(job_json["snapshot"].is_null(), "{job_json}");
        // The worker stopped the engine: it says so, and the repository has no snapshot.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !platform.log("server").contains("job cancelled") {
            assert!(Instant::now() < deadline, "the worker never stopped:\n{}", platform.log("server"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0), 0, "no snapshot was written");
    let snapshots = catalog_query(&platform.nats.url, "snapshots.list", serde_json::json!({ "tenant": tenant }));
    assert_eq!(snapshots["items"].as_array().map(Vec::len), Some(0), "{snapshots}");
    let next = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let next = platform.wait_succeeded(&tenant, &next);
    assert!(next["snapshot"].is_string(), "{next}");
}

/// `arca` as a client of `arca server`'s REST API: log in (a bad key is refused and saves
/// nothing), run a policy and follow it to its end, list, find the backed-up file, watch an
/// ended job; scripts get JSON and exit codes.
#[test]
fn the_cli_logs_in_runs_a_policy_through_the_api_and_finds_its_files() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    let platform = Platform::new().all_in_one();
    let [tenant, _, _, policy] = define(&platform, &source_dir, &repo, &[], &["--every", "3600"]);
    let api = platform.api();
    let config = work.path().join("config");
    let arca = |args: &[&str]| {
        Command::new(binary("arca"))
            .args(args)
            .env("ARCA_CONFIG_DIR", &config)
            .env_remove("ARCA_PROFILE")
            .output()
            .unwrap()
    };
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };

    // (503 until the catalog answers.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let refused = arca(&["login", "--url", &api, "--key", "arca_not_a_key_at_all_0000"]);
        if !text(&refused).contains("HTTP 503") || Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("unauthorized"), "{}", text(&refused));
    assert!(!config.join("profiles.toml").exists(), "a refused login saves nothing");
    let no_profile = arca(&["jobs", "list"]);
    assert_eq!(no_profile.status.code(), Some(1));
    assert!(text(&no_profile).contains("arca login"), "{}", text(&no_profile));

    // The catalog may not have the bootstrap key yet: log in until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let login = arca(&["login", "--url", &api, "--key", API_KEY, "--tenant", &tenant]);
        if login.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&login));
        std::thread::sleep(Duration::from_millis(200));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(config.join("profiles.toml")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the profile holds a key: owner only");

    let run = arca(&["policies", "run", &policy]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", text(&run), platform.log("server"));
    assert!(String::from_utf8_lossy(&run.stdout).contains("succeeded: snapshot "), "{}", text(&run));
    let jobs = arca(&["--json", "jobs", "list"]);
    assert!(jobs.status.success(), "{}", text(&jobs));
    let listed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&jobs.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let backup = listed.iter().find(|j| j["kind"] == "backup").expect("the backup is listed");
    assert_eq!(backup["status"], "succeeded");
    let job = backup["id"].as_str().unwrap();
    let watched = arca(&["jobs", "watch", job]);
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched));

    // The file index catches up with the snapshot.
    let wanted = source_dir.join("a/two.txt").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = arca(&["find", &wanted]);
        if found.status.success() {
            assert!(String::from_utf8_lossy(&found.stdout).contains("in 1 snapshot(s)"), "{}", text(&found));
            break;
        }
        assert_eq!(found.status.code(), Some(1), "{}", text(&found));
        assert!(Instant::now() < deadline, "never found {wanted}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let nothing = arca(&["find", "/no/such/file"]);
    assert_eq!(nothing.status.code(), Some(1));
    let cancel = arca(&["jobs", "cancel", job]);
    assert_eq!(cancel.status.code(), Some(1), "an ended job cannot be cancelled: {}", text(&cancel));
    assert!(text(&cancel).contains("HTTP 409"), "{}", text(&cancel));
}
