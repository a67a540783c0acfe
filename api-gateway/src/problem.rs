//! Every error the API returns: an RFC 9457 `application/problem+json` document with a stable
//! machine `code` (the domain's [`DomainError::code`] for refused commands).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use arca_bus::{BusError, ExecuteError};
use arca_domain::DomainError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank`: the `code` says what happened.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Stable machine code: part of the API, never renamed.
    pub code: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error a handler returns; rendered as a [`Problem`].
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
    pub field: Option<String>,
    /// Seconds to wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { status, code: code.into(), detail: detail.into(), field: None, retry_after: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such object")
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").into(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.clone(),
            field: self.field.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.content_type(PROBLEM_JSON);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.body(serde_json::to_string(&self.problem()).expect("problems serialise"))
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let status = match &error {
            DomainError::NotFound { .. } | DomainError::TenantNotFound => StatusCode::NOT_FOUND,
            DomainError::AlreadyExists { .. }
            | DomainError::IllegalTransition { .. }
            | DomainError::SnapshotLocked { .. } => StatusCode::CONFLICT,
            DomainError::Removed { .. } | DomainError::TenantDeleted => StatusCode::GONE,
            DomainError::TenantSuspended | DomainError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            DomainError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let field = match &error {
            DomainError::Invalid { field, .. } => Some((*field).to_owned()),
            _ => None,
        };
        ApiError { status, code: error.code().into(), detail: error.to_string(), field, retry_after: None }
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Remote { code, message } => match code.as_str() {
                "not_found" => ApiError::not_found(),
                "bad_request" => ApiError::bad_request("bad_request", message),
                _ => ApiError::unavailable(format!("the catalog could not answer: {message}")),
            },
            BusError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "another writer changed the object first; try again")
            }
            BusError::Timeout { .. } | BusError::Unavailable { .. } => {
                tracing::warn!(error = %error, "the platform did not answer");
                ApiError::unavailable("the platform is not reachable; try again")
            }
            BusError::Malformed { .. } => {
                tracing::error!(error = %error, "a malformed reply");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the platform gave an unreadable answer")
            }
        }
    }
}

impl From<ExecuteError> for ApiError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Domain(e) => e.into(),
            ExecuteError::Bus(e) => e.into(),
            ExecuteError::Stale { expected, current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "stale_version",
                format!(
                    "the object changed: it is at version {current}, the request expected {expected}; read it again"
                ),
            ),
            ExecuteError::Corrupt(reason) => {
                tracing::error!(%reason, "an aggregate's history cannot be read");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the object's history cannot be read")
            }
        }
    }
}
