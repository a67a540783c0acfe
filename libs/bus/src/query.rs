//! Request/reply for queries (read models answer on `arca.q.<service>.<query>`).
//!
//! A reply is `{"ok": …}` or `{"error": {"code", "message"}}`, so a handler's typed error
//! reaches the caller as [`BusError::Remote`] with its machine code.

use std::future::Future;
use std::time::Duration;

use arca_events::TraceContext;
use async_nats::HeaderMap;
use bytes::Bytes;
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

/// Queries one `serve` answers at the same time.
pub const MAX_CONCURRENT_QUERIES: usize = 64;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply<T> {
    Ok(T),
    Error(RemoteError),
}

impl Bus {
    /// Sends `query` to `subject` and waits up to `timeout` for the answer.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        query: &Q,
        trace: Option<&TraceContext>,
        timeout: Duration,
    ) -> Result<R, BusError> {
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
        match serde_json::from_slice::<Reply<R>>(&reply.payload) {
            Ok(Reply::Ok(answer)) => Ok(answer),
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
                    let reply = match serde_json::from_slice::<Q>(&message.payload) {
                        Ok(query) => match handler(message.subject.to_string(), query, trace).await {
                            Ok(answer) => Reply::Ok(answer),
                            Err(error) => Reply::Error(error),
                        },
                        Err(e) => Reply::Error(RemoteError::new("bad_request", e.to_string())),
                    };
                    let payload = Bytes::from(serde_json::to_vec(&reply).expect("replies serialise"));
                    if let Err(e) = client.publish(reply_to, payload).await {
                        tracing::warn!(error = %e, "could not send a reply");
                    }
                });
            }
        }))
    }
}
