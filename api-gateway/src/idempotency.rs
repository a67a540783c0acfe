//! `Idempotency-Key` on the POSTs that start work (run now, restore, forget, cancel).
//!
//! The first request with a key claims it in the `arca-idempotency` key-value bucket (an
//! atomic create, so two at once cannot both run), does the work and stores its answer. A
//! repeat with the same key and the same request gets that answer again (marked
//! `Idempotent-Replayed: true`); the same key with another request is 422
//! `idempotency_key_reused`; a repeat while the first is still running is 409. A request
//! whose work fails releases its key, so it can be retried. Keys are scoped to the API key
//! that sent them and kept for a day.

use std::future::Future;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Authorized;
use crate::problem::ApiError;

const BUCKET: &str = "arca-idempotency";
const KEPT: Duration = Duration::from_secs(24 * 3600);
const HEADER: &str = "Idempotency-Key";

/// The answers of requests sent with an `Idempotency-Key`.
#[derive(Clone)]
pub struct Idempotency {
    kv: kv::Store,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    /// What the request was: method, path, query and body.
    fingerprint: String,
    /// The answer; `None` while the first request is still at work.
    answer: Option<(u16, Value)>,
}

impl Idempotency {
    pub async fn open(bus: &arca_bus::Bus) -> Result<Self, arca_bus::BusError> {
        Ok(Self { kv: bus.expiring_key_value(BUCKET, KEPT).await? })
    }

    /// Answers `req` with `work`'s result, or with the stored answer of an earlier request
    /// that sent the same `Idempotency-Key` (see the module docs). `body` is the request's
    /// parsed body (or `()`): part of what makes two requests the same.
    pub async fn answer<B, W>(
        &self,
        req: &HttpRequest,
        auth: &Authorized,
        body: &B,
        work: W,
    ) -> Result<HttpResponse, ApiError>
    where
        B: Serialize,
        W: Future<Output = Result<(StatusCode, Value), ApiError>>,
    {
        let Some(key) = req.headers().get(HEADER) else {
            let (status, answer) = work.await?;
            return Ok(HttpResponse::build(status).json(answer));
        };
        let key = key.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
            ApiError::bad_request("invalid_idempotency_key", "`Idempotency-Key` is 1 to 255 visible ASCII characters")
                .with_field(HEADER)
        })?;
        let mut hasher = Sha256::new();
        for part in [req.method().as_str(), req.path(), req.query_string()] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hasher.update(serde_json::to_vec(body).expect("request bodies serialise"));
        let fingerprint = hex::encode(hasher.finalize());
        let slot = hex::encode(Sha256::digest(format!("{}:{key}", auth.key).as_bytes()));
        let claim = Entry { fingerprint: fingerprint.clone(), answer: None };
        match self.kv.create(&slot, serde_json::to_vec(&claim).expect("entries serialise").into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return self.replay(&slot, &fingerprint).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim an idempotency key");
                return Err(ApiError::unavailable("the platform is not reachable; try again"));
            }
        }
        match work.await {
            Ok((status, answer)) => {
                let done = Entry { fingerprint, answer: Some((status.as_u16(), answer.clone())) };
                if let Err(e) = self.kv.put(&slot, serde_json::to_vec(&done).expect("entries serialise").into()).await {
                    // The work is done; only a repeat of this request will not find its answer.
                    tracing::warn!(error = %e, "cannot store the answer of an idempotent request");
                }
                Ok(HttpResponse::build(status).json(answer))
            }
            Err(error) => {
                if let Err(e) = self.kv.delete(&slot).await {
                    tracing::warn!(error = %e, "cannot release an idempotency key after a failed request");
                }
                Err(error)
            }
        }
    }

    async fn replay(&self, slot: &str, fingerprint: &str) -> Result<HttpResponse, ApiError> {
        let stored = self.kv.get(slot).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read an idempotency key");
            ApiError::unavailable("the platform is not reachable; try again")
        })?;
        let entry: Entry = match stored.map(|bytes| serde_json::from_slice(&bytes)) {
            Some(Ok(entry)) => entry,
            // Released (or expired) between our create and this read: the caller may retry.
            _ => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this `Idempotency-Key` is being answered; try again",
                ));
            }
        };
        if entry.fingerprint != fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this `Idempotency-Key` was sent with another request; use a new key for a new request",
            )
            .with_field(HEADER));
        }
        match entry.answer {
            Some((status, answer)) => Ok(HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                .insert_header(("Idempotent-Replayed", "true"))
                .json(answer)),
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this `Idempotency-Key` is being answered; try again",
            )),
        }
    }
}
