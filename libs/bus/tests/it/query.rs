use std::time::Duration;

use arca_bus::BusError;
use arca_bus::query::RemoteError;
use arca_events::TraceContext;
use serde::{Deserialize, Serialize};

use crate::harness;

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::test]
async fn queries_are_answered_with_typed_errors_and_the_trace() {
    let h = harness().await;
    let _server = h
        .bus
        .serve("arca.q.test.>", "test", |subject: String, query: Add, trace: Option<TraceContext>| async move {
            match subject.as_str() {
                "arca.q.test.add" => {
                    Ok(serde_json::json!({ "sum": query.a + query.b, "trace": trace.map(|t| t.traceparent) }))
                }
                _ => Err(RemoteError::new("not_found", format!("no query `{subject}`"))),
            }
        })
        .await
        .unwrap();
    h.bus.client().flush().await.unwrap();
    let trace = TraceContext::new_root();
    let answer: serde_json::Value =
        h.bus.request("arca.q.test.add", &Add { a: 2, b: 40 }, Some(&trace), Duration::from_secs(2)).await.unwrap();
    assert_eq!(answer["sum"], 42);
    assert_eq!(answer["trace"], trace.traceparent.as_str());

    let missing = h
        .bus
        .request::<_, serde_json::Value>("arca.q.test.nope", &Add { a: 1, b: 1 }, None, Duration::from_secs(2))
        .await;
    assert!(matches!(&missing, Err(BusError::Remote { code, .. }) if code == "not_found"), "{missing:?}");

    let bad =
        h.bus.request::<_, serde_json::Value>("arca.q.test.add", &"not an object", None, Duration::from_secs(2)).await;
    assert!(matches!(&bad, Err(BusError::Remote { code, .. }) if code == "bad_request"), "{bad:?}");
}

#[tokio::test]
async fn a_query_nobody_answers_fails_quickly_and_clearly() {
    let h = harness().await;
    let started = std::time::Instant::now();
    let result = h.bus.request::<_, serde_json::Value>("arca.q.nobody.home", &1, None, Duration::from_secs(5)).await;
    assert!(matches!(&result, Err(BusError::Unavailable { .. } | BusError::Timeout { .. })), "{result:?}");
    assert!(result.unwrap_err().to_string().contains("arca.q.nobody.home"));
    assert!(started.elapsed() < Duration::from_secs(5), "no-responders is reported at once");
}

#[tokio::test]
async fn raw_answers_pass_their_bytes_and_headers_through() {
    use arca_bus::query::{APPLIED_HEADER, RawAnswer};
    let h = harness().await;
    let _server = h
        .bus
        .serve_raw("arca.q.raw.>", "test", |subject: String, query: Add, _trace| async move {
            if subject != "arca.q.raw.add" {
                return Err(RemoteError::new("not_found", "no such query"));
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(APPLIED_HEADER, "42");
            // Bytes the handler built itself, passed on as they are (key order, spacing).
            let json = format!("{{\"sum\": {},\"a\":1}}", query.a + query.b);
            Ok(RawAnswer { json: json.into(), headers: Some(headers) })
        })
        .await
        .unwrap();
    h.bus.client().flush().await.unwrap();
    let answer = h.bus.request_raw("arca.q.raw.add", &Add { a: 2, b: 40 }, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(&answer.json[..], b"{\"sum\": 42,\"a\":1}");
    assert_eq!(answer.header(APPLIED_HEADER), Some("42"));
    // The typed request reads the same answer.
    let typed: serde_json::Value =
        h.bus.request("arca.q.raw.add", &Add { a: 1, b: 1 }, None, Duration::from_secs(2)).await.unwrap();
    assert_eq!(typed["sum"], 2);
    let missing = h.bus.request_raw("arca.q.raw.nope", &Add { a: 1, b: 1 }, None, Duration::from_secs(2)).await;
    assert!(matches!(&missing, Err(BusError::Remote { code, .. }) if code == "not_found"), "{missing:?}");
}
