//! Retention and garbage collection.

use arca_repo::format::{RetentionPolicy, Snapshot, SnapshotMap};
use arca_repo::prune::plan_forget;
use arca_testkit::Backend;
use chrono::{DateTime, TimeZone, Utc};

use crate::helpers::{Env, noise, write};
use crate::on_every_backend;

on_every_backend!(forget_and_prune_free_space_and_keep_what_is_used, prune_waits_for_backups);

fn forget_and_prune_free_space_and_keep_what_is_used(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    write(&src.join("stays.bin"), &noise(3 << 20, 1));
    for round in 0..3u64 {
        write(&src.join("churn.bin"), &noise(2 << 20, 100 + round));
        env.backup(&[&src]);
    }
    let latest = env.snapshot_ids();
    assert_eq!(latest.len(), 3);
    let packs_before = env.packs().len();

    let (_, err) = env.fails(&["forget"]);
    assert!(err.contains("no --keep"), "{err}");
    let plan = env.json(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(plan.as_array().unwrap().iter().filter(|d| d["keep"] == false).count(), 2);
    assert_eq!(env.snapshot_ids().len(), 3, "dry run removes nothing");
    env.ok(&["forget", "--keep-last", "1"]);
    assert_eq!(env.snapshot_ids().len(), 1);

    // Unused packs first wait out their grace period (an hour by default).
    let report = env.json(&["prune"]);
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert!(report["packs_pending"].as_u64().unwrap() > 0, "{report}");
    let report = env.json(&["prune", "--grace", "0s"]);
    assert!(
        report["packs_deleted"].as_u64().unwrap() + report["unindexed_packs_deleted"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(env.packs().len() < packs_before);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    let back = crate::helpers::restored(&dest, &src);
    assert!(std::fs::read(back.join("stays.bin")).unwrap() == std::fs::read(src.join("stays.bin")).unwrap());
    assert!(std::fs::read(back.join("churn.bin")).unwrap() == std::fs::read(src.join("churn.bin")).unwrap());
    // A second prune finds nothing more to do.
    let again = env.json(&["prune"]);
    assert_eq!((again["packs_deleted"].as_u64(), again["packs_repacked"].as_u64()), (Some(0), Some(0)));
    // Removing by id works and an unknown id is a clear error.
    let (_, err) = env.fails(&["forget", "ffffffff"]);
    assert!(err.contains("not found"), "{err}");
    env.ok(&["forget", &env.snapshot_ids()[0][..8]]);
    assert!(env.snapshot_ids().is_empty());
}

/// A backup holds a shared lease while it runs: prune must refuse, not delete its packs.
fn prune_waits_for_backups(backend: Backend) {
    let env = Env::init(backend);
    let mut backup = env.spawn(&["backup", "--stdin-name", "slow.bin", "--json"]);
    let mut stdin = backup.stdin();
    std::io::Write::write_all(&mut stdin, &noise(1 << 20, 5)).unwrap();
    // Wait until the backup holds its lease.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !env.objects().iter().any(|o| o.starts_with("locks/")) {
        assert!(std::time::Instant::now() < deadline, "backup never took its lease");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, err) = env.fails(&["prune"]);
    assert!(err.contains("locked") && err.contains("backup"), "{err}");
    // A second backup may run at the same time.
    let src = env.path("src");
    write(&src.join("f"), b"concurrent");
    env.backup(&[&src]);
    drop(stdin);
    let out = backup.wait_with_output();
    assert!(out.status.success());
    assert_eq!(env.snapshot_ids().len(), 2);
    assert!(!env.objects().iter().any(|o| o.starts_with("locks/")), "leases are released");
    env.ok(&["prune"]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
}

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

fn snapshots(times: &[DateTime<Utc>]) -> SnapshotMap {
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let json = serde_json::json!({
                "version": 1, "time": t, "tree": serde_json::Value::Array(vec![0.into(); 32]),
                "paths": ["/data"], "hostname": "h",
            });
            let mut s: Snapshot = serde_json::from_value(json).unwrap();
            s.time = *t;
            (format!("{i:02}"), s)
        })
        .collect()
}

/// Data-driven checks of the retention rules: which snapshot ids survive.
#[test]
fn retention_rules_keep_the_expected_snapshots() {
    let times = [
        at(2025, 12, 31, 23), // 00
        at(2026, 1, 1, 10),   // 01
        at(2026, 1, 1, 11),   // 02
        at(2026, 1, 2, 9),    // 03
        at(2026, 1, 9, 9),    // 04
        at(2026, 2, 1, 9),    // 05
        at(2026, 2, 1, 12),   // 06
    ];
    let check = |policy: RetentionPolicy, expected: &[&str]| {
        let mut kept: Vec<String> = plan_forget(&snapshots(&times), &policy, at(2026, 3, 1, 0))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        kept.sort();
        assert_eq!(kept, expected, "{policy:?}");
    };
    check(RetentionPolicy { keep_last: 2, ..Default::default() }, &["05", "06"]);
    check(RetentionPolicy { keep_daily: 3, ..Default::default() }, &["03", "04", "06"]);
    check(RetentionPolicy { keep_hourly: 2, ..Default::default() }, &["05", "06"]);
    check(RetentionPolicy { keep_weekly: 2, ..Default::default() }, &["04", "06"]);
    check(RetentionPolicy { keep_monthly: 3, ..Default::default() }, &["00", "04", "06"]);
    check(RetentionPolicy { keep_yearly: 5, ..Default::default() }, &["00", "06"]);
    check(RetentionPolicy { keep_last: 1, keep_monthly: 2, ..Default::default() }, &["04", "06"]);
    // A locked snapshot survives every rule until its date.
    let mut locked = snapshots(&times);
    locked.get_mut("01").unwrap().locked_until = Some(at(2026, 6, 1, 0));
    locked.get_mut("02").unwrap().locked_until = Some(at(2026, 2, 1, 0));
    let kept: Vec<String> =
        plan_forget(&locked, &RetentionPolicy { keep_last: 1, ..Default::default() }, at(2026, 3, 1, 0))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
    assert!(kept.contains(&"01".to_string()) && !kept.contains(&"02".to_string()), "{kept:?}");
}

on_every_backend!(mostly_garbage_packs_are_repacked);

fn mostly_garbage_packs_are_repacked(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    for i in 0..10u64 {
        write(&src.join(format!("f{i}.bin")), &noise(100 << 10, i));
    }
    env.backup(&[&src]);
    for i in 0..7u64 {
        std::fs::remove_file(src.join(format!("f{i}.bin"))).unwrap();
    }
    env.backup(&[&src]);
    let ids = env.snapshot_ids();
    env.ok(&["forget", &ids[0][..8]]);
    let report = env.json(&["prune"]);
    assert!(report["packs_repacked"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["blobs_repacked"].as_u64().unwrap() >= 3, "{report}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    crate::helpers::assert_same_tree(&src, &crate::helpers::restored(&dest, &src));
}

/// Prune killed at random points never leaves a repository that fails its check.
#[test]
fn interrupted_prune_leaves_a_valid_repository() {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    let mut seed = 0x5eed_u64;
    for round in 0..6u64 {
        for i in 0..8u64 {
            write(&src.join(format!("f{i}.bin")), &noise(300 << 10, round * 100 + i % (round + 1)));
        }
        env.backup(&[&src]);
        let ids = env.snapshot_ids();
        if ids.len() > 2 {
            env.ok(&["forget", "--keep-last", "2"]);
        }
        // Kill prune after a random delay up to 400 ms; every state it leaves must check clean.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut prune = env.cmd().args(["prune"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(seed >> 55));
        let _ = prune.kill();
        prune.wait().unwrap();
        let check = env.run(&["check", "--read-data"]);
        assert!(check.status.success(), "round {round}: {}", crate::helpers::text(&check.stdout));
    }
    env.ok(&["prune"]);
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    crate::helpers::assert_same_tree(&src, &crate::helpers::restored(&dest, &src));
}
