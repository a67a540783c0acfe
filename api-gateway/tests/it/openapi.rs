//! The committed spec is what the code generates: run `make openapi` after changing the API.

#[test]
fn committed_openapi_json_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json exists (run `make openapi`)");
    assert!(
        committed == arca_api_gateway::openapi_json(),
        "openapi/openapi.json differs from what the code generates: run `make openapi`"
    );
}

#[test]
fn every_operation_asks_for_a_key() {
    let spec: serde_json::Value = serde_json::from_str(&arca_api_gateway::openapi_json()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{paths:?}");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            assert_eq!(operation["security"][0]["api_key"], serde_json::json!([]), "{method} {path}");
        }
    }
}
