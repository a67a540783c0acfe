//! Crash safety: backups killed at random points leave a repository that checks clean,
//! and the next backup completes, reusing what the killed ones uploaded.

use std::time::Instant;

use arca_testkit::Backend;

use crate::helpers::{Env, assert_same_tree, noise, restored, write};

#[test]
fn killed_backups_leave_a_valid_repository_fs() {
    killed_backups_leave_a_valid_repository(Backend::Fs);
}

#[test]
fn killed_backups_leave_a_valid_repository_s3() {
    killed_backups_leave_a_valid_repository(Backend::S3);
}

fn killed_backups_leave_a_valid_repository(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..16u64 {
        write(&src.join(format!("part{i:02}.bin")), &noise(1 << 20, i));
    }
    for i in 0..200 {
        write(&src.join(format!("small/{i:03}.txt")), format!("small file {i}\n").repeat(i + 1).as_bytes());
    }

    // How long an uninterrupted backup takes here, in a scratch repository on the same backend.
    let scratch = Env::new(backend);
    scratch.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let started = Instant::now();
    scratch.backup(&[&src]);
    let full = started.elapsed();

    let mut seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay), uninterrupted backup {full:?}");
    let mut kills = 0;
    while kills < 20 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = full.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = env.cmd().args(["backup", "--json", src.to_str().unwrap()]).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // Any snapshot that exists is whole.
        let check = env.run(&["check"]);
        assert!(
            check.status.success(),
            "check after kill {kills} at {delay:?}: {}",
            crate::helpers::text(&check.stdout)
        );
    }
    // One more run killed only once it has indexed packs, so the last backup has something to
    // reuse however the random delays fell on a loaded machine.
    let backend = env.repo_backend();
    let indexes = || backend.list(arca_repo::repository::paths::INDEX).unwrap().len();
    let before = indexes();
    let mut child = env.cmd().args(["backup", "--json", src.to_str().unwrap()]).spawn().unwrap();
    // Not too often: on S3 every poll is a request to the same server the backup writes to.
    while indexes() == before && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let read = env.run(&["check", "--read-data"]);
    assert!(read.status.success(), "{}", crate::helpers::text(&read.stdout));
    let last = env.backup(&[&src]);
    let stored = last["bytes_stored"].as_u64().unwrap();
    assert!(stored < (16 << 20) * 9 / 10, "the last backup reuses what killed ones uploaded: stored {stored}");
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&dest, &src));
    // Prune removes what the killed runs left unindexed; the repository stays valid.
    env.ok(&["unlock"]);
    env.ok(&["prune"]);
    assert!(env.run(&["check", "--read-data"]).status.success());
}
