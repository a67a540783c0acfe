//! Restores: selected paths, and snapshots crafted to escape the destination.

use std::sync::Arc;

use arca_repo::format::{BlobKind, ChunkRef, Node, NodeKind, Snapshot, Tree, to_msgpack};
use arca_repo::pipeline::Pipeline;
use arca_repo::{Repository, SourceKind};
use arca_testkit::Backend;

use crate::helpers::{Env, PASSWORD, restored, write};
use crate::on_every_backend;

on_every_backend!(restore_selected_paths, crafted_snapshots_cannot_escape);

fn restore_selected_paths(backend: Backend) {
    let env = Env::init(backend);
    let src = env.path("src");
    write(&src.join("keep/a.txt"), b"a");
    write(&src.join("keep/deep/b.txt"), b"b");
    write(&src.join("skip/c.txt"), b"c");
    write(&src.join("top.md"), b"top");
    env.backup(&[&src]);
    let dest = env.path("out");
    let keep = format!("{}/keep", src.display());
    let md = format!("{}/*.md", src.display());
    env.ok(&["restore", "latest", "--target", dest.to_str().unwrap(), "--include", &keep, "--include", &md]);
    let back = restored(&dest, &src);
    assert_eq!(std::fs::read(back.join("keep/deep/b.txt")).unwrap(), b"b");
    assert_eq!(std::fs::read(back.join("top.md")).unwrap(), b"top");
    assert!(!back.join("skip").exists(), "unselected folders are not restored");

    let (_, err) = env.fails(&["restore", "latest", "--target", dest.to_str().unwrap(), "--include", "/nothing/**"]);
    assert!(err.contains("matches"), "{err}");
    let (_, err) = env.fails(&["restore", "nope", "--target", dest.to_str().unwrap()]);
    assert!(err.contains("snapshot `nope` not found"), "{err}");
}

fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: if kind == NodeKind::Dir { 0o40755 } else { 0o100644 },
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        device: 0,
        links: 1,
        size: 0,
        content: Vec::new(),
        subtree: None,
        link_target: None,
    }
}

/// Writes a snapshot whose root holds `entries` (a file node's content is "pwned").
fn craft(env: &Env, build: impl FnOnce(&dyn Fn(&Tree) -> arca_repo::format::BlobId, ChunkRef) -> Tree) -> String {
    let repo = Repository::open(env.repo_backend(), PASSWORD.as_bytes()).unwrap();
    let pipeline = Pipeline::start(&repo, Arc::new(repo.load_index().unwrap()), 3, 1);
    let sink = pipeline.sink().clone();
    let data = ChunkRef(Some(sink.store(BlobKind::Data, b"pwned").unwrap()), 5);
    let store_tree = |t: &Tree| sink.store(BlobKind::Tree, &to_msgpack(t)).unwrap();
    let root = build(&store_tree, data);
    let root_id = store_tree(&root);
    drop(sink);
    pipeline.finish().unwrap();
    let snapshot = Snapshot {
        version: 1,
        time: chrono::Utc::now(),
        tree: root_id,
        paths: vec!["/crafted".into()],
        hostname: "attacker".into(),
        username: String::new(),
        tags: Vec::new(),
        source_kind: SourceKind::Files,
        mode: Default::default(),
        parent: None,
        partial: false,
        summary: Default::default(),
        locked_until: None,
        job: None,
    };
    repo.save_snapshot(&snapshot).unwrap()
}

fn file(name: &[u8], data: ChunkRef) -> Node {
    Node { size: 5, content: vec![data], ..node(name, NodeKind::File) }
}

fn crafted_snapshots_cannot_escape(backend: Backend) {
    let env = Env::init(backend);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dest = env.path("dest");
    let mut attempts = Vec::new();
    attempts.push(craft(&env, |_, data| Tree { nodes: vec![file(b"..", data)] }));
    attempts.push(craft(&env, |_, data| Tree { nodes: vec![file(b"../outside/pwned", data)] }));
    let absolute = format!("{}/pwned", outside.display());
    attempts.push(craft(&env, |_, data| Tree { nodes: vec![file(absolute.as_bytes(), data)] }));
    attempts.push(craft(&env, |_, data| Tree { nodes: vec![file(b"", data)] }));
    // A symlink to the outside, and a folder of the same name whose file would follow it.
    let link_target = outside.as_os_str().as_encoded_bytes().to_vec();
    attempts.push(craft(&env, |store, data| {
        let inner = store(&Tree { nodes: vec![file(b"pwned", data)] });
        let link = Node { link_target: Some(link_target.clone()), ..node(b"sneaky", NodeKind::Symlink) };
        let dir = Node { subtree: Some(inner), ..node(b"sneaky", NodeKind::Dir) };
        Tree { nodes: vec![dir, link] }
    }));
    for id in &attempts {
        let (_, err) = env.fails(&["restore", &id[..16], "--target", dest.to_str().unwrap()]);
        assert!(err.contains("refusing to restore"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the destination");
    }
    // A symlink already in the destination is not followed either.
    let safe = craft(&env, |store, data| {
        let inner = store(&Tree { nodes: vec![file(b"pwned", data)] });
        Tree { nodes: vec![Node { subtree: Some(inner), ..node(b"sub", NodeKind::Dir) }] }
    });
    let dest2 = env.path("dest2");
    std::fs::create_dir_all(&dest2).unwrap();
    std::os::unix::fs::symlink(&outside, dest2.join("sub")).unwrap();
    let (_, err) = env.fails(&["restore", &safe[..16], "--target", dest2.to_str().unwrap()]);
    assert!(err.contains("not a folder"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // A symlink node restores as a symlink, never as a path to write through.
    let ok = craft(&env, |_, _| Tree {
        nodes: vec![Node { link_target: Some(b"/etc/passwd".to_vec()), ..node(b"l", NodeKind::Symlink) }],
    });
    let dest3 = env.path("dest3");
    env.ok(&["restore", &ok[..16], "--target", dest3.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(dest3.join("l")).unwrap(), std::path::Path::new("/etc/passwd"));
}

/// Thousands of small files share one pack; restoring them must not run out of file handles.
#[test]
fn many_small_files_from_one_pack() {
    let env = Env::init(Backend::Fs);
    let src = env.path("src");
    for i in 0..3000 {
        write(&src.join(format!("d{}/f{i}.txt", i % 7)), format!("small {i}").as_bytes());
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let dest = env.path("out");
    // Run the restore with a low open-file limit, as many systems have.
    let script = format!("ulimit -n 256 && exec \"$0\" restore latest --target {}", dest.display());
    let out = std::process::Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_arca")])
        .envs(env.cmd().get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::helpers::text(&out.stderr));
    crate::helpers::assert_same_tree(&src, &restored(&dest, &src));
}
