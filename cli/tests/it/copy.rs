//! `arca copy` moves only the blobs the destination lacks, and `check --read-data-subset`
//! reads a share of the packs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use arca_repo::crypto::KdfParams;
use arca_repo::format::BlobKind;
use arca_repo::repository::paths;
use arca_repo::{Backend as RepoBackend, InitOptions, Repository, Target, TargetOptions};
use arca_testkit::{Backend, TestTarget};

use crate::helpers::{Env, PASSWORD, assert_same_tree, last_json, noise, restored, text, write};
use crate::on_every_backend;

on_every_backend!(
    copy_moves_only_missing_blobs,
    copy_refuses_what_it_cannot_open,
    read_data_subsets_cover_every_pack_once
);

const DEST_PASSWORD: &str = "another horse, another staple";

/// A second repository next to the test's own, reached with `DEST_PASSWORD`.
struct Destination {
    target: TestTarget,
}

impl Destination {
    fn new(backend: Backend) -> Destination {
        Destination { target: arca_testkit::target(backend) }
    }

    fn url(&self) -> &str {
        &self.target.url
    }

    /// `arca args…` against this repository.
    fn run(&self, env: &Env, args: &[&str]) -> Output {
        env.cmd()
            .env("ARCA_REPO", &self.target.url)
            .env("ARCA_PASSWORD", DEST_PASSWORD)
            .args(args)
            .output()
            .expect("run arca")
    }

    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let out = self.run(env, args);
        assert!(out.status.success(), "arca {args:?} on the destination failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn backend(&self) -> RepoBackend {
        let options = TargetOptions::from_map(&self.target.env_map());
        RepoBackend::open(&Target::parse(&self.target.url).expect("test url"), &options).expect("open backend")
    }

    /// Every object and its size.
    fn objects(&self) -> BTreeMap<String, u64> {
        self.backend().list("").expect("list").into_iter().map(|l| (l.name, l.size)).collect()
    }
}

/// `arca copy args… --to dest --json` with the destination's passphrase; the summary.
fn copy(env: &Env, dest: &Destination, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["copy", "--to", dest.url(), "--json"];
    all.extend_from_slice(args);
    let out = env.cmd().env("ARCA_TO_PASSWORD", DEST_PASSWORD).args(&all).output().expect("run arca");
    assert!(out.status.success(), "arca {all:?} failed: {}", text(&out.stderr));
    let summary = last_json(&text(&out.stdout));
    assert_eq!(summary["type"], "summary", "{summary}");
    summary
}

fn copy_fails(env: &Env, dest: &Destination, args: &[&str]) -> String {
    let mut all = vec!["copy", "--to", dest.url()];
    all.extend_from_slice(args);
    let out = env.cmd().env("ARCA_TO_PASSWORD", DEST_PASSWORD).args(&all).output().expect("run arca");
    assert_eq!(out.status.code(), Some(1), "arca {all:?} should fail: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

fn count(value: &serde_json::Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("no `{field}` in {value}"))
}

/// A tree with incompressible and compressible files, a sparse file, an empty file and a symlink.
fn make_source(src: &Path) {
    write(&src.join("a.bin"), &noise(900 << 10, 1));
    write(&src.join("docs/b.bin"), &noise(1500 << 10, 2));
    write(&src.join("docs/notes.txt"), "copy me\n".repeat(20_000).as_bytes());
    let mut sparse = noise(100 << 10, 3);
    sparse.extend(std::iter::repeat_n(0u8, 13 << 20));
    sparse.extend(noise(100 << 10, 4));
    write(&src.join("disk/sparse.img"), &sparse);
    write(&src.join("empty"), b"");
    std::os::unix::fs::symlink("docs/notes.txt", src.join("link")).unwrap();
}

fn copy_moves_only_missing_blobs(backend: Backend) {
    let env = Env::init(backend);
    let dest = Destination::new(backend);
    let src = env.path("src");
    make_source(&src);
    env.backup(&[&src]);

    let first = copy(&env, &dest, &["--init", "latest"]);
    assert_eq!((count(&first, "snapshots_copied"), count(&first, "snapshots_skipped")), (1, 0), "{first}");
    let copied_first = count(&first, "blobs_copied");
    // 900 KiB + 1.5 MiB of noise is at least 3 chunks, plus notes, the sparse file's data and 4 trees.
    assert!(copied_first >= 8, "{first}");
    assert_eq!(count(&first, "blobs_skipped"), 0, "{first}");
    let source_bytes: u64 = (900 << 10) + (1500 << 10) + 160_000 + (200 << 10) + (13 << 20);
    assert!(count(&first, "bytes_copied") + (4 << 20) <= source_bytes, "zero chunks are holes, not blobs: {first}");

    // The copy is its own repository (own id and master key) with the source's blob ids.
    let source_repo = Repository::open(env.repo_backend(), PASSWORD.as_bytes()).unwrap();
    let copy_repo = Repository::open(dest.backend(), DEST_PASSWORD.as_bytes()).unwrap();
    assert_ne!(source_repo.config().id, copy_repo.config().id);
    assert_eq!(source_repo.config().id_key, copy_repo.config().id_key);
    assert!(matches!(Repository::open(dest.backend(), PASSWORD.as_bytes()), Err(arca_repo::Error::WrongPassphrase)));

    let out = env.path("from-copy-1");
    dest.ok(&env, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));

    // An incremental backup adds a file and changes one; the next copy moves just that.
    write(&src.join("new/c.bin"), &noise(1200 << 10, 5));
    write(&src.join("docs/notes.txt"), "changed\n".repeat(30_000).as_bytes());
    let second_backup = env.backup(&[&src]);
    let new_in_source = count(&second_backup, "blobs_new");
    let before = dest.objects();
    let second = copy(&env, &dest, &["latest"]);
    assert_eq!(count(&second, "snapshots_copied"), 1, "{second}");
    assert_eq!(count(&second, "blobs_copied"), new_in_source, "only what the backup added: {second}");
    assert!(new_in_source < copied_first, "the backup added less than everything ({new_in_source})");
    assert!(count(&second, "blobs_skipped") >= 3, "unchanged files are not sent again: {second}");
    let written: Vec<_> = dest.objects().into_keys().filter(|o| !before.contains_key(o)).collect();
    assert!(written.iter().all(|o| !o.starts_with("locks/")), "the lease is removed: {written:?}");
    assert_eq!(written.iter().filter(|o| o.starts_with(paths::SNAPSHOTS)).count(), 1, "{written:?}");

    // Copying again, one snapshot or all of them, writes nothing at all.
    let before = dest.objects();
    let again = copy(&env, &dest, &["latest"]);
    assert_eq!((count(&again, "snapshots_copied"), count(&again, "blobs_copied")), (0, 0), "{again}");
    let all = copy(&env, &dest, &["--all"]);
    assert_eq!((count(&all, "snapshots_copied"), count(&all, "snapshots_skipped")), (0, 2), "{all}");
    assert_eq!(count(&all, "bytes_stored"), 0, "{all}");
    assert_eq!(dest.objects(), before, "a repeated copy uploads nothing");

    let out = env.path("from-copy-2");
    dest.ok(&env, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
    let checked = dest.ok(&env, &["check", "--read-data"]);
    assert!(checked.contains("no errors: 2 snapshots"), "{checked}");
    let listed: serde_json::Value = last_json(&dest.ok(&env, &["snapshots", "--json"]));
    let parents: BTreeSet<String> =
        listed.as_array().unwrap().iter().filter_map(|s| s["parent"].as_str().map(str::to_string)).collect();
    let ids: BTreeSet<String> =
        listed.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert!(parents.is_subset(&ids) && parents.len() == 1, "the copy's parent is the copy of the parent: {listed}");
}

fn copy_refuses_what_it_cannot_open(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(300 << 10, 7));
    env.backup(&[&src]);

    let missing = Destination::new(backend);
    let err = copy_fails(&env, &missing, &["latest"]);
    assert!(err.contains("no repository") && err.contains("--init"), "{err}");
    assert!(missing.objects().is_empty(), "nothing written without --init");

    // A repository made by `repo init` has its own blob-id key: refused, untouched.
    let plain = Destination::new(backend);
    plain.ok(&env, &["repo", "init"]);
    let before = plain.objects();
    let err = copy_fails(&env, &plain, &["latest"]);
    assert!(err.contains("not copy-compatible") && err.contains("keyed differently"), "{err}");
    assert_eq!(plain.objects(), before, "nothing written into an incompatible repository");

    let compatible = Destination::new(backend);
    copy(&env, &compatible, &["--init", "--all"]);
    let before = compatible.objects();
    let out = env
        .cmd()
        .env("ARCA_TO_PASSWORD", "not the destination's passphrase")
        .args(["copy", "--to", compatible.url(), "latest"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("destination") && err.contains("wrong passphrase"), "{err}");
    assert_eq!(compatible.objects(), before, "nothing written with a wrong passphrase");
    let err = copy_fails(&env, &compatible, &["nope"]);
    assert!(err.contains("snapshot `nope` not found"), "{err}");
}

fn read_data_subsets_cover_every_pack_once(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    for i in 0..4 {
        write(&env.path(&format!("src/{i}.bin")), &noise(1700 << 10, 20 + i));
    }
    env.backup(&[&env.path("src")]);
    let all_packs: BTreeSet<String> = env.packs().iter().map(|p| p.rsplit('/').next().unwrap().to_string()).collect();
    assert!(all_packs.len() >= 4, "{all_packs:?}");

    let part = |n: u32| -> (Option<i32>, serde_json::Value) {
        let subset = format!("{n}/3");
        let out = env.run(&["check", "--read-data-subset", &subset, "--json"]);
        (out.status.code(), last_json(&text(&out.stdout)))
    };
    let mut read: Vec<String> = Vec::new();
    let mut owner = BTreeMap::new();
    for n in 1..=3 {
        let (code, report) = part(n);
        assert_eq!(code, Some(0), "{report}");
        let ids: Vec<String> =
            report["packs_read_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(count(&report, "packs_read"), ids.len() as u64);
        owner.extend(ids.iter().map(|id| (id.clone(), n)));
        read.extend(ids);
    }
    read.sort();
    assert_eq!(read, all_packs.iter().cloned().collect::<Vec<_>>(), "the three parts read every pack exactly once");

    let half = last_json(&env.ok(&["check", "--read-data-subset", "50%", "--json"]));
    assert_eq!(count(&half, "packs_read"), all_packs.len().div_ceil(2) as u64, "{half}");
    let (_, err) = env.fails(&["check", "--read-data-subset", "4/3"]);
    assert!(err.contains("bad read-data subset `4/3`"), "{err}");

    // A damaged pack is found by its own part, and by no other.
    // A data pack: damage to the tree pack is also found by walking the snapshot's trees.
    let repo = Repository::open(env.repo_backend(), PASSWORD.as_bytes()).unwrap();
    let index = repo.load_index().unwrap();
    let damaged = all_packs
        .iter()
        .find(|id| index.pack_entries[id.as_str()].iter().all(|e| e.kind == BlobKind::Data))
        .unwrap()
        .clone();
    let target_backend = env.repo_backend();
    let mut bytes = target_backend.read(&paths::pack(&damaged)).unwrap();
    bytes[100] ^= 0x20;
    target_backend.write(&paths::pack(&damaged), bytes).unwrap();
    for n in 1..=3 {
        let (code, report) = part(n);
        let found = report["damaged_packs"].as_array().unwrap().iter().any(|p| p == damaged.as_str());
        if owner[&damaged] == n {
            assert_eq!((code, found), (Some(1), true), "part {n} holds the damaged pack: {report}");
        } else {
            assert_eq!((code, found), (Some(0), false), "part {n} does not read it: {report}");
        }
    }
}

#[test]
fn killed_copies_leave_a_valid_destination_fs() {
    killed_copies_leave_a_valid_destination(Backend::Fs);
}

#[test]
fn killed_copies_leave_a_valid_destination_s3() {
    killed_copies_leave_a_valid_destination(Backend::S3);
}

/// Copies killed at random points leave a destination that checks clean and holds only whole
/// snapshots; the next copy completes.
fn killed_copies_leave_a_valid_destination(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    for i in 0..12u64 {
        write(&src.join(format!("part{i:02}.bin")), &noise(1 << 20, 40 + i));
    }
    env.backup(&[&src]);

    // How long an uninterrupted copy takes here, into a scratch repository on the same backend.
    let scratch = Destination::new(backend);
    let started = std::time::Instant::now();
    copy(&env, &scratch, &["--init", "latest"]);
    let full = started.elapsed();
    // An empty destination made through the library, as the storage service makes one.
    let dest = Destination::new(backend);
    let source_repo = Repository::open(env.repo_backend(), PASSWORD.as_bytes()).unwrap();
    let fast = InitOptions {
        kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init_copy_of(dest.backend(), DEST_PASSWORD.as_bytes(), &source_repo, &fast).unwrap();

    let mut seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("copy crash test seed {seed} (set CRASH_SEED to replay), uninterrupted copy {full:?}");
    let mut kills = 0;
    for _ in 0..30 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = full.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = env
            .cmd()
            .env("ARCA_TO_PASSWORD", DEST_PASSWORD)
            .args(["copy", "--to", dest.url(), "--json", "latest"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let check = dest.run(&env, &["check"]);
        assert!(check.status.success(), "check after kill {kills} at {delay:?}: {}", text(&check.stdout));
        if kills == 8 {
            break;
        }
    }
    let last = copy(&env, &dest, &["latest"]);
    assert_eq!(count(&last, "snapshots_copied") + count(&last, "snapshots_skipped"), 1, "{last}");
    let out = env.path("out");
    dest.ok(&env, &["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
    let read = dest.run(&env, &["check", "--read-data"]);
    assert!(read.status.success(), "{}", text(&read.stdout));
}
