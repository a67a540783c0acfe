//! The catalog's one error type.

use sea_orm::DbErr;

/// What went wrong in the catalog, and whether trying again can help ([`CatalogError::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database could not be reached or opened.
    #[error("catalog database `{url}`: cannot connect: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        #[source]
        source: DbErr,
    },
    /// The URL names no database the catalog supports.
    #[error("catalog database `{url}`: unsupported URL (expected `sqlite:` or `postgres://`)")]
    UnsupportedUrl { url: String },
    /// The schema could not be brought up to date.
    #[error("catalog database: migration failed: {0}")]
    Migrate(#[source] DbErr),
    /// A statement failed; `operation` names what the catalog was doing.
    #[error("catalog database: {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: DbErr,
    },
    /// A pagination cursor that this catalog did not hand out.
    #[error("invalid cursor `{0}`")]
    InvalidCursor(String),
    /// A file search pattern that is not a path, a folder or a valid glob.
    #[error("invalid search pattern: {0}")]
    InvalidPattern(String),
    /// A snapshot older than the newest indexed snapshot of its series: the file index takes a
    /// series' snapshots oldest first (see [`crate::files`]).
    #[error(
        "snapshot {snapshot} is older than snapshot {newest}, already in the file index of its series: \
         delete the series' index and index its snapshots again, oldest first"
    )]
    SnapshotOutOfOrder { snapshot: uuid::Uuid, newest: uuid::Uuid },
    /// A snapshot or series the file index already holds for another tenant or series.
    #[error("file index: {0}")]
    IndexConflict(String),
    /// A stream sequence beyond what the SQL columns (signed 64-bit) hold.
    #[error("stream sequence {0} is out of range")]
    SequenceOutOfRange(u64),
    /// A rebuild was asked of a database that already holds a projection.
    #[error("catalog database is not empty: a rebuild needs a fresh database")]
    NotEmpty,
    /// Talking to NATS failed.
    #[error(transparent)]
    Bus(#[from] arca_bus::BusError),
    /// A bug or a crashed task.
    #[error("catalog: internal error: {0}")]
    Internal(String),
}

impl CatalogError {
    /// True when the same call may succeed later (the database was unreachable or busy); false
    /// when the input or the schema is wrong and retrying will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::Connect { .. } => true,
            CatalogError::Database { source, .. } | CatalogError::Migrate(source) => {
                matches!(source, DbErr::Conn(_) | DbErr::ConnectionAcquire(_))
            }
            CatalogError::Bus(e) => e.is_retryable(),
            CatalogError::UnsupportedUrl { .. }
            | CatalogError::InvalidCursor(_)
            | CatalogError::InvalidPattern(_)
            | CatalogError::SnapshotOutOfOrder { .. }
            | CatalogError::IndexConflict(_)
            | CatalogError::SequenceOutOfRange(_)
            | CatalogError::NotEmpty
            | CatalogError::Internal(_) => false,
        }
    }
}

/// Adds the operation to a database error: `.map_err(db_err("load projection state"))`.
pub(crate) fn db_err(operation: &'static str) -> impl FnOnce(DbErr) -> CatalogError {
    move |source| CatalogError::Database { operation, source }
}
