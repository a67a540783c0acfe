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
