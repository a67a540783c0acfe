//! Repository init and keys.

use arca_testkit::Backend;

use crate::helpers::Env;
use crate::on_every_backend;

on_every_backend!(
    init_wrong_passphrase_and_keys,
    init_twice_is_refused,
    an_interrupted_init_is_finished_by_the_next,
    a_damaged_key_file_locks_no_other_key_out
);

/// A key file that cannot be decoded is skipped: the other keys still open the repository,
/// and its own passphrase is told its key is damaged, not merely that it is wrong.
fn a_damaged_key_file_locks_no_other_key_out(backend: Backend) {
    let env = Env::init(backend);
    let out = env.cmd().args(["key", "add", "--json"]).env("ARCA_NEW_PASSWORD", "second secret").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added = crate::helpers::last_json(&String::from_utf8_lossy(&out.stdout))["id"].as_str().unwrap().to_string();
    let first = env.objects().into_iter().find(|o| o.starts_with("keys/") && !o.ends_with(&added)).unwrap();
    env.repo_backend().write(&first, b"{\"version\": 1, \"trunc".to_vec()).unwrap();

    let second = |args: &[&str]| env.cmd().args(args).env("ARCA_PASSWORD", "second secret").output().unwrap();
    let listed = second(&["snapshots"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("damaged") && err.contains(&first), "{err}");
    // `key list` shows it as damaged; it can be removed, and the intact key stays the last one.
    let keys = second(&["key", "list", "--json"]);
    let keys = crate::helpers::last_json(&String::from_utf8_lossy(&keys.stdout));
    assert!(keys.as_array().unwrap().iter().any(|k| k["damaged"] == true), "{keys}");
    let damaged_id = first.trim_start_matches("keys/");
    assert!(second(&["key", "remove", &damaged_id[..12]]).status.success());
    assert!(!second(&["key", "remove", &added[..12]]).status.success(), "the last intact key stays");
}

fn init_wrong_passphrase_and_keys(backend: Backend) {
    let env = Env::init(backend);
    let before = env.objects();
    assert!(before.contains("config"), "{before:?}");
    assert_eq!(before.iter().filter(|o| o.starts_with("keys/")).count(), 1);

    // A wrong passphrase is a clear error and writes nothing.
    let (code, err) = env.fails(&["snapshots", "--password-file", "/dev/null"]);
    assert_ne!(code, 0);
    assert!(err.contains("passphrase"), "{err}");
    let out = env.cmd().args(["snapshots"]).env("ARCA_PASSWORD", "not it").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert_eq!(env.objects(), before, "a failed open must not write");

    // A second key opens the same repository; keys list shows both, never key material.
    let out = env.cmd().args(["key", "add", "--json"]).env("ARCA_NEW_PASSWORD", "second secret").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added = crate::helpers::last_json(&String::from_utf8_lossy(&out.stdout))["id"].as_str().unwrap().to_string();
    let keys = env.json(&["key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(!serde_json::to_string(keys).unwrap().contains("wrapped"));
    let second = |args: &[&str]| env.cmd().args(args).env("ARCA_PASSWORD", "second secret").output().unwrap();
    assert!(second(&["snapshots"]).status.success(), "the new key opens the repository");

    // Remove the first key with the second; then the first passphrase no longer opens it.
    let first = keys.iter().find(|k| k["id"] != added.as_str()).unwrap()["id"].as_str().unwrap().to_string();
    assert!(second(&["key", "remove", &first[..12]]).status.success());
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("wrong passphrase"), "{err}");

    // The last key cannot be removed.
    let out = second(&["key", "remove", &added]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last key"));
    assert!(second(&["snapshots"]).status.success());
}

fn init_twice_is_refused(backend: Backend) {
    let env = Env::init(backend);
    let before = env.objects();
    let (_, err) = env.fails(&["repo", "init"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(env.objects(), before);
}

/// An init cut off between its key and its config (an object-store outage, a kill) leaves a
/// key that opens nothing; the next init with the same passphrase must still succeed, and the
/// repository it makes must open past the stray key.
fn an_interrupted_init_is_finished_by_the_next(backend: Backend) {
    let env = Env::init(backend);
    env.repo_backend().delete("config").unwrap();
    let (_, err) = env.fails(&["snapshots"]);
    assert!(err.contains("no repository at"), "{err}");

    env.ok(&["repo", "init"]);
    let objects = env.objects();
    assert_eq!(objects.iter().filter(|o| o.starts_with("keys/")).count(), 2, "{objects:?}");
    let source = env.path("src");
    crate::helpers::write(&source.join("a.txt"), b"after an interrupted init");
    env.backup(&[&source]);
    assert_eq!(env.snapshot_ids().len(), 1);
    let (_, err) = env.fails(&["repo", "init"]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn bad_urls_and_missing_settings_are_clear_errors() {
    let env = Env::new(Backend::Fs);
    let out = env.cmd().args(["snapshots"]).env("ARCA_REPO", "ftp://x/y").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
    let out = env.cmd().args(["snapshots"]).env_remove("ARCA_REPO").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repo"));
    let out = env.cmd().args(["snapshots"]).env_remove("ARCA_PASSWORD").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ARCA_PASSWORD"));
    let out = env.cmd().args(["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no repository at"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line reason: {stderr}");
}

/// Endpoint and credentials can come from a config file instead of the environment.
#[test]
fn object_store_settings_from_a_config_file() {
    for backend in [Backend::S3, Backend::Azure] {
        let env = Env::new(backend);
        let settings = env.target.env_map();
        let toml = match backend {
            Backend::S3 => format!(
                "s3_endpoint = \"{}\"\ns3_region = \"us-east-1\"\ns3_access_key_id = \"{}\"\ns3_secret_access_key = \"{}\"\n",
                settings["AWS_ENDPOINT_URL"], settings["AWS_ACCESS_KEY_ID"], settings["AWS_SECRET_ACCESS_KEY"]
            ),
            _ => format!(
                "azure_endpoint = \"{}\"\nazure_account = \"{}\"\nazure_key = \"{}\"\n",
                settings["AZURE_STORAGE_ENDPOINT"], settings["AZURE_STORAGE_ACCOUNT"], settings["AZURE_STORAGE_KEY"]
            ),
        };
        let config = env.path("arca.toml");
        std::fs::write(&config, toml).unwrap();
        let bare = |args: &[&str]| {
            let mut cmd = env.cmd();
            for key in settings.keys() {
                cmd.env_remove(key);
            }
            cmd.args(args).output().unwrap()
        };
        let out = bare(&["snapshots"]);
        assert!(!out.status.success(), "without settings the target cannot be reached");
        let out = bare(&["--config", config.to_str().unwrap(), "repo", "init"]);
        assert!(out.status.success(), "{}", crate::helpers::text(&out.stderr));
        let out = bare(&["--config", config.to_str().unwrap(), "snapshots", "--json"]);
        assert!(out.status.success(), "{}", crate::helpers::text(&out.stderr));
        std::fs::write(&config, "s3_endpoint = 42\n").unwrap();
        let out = bare(&["--config", config.to_str().unwrap(), "snapshots"]);
        assert!(crate::helpers::text(&out.stderr).contains("config file"), "{}", crate::helpers::text(&out.stderr));
    }
}
