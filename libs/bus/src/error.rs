use arca_domain::DomainError;

/// What went wrong talking to NATS. `is_retryable` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Another writer appended to the aggregate first: reload and decide again.
    #[error("conflict on `{subject}`: expected it at stream sequence {expected}, another writer was first")]
    Conflict { subject: String, expected: u64 },
    #[error("{operation}: timed out")]
    Timeout { operation: String },
    #[error("{operation}: {reason}")]
    Unavailable { operation: String, reason: String },
    /// Bytes on the stream or in a reply that are not what they should be.
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    /// The other side of a request answered with an error.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
}

impl BusError {
    pub fn unavailable(operation: impl Into<String>, error: impl std::fmt::Display) -> Self {
        let reason = error.to_string();
        let operation = operation.into();
        if reason.contains("timed out") || reason.contains("timeout") {
            BusError::Timeout { operation }
        } else {
            BusError::Unavailable { operation, reason }
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Conflict { .. } | BusError::Timeout { .. } | BusError::Unavailable { .. })
    }
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command breaks a business rule; nothing was written.
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The aggregate's history on the stream cannot be read.
    #[error("{0}")]
    Corrupt(String),
    /// The caller expected the aggregate at another version (an API client's `If-Match`).
    #[error("the object is at version {current}, not {expected}")]
    Stale { expected: u64, current: u64 },
}
