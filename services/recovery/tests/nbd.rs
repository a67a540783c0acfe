//! The NBD server against real clients (`qemu-img`, `qemu-io`), on an image snapshot in a
//! repository on disk: no control plane.

use std::process::Command;
use std::sync::Arc;

use arca_recovery::nbd::{NbdServer, name_hash};
use arca_repo::backup::{BackupOptions, BackupSource, IMAGE_BLOCK, backup};
use arca_repo::crypto::KdfParams;
use arca_repo::reader::{FileReader, image_node};
use arca_repo::{Backend, InitOptions, Repository, Target, TargetOptions};

fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn qemu(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn qemu_reads_an_export_byte_for_byte_and_only_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut image = noise(2 * IMAGE_BLOCK + 10, 7);
    image.resize(6 * IMAGE_BLOCK, 0);
    image.extend_from_slice(&noise(2 * IMAGE_BLOCK + 12_288, 8));
    let path = dir.path().join("vm.img");
    std::fs::write(&path, &image).unwrap();
    let target = Target::parse(&format!("fs://{}", dir.path().join("repo").display())).unwrap();
    let options =
        InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..InitOptions::default() };
    let repo = Repository::init(Backend::open(&target, &TargetOptions::default()).unwrap(), b"pw", &options).unwrap();
    let outcome = backup(&repo, BackupSource::Image(path.clone()), &BackupOptions::default()).unwrap();
    let index = Arc::new(repo.load_index().unwrap());
    let (_, node) = image_node(&repo, &index, &outcome.snapshot).unwrap();
    let reader = FileReader::new(repo.clone(), index.clone(), &node).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(NbdServer::bind("127.0.0.1:0".parse().unwrap())).unwrap();
    let guard = server.add(name_hash(b"secret-name"), reader, false).unwrap();
    let url = format!("nbd://{}/secret-name", server.address());
    let copy = dir.path().join("copy.img");
    let out = qemu("qemu-img", &["convert", "-f", "raw", "-O", "raw", &url, copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copied = std::fs::read(&copy).unwrap();
    let first = copied.iter().zip(&image).position(|(a, b)| a != b);
    assert!(
        copied == image,
        "the copy differs: {} bytes, {} expected, first difference at {first:?}",
        copied.len(),
        image.len()
    );
    let out = qemu("qemu-img", &["compare", "-f", "raw", "-F", "raw", &url, path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = qemu("qemu-img", &["info", &format!("nbd://{}/other-name", server.address())]);
    assert!(!out.status.success());
    drop(guard);
    let out = qemu("qemu-img", &["info", &url]);
    assert!(!out.status.success(), "a stopped export is gone");
}
