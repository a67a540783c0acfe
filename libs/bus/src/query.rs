//! Request/reply for queries (read models answer on `arca.q.<service>.<query>`).
//!
//! A reply is `{"ok": …}` or `{"error": {"code", "message"}}`, so a handler's typed error
//! reaches the caller as [`BusError::Remote`] with its machine code.
//!
//! [`Bus::serve_raw`] and [`Bus::request_raw`] carry the `ok` value as JSON bytes the caller
//! passes on unparsed (the gateway answers a catalog page with the catalog's bytes), plus
//! headers a responder may add (the catalog's applied position).

use std::future::Future;
use std::time::Duration;

use arca_events::TraceContext;
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{Bus, BusError, headers};

/// An error a query handler returns to its caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    pub code: String,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

/// A successful answer as JSON bytes, with headers for the caller.
#[derive(Clone, Debug, Default)]
pub struct RawAnswer {
    /// The answer's JSON (the `ok` value of the reply).
    pub json: Bytes,
    pub headers: Option<HeaderMap>,
}

impl RawAnswer {
    /// `value` as JSON, no headers.
    pub fn json<T: Serialize>(value: &T) -> Result<RawAnswer, RemoteError> {
        let json = serde_json::to_vec(value).map_err(|e| RemoteError::new("internal", e.to_string()))?;
        Ok(RawAnswer { json: json.into(), headers: None })
    }

    /// The header `name`, if the responder set it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|value| value.as_str())
    }
}

/// The reply header in which a read model says which stream sequence of `EVENTS` it had
/// applied when it began answering: the answer reflects at least every event up to it.
pub const APPLIED_HEADER: &str = "Arca-Applied";

/// Queries one `serve` answers at the same time.
pub const MAX_CONCURRENT_QUERIES: usize = 64;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply<T> {
    Ok(T),
    Error(RemoteError),
}

/// How every successful reply starts (`serde_json` writes `Reply::Ok` exactly so).
const OK_PREFIX: &[u8] = b"{\"ok\":";

impl Bus {
    /// Sends `query` to `subject` and waits up to `timeout` for the answer.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        query: &Q,
        trace: Option<&TraceContext>,
        timeout: Duration,
    ) -> Result<R, BusError> {
        let answer = self.request_raw(subject, query, trace, timeout).await?;
        serde_json::from_slice(&answer.json)
            .map_err(|e| BusError::Malformed { what: format!("reply from `{subject}`"), reason: e.to_string() })
    }

    /// [`Bus::request`], answering the `ok` value's JSON bytes unparsed (a slice of the
    /// reply) and the reply's headers.
    pub async fn request_raw<Q: Serialize>(
        &self,
        subject: &str,
        query: &Q,
        trace: Option<&TraceContext>,
        timeout: Duration,
    ) -> Result<RawAnswer, BusError> {
        let mut headers = HeaderMap::new();
        if let Some(trace) = trace {
            headers::insert_trace(&mut headers, trace);
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::from(serde_json::to_vec(query).expect("queries serialise")))
            .timeout(Some(timeout));
        let reply = self.client().send_request(subject.to_owned(), request).await.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => BusError::Timeout { operation: format!("query `{subject}`") },
            async_nats::RequestErrorKind::NoResponders => {
                BusError::Unavailable { operation: format!("query `{subject}`"), reason: "no service answers".into() }
            }
            _ => BusError::unavailable(format!("query `{subject}`"), e),
        })?;
        let payload = reply.payload;
        // Our own responders write `{"ok":<value>}` with nothing around it: the value is the
        // bytes in between, taken without parsing. Anything else is parsed.
        if payload.starts_with(OK_PREFIX) && payload.ends_with(b"}") {
            let json = payload.slice(OK_PREFIX.len()..payload.len() - 1);
            return Ok(RawAnswer { json, headers: reply.headers });
        }
        match serde_json::from_slice::<Reply<serde_json::Value>>(&payload) {
            Ok(Reply::Ok(answer)) => {
                let json = serde_json::to_vec(&answer).expect("JSON values serialise").into();
                Ok(RawAnswer { json, headers: reply.headers })
            }
            Ok(Reply::Error(error)) => Err(BusError::Remote { code: error.code, message: error.message }),
            Err(e) => Err(BusError::Malformed { what: format!("reply from `{subject}`"), reason: e.to_string() }),
        }
    }

    /// Answers queries on `subject` (wildcards allowed) in `queue_group`, one task per request.
    /// A request that is not valid JSON for `Q` gets a `bad_request` error.
    pub async fn serve<Q, R, F, Fut>(
        &self,
        subject: &str,
        queue_group: &str,
        handler: F,
    ) -> Result<JoinHandle<()>, BusError>
    where
        Q: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(String, Q, Option<TraceContext>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<R, RemoteError>> + Send + 'static,
    {
        self.serve_raw(subject, queue_group, move |subject, query, trace| {
            let answer = handler(subject, query, trace);
            async move { RawAnswer::json(&answer.await?) }
        })
        .await
    }

    /// [`Bus::serve`] for handlers that answer JSON bytes they built themselves (and headers).
    pub async fn serve_raw<Q, F, Fut>(
        &self,
        subject: &str,
        queue_group: &str,
        handler: F,
    ) -> Result<JoinHandle<()>, BusError>
    where
        Q: DeserializeOwned + Send + 'static,
        F: Fn(String, Q, Option<TraceContext>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<RawAnswer, RemoteError>> + Send + 'static,
    {
        let mut requests = self
            .client()
            .queue_subscribe(subject.to_owned(), queue_group.to_owned())
            .await
            .map_err(|e| BusError::unavailable(format!("serve `{subject}`"), e))?;
        let client = self.client().clone();
        // A burst of queries waits here instead of opening unbounded work (and database
        // connections) at once.
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_QUERIES));
        Ok(tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply_to) = message.reply.clone() else { continue };
                let (client, handler) = (client.clone(), handler.clone());
                let Ok(permit) = limit.clone().acquire_owned().await else { break };
                tokio::spawn(async move {
                    let _permit = permit;
                    let trace = headers::trace_of(message.headers.as_ref());
                    let answer = match serde_json::from_slice::<Q>(&message.payload) {
                        Ok(query) => handler(message.subject.to_string(), query, trace).await,
                        Err(e) => Err(RemoteError::new("bad_request", e.to_string())),
                    };
                    let sent = match answer {
                        Ok(RawAnswer { json, headers }) => {
                            let mut payload = BytesMut::with_capacity(OK_PREFIX.len() + json.len() + 1);
                            payload.put_slice(OK_PREFIX);
                            payload.put_slice(&json);
                            payload.put_u8(b'}');
                            match headers {
                                Some(headers) => client.publish_with_headers(reply_to, headers, payload.freeze()).await,
                                None => client.publish(reply_to, payload.freeze()).await,
                            }
                        }
                        Err(error) => {
                            let reply = serde_json::to_vec(&Reply::<()>::Error(error)).expect("replies serialise");
                            client.publish(reply_to, Bytes::from(reply)).await
                        }
                    };
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "could not send a reply");
                    }
                });
            }
        }))
    }
}
