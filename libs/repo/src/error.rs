//! Typed errors for the engine: each says what failed, on what, and whether a retry may help.

use std::path::PathBuf;

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository URL or target settings are not usable.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// There is no repository at the target.
    #[error("no repository at `{0}` (run `arca repo init` first)")]
    NotARepository(String),
    /// `init` found a repository already.
    #[error("a repository already exists at `{0}`")]
    AlreadyInitialized(String),
    /// No key of the repository opens with the passphrase.
    #[error("wrong passphrase: no key of this repository opens with it")]
    WrongPassphrase,
    /// Stored data failed authentication or does not parse.
    #[error("corrupt data in `{object}`: {reason}")]
    Corrupt { object: String, reason: String },
    /// A snapshot, key or path does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot id prefix `{0}` is ambiguous")]
    Ambiguous(String),
    /// The repository is held by another operation.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// Two repositories cannot exchange blobs: their blob ids are keyed differently or
    /// their chunkers differ (see [`crate::copy`]).
    #[error("repositories are not copy-compatible: {0}")]
    Incompatible(String),
    /// The caller asked for something the rules forbid.
    #[error("{0}")]
    Refused(String),
    /// Local file-system trouble, with the path.
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The storage backend failed (OpenDAL); `temporary` tells whether a retry may help.
    #[error("storage {op} `{object}`: {source}")]
    Storage {
        op: &'static str,
        object: String,
        #[source]
        source: Box<opendal::Error>,
    },
    /// A source command (`--command`) or hook failed.
    #[error("command `{command}` failed: {reason}")]
    Command { command: String, reason: String },
    /// A prune removed data this write relied on while it ran; nothing was recorded, and
    /// running it again stores the data anew (see [`crate::gc`]).
    #[error(
        "a prune removed {blobs} blob(s) this {operation} relied on while it ran; nothing was recorded — run it again"
    )]
    DataRemoved { operation: &'static str, blobs: usize },
    /// The threads that pack and upload stopped; [`crate::pipeline::Pipeline::finish`] says why.
    #[error("the write pipeline stopped after an earlier error")]
    PipelineStopped,
    /// The target has no room for what must be written.
    #[error("no space left on {target}: {detail}")]
    NoSpace { target: String, detail: String },
    /// The caller asked the operation to stop ([`crate::backup::Progress::cancel`]).
    #[error("cancelled")]
    Cancelled,
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { op: "read", path: PathBuf::new(), source }
    }
}

impl Error {
    /// Whether retrying the same operation later may succeed. A store that could not be
    /// reached (or throttled) stays a reason to try again later even after the backend's own
    /// retries gave up on it: the outage may end.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Storage { source, .. } => {
                source.is_temporary()
                    || matches!(source.kind(), opendal::ErrorKind::Unexpected | opendal::ErrorKind::RateLimited)
            }
            Error::Locked(_) | Error::DataRemoved { .. } => true,
            _ => false,
        }
    }

    /// `self`, unless it only says the pipeline stopped and `cause` says why.
    pub(crate) fn or_cause(self, cause: Result<impl Sized>) -> Error {
        match (self, cause) {
            (Error::PipelineStopped, Err(cause)) => cause,
            (own, _) => own,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt { object: object.into(), reason: reason.into() }
    }
}
