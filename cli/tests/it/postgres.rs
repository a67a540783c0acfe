//! PostgreSQL sources end to end, against the machine's real PostgreSQL: `arca server` (with
//! the `PG*` environment of the test server) dumps a database while rows are written to it,
//! and restores the dump into a new database through the REST API.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::platform::{API_KEY, Platform, catalog_query};

/// Runs SQL on `url` with psql; its output, trimmed.
fn psql(url: &str, sql: &str) -> String {
    let output =
        Command::new("psql").args([url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().unwrap();
    assert!(output.status.success(), "psql `{sql}`: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn count(url: &str) -> u64 {
    psql(url, "SELECT count(*) FROM ledger").parse().unwrap()
}

/// The rows with ids up to `last`, in order, as one MD5.
fn checksum(url: &str, last: u64) -> String {
    psql(
        url,
        &format!(
            "SELECT md5(string_agg(id || ':' || amount || ':' || note, ',' ORDER BY id)) FROM ledger WHERE id <= {last}"
        ),
    )
}

/// An `arca server` whose workers reach the test PostgreSQL.
fn platform() -> Platform {
    let mut platform = Platform::new();
    for (key, value) in arca_testkit::postgres_env() {
        platform = platform.with_env(key, &value);
    }
    platform.all_in_one()
}

/// A client of the platform's REST API as the bootstrap MSP admin.
struct Api {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn new(platform: &Platform) -> Api {
        // reqwest is built without a rustls provider in this workspace: pick ring, like the services.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        Api { base: platform.api(), http: reqwest::Client::new(), runtime: tokio::runtime::Runtime::new().unwrap() }
    }

    /// POSTs `body`; the status and the answer. Waits out the 401s and 503s of a server whose
    /// catalog does not have the bootstrap key yet.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.runtime.block_on(async {
            loop {
                let response = self
                    .http
                    .post(format!("{}{path}", self.base))
                    .bearer_auth(API_KEY)
                    .json(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                if (status == 401 || status == 503) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return (status, response.json().await.unwrap_or_default());
            }
        })
    }

    /// Starts a job; its id.
    fn start(&self, path: &str, body: &Value) -> String {
        let (status, answer) = self.post(path, body);
        assert_eq!(status, 202, "POST {path} {body}: {answer}");
        answer["job"].as_str().unwrap().to_owned()
    }
}

/// Writes to `database` from another thread until stopped: each transaction adds the next
/// ledger row (ids 1, 2, 3, … with no gap, one writer) and adds it to the one `totals` row,
/// so any single moment has `totals` equal to the sum of the rows.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(url: &str, first: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let mut psql = Command::new("psql")
            .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut input = psql.stdin.take().unwrap();
                let mut id = first;
                while !stop.load(Ordering::Relaxed) {
                    let amount = id % 97;
                    let sql = format!(
                        "BEGIN; INSERT INTO ledger VALUES ({id}, {amount}, repeat(md5('{id}'), 8));\n\
                         UPDATE totals SET entries = entries + 1, amount = amount + {amount}; COMMIT;\n"
                    );
                    input.write_all(sql.as_bytes()).unwrap();
                    id += 1;
                }
                drop(input);
                assert!(psql.wait().unwrap().success(), "the writer's psql failed");
            }
        });
        Writer { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `database` has more ledger rows than `than`; how many.
fn wait_for_more_rows(url: &str, than: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = count(url);
        if rows > than {
            return rows;
        }
        assert!(Instant::now() < deadline, "the writer wrote nothing after {than} rows");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The headline case: a database being written to is backed up by a scheduled-policy run,
/// restored into a new database through `POST /v1/restores`, and the restored data is the
/// source as it was at one moment — ids 1..n with no gap, the totals row equal to the sum of
/// those rows, the rows equal to the source's first n, and the rows written after that moment
/// absent. Restoring over an existing database (the restored one, or the live source) is
/// refused and changes nothing.
#[test]
fn a_database_written_to_during_its_backup_restores_as_of_one_moment_into_a_new_database() {
    const SEED_ROWS: u64 = 20_000;
    let source = arca_testkit::postgres_database();
    psql(
        &source.url,
        &format!(
            "CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL, note text NOT NULL);
             CREATE TABLE totals (entries bigint NOT NULL, amount bigint NOT NULL);
             INSERT INTO ledger SELECT i, i % 97, repeat(md5(i::text), 8) FROM generate_series(1, {SEED_ROWS}) i;
             INSERT INTO totals SELECT count(*), sum(amount) FROM ledger;"
        ),
    );
    // A second database in the same source: a snapshot holds one dump per database.
    let other = arca_testkit::postgres_database();
    psql(&other.url, "CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1), (2), (3);");
    let work = tempfile::tempdir().unwrap();
    let (repo, hooks) = (work.path().join("repo"), work.path().join("hooks"));
    let platform = platform();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let target = platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let pre = format!("echo pre >> {}", hooks.display());
    let post = format!("echo post >> {}", hooks.display());
    let args = ["source", "add", "--tenant", &tenant, "ledger", &source.name, &other.name, "--kind", "postgres"];
    let source_id = platform.arca(&[&args[..], &["--pre-hook", &pre, "--post-hook", &post]].concat());
    let policy_args = ["policy", "create", "--tenant", &tenant, "nightly", "--source", &source_id, "--target", &target];
    let policy = platform.arca(&[&policy_args[..], &["--every", "3600"]].concat());
    let api = Api::new(&platform);

    let writer = Writer::start(&source.url, SEED_ROWS + 1);
    wait_for_more_rows(&source.url, SEED_ROWS);
    let backup = api.start(&format!("/v1/policies/{policy}/run?tenant={tenant}"), &json!({}));
    let backup = platform.wait_succeeded(&tenant, &backup);
    // Rows keep coming after the backup, so the restore shows which ones the dump left out.
    let after_backup = wait_for_more_rows(&source.url, count(&source.url));
    writer.stop();
    assert_eq!(std::fs::read_to_string(&hooks).unwrap(), "pre\npost\n", "both hooks ran once");
    let snapshot = backup["snapshot"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = loop {
        let row = catalog_query(&platform.nats.url, "snapshots.get", json!({ "tenant": tenant, "id": snapshot }));
        if !row.is_null() || Instant::now() > deadline {
            break row;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for database in [&source.name, &other.name] {
        let dump = format!("{database}.pgdump");
        assert!(
            committed["paths"].to_string().contains(&dump),
            "a custom-format dump per database, {dump}: {committed}"
        );
    }

    // Which dump to restore must be said when there are several.
    let unnamed = json!({ "snapshot": snapshot, "to": { "type": "database", "name": format!("{}_x", source.name) } });
    let unnamed = platform.wait_job(&tenant, &api.start(&format!("/v1/restores?tenant={tenant}"), &unnamed));
    assert_eq!(unnamed["status"], "failed", "{unnamed}");
    assert!(unnamed["error"].as_str().unwrap().contains("say which with `from`"), "{unnamed}");

    let restored = arca_testkit::postgres_database_name();
    let to = json!({ "type": "database", "name": restored.name, "from": source.name });
    let restore = api.start(&format!("/v1/restores?tenant={tenant}"), &json!({ "snapshot": snapshot, "to": to }));
    let restore = platform.wait_succeeded(&tenant, &restore);
    assert_eq!(restore["files"], 1, "{restore}");

    let rows = count(&restored.url);
    let (first, last): (u64, u64) = {
        let range = psql(&restored.url, "SELECT min(id) || ' ' || max(id) FROM ledger");
        let (first, last) = range.split_once(' ').unwrap();
        (first.parse().unwrap(), last.parse().unwrap())
    };
    assert_eq!((first, last), (1, rows), "ids 1..n with no gap: the rows of one moment");
    assert!(rows > SEED_ROWS, "the dump has the rows the writer had committed when it started: {rows}");
    assert!(rows < after_backup, "rows written after the dump's moment are not in it: {rows} of {after_backup}");
    let totals = psql(&restored.url, "SELECT entries || ' ' || amount FROM totals");
    let sums = psql(&restored.url, "SELECT count(*) || ' ' || sum(amount) FROM ledger");
    assert_eq!(totals, sums, "the totals row and the rows are from the same moment");
    assert_eq!(checksum(&restored.url, rows), checksum(&source.url, rows), "the rows equal the source's first {rows}");

    // Restoring over an existing database is refused and changes nothing: the restored one…
    let restored_sum = checksum(&restored.url, u64::MAX);
    let again = api.start(&format!("/v1/restores?tenant={tenant}"), &json!({ "snapshot": snapshot, "to": to }));
    let again = platform.wait_job(&tenant, &again);
    assert_eq!(again["status"], "failed", "{again}");
    let error = again["error"].as_str().unwrap();
    assert!(error.contains(&format!("database `{}` already exists", restored.name)), "{error}");
    assert_eq!(checksum(&restored.url, u64::MAX), restored_sum);
    // …and the live source.
    let source_sum = checksum(&source.url, u64::MAX);
    let over_source = json!({ "snapshot": snapshot, "to": { "type": "database", "name": source.name } });
    let over_source = api.start(&format!("/v1/restores?tenant={tenant}"), &over_source);
    let over_source = platform.wait_job(&tenant, &over_source);
    assert_eq!(over_source["status"], "failed", "{over_source}");
    assert_eq!(checksum(&source.url, u64::MAX), source_sum);

    // A name PostgreSQL would read as something else is refused before any job starts.
    let (status, problem) = api.post(
        &format!("/v1/restores?tenant={tenant}"),
        &json!({ "snapshot": snapshot, "to": { "type": "database", "name": "x host=evil" } }),
    );
    assert!(status == 400 || status == 422, "{status} {problem}");
}

/// A pg_dump that fails (here: the database does not exist) fails the backup with its
/// error, and no snapshot is committed.
#[test]
fn a_failing_dump_fails_the_backup_and_commits_no_snapshot() {
    let missing = arca_testkit::postgres_database_name();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let platform = platform();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let target = platform.arca(&["target", "add", "--tenant", &tenant, "primary", &format!("fs://{}", repo.display())]);
    let source = platform.arca(&["source", "add", "--tenant", &tenant, "gone", &missing.name, "--kind", "postgres"]);
    let policy_args = ["policy", "create", "--tenant", &tenant, "nightly", "--source", &source, "--target", &target];
    let policy = platform.arca(&[&policy_args[..], &["--every", "3600"]].concat());
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let job = platform.wait_job(&tenant, &job);
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("pg_dump") && error.contains("does not exist"), "{error}");
    assert!(job["snapshot"].is_null(), "{job}");
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0), 0, "no snapshot was written");
    let snapshots = catalog_query(&platform.nats.url, "snapshots.list", json!({ "tenant": tenant }));
    assert_eq!(snapshots["items"].as_array().map(Vec::len), Some(0), "{snapshots}");
}
