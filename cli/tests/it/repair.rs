//! Damage stays local and can be repaired: restic's repair cases (no index, a lost index
//! file, a damaged index file, missing data, missing unused data, an obsolete duplicate
//! index, a damaged snapshot file), each on a small repository.

use std::path::PathBuf;

use arca_testkit::Backend;

use crate::helpers::{Env, assert_same_tree, noise, restored, write};

/// A repository with two snapshots: `first` holds a.bin and b.bin, the latest adds c.bin.
struct Damaged {
    env: Env,
    src: PathBuf,
    repo: PathBuf,
    first: String,
}

fn two_snapshots() -> Damaged {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    write(&src.join("a.bin"), &noise(1 << 20, 1));
    write(&src.join("b.bin"), &noise(1 << 20, 2));
    let first = env.backup(&[&src])["snapshot_id"].as_str().unwrap().to_owned();
    write(&src.join("c.bin"), &noise(1 << 20, 3));
    env.backup(&[&src]);
    let repo = PathBuf::from(env.target.url.strip_prefix("fs://").unwrap());
    Damaged { env, src, repo, first }
}

impl Damaged {
    fn objects(&self, prefix: &str) -> Vec<String> {
        self.env.objects().into_iter().filter(|o| o.starts_with(prefix)).collect()
    }

    fn restores_latest(&self) {
        let dest = self.env.path(&format!("out-{}", rand_suffix()));
        self.env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
        assert_same_tree(&self.src, &restored(&dest, &self.src));
    }

    fn checks_clean(&self) {
        let out = self.env.run(&["check", "--read-data"]);
        assert!(out.status.success(), "{}", crate::helpers::text(&out.stdout));
    }

    fn prune_refuses(&self, says: &str) {
        let packs = self.objects("data/");
        let (_, err) = self.env.fails(&["prune", "--grace", "0s"]);
        assert!(err.contains(says) && err.contains("nothing was deleted"), "{err}");
        assert_eq!(self.objects("data/"), packs);
    }

    /// The biggest pack: file data, not trees.
    fn biggest_pack(&self) -> String {
        let mut packs: Vec<(u64, String)> = self
            .objects("data/")
            .into_iter()
            .map(|p| (std::fs::metadata(self.repo.join(&p)).unwrap().len(), p))
            .collect();
        packs.sort();
        packs.pop().unwrap().1
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn no_index_is_rebuilt_from_the_packs() {
    let d = two_snapshots();
    for file in d.objects("index/") {
        std::fs::remove_file(d.repo.join(file)).unwrap();
    }
    d.prune_refuses("arca repair index");
    let dry = d.env.json(&["repair", "index", "--dry-run"]);
    assert_eq!(dry["packs_added"], dry["packs_indexed"], "{dry}");
    assert!(d.objects("index/").is_empty(), "a dry run writes nothing");
    let report = d.env.json(&["repair", "index"]);
    assert!(report["packs_indexed"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(d.objects("index/").len(), 1);
    d.checks_clean();
    d.restores_latest();
}

#[test]
fn a_lost_index_file_is_found_again_in_the_pack_headers() {
    let d = two_snapshots();
    let files = d.objects("index/");
    assert!(files.len() >= 2, "{files:?}");
    std::fs::remove_file(d.repo.join(&files[0])).unwrap();
    d.prune_refuses("arca repair index");
    d.env.ok(&["repair", "index"]);
    d.checks_clean();
    d.restores_latest();
}

/// A damaged index file stops neither backups nor restores: its packs are read from their
/// headers. Check reports it, prune refuses, repair rebuilds it.
#[test]
fn a_damaged_index_file_stays_local() {
    let d = two_snapshots();
    for file in d.objects("index/") {
        let path = d.repo.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    }
    d.restores_latest();
    let again = d.env.backup(&[&d.src]);
    assert!(again["bytes_stored"].as_u64().unwrap() < 1 << 20, "the packs' blobs were found: {again}");
    let check = d.env.run(&["check"]);
    assert!(!check.status.success() && crate::helpers::text(&check.stdout).contains("arca repair index"));
    d.prune_refuses("index file(s) are damaged");
    d.env.ok(&["repair", "index"]);
    d.checks_clean();
    d.env.ok(&["prune", "--grace", "0s"]);
    d.restores_latest();
}

/// A pack that snapshots use is gone: repair drops it from the index, then rewrites the
/// snapshots without the files it held (tagged `repaired`); everything else restores.
#[test]
fn missing_data_is_cut_out_of_the_snapshots_that_used_it() {
    let d = two_snapshots();
    let pack = d.biggest_pack();
    std::fs::remove_file(d.repo.join(&pack)).unwrap();
    let check = d.env.run(&["check"]);
    assert!(!check.status.success());
    d.prune_refuses("run `arca check`");
    let index = d.env.json(&["repair", "index"]);
    assert_eq!(index["packs_missing"], 1, "{index}");
    let dry = d.env.json(&["repair", "snapshots", "--dry-run"]);
    let repairs = dry["repairs"].as_array().unwrap().len();
    assert!(repairs >= 1, "{dry}");
    let before = d.env.snapshot_ids();
    let report = d.env.json(&["repair", "snapshots"]);
    assert_eq!(report["repairs"].as_array().unwrap().len(), repairs);
    assert_eq!(d.env.snapshot_ids().len(), before.len(), "rewritten, not lost: {report}");
    d.checks_clean();
    // The repaired latest snapshot restores every file whose data is still there.
    let dest = d.env.path("out");
    d.env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    let back = restored(&dest, &d.src);
    let dropped: Vec<String> =
        report["repairs"][0]["dropped"].as_array().unwrap().iter().map(|p| p.to_string()).collect();
    for name in ["a.bin", "b.bin", "c.bin"] {
        let there = back.join(name).exists();
        let cut = dropped.iter().any(|p| p.contains(name));
        assert!(there != cut, "{name}: restored {there}, dropped {cut}: {dropped:?}");
        if there {
            assert!(std::fs::read(back.join(name)).unwrap() == std::fs::read(d.src.join(name)).unwrap());
        }
    }
    let listed = d.env.json(&["snapshots"]);
    assert!(listed.as_array().unwrap().iter().any(|s| s["tags"].as_array().unwrap().iter().any(|t| t == "repaired")));
}

/// A pack only a forgotten snapshot used is gone: only the index mentions it; repairing the
/// index is all it takes, and no snapshot needs rewriting.
#[test]
fn missing_unused_data_only_needs_the_index_repaired() {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let src = env.path("src");
    write(&src.join("x.bin"), &noise(2 << 20, 1));
    let first = env.backup(&[&src])["snapshot_id"].as_str().unwrap().to_owned();
    let first_packs = env.packs();
    write(&src.join("x.bin"), &noise(2 << 20, 2));
    env.backup(&[&src]);
    env.ok(&["forget", &first[..8]]);
    let repo = PathBuf::from(env.target.url.strip_prefix("fs://").unwrap());
    let only_first = first_packs.iter().max_by_key(|p| std::fs::metadata(repo.join(p)).unwrap().len()).unwrap();
    std::fs::remove_file(repo.join(only_first)).unwrap();
    assert!(!env.run(&["check"]).status.success(), "the index names a pack that is gone");
    let report = env.json(&["repair", "index"]);
    assert_eq!(report["packs_missing"], 1, "{report}");
    assert_eq!(env.json(&["repair", "snapshots", "--dry-run"])["repairs"], serde_json::json!([]));
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&dest, &src));
}

/// Two index files listing the same packs (an obsolete index left behind) are one after repair.
#[test]
fn an_obsolete_duplicate_index_is_folded_into_one() {
    let d = two_snapshots();
    let files = d.objects("index/");
    std::fs::copy(d.repo.join(&files[0]), d.repo.join("index/0000obsolete")).unwrap();
    d.checks_clean();
    let report = d.env.json(&["repair", "index"]);
    assert_eq!(report["index_files_replaced"].as_u64().unwrap() as usize, files.len() + 1, "{report}");
    assert_eq!(d.objects("index/").len(), 1);
    d.checks_clean();
    d.restores_latest();
}

/// A damaged snapshot file hides only itself: listing, backup, forget and restore of the
/// others go on; check reports it, prune refuses, `repair snapshots` removes it.
#[test]
fn a_damaged_snapshot_file_stays_local() {
    let d = two_snapshots();
    let path = d.repo.join(format!("snapshots/{}", d.first));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(d.env.snapshot_ids().len(), 1, "the other snapshot is listed");
    d.restores_latest();
    d.env.backup(&[&d.src]);
    d.env.ok(&["forget", "--keep-last", "5"]);
    let check = d.env.run(&["check"]);
    assert!(!check.status.success() && crate::helpers::text(&check.stdout).contains("repair snapshots"));
    d.prune_refuses("arca repair snapshots");
    let report = d.env.json(&["repair", "snapshots"]);
    assert_eq!(report["repairs"][0]["action"], "removed", "{report}");
    assert!(!path.exists());
    d.checks_clean();
    d.env.ok(&["prune", "--grace", "0s"]);
    d.restores_latest();
}

/// A restore that fails part-way (a pack is gone) leaves no file under its real name: what
/// it wrote carried a temporary name and is removed.
#[test]
fn a_failed_restore_leaves_no_file_that_looks_complete() {
    let d = two_snapshots();
    std::fs::remove_file(d.repo.join(d.biggest_pack())).unwrap();
    let dest = d.env.path("out");
    d.env.fails(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    let mut left = Vec::new();
    for entry in walkdir(&dest) {
        if entry.is_file() {
            left.push(entry);
        }
    }
    assert!(left.is_empty(), "files left behind: {left:?}");
}

fn walkdir(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}

/// Two backups storing the same new data at once each pack their own copy (duplicates):
/// everything checks clean and restores, `repair index` keeps one place per blob readable,
/// and prune drops the extra copies.
#[test]
fn duplicate_blobs_from_concurrent_backups_are_harmless_and_pruned() {
    let env = Env::new(Backend::Fs);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let data = noise(4 << 20, 9);
    let mut writers: Vec<_> = (0..2).map(|_| env.spawn(&["backup", "--stdin-name", "same.bin", "--json"])).collect();
    let stdins: Vec<_> = writers.iter_mut().map(|w| w.stdin()).collect();
    for mut stdin in stdins {
        std::io::Write::write_all(&mut stdin, &data).unwrap();
    }
    let stored: u64 = writers
        .into_iter()
        .map(|w| {
            let out = w.wait_with_output();
            assert!(out.status.success());
            crate::helpers::last_json(&crate::helpers::text(&out.stdout))["bytes_stored"].as_u64().unwrap()
        })
        .sum();
    assert!(stored > data.len() as u64 * 3 / 2, "both stored the data: {stored} bytes");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    env.ok(&["repair", "index"]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let packs = env.packs().len();
    let report = env.json(&["prune", "--grace", "0s"]);
    assert!(env.packs().len() < packs, "the duplicate copies went: {report}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    for id in env.snapshot_ids() {
        let dest = env.path(&format!("out-{id}"));
        env.ok(&["restore", &id, "--target", dest.to_str().unwrap()]);
        assert!(std::fs::read(dest.join("same.bin")).unwrap() == data);
    }
}
