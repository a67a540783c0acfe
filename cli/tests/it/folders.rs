//! A host shared by tenants confines each to its own folder (`arca server --tenant-root`):
//! what a source reads, where a restore writes and where an `fs://` target lives.

use std::path::Path;

use crate::helpers::assert_same_tree;
use crate::platform::{Platform, define_in, make_source};

#[test]
fn on_a_shared_host_a_tenant_reads_and_writes_only_inside_its_own_folder() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tenants");
    let platform = Platform::new().all_in_one_with(&["--tenant-root", root.to_str().unwrap()]);
    let tenant = platform.arca(&["tenant", "create", "acme"]);
    let own = root.join(&tenant);
    let source = own.join("src");
    make_source(&source);

    // Inside its folder: backups and restores work as anywhere.
    let [target, source_id, policy] =
        define_in(&platform, &tenant, &source, &own.join("repo"), &[], &["--every", "3600"]);
    let job = platform.arca(&["policy", "run", "--tenant", &tenant, &policy]);
    let snapshot = platform.wait_succeeded(&tenant, &job)["snapshot"].as_str().unwrap().to_owned();
    let restore = |to: &Path| {
        let to = to.to_str().unwrap();
        let job = platform.arca(&["job", "restore", "--tenant", &tenant, "--snapshot", &snapshot, "--to", to]);
        platform.wait_job(&tenant, &job)
    };
    let restored = own.join("restored");
    assert_eq!(restore(&restored)["status"], "succeeded");
    assert_same_tree(&source, &restored.join(source.strip_prefix("/").unwrap()));

    // Outside it — the host, another tenant's folder, a symlink leading out — nothing is
    // written and the job says why.
    let other = root.join(platform.arca(&["tenant", "create", "globex"]));
    let host = work.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, own.join("escape")).unwrap();
    for to in [host.join("out"), other.join("out"), own.join("escape/out")] {
        let failed = restore(&to);
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(failed["error"].as_str().unwrap().contains("outside this tenant's folder"), "{failed}");
        assert!(!host.join("out").exists() && !other.join("out").exists());
    }
    // Nor into a folder that holds something already (an earlier restore's symlink could
    // lead the writes out).
    let failed = restore(&restored);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("not empty"), "{failed}");

    // A source outside its folder is not read, and a local target outside it is not written.
    std::fs::write(host.join("secret.txt"), "the host's").unwrap();
    let outside = host.display().to_string();
    let stray = platform.arca(&["source", "add", "--tenant", &tenant, "stray", &outside]);
    let reads = platform.arca(&[
        "policy", "create", "--tenant", &tenant, "p2", "--source", &stray, "--target", &target, "--every", "3600",
    ]);
    let failed = platform.wait_job(&tenant, &platform.arca(&["policy", "run", "--tenant", &tenant, &reads]));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("the source path"), "{failed}");
    let elsewhere = format!("fs://{}", host.join("repo").display());
    let elsewhere = platform.arca(&["target", "add", "--tenant", &tenant, "elsewhere", &elsewhere]);
    let writes = platform.arca(&[
        "policy", "create", "--tenant", &tenant, "p3", "--source", &source_id, "--target", &elsewhere, "--every",
        "3600",
    ]);
    let failed = platform.wait_job(&tenant, &platform.arca(&["policy", "run", "--tenant", &tenant, &writes]));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("the target's folder"), "{failed}");
    assert!(!host.join("repo").exists(), "nothing was created outside the tenant's folder");

    // Nor does anything a tenant wrote run on the shared host: hooks are refused.
    let ran = host.join("hook-ran");
    let hook = format!("touch {}", ran.display());
    let source = source.display().to_string();
    let hooked = platform.arca(&[
        "source",
        "add",
        "--tenant",
        &tenant,
        "hooked",
        &source,
        "--pre-hook",
        &hook,
        "--post-hook",
        &hook,
    ]);
    let runs = platform.arca(&[
        "policy", "create", "--tenant", &tenant, "p4", "--source", &hooked, "--target", &target, "--every", "3600",
    ]);
    let failed = platform.wait_job(&tenant, &platform.arca(&["policy", "run", "--tenant", &tenant, &runs]));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("hooks do not run here"), "{failed}");
    assert!(!ran.exists(), "no hook ran");
}
