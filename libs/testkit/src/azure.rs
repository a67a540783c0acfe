//! Azure Blob SharedKey signing, for creating containers on Azurite.
//! <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::http::{self, Endpoint, Response};

/// Azurite's one built-in account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The well-known development key of `devstoreaccount1` (public, in Azurite's docs).
pub const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";

/// Sends a body-less SharedKey-signed request for `resource` (a path below the
/// account, such as `/mycontainer`) with `query` pairs.
pub(crate) fn request(
    endpoint: &Endpoint,
    method: &str,
    resource: &str,
    query: &[(&str, &str)],
) -> std::io::Result<Response> {
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let path = format!("{}{resource}", endpoint.base_path);

    // The canonicalized resource is "/<account><URL path>"; on Azurite the URL
    // path itself starts with the account, which is why it appears twice.
    let mut sorted = query.to_vec();
    sorted.sort();
    let mut canonical_resource = format!("/{ACCOUNT}{path}");
    for (name, value) in &sorted {
        canonical_resource.push_str(&format!("\n{}:{value}", name.to_ascii_lowercase()));
    }
    // VERB, then 11 standard headers, all empty here (a zero Content-Length is
    // signed as empty since version 2015-02-21), then the x-ms-* headers, sorted.
    let string_to_sign =
        format!("{method}\n{}x-ms-date:{date}\nx-ms-version:{API_VERSION}\n{canonical_resource}", "\n".repeat(11));
    let key =
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &B64.decode(KEY).expect("the well-known key is valid base64"));
    let signature = B64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());

    let query_string: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let path_and_query = if query_string.is_empty() { path } else { format!("{path}?{}", query_string.join("&")) };
    http::request(
        endpoint,
        method,
        &path_and_query,
        &[
            ("x-ms-date", date),
            ("x-ms-version", API_VERSION.to_string()),
            ("Authorization", format!("SharedKey {ACCOUNT}:{signature}")),
        ],
    )
}
