//! Replicas end to end against `arca server`, over the REST API: a replica converges on a
//! source that keeps changing, records recovery points with their lag, survives a simulated
//! ransomware run by failing over to the point before it, and fails back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arca_testkit::{DaemonOptions, StorageDaemon};
use serde_json::{Value, json};

use crate::helpers::{noise, write};
use crate::platform::{API_KEY, Platform, add_s3_target, define_in};

/// What a tree holds, by relative path: kind, mode and bytes (or link target).
fn digest(root: &Path) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else { continue };
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let entry = if meta.is_dir() {
                stack.push(path.clone());
                ("dir".into(), meta.mode() & 0o7777, vec![])
            } else if meta.file_type().is_symlink() {
                ("link".into(), 0, std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes())
            } else {
                ("file".into(), meta.mode() & 0o7777, std::fs::read(&path).unwrap_or_default())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn wait_same(a: &Path, b: &Path, what: &str, platform: &Platform) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while digest(a) != digest(b) {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never matched {}\n{}",
            b.display(),
            a.display(),
            platform.log("server")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl(api: &str, method: &str, path: &str, tenant: &str, body: Option<Value>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-X", method, "-H", &format!("Authorization: Bearer {API_KEY}"), "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
    }
    let join = if path.contains('?') { '&' } else { '?' };
    let output = command.arg(format!("{api}{path}{join}tenant={tenant}")).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn make_tree(root: &Path) {
    write(&root.join("www/index.html"), b"<h1>acme</h1>\n");
    write(&root.join("www/img/logo.bin"), &noise(1 << 20, 1));
    write(&root.join("db/data.bin"), &noise(5 << 20, 2));
    std::os::unix::fs::symlink("www/index.html", root.join("home")).unwrap();
}

#[test]
fn a_replica_follows_changes_rolls_back_ransomware_by_failover_and_fails_back() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    make_tree(&source);
    let standby = work.path().join("standby");
    let live = standby.join("live");
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let [_, source_id, _] =
        define_in(&platform, &tenant, &source, &work.path().join("repo"), &[], &["--every", "3600"]);
    let api = platform.api();
    let call = |method: &str, path: &str, body: Option<Value>| curl(&api, method, path, &tenant, body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("GET", "/v1/replicas", None).0 != 200 {
        assert!(Instant::now() < deadline, "the API never accepted the bootstrap key");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input changes nothing.
    let (code, problem) = call(
        "POST",
        "/v1/replicas",
        Some(json!({ "name": "x", "source": source_id, "destination": { "type": "directory", "path": "relative" } })),
    );
    assert_eq!(code, 422, "{problem}");
    let (code, _) = call("POST", "/v1/replicas", Some(json!({ "name": "x", "source": source_id })));
    assert_eq!(code, 400);

    let (code, created) = call(
        "POST",
        "/v1/replicas",
        Some(json!({
            "name": "standby",
            "source": source_id,
            "destination": { "type": "directory", "path": standby.display().to_string() },
            "rpo_seconds": 2,
            "keep_points": 20
        })),
    );
    assert_eq!(code, 201, "{created}");
    let replica = created["id"].as_str().unwrap().to_owned();
    wait_same(&source, &live, "the initial sync", &platform);

    // A stream of changes: new files, rewrites, a few changed bytes in a big file, deletions.
    for round in 0..30u64 {
        write(&source.join(format!("www/posts/{round}.html")), format!("post {round}\n").as_bytes());
        write(&source.join("www/index.html"), format!("<h1>acme {round}</h1>\n").as_bytes());
        if round % 5 == 0 {
            let mut data = std::fs::read(source.join("db/data.bin")).unwrap();
            let at = (round as usize * 100_003) % data.len();
            data[at] ^= 0xff;
            std::fs::write(source.join("db/data.bin"), data).unwrap();
        }
        if round > 10 {
            std::fs::remove_file(source.join(format!("www/posts/{}.html", round - 10))).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_same(&source, &live, "after a stream of changes", &platform);

    // A recovery point of this clean state (points follow once changes settle).
    let clean = digest(&source);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (clean_point, state) = loop {
        let (code, state) = call("GET", &format!("/v1/replicas/{replica}"), None);
        assert_eq!(code, 200, "{state}");
        let settled = state["last_point_at"].as_str().is_some_and(|at| {
            chrono::DateTime::parse_from_rfc3339(at)
                .is_ok_and(|at| at > chrono::Utc::now() - chrono::TimeDelta::milliseconds(500))
        });
        if settled && state["points_recorded"].as_i64().unwrap_or(0) >= 2 {
            break (state["last_point"].as_str().unwrap().to_owned(), state);
        }
        assert!(Instant::now() < deadline, "no recovery point after the changes: {state}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(state["lag_ms"].is_i64(), "each point carries its lag: {state}");
    let metrics = Command::new("curl").args(["-sS", &format!("{api}/metrics")]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains(&format!("arca_replica_lag_seconds{{replica=\"{replica}\"}}")), "{metrics}");

    // Ransomware: every file encrypted and renamed. The replica mirrors that too…
    let files: Vec<PathBuf> = digest(&source)
        .into_iter()
        .filter(|(_, (kind, _, _))| kind == "file")
        .map(|(rel, _)| source.join(rel))
        .collect();
    for (i, file) in files.iter().enumerate() {
        let mut locked = file.clone().into_os_string();
        locked.push(".locked");
        std::fs::write(&locked, noise(4096, 100 + i as u64)).unwrap();
        std::fs::remove_file(file).unwrap();
    }
    wait_same(&source, &live, "the encrypted source", &platform);

    // …but failing over to the point before it brings the clean data back as the live copy.
    let (code, started) =
        call("POST", &format!("/v1/replicas/{replica}/failover"), Some(json!({ "point": clean_point })));
    assert_eq!(code, 202, "{started}");
    let failover = platform.wait_succeeded(&tenant, started["job"].as_str().unwrap());
    assert_eq!(failover["kind"], "failover", "{failover}");
    assert!(digest(&live) == clean, "the live copy is the clean point again");
    let (_, state) = call("GET", &format!("/v1/replicas/{replica}"), None);
    assert_eq!(state["status"], "failed_over", "{state}");
    assert_eq!(state["failed_over_point"], clean_point.as_str(), "{state}");
    let (code, problem) = call("POST", &format!("/v1/replicas/{replica}/failover"), None);
    assert_eq!(code, 409, "a failed-over replica cannot fail over again: {problem}");

    // While failed over the live copy is the replica's own: changes to the source stay out.
    write(&live.join("www/written-during-failover.txt"), b"orders taken on the standby");
    write(&source.join("more-ransom.locked"), b"x");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!live.join("more-ransom.locked").exists(), "a failed-over replica no longer follows the source");

    // Failback: the source becomes the live copy (clean data + what was written meanwhile),
    // and the replica follows the source again.
    let (code, started) = call("POST", &format!("/v1/replicas/{replica}/failback"), None);
    assert_eq!(code, 202, "{started}");
    platform.wait_succeeded(&tenant, started["job"].as_str().unwrap());
    assert!(digest(&source) == digest(&live), "failback copies the live copy over the source");
    assert_eq!(std::fs::read(source.join("www/written-during-failover.txt")).unwrap(), b"orders taken on the standby");
    let (_, state) = call("GET", &format!("/v1/replicas/{replica}"), None);
    assert_eq!(state["status"], "active", "{state}");
    write(&source.join("after-failback.txt"), b"following again");
    wait_same(&source, &live, "after failback", &platform);

    // Deleting the replica stops it; its folder stays.
    let (code, _) = call("DELETE", &format!("/v1/replicas/{replica}"), None);
    assert_eq!(code, 204);
    let (code, _) = call("POST", &format!("/v1/replicas/{replica}/failback"), None);
    assert_eq!(code, 404);
    assert!(live.join("after-failback.txt").exists());
}

/// A replica on an S3 target keeps recovery points as snapshots there, each a backup of what
/// changed; the latest point restores to the source's current content.
#[test]
fn a_replica_on_an_object_store_keeps_points_that_restore() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    make_tree(&source);
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let [_, source_id, _] =
        define_in(&platform, &tenant, &source, &work.path().join("repo"), &[], &["--every", "3600"]);
    let bucket = arca_testkit::target(arca_testkit::Backend::S3);
    let offsite = add_s3_target(&platform, &tenant, &bucket, None);
    let api = platform.api();
    let call = |method: &str, path: &str, body: Option<Value>| curl(&api, method, path, &tenant, body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("GET", "/v1/replicas", None).0 != 200 {
        assert!(Instant::now() < deadline, "the API never accepted the bootstrap key");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, created) = call(
        "POST",
        "/v1/replicas",
        Some(json!({ "name": "offsite", "source": source_id, "destination": { "type": "target", "target": offsite },
                     "rpo_seconds": 2, "keep_points": 2 })),
    );
    assert_eq!(code, 201, "{created}");
    let replica = created["id"].as_str().unwrap().to_owned();
    let point_after = |seen: i64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, state) = call("GET", &format!("/v1/replicas/{replica}"), None);
            if state["points_recorded"].as_i64().unwrap_or(0) > seen {
                return state;
            }
            assert!(Instant::now() < deadline, "no new point: {state}\n{}", platform.log("server"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = point_after(0);
    for round in 0..3 {
        write(&source.join(format!("www/new-{round}.html")), b"new");
        let state = point_after(first["points_recorded"].as_i64().unwrap() + round);
        assert!(state["lag_ms"].is_i64(), "{state}");
    }
    // Wait for the point that carries the last change, then restore it.
    let expected = digest(&source);
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = work.path().join("restored");
    loop {
        let (_, state) = call("GET", &format!("/v1/replicas/{replica}"), None);
        let point = state["last_point"].as_str().unwrap().to_owned();
        let _ = std::fs::remove_dir_all(&restored);
        let (code, started) = call(
            "POST",
            "/v1/restores",
            Some(json!({ "snapshot": point, "to": { "type": "directory", "path": restored.display().to_string() } })),
        );
        assert_eq!(code, 202, "{started}");
        platform.wait_succeeded(&tenant, started["job"].as_str().unwrap());
        let inside = restored.join(source.strip_prefix("/").unwrap());
        if digest(&inside) == expected {
            break;
        }
        assert!(Instant::now() < deadline, "no point restores the source's current content");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Points beyond keep_points are forgotten by the storage service.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, snapshots) = call("GET", "/v1/snapshots?limit=500", None);
        let tag = format!("replica:{replica}");
        let kept = snapshots["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] != "forgotten" && s.to_string().contains(&tag))
            .count();
        // At least four points were recorded; the newest two stay.
        if (1..=2).contains(&kept) {
            break;
        }
        assert!(Instant::now() < deadline, "old points were not forgotten: {snapshots}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_image_open_in_qemu_is_replicated_through_its_dirty_bitmaps() {
    let work = tempfile::tempdir().unwrap();
    let (vm, standby) = (work.path().join("vm"), work.path().join("standby"));
    let image = vm.join("disk.raw");
    write(&image, &noise(16 << 20, 7));
    let daemon = StorageDaemon::start(&vm, &image, DaemonOptions { nbd: true, ..DaemonOptions::default() });
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let api = platform.api();
    let call = |method: &str, path: &str, body: Option<Value>| curl(&api, method, path, &tenant, body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while call("GET", "/v1/sources", None).0 != 200 {
        assert!(Instant::now() < deadline, "the API never accepted the bootstrap key");
        std::thread::sleep(Duration::from_millis(100));
    }
    let qemu = json!({ "monitor": daemon.monitor(), "node": "drive0", "nbd": daemon.nbd() });

    // Only an image source is tracked through qemu.
    let (code, problem) =
        call("POST", "/v1/sources", Some(json!({ "name": "vm", "kind": "files", "paths": [vm], "qemu": qemu })));
    assert_eq!((code, problem["code"].as_str()), (422, Some("invalid")), "{problem}");
    let (code, created) =
        call("POST", "/v1/sources", Some(json!({ "name": "vm", "kind": "image", "paths": [image], "qemu": qemu })));
    assert_eq!(code, 201, "{created}");
    let source = created["id"].as_str().unwrap().to_owned();
    let (_, shown) = call("GET", &format!("/v1/sources/{source}"), None);
    assert_eq!(shown["qemu"], qemu, "{shown}");
    let (code, created) = call(
        "POST",
        "/v1/replicas",
        Some(json!({ "name": "vm-standby", "source": source,
                     "destination": { "type": "directory", "path": standby }, "rpo_seconds": 5, "keep_points": 2 })),
    );
    assert_eq!(code, 201, "{created}");
    let live = standby.join("live/disk.raw");
    let same = || std::fs::read(&image).ok() == std::fs::read(&live).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !same() {
        assert!(Instant::now() < deadline, "the initial copy never matched\n{}", platform.log("server"));
        std::thread::sleep(Duration::from_millis(50));
    }

    // The guest writes through qemu (qemu-io over NBD); the replica follows.
    let url = format!("nbd+unix:///vm?socket={}", daemon.nbd().display());
    for (round, offset) in [(1u8, 0u64), (2, 3 << 20), (3, (15 << 20) + 4096)] {
        let pattern = format!("write -P {round} {offset} 65536");
        let written =
            Command::new("qemu-io").args(["-f", "raw", &url, "-c", &pattern, "-c", "flush"]).output().unwrap();
        assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !same() {
            assert!(Instant::now() < deadline, "write {round} never reached the replica\n{}", platform.log("server"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The replica follows through a dirty bitmap of its own on the image's node.
    let replica = created["id"].as_str().unwrap().replace('-', "");
    let bitmaps = qmp_bitmaps(&daemon.test_monitor());
    assert!(bitmaps.iter().any(|b| b.starts_with(&format!("arca-{replica}-"))), "{bitmaps:?}");
}

/// The names of node `drive0`'s dirty bitmaps, asked over QMP.
fn qmp_bitmaps(monitor: &Path) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(monitor).unwrap();
    let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
    lines.next().unwrap().unwrap(); // the greeting
    let mut ask = |command: &str| -> Value {
        (&stream).write_all(format!("{command}\n").as_bytes()).unwrap();
        loop {
            let reply: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            if reply.get("return").is_some() {
                return reply;
            }
        }
    };
    ask(r#"{"execute":"qmp_capabilities"}"#);
    let nodes = ask(r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#);
    nodes["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node-name"] == "drive0")
        .flat_map(|n| n["dirty-bitmaps"].as_array().cloned().unwrap_or_default())
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}
