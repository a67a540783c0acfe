//! Garbage collection that never loses a restore point: a paused backup, a prune in another
//! PID namespace, an index with a file missing, and the grace period before deletion.

use std::time::{Duration, Instant};

use arca_testkit::Backend;

use crate::helpers::{Env, Running, noise, write};
use crate::on_every_backend;

on_every_backend!(a_paused_backup_never_commits_a_snapshot_a_prune_emptied, unused_packs_wait_for_their_grace_period);

/// Backs up `data` from stdin as `stream.bin`, forgets that snapshot (its blobs stay indexed
/// but unused), then starts a second backup of the same bytes that dedups against them and
/// holds it before it writes its snapshot (stdin stays open).
fn backup_relying_on_unused_blobs(env: &Env, data: &[u8]) -> (Running, std::process::ChildStdin) {
    let mut first = env.spawn(&["backup", "--stdin-name", "stream.bin", "--json"]);
    std::io::Write::write_all(&mut first.stdin(), data).unwrap();
    assert!(first.wait_with_output().status.success());
    let ids = env.snapshot_ids();
    env.ok(&["forget", &ids[0][..8]]);

    let mut second = env.spawn_capturing(&["backup", "--stdin-name", "stream.bin", "--json"]);
    let mut stdin = second.stdin();
    std::io::Write::write_all(&mut stdin, data).unwrap();
    // The backup holds its lease and has read what it was given (it has nothing to upload).
    wait_until("the backup takes its lease", || env.objects().iter().any(|o| o.starts_with("locks/")));
    std::thread::sleep(Duration::from_millis(500));
    (second, stdin)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(process: &Running, name: &str) {
    let status = std::process::Command::new("kill").args([name, &process.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

/// A backup stopped (SIGSTOP) past its lease loses the lease; a prune then deletes the packs
/// it relies on. On resuming it must notice and fail loudly, never exit 0 with a snapshot
/// that cannot be restored.
fn a_paused_backup_never_commits_a_snapshot_a_prune_emptied(backend: Backend) {
    let env = Env::init(backend);
    let data = noise(3 << 20, 7);
    let (backup, stdin) = backup_relying_on_unused_blobs(&env, &data);
    signal(&backup, "-STOP");
    // Leases go stale after two seconds here; the prune takes the stopped backup's for dead.
    std::thread::sleep(Duration::from_secs(3));
    let packs_before = env.packs().len();
    let pruned =
        env.cmd().args(["prune", "--grace", "0s", "--json"]).env("ARCA_LOCK_STALE_SECS", "2").output().unwrap();
    assert!(pruned.status.success(), "{}", crate::helpers::text(&pruned.stderr));
    assert!(env.packs().len() < packs_before, "the prune deleted the unused packs");
    signal(&backup, "-CONT");
    drop(stdin);
    let out = backup.wait_with_output();
    let stderr = crate::helpers::text(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup must not succeed on deleted data: {}",
        crate::helpers::text(&out.stdout)
    );
    assert!(stderr.contains("a prune removed") && stderr.contains("run it again"), "{stderr}");
    assert!(env.snapshot_ids().is_empty(), "no snapshot was left behind");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));

    // Run again, it stores the data anew and restores byte for byte.
    let mut again = env.spawn(&["backup", "--stdin-name", "stream.bin", "--json"]);
    std::io::Write::write_all(&mut again.stdin(), &data).unwrap();
    assert!(again.wait_with_output().status.success());
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    assert!(std::fs::read(dest.join("stream.bin")).unwrap() == data);
}

/// A prune in another PID namespace on the same host (another container) must not take a
/// running backup's lease for dead because its process id is not in its own process table.
#[test]
fn a_prune_in_another_pid_namespace_respects_a_running_backup() {
    let env = Env::init(Backend::Fs);
    let data = noise(2 << 20, 11);
    let (backup, stdin) = backup_relying_on_unused_blobs(&env, &data);
    let prune = env.cmd();
    let program = prune.get_program().to_owned();
    let mut isolated = std::process::Command::new("unshare");
    isolated.args(["--pid", "--fork", "--mount-proc"]).arg(program).args(["prune", "--grace", "0s"]);
    isolated.env_clear().envs(prune.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))));
    let out = isolated.output().unwrap();
    let stderr = crate::helpers::text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("locked") && stderr.contains("backup"), "{stderr}");
    drop(stdin);
    let out = backup.wait_with_output();
    assert!(out.status.success(), "{}", crate::helpers::text(&out.stderr));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    assert!(std::fs::read(dest.join("stream.bin")).unwrap() == data);
}

/// With an index file gone, packs that snapshots use look unused; prune must refuse to
/// delete anything and point to repair, and the data must all be there when the file is back.
#[test]
fn prune_refuses_while_an_index_file_is_missing() {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..4u64 {
        write(&src.join(format!("f{i}.bin")), &noise(1 << 20, i));
    }
    env.backup(&[&src]);
    let index_files: Vec<String> = env.objects().into_iter().filter(|o| o.starts_with("index/")).collect();
    let repo = std::path::PathBuf::from(env.target.url.strip_prefix("fs://").unwrap());
    let moved = env.path("moved-index");
    std::fs::rename(repo.join(&index_files[0]), &moved).unwrap();
    let packs = env.packs();

    let (_, err) = env.fails(&["prune", "--grace", "0s"]);
    assert!(err.contains("index does not cover") && err.contains("arca repair index"), "{err}");
    assert_eq!(env.packs(), packs, "nothing was deleted");

    std::fs::rename(&moved, repo.join(&index_files[0])).unwrap();
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    crate::helpers::assert_same_tree(&src, &crate::helpers::restored(&dest, &src));
}

/// An unused pack is deleted only once it has stayed unused across prunes for the grace
/// period; until then it stays indexed, so a backup may use it again.
fn unused_packs_wait_for_their_grace_period(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    write(&src.join("gone.bin"), &noise(2 << 20, 1));
    env.backup(&[&src]);
    std::fs::remove_file(src.join("gone.bin")).unwrap();
    write(&src.join("stays.bin"), &noise(1 << 20, 2));
    env.backup(&[&src]);
    env.ok(&["forget", "--keep-last", "1"]);
    let packs = env.packs();

    let first = env.json(&["prune", "--grace", "3s"]);
    assert_eq!(first["packs_deleted"], 0, "{first}");
    assert!(first["packs_pending"].as_u64().unwrap() >= 2, "{first}");
    assert!(first["next_deletion_after"].is_string(), "{first}");
    assert_eq!(env.packs(), packs, "nothing is deleted inside the grace period");
    // A new prune right away still finds them too young.
    assert_eq!(env.json(&["prune", "--grace", "3s"])["packs_deleted"], 0);

    std::thread::sleep(Duration::from_secs(4));
    let later = env.json(&["prune", "--grace", "3s"]);
    assert!(later["packs_deleted"].as_u64().unwrap() >= 2, "{later}");
    assert_eq!(later["packs_pending"], 0, "{later}");
    assert!(env.packs().len() < packs.len());
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    crate::helpers::assert_same_tree(&src, &crate::helpers::restored(&dest, &src));
}

/// Half-written objects a killed writer left in a filesystem repository's `.tmp/` are removed
/// by prune once they are old; a young one may belong to a writer at work and stays.
#[test]
fn prune_removes_stale_temporary_files() {
    let env = Env::init(Backend::Fs);
    let repo = std::path::PathBuf::from(env.target.url.strip_prefix("fs://").unwrap());
    std::fs::create_dir_all(repo.join(".tmp")).unwrap();
    let (old, young) = (repo.join(".tmp/killed-writer"), repo.join(".tmp/writer-at-work"));
    std::fs::write(&old, noise(1 << 16, 1)).unwrap();
    std::fs::write(&young, noise(1 << 16, 2)).unwrap();
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(day_ago).unwrap();
    let report = env.json(&["prune"]);
    assert_eq!(report["temporary_files_removed"], 1, "{report}");
    assert!(!old.exists() && young.exists());
}

/// A prune killed mid-sweep leaves its record unfinished. A backup that overlaps it must not
/// wait out the stale time when the record's last heartbeat is already that old by the store's
/// clock: it checks its data and goes on.
#[test]
fn a_long_dead_sweep_does_not_hold_backups_up() {
    let env = Env::init(Backend::Fs);
    let repo = std::path::PathBuf::from(env.target.url.strip_prefix("fs://").unwrap());
    std::fs::create_dir_all(repo.join("gc/sweeps")).unwrap();
    let record = repo.join("gc/sweeps/0123456789abcdef0123456789abcdef");
    std::fs::write(&record, b"a sweep whose prune was killed").unwrap();
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(&record).unwrap().set_modified(day_ago).unwrap();
    let src = env.path("src");
    write(&src.join("f.bin"), &noise(1 << 20, 3));
    let mut backup = env
        .cmd()
        .args(["backup", "--json", src.to_str().unwrap()])
        .env("ARCA_SWEEP_STALE_SECS", "3600")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = backup.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = backup.kill();
            panic!("the backup waits for a sweep whose heartbeat stopped a day ago");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    assert_eq!(env.snapshot_ids().len(), 1);
}
