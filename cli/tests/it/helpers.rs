//! Drives the real `arca` binary against a real repository on fs, S3 (moto) or Azurite.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arca_repo::{Backend as RepoBackend, Target, TargetOptions};
use arca_testkit::{Backend, TestTarget};

pub const PASSWORD: &str = "correct horse battery staple";

/// Generates one `#[test]` per storage backend for a scenario `fn(Backend)`.
#[macro_export]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn fs() { super::$scenario(arca_testkit::Backend::Fs) }
            #[test]
            fn s3() { super::$scenario(arca_testkit::Backend::S3) }
            #[test]
            fn azure() { super::$scenario(arca_testkit::Backend::Azure) }
        }
    )*};
}

/// One test's repository plus a scratch folder.
pub struct Env {
    pub target: TestTarget,
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        Env { target: arca_testkit::target(backend), tmp: tempfile::tempdir().expect("temp dir") }
    }

    /// A fresh, initialised repository.
    pub fn init(backend: Backend) -> Env {
        let env = Env::new(backend);
        env.ok(&["repo", "init"]);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// `arca` with the repository, passphrase and target credentials in its environment.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arca"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("ARCA_REPO", &self.target.url)
            .env("ARCA_PASSWORD", PASSWORD)
            .env("ARCA_TEST_FAST_KDF", "1")
            .envs(self.target.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run arca")
    }

    /// Runs `arca args…`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "arca {args:?} failed: {}\n{}", out.status, text(&out.stderr));
        text(&out.stdout)
    }

    /// Runs `arca args…`, asserts failure, returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "arca {args:?} should fail but printed {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        (out.status.code().unwrap_or(-1), stderr)
    }

    /// Runs with `--json` and parses the last line of stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        last_json(&self.ok(&all))
    }

    pub fn backup(&self, paths: &[&Path]) -> serde_json::Value {
        let mut args = vec!["backup"];
        args.extend(paths.iter().map(|p| p.to_str().expect("utf-8 test path")));
        self.json(&args)
    }

    pub fn repo_backend(&self) -> RepoBackend {
        let options = TargetOptions::from_map(&self.target.env_map());
        RepoBackend::open(&Target::parse(&self.target.url).expect("test url"), &options).expect("open backend")
    }

    /// Every object in the repository.
    pub fn objects(&self) -> BTreeSet<String> {
        self.repo_backend().list("").expect("list").into_iter().map(|l| l.name).collect()
    }

    pub fn packs(&self) -> Vec<String> {
        self.objects().into_iter().filter(|o| o.starts_with("data/")).collect()
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        let list = self.json(&["snapshots"]);
        list.as_array().expect("array").iter().map(|s| s["id"].as_str().expect("id").to_string()).collect()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Deterministic bytes that do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Where a restore puts a backed-up absolute path.
pub fn restored(dest: &Path, source: &Path) -> PathBuf {
    dest.join(source.strip_prefix("/").expect("absolute"))
}

/// Compares two trees: names, kinds, modes, mtimes, symlink targets and file bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let list = |root: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read dir") {
                let p = e.expect("entry").path();
                if p.symlink_metadata().expect("meta").is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "different entries");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (pa.symlink_metadata().expect("meta"), pb.symlink_metadata().expect("meta"));
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?} kind");
        if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&pa).unwrap(), std::fs::read_link(&pb).unwrap(), "{rel:?} link");
            continue;
        }
        assert_eq!(ma.mode(), mb.mode(), "{rel:?} mode");
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "{rel:?} mtime");
        if ma.is_file() {
            assert!(std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(), "{rel:?} content differs");
        }
    }
}

/// A running `arca` that is killed if the test fails before waiting for it.
pub struct Running(Option<std::process::Child>);

impl Running {
    pub fn stdin(&mut self) -> std::process::ChildStdin {
        self.0.as_mut().expect("running").stdin.take().expect("stdin is piped")
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    pub fn wait_with_output(mut self) -> Output {
        self.0.take().expect("running").wait_with_output().expect("wait for arca")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Env {
    /// Starts `arca args…` with piped stdin and stdout.
    pub fn spawn(&self, args: &[&str]) -> Running {
        Running(Some(self.cmd().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn arca")))
    }

    /// Like [`Env::spawn`], with stderr piped too (read it with `wait_with_output`).
    pub fn spawn_capturing(&self, args: &[&str]) -> Running {
        let mut cmd = self.cmd();
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Running(Some(cmd.spawn().expect("spawn arca")))
    }
}
