//! Verification finds damage and names the snapshots and files it hurts.

use arca_repo::Repository;
use arca_repo::format::BlobKind;
use arca_repo::repository::paths;
use arca_testkit::Backend;

use crate::helpers::{Env, PASSWORD, noise, write};
use crate::on_every_backend;

on_every_backend!(damaged_and_missing_packs_are_reported);

/// The data pack holding the content of the snapshot `snapshot_id`'s files.
fn data_pack_of(env: &Env, source_bytes: &[u8]) -> String {
    let repo = Repository::open(env.repo_backend(), PASSWORD.as_bytes()).unwrap();
    let index = repo.load_index().unwrap();
    let id = repo.blob_id(source_bytes);
    let (pack, loc) = index.get(&id).expect("blob indexed");
    assert_eq!(loc.kind, BlobKind::Data);
    pack.id.clone()
}

fn damaged_and_missing_packs_are_reported(backend: Backend) {
    let env = Env::init(backend);
    let (one, two) = (env.path("one"), env.path("two"));
    // Both below the smallest chunk (256 KiB), so each file is exactly one blob whatever the
    // repository's chunker seed.
    let (x, y) = (noise(250 << 10, 1), noise(200 << 10, 2));
    write(&one.join("x.bin"), &x);
    write(&two.join("y.bin"), &y);
    let a = env.backup(&[&one])["snapshot_id"].as_str().unwrap().to_string();
    let b = env.backup(&[&two])["snapshot_id"].as_str().unwrap().to_string();
    let ok = env.ok(&["check", "--read-data"]);
    assert!(ok.contains("no errors"), "{ok}");

    // Flip one byte inside snapshot a's data pack.
    let pack = data_pack_of(&env, &x);
    let backend_ = env.repo_backend();
    let mut bytes = backend_.read(&paths::pack(&pack)).unwrap();
    bytes[1000] ^= 0x40;
    backend_.write(&paths::pack(&pack), bytes).unwrap();
    env.ok(&["check"]); // Same size: only reading the data finds it.
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&pack), "names the pack: {report}");
    assert!(report.contains(&a[..8]) && report.contains("/x.bin"), "names snapshot and file: {report}");
    assert!(!report.contains(&b[..8]), "an intact snapshot is not blamed: {report}");
    let json = crate::helpers::last_json(&crate::helpers::text(&env.run(&["check", "--read-data", "--json"]).stdout));
    assert_eq!(json["affected"][0]["snapshot"], a.as_str());

    // A missing pack is found by the structure check alone.
    let pack_b = data_pack_of(&env, &y);
    backend_.delete(&paths::pack(&pack_b)).unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("missing") && report.contains(&b[..8]) && report.contains("/y.bin"), "{report}");
}

on_every_backend!(a_pack_of_the_wrong_size_is_caught_without_reading_data);

/// The structure check compares every pack's size with the index, truncated to nothing
/// included, without reading any data.
fn a_pack_of_the_wrong_size_is_caught_without_reading_data(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(2 << 20, 1));
    write(&src.join("b.bin"), &noise(2 << 20, 2));
    env.backup(&[&src]);
    let backend = env.repo_backend();
    let mut packs = env.packs();
    packs.sort_by_key(|p| std::cmp::Reverse(backend.size(p).unwrap()));
    let (shortened, emptied) = (&packs[0], &packs[1]);
    let bytes = backend.read(shortened).unwrap();
    backend.write(shortened, bytes[..bytes.len() - 100].to_vec()).unwrap();
    backend.write(emptied, Vec::new()).unwrap();
    let out = env.run(&["check"]);
    let stdout = crate::helpers::text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for pack in [shortened, emptied] {
        let id = pack.rsplit('/').next().unwrap();
        assert!(stdout.contains(&format!("pack {id}: size")), "{pack} not reported: {stdout}");
    }
}

/// Checks while backups run report no damage that is not there: a backup writes packs, then
/// its index, then its snapshot, and check reads them in the opposite order.
#[test]
fn check_reports_nothing_while_backups_run() {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    let mut false_reports = Vec::new();
    for round in 0..6u64 {
        for i in 0..4u64 {
            write(&src.join(format!("f{i}.bin")), &noise(1 << 20, round * 10 + i));
        }
        let mut backup = env.cmd().args(["backup", "--json", src.to_str().unwrap()]).spawn().unwrap();
        while backup.try_wait().unwrap().is_none() {
            let out = env.run(&["check"]);
            if !out.status.success() {
                false_reports.push(crate::helpers::text(&out.stdout));
            }
        }
        assert!(backup.wait().unwrap().success());
    }
    assert!(false_reports.is_empty(), "{} false report(s): {false_reports:?}", false_reports.len());
}
