//! Data out without a full restore, black-box against `arca server`: an image snapshot
//! exported over NBD and read by `qemu-img` and `qemu-io` (clients no one here wrote), single
//! files fetched with curl range requests, folders downloaded as tar and unpacked by GNU tar.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{assert_same_tree, noise, write};
use crate::platform::{API_KEY, Platform, define_in};

/// A 33 MiB + 12 KiB disk image: data, a long run of zeros (stored as holes), data, and a tail
/// that is not a whole block (but whole sectors: qemu rounds an image up to 512 bytes).
fn make_image(path: &Path) -> Vec<u8> {
    let mut image = noise(8 << 20, 7);
    image.resize(24 << 20, 0);
    image.extend_from_slice(&noise((9 << 20) + 12_288, 8));
    write(path, &image);
    image
}

fn run(command: &mut Command) -> std::process::Output {
    command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn checked(command: &mut Command) -> Vec<u8> {
    let output = run(command);
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// The REST API through curl.
struct Api {
    base: String,
    tenant: String,
    /// The server's log, for failure messages.
    log: std::path::PathBuf,
}

impl Api {
    fn url(&self, path: &str) -> String {
        let join = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{join}tenant={}", self.base, self.tenant)
    }

    /// Status and body (JSON, or `Null`) of a request; `headers` are extra `Name: value` lines.
    fn request(&self, method: &str, path: &str, body: Option<Value>, headers: &[&str]) -> (u16, Vec<u8>) {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", method, "-H", &format!("Authorization: Bearer {API_KEY}"), "-w", "\n%{http_code}"]);
        for header in headers {
            curl.args(["-H", header]);
        }
        if let Some(body) = body {
            curl.args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
        }
        let mut out = checked(curl.arg(self.url(path)));
        let at = out.iter().rposition(|b| *b == b'\n').unwrap();
        let status = String::from_utf8_lossy(&out[at + 1..]).parse().unwrap();
        out.truncate(at);
        (status, out)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, out) = self.request(method, path, body, &[]);
        (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    /// Polls an export until `status` (or fails after 60 s).
    fn wait_export(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, export) = self.call("GET", &format!("/v1/exports/{id}"), None);
            assert_eq!(code, 200, "{export}");
            if export["status"] == status {
                return export;
            }
            assert!(
                Instant::now() < deadline,
                "export {id} never became {status}: {export}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn export(&self, snapshot: &str, writable: bool) -> (String, String, String) {
        let (code, created) =
            self.call("POST", "/v1/exports", Some(json!({ "snapshot": snapshot, "writable": writable })));
        assert_eq!(code, 202, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let name = created["export_name"].as_str().unwrap().to_owned();
        let serving = self.wait_export(&id, "serving");
        (id, name, serving["address"].as_str().unwrap().to_owned())
    }
}

/// Waits until the gateway knows the bootstrap key (the catalog projects it).
fn api(platform: &Platform, tenant: &str) -> Api {
    let api = Api { base: platform.api(), tenant: tenant.to_owned(), log: platform.log_path("server") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.call("GET", "/v1/snapshots", None).0 != 200 {
        assert!(Instant::now() < deadline, "the API never accepted the bootstrap key");
        std::thread::sleep(Duration::from_millis(100));
    }
    api
}

fn backed_up(platform: &Platform, tenant: &str, policy: &str) -> String {
    let job = platform.arca(&["policy", "run", "--tenant", tenant, policy]);
    platform.wait_succeeded(tenant, &job)["snapshot"].as_str().unwrap().to_owned()
}

#[test]
fn an_image_snapshot_is_served_over_nbd_to_qemu_and_writes_stay_in_an_overlay() {
    let work = tempfile::tempdir().unwrap();
    let image_path = work.path().join("disk/vm.img");
    let image = make_image(&image_path);
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let [_, _, policy] = define_in(
        &platform,
        &tenant,
        &image_path,
        &work.path().join("repo"),
        &["--kind", "image"],
        &["--every", "3600"],
    );
    let snapshot = backed_up(&platform, &tenant, &policy);
    let api = api(&platform, &tenant);

    // Read-only: qemu-img copies the export byte for byte and compares it with the original.
    let (id, name, address) = api.export(&snapshot, false);
    let url = format!("nbd://{address}/{name}");
    let copy = work.path().join("copy.img");
    checked(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw", &url]).arg(&copy));
    assert!(std::fs::read(&copy).unwrap() == image, "the exported image differs from the original");
    checked(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &url]).arg(&image_path));
    let info = checked(Command::new("qemu-img").args(["info", "--output=json", &url]));
    let info: Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["virtual-size"], image.len() as u64, "{info}");
    // A write to a read-only export is refused.
    let refused = run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xab 0 4096", &url]));
    assert!(
        !refused.status.success() || String::from_utf8_lossy(&refused.stdout).contains("failed"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    // Only the right name reaches it; the export list names nothing.
    let wrong = run(Command::new("qemu-img").args(["info", &format!("nbd://{address}/{}", "0".repeat(48))]));
    assert!(!wrong.status.success(), "an unknown export name must be refused");
    let (code, _) = api.call("GET", &format!("/v1/exports/{}", arca_events::JobId::new()), None);
    assert_eq!(code, 404);

    // Writable: writes go to an overlay; the repository and other exports keep the snapshot.
    let (writable_id, writable_name, _) = api.export(&snapshot, true);
    let writable_url = format!("nbd://{address}/{writable_name}");
    let wrote = checked(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 100 5000",
        "-c",
        "write -P 0xcd 9437184 8192",
        &writable_url,
    ]));
    assert!(!String::from_utf8_lossy(&wrote).contains("failed"), "{}", String::from_utf8_lossy(&wrote));
    let changed = work.path().join("changed.img");
    checked(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw", &writable_url]).arg(&changed));
    let mut expected = image.clone();
    expected[100..5100].fill(0xab);
    expected[9_437_184..9_437_184 + 8192].fill(0xcd);
    assert!(std::fs::read(&changed).unwrap() == expected, "the writable export shows its writes over the snapshot");
    checked(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &url]).arg(&image_path));

    // Both are listed, newest first, serving; their names are never shown again.
    let (code, listed) = api.call("GET", "/v1/exports", None);
    assert_eq!(code, 200, "{listed}");
    let shown: Vec<(&str, &str, bool)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["status"].as_str().unwrap(), e["writable"].as_bool().unwrap()))
        .collect();
    assert_eq!(shown, [(writable_id.as_str(), "serving", true), (id.as_str(), "serving", false)], "{listed}");
    assert!(!listed.to_string().contains(&name) && !listed.to_string().contains(&writable_name));

    // Stopping an export disconnects it; the other one keeps serving until it is stopped too.
    for export in [&writable_id, &id] {
        let (code, stopped) = api.call("DELETE", &format!("/v1/exports/{export}"), None);
        assert_eq!(code, 202, "{stopped}");
        api.wait_export(export, "stopped");
    }
    let gone = run(Command::new("qemu-img").args(["info", &url]));
    assert!(!gone.status.success(), "a stopped export must not be served");
    let (_, listed) = api.call("GET", "/v1/exports?limit=1", None);
    assert_eq!(listed["items"][0]["status"], "stopped", "{listed}");
    let cursor = listed["next_cursor"].as_str().expect("a second page");
    let (_, rest) = api.call("GET", &format!("/v1/exports?limit=1&cursor={cursor}"), None);
    assert_eq!(rest["items"][0]["id"], id.as_str(), "{rest}");
}

#[test]
fn files_download_with_range_requests_and_folders_as_tar_or_zip() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("src");
    write(&source.join("a/one.bin"), &noise(3 << 20, 1));
    write(&source.join("a/two.txt"), b"hello from acme\n");
    write(&source.join("b/deep/three.bin"), &noise(700_000, 2));
    std::os::unix::fs::symlink("../a/two.txt", source.join("b/link")).unwrap();
    let platform = Platform::new().all_in_one();
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let [_, _, policy] = define_in(&platform, &tenant, &source, &work.path().join("repo"), &[], &["--every", "3600"]);
    let snapshot = backed_up(&platform, &tenant, &policy);
    let api = api(&platform, &tenant);
    let one = std::fs::read(source.join("a/one.bin")).unwrap();
    let content =
        |path: &Path| format!("/v1/snapshots/{snapshot}/content?path={}", urlencode(&path.display().to_string()));
    let curl = |args: &[&str], path: &str| {
        checked(
            Command::new("curl")
                .args(["-sSf", "-H", &format!("Authorization: Bearer {API_KEY}")])
                .args(args)
                .arg(api.url(path)),
        )
    };

    // Whole file, a middle range, an open range and a suffix range: exact bytes.
    let url = content(&source.join("a/one.bin"));
    assert!(curl(&[], &url) == one);
    assert!(curl(&["-r", "1048570-2097160"], &url) == one[1_048_570..=2_097_160]);
    assert!(curl(&["-r", "3145000-"], &url) == one[3_145_000..]);
    assert!(curl(&["-r", "-100"], &url) == one[one.len() - 100..]);
    let headers = String::from_utf8(curl(&["-r", "0-9", "-D", "-", "-o", "/dev/null"], &url)).unwrap();
    assert!(headers.starts_with("HTTP/1.1 206"), "{headers}");
    assert!(headers.to_lowercase().contains(&format!("content-range: bytes 0-9/{}", one.len())), "{headers}");

    // A range outside the file is 416; a folder or a missing path is a clear 4xx.
    let outside = run(Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-H", &format!("Authorization: Bearer {API_KEY}")])
        .args(["-H", "Range: bytes=99999999-"])
        .arg(api.url(&url)));
    let outside = String::from_utf8_lossy(&outside.stdout).into_owned();
    assert!(outside.starts_with("HTTP/1.1 416"), "{outside}");
    assert!(outside.to_lowercase().contains(&format!("content-range: bytes */{}", one.len())), "{outside}");
    let (code, problem) = api.call("GET", &content(&source.join("a")), None);
    assert_eq!((code, problem["code"].as_str()), (400, Some("not_a_file")), "{problem}");
    let (code, problem) = api.call("GET", &content(&source.join("nope")), None);
    assert_eq!(code, 404, "{problem}");

    // A folder as tar: GNU tar unpacks the same tree (files, folders, the symlink).
    let archive = format!("/v1/snapshots/{snapshot}/archive?path={}", urlencode(&source.display().to_string()));
    let tar = curl(&[], &archive);
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let mut untar =
        Command::new("tar").args(["-x", "-C"]).arg(&unpacked).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &tar).unwrap();
    assert!(untar.wait().unwrap().success());
    assert_same_tree(&source, &unpacked.join("src"));

    // The same folder as zip: Info-ZIP's unzip unpacks the same files, modes and symlink.
    let zip = work.path().join("src.zip");
    std::fs::write(&zip, curl(&[], &format!("{archive}&format=zip"))).unwrap();
    let unzipped = work.path().join("unzipped");
    checked(Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&unzipped));
    for file in ["a/one.bin", "a/two.txt", "b/deep/three.bin"] {
        let (original, unpacked) = (source.join(file), unzipped.join("src").join(file));
        assert!(std::fs::read(&original).unwrap() == std::fs::read(&unpacked).unwrap(), "{file} differs");
        let mode =
            |path: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions());
        assert_eq!(mode(&original), mode(&unpacked), "{file}'s mode");
    }
    assert_eq!(std::fs::read_link(unzipped.join("src/b/link")).unwrap(), Path::new("../a/two.txt"));
    let (code, problem) = api.call("GET", &format!("{archive}&format=rar"), None);
    assert_eq!(code, 400, "an unknown format is refused: {problem}");

    // The gateway keeps the repository open between downloads; a snapshot taken since is
    // still found, with its new content, and the first one still reads as it was.
    write(&source.join("a/two.txt"), b"hello again, a newer version\n");
    write(&source.join("c/new.bin"), &noise(200_000, 3));
    let newer = backed_up(&platform, &tenant, &policy);
    let in_newer =
        |path: &Path| format!("/v1/snapshots/{newer}/content?path={}", urlencode(&path.display().to_string()));
    assert_eq!(curl(&[], &in_newer(&source.join("a/two.txt"))), b"hello again, a newer version\n");
    assert!(curl(&[], &in_newer(&source.join("c/new.bin"))) == std::fs::read(source.join("c/new.bin")).unwrap());
    assert_eq!(curl(&[], &content(&source.join("a/two.txt"))), b"hello from acme\n");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
