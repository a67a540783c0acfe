//! The dependency direction is a rule: libraries never depend on services, the gateway or
//! the CLI, and services never depend on each other.

use std::collections::HashMap;
use std::process::Command;

#[test]
fn crate_dependencies_point_the_right_way() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = meta["workspace_root"].as_str().unwrap().to_string();
    // Crate name → its group folder (libs, services, api-gateway, cli, loadtests).
    let mut group: HashMap<String, String> = HashMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let manifest = p["manifest_path"].as_str().unwrap();
        let rel = manifest.strip_prefix(&root).unwrap().trim_start_matches('/');
        group.insert(p["name"].as_str().unwrap().to_string(), rel.split('/').next().unwrap().to_string());
    }
    assert!(group.len() >= 10, "{group:?}");
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        for dep in p["dependencies"].as_array().unwrap() {
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            let Some(dep_group) = group.get(dep["name"].as_str().unwrap()) else { continue };
            let from = &group[name];
            let forbidden = match from.as_str() {
                "libs" => dep_group != "libs",
                "services" => dep_group == "services" || dep_group == "api-gateway" || dep_group == "cli",
                _ => false,
            };
            assert!(!forbidden, "{name} ({from}) must not depend on {} ({dep_group})", dep["name"]);
        }
    }
}
