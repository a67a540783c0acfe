//! `arca` as a client of a running `arca server`: targets, sources and policies added,
//! changed (with `--if-match`) and removed through the REST API; and `snapshots`, `ls` and
//! `restore` through a profile answering what the standalone commands answer on the same
//! repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::assert_same_tree;
use crate::platform::{API_KEY, Platform, binary, define, make_source};

/// `arca` with a profile folder of its own and no repository in its environment.
struct Client {
    config: PathBuf,
}

impl Client {
    /// Logs in to `platform`'s API (as the MSP admin, acting on `tenant`), retrying while the
    /// catalog does not know the bootstrap key yet.
    fn login(platform: &Platform, config: PathBuf, tenant: &str) -> Client {
        let client = Client { config };
        let api = platform.api();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let login = client.run(&["login", "--url", &api, "--key", API_KEY, "--tenant", tenant]);
            if login.status.success() {
                return client;
            }
            assert!(Instant::now() < deadline, "{}", text(&login));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary("arca"));
        command
            .env("ARCA_CONFIG_DIR", &self.config)
            .env_remove("ARCA_PROFILE")
            .env_remove("ARCA_REPO")
            .env_remove("ARCA_TARGET_SECRET_ACCESS_KEY")
            .env_remove("ARCA_TARGET_ACCOUNT_KEY");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `arca args…`, asserts exit 0, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(output.status.code(), Some(0), "arca {args:?}: {}", text(&output));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Runs `arca args…` until it exits 0 (the catalog catches up); returns stdout.
    fn eventually(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.run(args);
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() && done(&stdout) {
                return stdout;
            }
            assert!(Instant::now() < deadline, "arca {args:?} never got there: {}", text(&output));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `arca args…`, asserts exit `code`, returns stdout and stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(output.status.code(), Some(code), "arca {args:?}: {}", text(&output));
        text(&output)
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `arca --json <resource> show id` once it shows `version`.
fn show_version(client: &Client, resource: &str, id: &str, version: u64) -> Value {
    json(&client.eventually(&["--json", resource, "show", id], |out| json(out)["version"] == version))
}

#[test]
fn the_cli_adds_updates_and_removes_targets_sources_and_policies_through_the_api() {
    let work = tempfile::tempdir().unwrap();
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let client = Client::login(&platform, work.path().join("config"), &tenant);
    let repo = format!("fs://{}", work.path().join("repo").display());
    let copies = format!("fs://{}", work.path().join("copies").display());

    let target = client.ok(&["targets", "add", "primary", &repo]);
    let offsite =
        json(&client.ok(&["--json", "targets", "add", "offsite", &copies]))["id"].as_str().unwrap().to_owned();
    // Changed right after it was added: `update` reads what was just written.
    client.ok(&["targets", "update", &offsite, "--name", "offsite-2"]);
    client.ok(&["targets", "update", &offsite, "--name", "copies"]);
    assert_eq!(json(&client.ok(&["--json", "targets", "show", &offsite]))["version"], 3);
    let source = client.ok(&["sources", "add", "docs", "/srv/docs", "--exclude", "*.tmp"]);
    let policy =
        client.ok(&["policies", "add", "nightly", "--source", &source, "--target", &target, "--every", "3600"]);
    assert_eq!(show_version(&client, "targets", &target, 1)["location"], repo);
    assert_eq!(show_version(&client, "sources", &source, 1)["excludes"], serde_json::json!(["*.tmp"]));
    assert_eq!(show_version(&client, "policies", &policy, 1)["schedule"]["seconds"], 3600);

    // Updated from what was read; a stale --if-match is refused and changes nothing.
    let updated = client.ok(&["targets", "update", &target, "--name", "primary-2"]);
    assert!(updated.contains("version 2"), "{updated}");
    let stale = client.fails(1, &["targets", "update", &target, "--name", "stale", "--if-match", "1"]);
    assert!(stale.contains("stale_version") && stale.contains("HTTP 412"), "{stale}");
    let stale = client.fails(1, &["targets", "rm", &target, "--if-match", "1"]);
    assert!(stale.contains("stale_version"), "{stale}");
    assert_eq!(show_version(&client, "targets", &target, 2)["name"], "primary-2");

    let updated = client.ok(&[
        "--json",
        "sources",
        "update",
        &source,
        "--path",
        "/srv/a",
        "--path",
        "/srv/b",
        "--clear",
        "excludes",
        "--if-match",
        "1",
    ]);
    assert_eq!(json(&updated)["version"], 2);
    let shown = show_version(&client, "sources", &source, 2);
    assert_eq!(
        (shown["paths"].clone(), shown["excludes"].clone(), shown["name"].clone()),
        (serde_json::json!(["/srv/a", "/srv/b"]), serde_json::json!([]), serde_json::json!("docs"))
    );

    // An image source followed through the qemu that has it open: updates keep that unless
    // cleared; a node without a monitor is refused before anything is sent.
    let image = client.ok(&[
        "sources",
        "add",
        "vm",
        "/srv/vm/disk.raw",
        "--kind",
        "image",
        "--qemu-monitor",
        "/run/vm/qmp.sock",
        "--qemu-node",
        "drive0",
    ]);
    let tracked = serde_json::json!({ "monitor": "/run/vm/qmp.sock", "node": "drive0" });
    assert_eq!(show_version(&client, "sources", &image, 1)["qemu"], tracked);
    client.ok(&["sources", "update", &image, "--name", "vm-2"]);
    assert_eq!(show_version(&client, "sources", &image, 2)["qemu"], tracked);
    client.ok(&["sources", "update", &image, "--clear", "qemu"]);
    assert!(show_version(&client, "sources", &image, 3)["qemu"].is_null());
    let refused = client.fails(2, &["sources", "add", "x", "/srv/x.raw", "--kind", "image", "--qemu-node", "drive0"]);
    assert!(refused.contains("--qemu-monitor"), "{refused}");

    client.ok(&[
        "policies",
        "update",
        &policy,
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Berlin",
        "--keep-daily",
        "7",
        "--copy-to",
        &offsite,
    ]);
    let shown = show_version(&client, "policies", &policy, 2);
    assert_eq!(
        shown["schedule"],
        serde_json::json!({ "type": "cron", "expression": "0 3 * * *", "timezone": "Europe/Berlin" })
    );
    assert_eq!(
        (shown["retention"].clone(), shown["copy_targets"].clone()),
        (serde_json::json!({ "keep_daily": 7 }), serde_json::json!([offsite]))
    );
    // A flag left out keeps what the policy had.
    client.ok(&["policies", "update", &policy, "--name", "nightly-2"]);
    let shown = show_version(&client, "policies", &policy, 3);
    assert_eq!((shown["name"].as_str(), shown["retention"]["keep_daily"].as_u64()), (Some("nightly-2"), Some(7)));
    assert_eq!(shown["schedule"]["expression"], "0 3 * * *");

    // Credentials are write-only: given on add and update, never shown; a secret left in the
    // environment replaces nothing unless asked.
    let bucket = arca_testkit::target(arca_testkit::Backend::S3);
    let env = bucket.env_map();
    let (endpoint, key_id, secret) =
        (&env["AWS_ENDPOINT_URL"], &env["AWS_ACCESS_KEY_ID"], &env["AWS_SECRET_ACCESS_KEY"]);
    let with_secret =
        |args: &[&str]| client.command().args(args).env("ARCA_TARGET_SECRET_ACCESS_KEY", secret).output().unwrap();
    let added = with_secret(&[
        "targets",
        "add",
        "s3",
        &bucket.url,
        "--endpoint",
        endpoint,
        "--region",
        "us-east-1",
        "--access-key-id",
        key_id,
    ]);
    assert_eq!(added.status.code(), Some(0), "{}", text(&added));
    let s3 = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let shown = client.ok(&["--json", "targets", "show", &s3]);
    assert_eq!(json(&shown)["has_credentials"], true, "{shown}");
    assert!(!shown.contains(secret.as_str()), "{shown}");
    let renamed = with_secret(&["targets", "update", &s3, "--name", "s3-eu"]);
    assert_eq!(renamed.status.code(), Some(0), "{}", text(&renamed));
    let shown = json(&client.ok(&["--json", "targets", "show", &s3]));
    assert_eq!((shown["name"].as_str(), shown["has_credentials"].as_bool()), (Some("s3-eu"), Some(true)));
    client.fails(2, &["targets", "update", &s3, "--new-credentials"]);
    client.fails(2, &["targets", "update", &s3, "--clear-credentials", "--access-key-id", "AKIA"]);
    client.ok(&["targets", "update", &s3, "--clear-credentials"]);
    assert_eq!(json(&client.ok(&["--json", "targets", "show", &s3]))["has_credentials"], false);
    let rotated = with_secret(&["targets", "update", &s3, "--access-key-id", key_id]);
    assert_eq!(rotated.status.code(), Some(0), "{}", text(&rotated));
    assert_eq!(json(&client.ok(&["--json", "targets", "show", &s3]))["has_credentials"], true);
    client.ok(&["targets", "rm", &s3]);

    // Bad input: usage errors exit 2, refusals 1, and nothing is lost.
    client.fails(2, &["targets", "show", "not-an-id"]);
    client.fails(2, &["policies", "add", "nightly", "--source", &source, "--target", &target]);
    client.fails(2, &["targets", "rm"]);
    let refused = client.fails(1, &["sources", "add", "bad", "relative/path"]);
    assert!(refused.contains("paths") && refused.contains("HTTP 422"), "{refused}");
    let refused = client.fails(1, &["policies", "update", &policy, "--every", "5"]);
    assert!(refused.contains("HTTP 422"), "{refused}");
    for (resource, id) in [("targets", &target), ("sources", &source)] {
        let refused = client.fails(1, &[resource, "rm", id]);
        assert!(refused.contains("in_use") && refused.contains(&policy), "{refused}");
    }
    let refused = client.fails(1, &["targets", "rm", &offsite]);
    assert!(refused.contains("in_use"), "the policy copies there: {refused}");
    assert_eq!(show_version(&client, "policies", &policy, 3)["name"], "nightly-2");
    let sources = client.ok(&["--json", "sources", "list"]);
    assert_eq!(sources.lines().count(), 2, "docs and vm: {sources}");

    // Removed: the policy first, then what it used.
    client.ok(&["policies", "rm", &policy, "--if-match", "3"]);
    let gone = client.fails(1, &["policies", "rm", &policy]);
    assert!(gone.contains("HTTP 410"), "{gone}");
    client.ok(&["sources", "rm", &source]);
    client.ok(&["sources", "rm", &image]);
    client.ok(&["targets", "rm", &offsite]);
    let removed = client.ok(&["--json", "targets", "rm", &target, "--if-match", "2"]);
    assert_eq!(json(&removed)["removed"], true);
    for resource in ["targets", "sources", "policies"] {
        client.eventually(&[resource, "list"], str::is_empty);
    }
}

/// `arca --json snapshots` (an array), `ls` (JSON lines) and `restore`, run against the
/// repository directly and through the server, agree.
#[test]
fn snapshots_ls_and_restore_through_a_profile_answer_what_the_standalone_commands_answer() {
    let work = tempfile::tempdir().unwrap();
    let (source_dir, repo) = (work.path().join("src"), work.path().join("repo"));
    make_source(&source_dir);
    std::os::unix::fs::symlink("a/two.txt", source_dir.join("link")).unwrap();
    let platform = Platform::new().all_in_one();
    let [tenant, _, _, policy] = define(&platform, &source_dir, &repo, &[], &["--every", "3600"]);
    let client = Client::login(&platform, work.path().join("config"), &tenant);
    let run = client.run(&["policies", "run", &policy]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", text(&run), platform.log("server"));

    // The same `arca`, the same profile, and a repository given: straight to the repository.
    let key = arca_worker::keys::ServerKey::load(&platform.key_file()).unwrap();
    let tenant_id: arca_events::TenantId = tenant.parse().unwrap();
    let password = work.path().join("password");
    std::fs::write(&password, key.tenant_passphrase(tenant_id)).unwrap();
    let repo_url = format!("fs://{}", repo.display());
    let standalone = |args: &[&str]| {
        let output =
            client.command().args(["--repo", &repo_url, "--password-file"]).arg(&password).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "arca {args:?}: {}", text(&output));
        String::from_utf8(output.stdout).unwrap()
    };

    // Snapshots: the same ones, taken at the same time of the same paths on the same host.
    let direct = json(&standalone(&["--json", "snapshots"]));
    let served =
        json(&client.eventually(&["--json", "snapshots"], |out| json(out).as_array().is_some_and(|a| !a.is_empty())));
    // (The repository names the host `hostname`, the API `host`.)
    let facts = |list: &Value, id: &str, host: &str| -> Vec<(String, i64, Value, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let time = chrono::DateTime::parse_from_rfc3339(s["time"].as_str().unwrap()).unwrap();
                (s[id].as_str().unwrap().to_owned(), time.timestamp_millis(), s["paths"].clone(), s[host].to_string())
            })
            .collect()
    };
    assert_eq!(facts(&served, "repo_snapshot", "host"), facts(&direct, "id", "hostname"));
    let listing = client.ok(&["snapshots"]);
    assert!(listing.contains(&direct[0]["id"].as_str().unwrap()[..8]), "{listing}");

    // Files: every path with its kind, size and modification time; below a folder too.
    let entries = |out: &str| -> Vec<(String, String, u64, i64)> {
        out.lines()
            .map(|line| {
                let e = json(line);
                (
                    e["path"].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                    e["size"].as_u64().unwrap(),
                    e["mtime_ns"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let direct = entries(&standalone(&["--json", "ls", "latest"]));
    // (The catalog indexes the snapshot's files shortly after it is committed.)
    let served = entries(&client.eventually(&["--json", "ls", "latest"], |out| !out.is_empty()));
    assert!(direct.iter().any(|(path, kind, _, _)| path.ends_with("/link") && kind == "symlink"), "{direct:?}");
    assert_eq!(served, direct);
    let folder = source_dir.join("a").display().to_string();
    let direct_a = entries(&standalone(&["--json", "ls", "latest", &folder]));
    assert_eq!(entries(&client.ok(&["--json", "ls", "latest", &format!("{folder}/")])), direct_a);
    assert_eq!(direct_a.len(), 3, "the folder and its two files: {direct_a:?}");
    let short = &json(&standalone(&["--json", "snapshots"]))[0]["id"].as_str().unwrap()[..8].to_owned();
    assert_eq!(entries(&client.ok(&["--json", "ls", short, &folder])), direct_a, "a repository id prefix names it too");

    // Restored: the same tree, byte for byte, through the server as straight from the repository.
    let (direct_dir, served_dir) = (work.path().join("direct"), work.path().join("served"));
    standalone(&["restore", "latest", "--target", direct_dir.to_str().unwrap()]);
    let restored = client.ok(&["restore", "latest", "--target", served_dir.to_str().unwrap()]);
    assert!(restored.contains("succeeded"), "{restored}");
    assert_same_tree(&direct_dir, &served_dir);
    assert_same_tree(&source_dir, &served_dir.join(source_dir.strip_prefix("/").unwrap()));
    let (direct_some, served_some) = (work.path().join("direct-some"), work.path().join("served-some"));
    let include = format!("{folder}/**");
    standalone(&["restore", "latest", "--target", direct_some.to_str().unwrap(), "--include", &include]);
    client.ok(&["restore", "latest", "--target", served_some.to_str().unwrap(), "--include", &include]);
    assert_same_tree(&direct_some, &served_some);

    // Unhappy paths: clear errors, exit 1, nothing written.
    let missing = client.fails(1, &["ls", "ffffffff"]);
    assert!(missing.contains("no snapshot `ffffffff`"), "{missing}");
    let missing = client.fails(1, &["ls", "latest", "/no/such/path"]);
    assert!(missing.contains("not found"), "{missing}");
    let nowhere = work.path().join("nowhere");
    let refused = client.fails(1, &["restore", "ffffffff", "--target", nowhere.to_str().unwrap()]);
    assert!(refused.contains("no snapshot"), "{refused}");
    assert!(!nowhere.exists());
    // Without a profile and without a repository: the standalone error, as before.
    let bare = Client { config: work.path().join("no-config") };
    let no_repo = bare.command().env("ARCA_PASSWORD", "x").arg("snapshots").output().unwrap();
    assert_eq!(no_repo.status.code(), Some(1), "{}", text(&no_repo));
    assert!(text(&no_repo).contains("no repository: give --repo URL or set ARCA_REPO"), "{}", text(&no_repo));
    let _: &Path = &repo;
}
