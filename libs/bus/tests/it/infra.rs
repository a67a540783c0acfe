//! The shipped NATS configurations are valid for the pinned nats-server.

use std::process::Command;

#[test]
fn the_nats_configs_in_infra_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/nats");
    let nats = arca_testkit::tool("nats-server");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "conf") {
            continue;
        }
        let out = Command::new(&nats)
            .args(["-t", "-c"])
            .arg(&path)
            .env("NODE_NAME", "arca-test")
            .env("ROUTES", "nats://127.0.0.1:6223")
            .env("HUB", "nats-leaf://127.0.0.1:7422")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("is valid"), "{}: {text}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 3, "single, cluster and leaf");
}
