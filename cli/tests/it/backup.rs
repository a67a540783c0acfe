//! File-tree, incremental, image and stream backups.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use arca_testkit::Backend;

use crate::helpers::{Env, assert_same_tree, noise, restored, set_mode, write};
use crate::on_every_backend;

on_every_backend!(file_tree_round_trip, incremental_full_and_differential, image_backup, stream_backup);

/// A tree with the awkward cases: modes, mtimes, symlinks, empty folders, a non-UTF-8
/// name, hard links, a sparse file, a socket.
fn awkward_tree(root: &Path) -> std::os::unix::net::UnixListener {
    write(&root.join("docs/readme.txt"), b"hello arca\n");
    write(&root.join("docs/big.bin"), &noise(3 << 20, 1));
    write(&root.join("docs/text.log"), "a log line that repeats\n".repeat(50_000).as_bytes());
    set_mode(&root.join("docs/readme.txt"), 0o640);
    write(&root.join("bin/tool"), b"#!/bin/sh\necho hi\n");
    set_mode(&root.join("bin/tool"), 0o755);
    std::fs::create_dir_all(root.join("empty/nested")).unwrap();
    std::os::unix::fs::symlink("../docs/readme.txt", root.join("bin/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.txt"));
    write(&odd, b"not utf-8 name");
    std::fs::hard_link(root.join("docs/big.bin"), root.join("big-hardlink.bin")).unwrap();
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data in the middle", 32 << 20).unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("docs/readme.txt"), t).unwrap();
    std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap()
}

fn file_tree_round_trip(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    let _socket = awkward_tree(&src);
    let out = env.cmd().args(["backup", "--json", src.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipped socket"), "sockets are skipped with a warning: {stderr}");
    let summary = crate::helpers::last_json(&String::from_utf8_lossy(&out.stdout));
    for key in ["snapshot_id", "files_new", "files_changed", "files_unmodified", "bytes_read", "bytes_stored"] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    // The hard link is read once; random data stored once; the sparse file's zeros not at all.
    let file_bytes: u64 = ["docs/readme.txt", "docs/big.bin", "docs/text.log", "bin/tool", "sparse.img"]
        .iter()
        .map(|f| src.join(f).metadata().unwrap().len())
        .sum::<u64>()
        + 14;
    assert_eq!(summary["bytes_read"].as_u64().unwrap(), file_bytes, "{summary}");
    let stored = summary["bytes_stored"].as_u64().unwrap();
    assert!(stored > 3 << 20 && stored < (3 << 20) + (1 << 20), "stored {stored}");

    let dest = env.path("restore");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    std::fs::remove_file(src.join("app.sock")).unwrap();
    assert_same_tree(&src, &restored(&dest, &src));
    let back = restored(&dest, &src);
    let (a, b) = (back.join("docs/big.bin").metadata().unwrap(), back.join("big-hardlink.bin").metadata().unwrap());
    assert_eq!(a.ino(), b.ino(), "hard links are restored as links");
    let sparse = back.join("sparse.img").metadata().unwrap();
    assert!(sparse.blocks() * 512 < 1 << 20, "sparse file stays sparse: {} blocks", sparse.blocks());

    // ls shows the tree, including the non-UTF-8 name (lossily).
    let listing = env.ok(&["ls", "latest", src.to_str().unwrap()]);
    assert!(listing.contains("docs/readme.txt") && listing.contains("caf\u{fffd}-latin1.txt"), "{listing}");
    let (_, err) = env.fails(&["ls", "latest", "/no/such/path"]);
    assert!(err.contains("not found"), "{err}");
}

fn incremental_full_and_differential(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    for i in 0..20 {
        write(&src.join(format!("f{i:02}.txt")), format!("file {i}\n").repeat(1000).as_bytes());
    }
    write(&src.join("big.bin"), &noise(2 << 20, 7));
    let full = env.json(&["backup", "--mode", "full", src.to_str().unwrap()]);
    assert_eq!(full["files_new"], 21);

    let first = env.backup(&[&src]);
    assert_eq!((first["files_unmodified"].as_u64(), first["bytes_read"].as_u64()), (Some(21), Some(0)));

    write(&src.join("f03.txt"), b"changed");
    write(&src.join("new.txt"), b"brand new");
    let second = env.backup(&[&src]);
    assert_eq!(second["files_changed"], 1);
    assert_eq!(second["files_new"], 1);
    assert_eq!(second["files_unmodified"], 20);
    assert_eq!(second["bytes_read"].as_u64().unwrap(), 7 + 9, "only changed files are read");

    // Differential compares with the last full backup, not the last backup.
    write(&src.join("f04.txt"), b"changed too");
    let diff = env.json(&["backup", "--mode", "differential", src.to_str().unwrap()]);
    assert_eq!((diff["files_changed"].as_u64(), diff["files_new"].as_u64()), (Some(2), Some(1)));

    // Full reads everything again but stores (almost) nothing new: dedup.
    let again = env.json(&["backup", "--mode", "full", src.to_str().unwrap()]);
    assert_eq!(again["files_new"], 22);
    assert!(again["bytes_read"].as_u64().unwrap() > 2 << 20);
    assert!(again["bytes_stored"].as_u64().unwrap() < 64 << 10, "{again}");

    // Another host name does not pick this host's snapshots as parent.
    let other = env.json(&["backup", "--host", "elsewhere", src.to_str().unwrap()]);
    assert_eq!(other["files_unmodified"], 0);
    let tagged = env.json(&["backup", "--tag", "nightly", src.to_str().unwrap()]);
    assert_eq!(tagged["files_unmodified"], 0, "no earlier snapshot has the tag");
    let tagged = env.json(&["backup", "--tag", "nightly", src.to_str().unwrap()]);
    assert_eq!(tagged["files_unmodified"], 22);
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 8);
    assert!(snaps.as_array().unwrap().iter().any(|s| s["tags"][0] == "nightly" && s["mode"] == "incremental"));
}

fn image_backup(backend: Backend) {
    let env = Env::init(backend);
    let image = env.path("disk.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(64 << 20).unwrap();
    for block in [0u64, 5, 9] {
        std::os::unix::fs::FileExt::write_all_at(&file, &noise(4 << 20, block), block * (4 << 20)).unwrap();
    }
    drop(file);
    let first = env.json(&["backup", "--image", image.to_str().unwrap()]);
    let stored = first["bytes_stored"].as_u64().unwrap();
    assert!(stored > 12 << 20 && stored < 13 << 20, "only the 3 data blocks are stored: {stored}");

    // Change one block: only that block is uploaded again.
    let file = std::fs::OpenOptions::new().write(true).open(&image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"changed", 5 * (4 << 20) + 100).unwrap();
    drop(file);
    let second = env.json(&["backup", "--image", image.to_str().unwrap()]);
    let stored = second["bytes_stored"].as_u64().unwrap();
    assert!(stored > 4 << 20 && stored < 5 << 20, "one block re-uploaded: {stored}");
    let trees = second["dirs"].as_u64().unwrap() + 1;
    assert_eq!(second["blobs_new"].as_u64().unwrap(), 1 + trees, "one data block, and the trees on its path");

    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    let back = restored(&dest, &image);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&image).unwrap(), "image restored byte for byte");
    let blocks = back.metadata().unwrap().blocks() * 512;
    assert!(blocks < 14 << 20, "holes restored sparse: {blocks} bytes allocated");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["source_kind"], "image");
}

fn stream_backup(backend: Backend) {
    let env = Env::init(backend);
    let data = noise(5 << 20, 3);
    let mut child = env.spawn(&["backup", "--stdin-name", "dump.bin", "--json"]);
    std::io::Write::write_all(&mut child.stdin(), &data).unwrap();
    let out = child.wait_with_output();
    assert!(out.status.success());
    assert_eq!(crate::helpers::last_json(&String::from_utf8_lossy(&out.stdout))["bytes_read"], 5 << 20);

    let cmd = env.json(&[
        "backup",
        "--stdin-name",
        "db.sql",
        "--command",
        "for i in $(seq 1 2000); do echo \"insert $i;\"; done",
    ]);
    assert_eq!(cmd["files_new"], 1);

    // A failing command fails the backup and leaves no snapshot.
    let before = env.snapshot_ids().len();
    let (_, err) = env.fails(&["backup", "--stdin-name", "x", "--command", "echo partial; echo boom >&2; exit 3"]);
    assert!(err.contains("boom"), "the command's error is shown: {err}");
    assert_eq!(env.snapshot_ids().len(), before);

    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    let sql = std::fs::read_to_string(dest.join("db.sql")).unwrap();
    assert!(sql.starts_with("insert 1;\n") && sql.ends_with("insert 2000;\n"));
    let ids = env.snapshot_ids();
    let dest2 = env.path("out2");
    env.ok(&["restore", &ids[0][..10], "--target", dest2.to_str().unwrap()]);
    assert!(std::fs::read(dest2.join("dump.bin")).unwrap() == data);
}

#[test]
fn unreadable_files_make_a_partial_snapshot_and_the_rest_is_kept() {
    let env = Env::init(Backend::Fs);
    let src = env.path("src");
    write(&src.join("ok.txt"), b"fine");
    // Reading /proc/self/mem at offset 0 fails with EIO, even for root.
    let out = env.cmd().args(["backup", "--json", src.to_str().unwrap(), "/proc/self/mem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "partial snapshot exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/proc/self/mem") && stderr.contains("partial"), "{stderr}");
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["partial"], true);
    let dest = env.path("out");
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(restored(&dest, &src).join("ok.txt")).unwrap(), b"fine");
}

#[test]
fn progress_is_reported_as_json_lines() {
    let env = Env::init(Backend::Fs);
    let out = env.ok(&["backup", "--json", "--stdin-name", "slow", "--command", "printf a; sleep 2.5; printf b"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2, "{out}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["type"] == "progress" && l.get("bytes_per_second").is_some()));
    assert_eq!(lines.last().unwrap()["type"], "summary");
}

#[test]
fn excluded_names_and_paths_are_left_out_with_everything_below_them() {
    let env = Env::init(Backend::Fs);
    let src = env.path("src");
    for (path, data) in [
        ("keep.txt", "keep"),
        ("scratch.tmp", "tmp"),
        ("app/node_modules/lib/index.js", "js"),
        ("app/main.rs", "main"),
        ("app/.cache/blob", "cache"),
        ("docs/.cache/keep-me-not", "cache"),
        ("docs/cache.txt", "a file called cache"),
        ("docs/deep/old.tmp", "tmp"),
    ] {
        let path = src.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    }
    let app_cache = format!("{}/app/.cache", src.display());
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude",
        "**/node_modules",
        "--exclude",
        &app_cache,
        "--exclude",
        "/nowhere/*/at-all",
    ]);
    let listed = env.ok(&["ls", "latest"]);
    let mut names: Vec<&str> =
        listed.lines().filter_map(|line| line.split_once("/src/").map(|(_, rel)| rel.trim())).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "app",
            "app/main.rs",
            "docs",
            "docs/.cache",
            "docs/.cache/keep-me-not",
            "docs/cache.txt",
            "docs/deep",
            "keep.txt"
        ],
        "{listed}"
    );

    // A pattern that does not parse is refused before anything is stored.
    let before = env.snapshot_ids();
    let (_, err) = env.fails(&["backup", src.to_str().unwrap(), "--exclude", "app/[oops"]);
    assert!(err.contains("bad exclude pattern `app/[oops`"), "{err}");
    assert_eq!(env.snapshot_ids(), before);
}

#[test]
fn bad_backup_arguments_are_refused() {
    let env = Env::init(Backend::Fs);
    let (_, err) = env.fails(&["backup"]);
    assert!(err.contains("nothing to back up"), "{err}");
    let (_, err) = env.fails(&["backup", "/does/not/exist"]);
    assert!(err.contains("/does/not/exist"), "{err}");
    let (_, err) = env.fails(&["backup", "--image", "/a", "/b"]);
    assert!(err.contains("exactly one"), "{err}");
    let (_, err) = env.fails(&["backup", "--stdin-name", "../escape"]);
    assert!(err.contains("not a valid file name"), "{err}");
    assert!(env.snapshot_ids().is_empty());
}

on_every_backend!(nothing_readable_is_stored, concurrent_backups_dedup_against_each_other);

/// Every object is sealed: no file name or content appears in the repository as plain text.
fn nothing_readable_is_stored(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    let marker = "arca-plaintext-marker-7f3a";
    write(&src.join(format!("{marker}.txt")), marker.repeat(10).as_bytes());
    write(&src.join("random.bin"), &noise(1 << 20, 9));
    write(&src.join("text.txt"), "compressible text ".repeat(100_000).as_bytes());
    let first = env.backup(&[&src]);
    let backend_ = env.repo_backend();
    for object in env.objects() {
        let bytes = backend_.read(&object).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "`{object}` holds plaintext");
    }
    // Incompressible data is stored raw (with a small overhead); text is compressed, more
    // so at a higher level.
    let stored = first["bytes_stored"].as_u64().unwrap();
    assert!(stored < (1 << 20) + (64 << 10), "random data is not inflated: {stored}");
    let fast = env.json(&["backup", "--mode", "full", "--compression", "1", "--host", "a", src.to_str().unwrap()]);
    assert!(fast["bytes_stored"].as_u64().unwrap() < 4096, "all deduplicated: {fast}");
    let other = env.path("other");
    let text: String = (0..200_000).map(|i| format!("line {} of a log with some words\n", i % 977)).collect();
    write(&other.join("a.log"), text.as_bytes());
    let one = env.json(&["backup", "--compression", "1", other.to_str().unwrap()]);
    write(&other.join("a.log"), format!("{text}!").as_bytes());
    let nineteen =
        env.json(&["backup", "--mode", "full", "--compression", "19", "--host", "b", other.to_str().unwrap()]);
    let (s1, s19) = (one["bytes_stored"].as_u64().unwrap(), nineteen["bytes_stored"].as_u64().unwrap());
    assert!(s1 < text.len() as u64 / 4, "level 1 compresses: {s1} of {}", text.len());
    assert!(s19 < s1, "level 19 ({s19}) beats level 1 ({s1})");
}

/// Two backups running at once see each other's index files and skip what the other stored.
fn concurrent_backups_dedup_against_each_other(backend: Backend) {
    let env = Env::new(backend);
    env.ok(&["repo", "init", "--pack-size-mib", "1"]);
    let (early, late) = (noise(32 << 20, 21), noise(12 << 20, 22));
    let mut slow = env.spawn(&["backup", "--stdin-name", "stream.bin", "--json"]);
    let mut stdin = slow.stdin();
    std::io::Write::write_all(&mut stdin, &early).unwrap();
    // Wait until the slow backup, now starved of input, has indexed what it uploaded
    // (all but the chunker's buffer and the open pack, at most about 5 MiB).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.objects().iter().any(|o| o.starts_with("index/")) {
        assert!(Instant::now() < deadline, "no index file appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    // Meanwhile a second backup stores the early data (mostly known) and the late data.
    let src = env.path("src");
    write(&src.join("early.bin"), &early);
    write(&src.join("late.bin"), &late);
    let fast = env.backup(&[&src]);
    let fast_stored = fast["bytes_stored"].as_u64().unwrap();
    assert!(fast_stored < (12 << 20) + (8 << 20), "the early data was deduplicated: {fast_stored}");
    // The slow backup now reads the late data, which the other has stored meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    std::io::Write::write_all(&mut stdin, &late).unwrap();
    drop(stdin);
    let out = slow.wait_with_output();
    assert!(out.status.success());
    let slow_stored = crate::helpers::last_json(&crate::helpers::text(&out.stdout))["bytes_stored"].as_u64().unwrap();
    // In the stream, the chunk that straddles early and late data cannot match the other
    // backup's chunks (the repository's chunker seed is random): up to one maximum chunk
    // (4 MiB) of late data is new. Without dedup it would be all 12 MiB.
    assert!(slow_stored < (32 << 20) + (5 << 20), "the late data was deduplicated: {slow_stored}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
}

/// On a terminal, a backup draws a progress bar with bytes, rate and ETA on stderr.
#[test]
fn progress_bar_on_a_terminal() {
    let env = Env::init(Backend::Fs);
    let arca = env!("CARGO_BIN_EXE_arca");
    let inner = format!("{arca} backup --stdin-name slow --command 'head -c 3000000 /dev/zero; sleep 1.5; printf b'");
    // `script` runs the command on a pseudo-terminal and copies what it draws to stdout.
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .envs(env.cmd().get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = crate::helpers::text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("B/s") && screen.contains("ETA") && screen.contains("files"), "no bar drawn: {screen:?}");
    assert!(screen.contains("snapshot") && screen.contains("saved"), "{screen:?}");
}

/// A backup onto a full disk says so at once, naming the target, instead of retrying for a
/// minute and reporting that its pipeline stopped; it writes no snapshot, and the next backup
/// to a disk with room succeeds. The disk is an 8 MiB tmpfs in a mount namespace of its own.
#[test]
fn a_full_disk_is_reported_at_once_by_name() {
    let env = Env::new(Backend::Fs);
    let src = env.path("src");
    for i in 0..6u64 {
        write(&src.join(format!("f{i}.bin")), &noise(4 << 20, i));
    }
    let mount = env.path("small-disk");
    fs::create_dir_all(&mount).unwrap();
    let script = r#"mount -t tmpfs -o size=8m tmpfs "$DISK" || exit 97
        ARCA_REPO="fs://$DISK/repo" "$ARCA" repo init --pack-size-mib 1 >/dev/null || exit 98
        ARCA_REPO="fs://$DISK/repo" "$ARCA" backup "$SRC"; code=$?
        ls "$DISK/repo/snapshots" | wc -l >&2
        exit $code"#;
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .envs(env.cmd().get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .env("DISK", &mount)
        .env("SRC", &src)
        .env("ARCA", env!("CARGO_BIN_EXE_arca"))
        .output()
        .unwrap();
    let stderr = crate::helpers::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no space left on fs://") && stderr.contains("small-disk/repo"), "{stderr}");
    assert!(!stderr.contains("pipeline stopped"), "{stderr}");
    assert_eq!(stderr.lines().last().map(str::trim), Some("0"), "no snapshot was written: {stderr}");
}
