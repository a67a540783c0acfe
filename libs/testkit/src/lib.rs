//! Throwaway storage locations and servers for Arca's tests.
//!
//! - [`target`] gives each test a fresh, empty repository location on the
//!   local filesystem, an S3 bucket (moto) or an Azure container (Azurite).
//! - [`nats_server`] starts a private `nats-server -js` for one test.
//! - [`StorageDaemon`] holds a disk image open in `qemu-storage-daemon`, as a VM would.
//!
//! S3 and Azurite servers are shared: `make test` starts one of each and passes
//! `ARCA_TEST_S3_ENDPOINT` / `ARCA_TEST_AZURITE_ENDPOINT` to every test process
//! (cargo-nextest runs each test in its own process). Without those variables
//! the first test in a process starts its own server, which lives until the
//! process exits. Servers come from `$ARCA_TOOLS_DIR/bin` (installed by
//! `infra/dev/ensure-tools.sh`), else from `PATH`.
//!
//! Everything is synchronous and panics on failure: it is test setup.

mod azure;
mod http;
mod process;
mod qemu;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use process::Guarded;
pub use qemu::{DaemonOptions, StorageDaemon};
use tempfile::TempDir;

/// Where a repository lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fs,
    S3,
    Azure,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Fs, Backend::S3, Backend::Azure];

    /// `"fs"`, `"s3"` or `"azure"`: for test names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fs => "fs",
            Backend::S3 => "s3",
            Backend::Azure => "azure",
        }
    }
}

/// A fresh, empty repository location for one test.
pub struct TestTarget {
    pub backend: Backend,
    /// `fs:///abs/dir/repo`, `s3://bucket/repo` or `azblob://container/repo`.
    pub url: String,
    /// Environment the program under test needs to reach `url` (endpoint, keys).
    pub env: Vec<(String, String)>,
    /// Keeps the filesystem target's directory until the test ends.
    _dir: Option<TempDir>,
}

impl TestTarget {
    pub fn env_map(&self) -> HashMap<String, String> {
        self.env.iter().cloned().collect()
    }
}

impl std::fmt::Debug for TestTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTarget")
            .field("backend", &self.backend)
            .field("url", &self.url)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Creates a fresh, empty location on `backend`. For S3 and Azure the bucket or
/// container exists and is empty; the repository path inside it (`repo`) does
/// not. Buckets and containers are not deleted: the servers are throwaway.
pub fn target(backend: Backend) -> TestTarget {
    match backend {
        Backend::Fs => {
            let dir = tempfile::Builder::new().prefix("arca-test-").tempdir().expect("testkit: create a temp dir");
            let repo = dir.path().join("repo");
            TestTarget { backend, url: format!("fs://{}", repo.display()), env: Vec::new(), _dir: Some(dir) }
        }
        Backend::S3 => {
            let endpoint = s3_endpoint();
            let bucket = unique_name();
            let response = http::request(&http::Endpoint::parse(&endpoint), "PUT", &format!("/{bucket}"), &[])
                .unwrap_or_else(|e| panic!("testkit: create bucket on {endpoint}: {e}"));
            assert_eq!(response.status, 200, "testkit: create bucket {bucket} on {endpoint}: {}", response.body);
            TestTarget {
                backend,
                url: format!("s3://{bucket}/repo"),
                env: vars(&[
                    ("AWS_ENDPOINT_URL", &endpoint),
                    // moto accepts any credentials, but clients insist on some.
                    ("AWS_ACCESS_KEY_ID", "test"),
                    ("AWS_SECRET_ACCESS_KEY", "test"),
                    ("AWS_REGION", "us-east-1"),
                ]),
                _dir: None,
            }
        }
        Backend::Azure => {
            let endpoint = azurite_endpoint();
            let container = unique_name();
            let response = azure::request(
                &http::Endpoint::parse(&endpoint),
                "PUT",
                &format!("/{container}"),
                &[("restype", "container")],
            )
            .unwrap_or_else(|e| panic!("testkit: create container on {endpoint}: {e}"));
            assert_eq!(response.status, 201, "testkit: create container {container} on {endpoint}: {}", response.body);
            TestTarget {
                backend,
                url: format!("azblob://{container}/repo"),
                env: vars(&[
                    ("AZURE_STORAGE_ENDPOINT", &endpoint),
                    ("AZURE_STORAGE_ACCOUNT", azure::ACCOUNT),
                    ("AZURE_STORAGE_KEY", azure::KEY),
                ]),
                _dir: None,
            }
        }
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A bucket/container name no other test (or test process) uses: valid for both
/// S3 and Azure (3–63 characters of lowercase letters, digits and single hyphens).
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut random = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).expect("testkit: system randomness");
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("t-{}-{}-{hex}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The S3 server: `$ARCA_TEST_S3_ENDPOINT`, else a moto server of this process.
/// Like `http://127.0.0.1:PORT`.
pub fn s3_endpoint() -> String {
    static OWN: OnceLock<SharedServer> = OnceLock::new();
    from_env("ARCA_TEST_S3_ENDPOINT").unwrap_or_else(|| {
        let server = OWN.get_or_init(|| {
            SharedServer::start("moto_server", |port, _| {
                vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
            })
        });
        format!("http://127.0.0.1:{}", server.port)
    })
}

/// The Azure Blob server: `$ARCA_TEST_AZURITE_ENDPOINT`, else an Azurite of this
/// process. Like `http://127.0.0.1:PORT/devstoreaccount1`.
pub fn azurite_endpoint() -> String {
    static OWN: OnceLock<SharedServer> = OnceLock::new();
    from_env("ARCA_TEST_AZURITE_ENDPOINT").unwrap_or_else(|| {
        let server = OWN.get_or_init(|| {
            SharedServer::start("azurite-blob", |port, dir| {
                let args = [
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--location",
                    &dir.join("azurite").display().to_string(),
                    // Otherwise it tries to send telemetry out.
                    "--disableTelemetry",
                    "--silent",
                    // Clients may send a newer x-ms-version than Azurite knows.
                    "--skipApiVersionCheck",
                ];
                args.iter().map(|a| a.to_string()).collect()
            })
        });
        format!("http://127.0.0.1:{}/{}", server.port, azure::ACCOUNT)
    })
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| v.trim_end_matches('/').to_string())
}

/// An HTTP server that lives as long as the test process.
struct SharedServer {
    port: u16,
    _process: Guarded,
}

impl SharedServer {
    /// Starts `tool` with `args(port, data_dir)` and waits until it answers HTTP.
    fn start(tool: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> SharedServer {
        let program = process::find_tool(tool);
        let mut error = String::new();
        // A free port may be taken before the server binds it: try another.
        for _ in 0..3 {
            // Statics are never dropped, so this directory is not a TempDir:
            // the watchdog removes it once the server is gone.
            let dir = tempfile::Builder::new()
                .prefix(&format!("arca-{tool}-"))
                .tempdir()
                .expect("testkit: create a temp dir")
                .keep();
            let port = process::free_port();
            let mut process = Guarded::spawn(&program, &args(port, &dir), &dir.join("server.log"), Some(&dir));
            // Ready once it answers HTTP at all (Azurite says 400 to `GET /`).
            let endpoint = http::Endpoint::parse(&format!("http://127.0.0.1:{port}"));
            match process.wait_ready(Duration::from_secs(60), || http::request(&endpoint, "GET", "/", &[]).is_ok()) {
                Ok(()) => {
                    return SharedServer { port, _process: process };
                }
                Err(e) => error = e,
            }
        }
        panic!("testkit: {} {error}", program.display());
    }
}

/// A private `nats-server -js` for one test, killed (and its store removed) on drop.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    process: Guarded,
    _store: TempDir,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Before the store directory goes.
        self.process.stop();
    }
}

/// Starts a JetStream-enabled nats-server on a free loopback port with its own
/// store directory. Prefers the pinned build in `$ARCA_TOOLS_DIR/bin` over an
/// older one on `PATH` (Debian's).
pub fn nats_server() -> NatsServer {
    let program = process::find_tool("nats-server");
    let mut error = String::new();
    // A free port may be taken before the server binds it: try another.
    for _ in 0..3 {
        let store = tempfile::Builder::new().prefix("arca-nats-").tempdir().expect("testkit: create a temp dir");
        let port = process::free_port();
        let args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]
            .iter()
            .map(|a| a.to_string())
            .chain([store.path().join("js").display().to_string()])
            .collect();
        // The watchdog removes the store too, should the test process be killed.
        let log = store.path().join("nats.log");
        let mut process = Guarded::spawn(&program, &args, &log, Some(store.path()));
        match process.wait_ready(Duration::from_secs(20), || nats_info(port).is_some()) {
            Ok(()) => {
                return NatsServer { url: format!("nats://127.0.0.1:{port}"), port, process, _store: store };
            }
            Err(e) => error = e,
        }
    }
    panic!("testkit: {} {error}", program.display());
}

/// The `INFO {...}` line a NATS server greets every client with.
fn nats_info(port: u16) -> Option<String> {
    use std::io::{BufRead, BufReader};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("INFO ").then_some(line)
}

/// The path of a test tool (`nats-server`, `azurite-blob`, …): the pinned one from
/// `infra/dev/ensure-tools.sh`, else the one on `PATH`.
pub fn tool(name: &str) -> std::path::PathBuf {
    process::find_tool(name)
}

/// A fresh, empty PostgreSQL database for one test, dropped on drop.
///
/// The server is `$ARCA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`,
/// trust auth, as on these machines); `psql` does the creating and dropping.
pub struct PgDatabase {
    /// `postgres://user@host:port/name`
    pub url: String,
    pub name: String,
    server: String,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase").field("url", &self.url).finish()
    }
}

/// The PostgreSQL server tests use.
pub fn postgres_server() -> String {
    from_env("ARCA_TEST_POSTGRES_URL").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn postgres_database() -> PgDatabase {
    let server = postgres_server();
    let name = unique_name().replace('-', "_");
    psql(&server, &format!("CREATE DATABASE {name}"));
    PgDatabase { url: format!("{server}/{name}"), name, server }
}

/// A unique database name that no one has created yet, for something under test to create
/// (a restore's new database); dropped, if it exists, on drop.
pub fn postgres_database_name() -> PgDatabase {
    let server = postgres_server();
    let name = unique_name().replace('-', "_");
    PgDatabase { url: format!("{server}/{name}"), name, server }
}

/// The `PG*` environment that points PostgreSQL's client tools (`pg_dump`, `pg_restore`,
/// `psql`, …) at the test server: what a worker under test is given.
pub fn postgres_env() -> Vec<(&'static str, String)> {
    let server = postgres_server();
    let rest = server.split_once("://").map_or(server.as_str(), |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or_default();
    let (user, host_port) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (user, password) = user.split_once(':').unwrap_or((user, ""));
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    let mut env = vec![("PGHOST", host.to_owned()), ("PGPORT", port.to_owned())];
    if !user.is_empty() {
        env.push(("PGUSER", user.to_owned()));
    }
    if !password.is_empty() {
        env.push(("PGPASSWORD", password.to_owned()));
    }
    env
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &format!("{}/postgres", self.server),
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(server: &str, sql: &str) {
    let output = std::process::Command::new("psql")
        .args([&format!("{server}/postgres"), "-qAtc", sql])
        .output()
        .unwrap_or_else(|e| panic!("testkit: run psql: {e}"));
    assert!(
        output.status.success(),
        "testkit: psql `{sql}` on {server}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        let names: Vec<_> = Backend::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(names, ["fs", "s3", "azure"]);
    }

    #[test]
    fn fs_target_is_a_fresh_absent_dir_removed_on_drop() {
        let t = target(Backend::Fs);
        let repo = std::path::PathBuf::from(t.url.strip_prefix("fs://").expect("fs:// url"));
        assert!(repo.is_absolute(), "{}", t.url);
        assert!(!repo.exists(), "the repo dir must not exist yet");
        let parent = repo.parent().unwrap().to_path_buf();
        assert!(parent.is_dir());
        assert!(t.env.is_empty());
        drop(t);
        assert!(!parent.exists(), "the temp dir is removed on drop");
    }

    #[test]
    fn s3_target_bucket_exists() {
        let t = target(Backend::S3);
        let env = t.env_map();
        assert_eq!(env["AWS_ENDPOINT_URL"], s3_endpoint());
        assert_eq!(env["AWS_REGION"], "us-east-1");
        assert!(env.contains_key("AWS_ACCESS_KEY_ID") && env.contains_key("AWS_SECRET_ACCESS_KEY"));
        let bucket = t.url.strip_prefix("s3://").unwrap().strip_suffix("/repo").unwrap();
        let endpoint = http::Endpoint::parse(&s3_endpoint());
        let head = |b: &str| http::request(&endpoint, "HEAD", &format!("/{b}"), &[]).unwrap().status;
        assert_eq!(head(bucket), 200);
        assert_eq!(head("t-no-such-bucket"), 404, "HEAD tells buckets apart");
        // Empty: the list has no <Contents>.
        let list = http::request(&endpoint, "GET", &format!("/{bucket}?list-type=2"), &[]).unwrap();
        assert_eq!(list.status, 200);
        assert!(!list.body.contains("<Contents>"), "{}", list.body);
        assert_ne!(target(Backend::S3).url, t.url, "each target has its own bucket");
    }

    #[test]
    fn azure_target_container_exists() {
        let t = target(Backend::Azure);
        let env = t.env_map();
        assert_eq!(env["AZURE_STORAGE_ENDPOINT"], azurite_endpoint());
        assert!(env["AZURE_STORAGE_ENDPOINT"].ends_with("/devstoreaccount1"));
        assert_eq!(env["AZURE_STORAGE_ACCOUNT"], "devstoreaccount1");
        assert_eq!(env["AZURE_STORAGE_KEY"], azure::KEY);
        let container = t.url.strip_prefix("azblob://").unwrap().strip_suffix("/repo").unwrap();
        let endpoint = http::Endpoint::parse(&azurite_endpoint());
        let get = |c: &str, query: &[(&str, &str)]| azure::request(&endpoint, "GET", &format!("/{c}"), query).unwrap();
        assert_eq!(get(container, &[("restype", "container")]).status, 200);
        assert_eq!(get("t-no-such-container", &[("restype", "container")]).status, 404);
        let list = get(container, &[("comp", "list"), ("restype", "container")]);
        assert_eq!(list.status, 200, "{}", list.body);
        assert!(!list.body.contains("<Blob>"), "{}", list.body);
        assert_ne!(target(Backend::Azure).url, t.url, "each target has its own container");
    }

    #[test]
    fn nats_server_answers_info_and_stops_on_drop() {
        let server = nats_server();
        assert_eq!(server.url, format!("nats://127.0.0.1:{}", server.port));
        let info = nats_info(server.port).expect("INFO line");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        let other = nats_server();
        assert_ne!(other.port, server.port);
        let port = server.port;
        drop(server);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the server is gone after drop");
    }

    #[test]
    fn unique_names_are_valid_bucket_names() {
        let (a, b) = (unique_name(), unique_name());
        assert_ne!(a, b);
        for name in [a, b] {
            assert!((3..=63).contains(&name.len()), "{name}");
            assert!(!name.contains("--"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn endpoint_parsing() {
        let e = http::Endpoint::parse("http://127.0.0.1:1234/devstoreaccount1/");
        assert_eq!((e.authority.as_str(), e.base_path.as_str()), ("127.0.0.1:1234", "/devstoreaccount1"));
        let e = http::Endpoint::parse("http://localhost:9000");
        assert_eq!((e.authority.as_str(), e.base_path.as_str()), ("localhost:9000", ""));
    }

    #[test]
    fn postgres_databases_are_fresh_and_dropped() {
        let db = postgres_database();
        let other = postgres_database();
        assert_ne!(db.name, other.name);
        let exists = |name: &str| {
            let out = std::process::Command::new("psql")
                .args([
                    &format!("{}/postgres", postgres_server()),
                    "-qAtc",
                    &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "1"
        };
        assert!(exists(&db.name));
        let name = db.name.clone();
        drop(db);
        assert!(!exists(&name), "dropped with its guard");
    }
}
