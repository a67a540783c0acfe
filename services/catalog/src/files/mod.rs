//! The file index: which paths each snapshot holds, for search across snapshots and for
//! browsing one snapshot's tree. Filled from snapshot contents (the repository), not from events.
//!
//! Snapshots come in **series**: the snapshots of one source, or, for snapshots without a
//! source, of one host and set of paths ([`Series`]). Each indexed snapshot gets the next
//! **ordinal** of its series (`indexed_snapshots`). A file version (path, kind, size, mtime) is
//! one `snapshot_files` row holding the range of ordinals in which it did not change; the range
//! of a version still present in the newest indexed snapshot is open (`last_ordinal` NULL).
//! Indexing a snapshot therefore writes only what changed since the previous one of its series:
//! a new row per new or changed path, a closed range per changed or removed path, and one
//! `indexed_snapshots` row. An unchanged snapshot of a million files costs one row.
//!
//! [`index_snapshot`] takes plain [`FileEntry`] values, so it needs no repository;
//! [`entries_from_repository`] reads them from a snapshot's trees.
//!
//! Rules:
//! - **Idempotent**: indexing a snapshot that is already indexed changes nothing and answers
//!   [`IndexOutcome::already_indexed`].
//! - **In time order per series**: a snapshot older than the newest indexed one of its series is
//!   refused with [`CatalogError::SnapshotOutOfOrder`] (the ranges could not hold it without
//!   rewriting every later row). To take it in, [`delete_series`] and index the series' snapshots
//!   again, oldest first. Snapshots of other series are independent.
//! - **Forgotten snapshots** never appear in answers: [`search`] and [`list_folder`] only show
//!   snapshots that the catalog's `snapshots` table holds as `committed` and that
//!   [`forget_snapshot`] has not marked. [`forget_snapshot`] also deletes the closed rows that no
//!   remaining snapshot holds, so the index shrinks as snapshots are forgotten.
//! - One indexer per series at a time: two concurrent indexings of one series would take the same
//!   ordinal, and the second fails on the unique `(series_id, ordinal)` index and changes nothing.

mod indexer;
mod repository;
mod search;
mod sql;

use arca_events::{SourceId, TenantId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use indexer::{IndexOutcome, delete_series, forget_snapshot, index_snapshot};
pub use repository::entries_from_repository;
pub use search::{FolderEntry, ListRequest, SearchRequest, SnapshotRef, VersionHit, list_folder, search};

/// One path of a snapshot, as the index stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The path from the snapshot's root, components joined by `/`, starting with `/`
    /// (`/home/ann/report.pdf`). Names that are not UTF-8 are indexed lossily.
    pub path: String,
    pub kind: FileKind,
    /// Bytes (0 for folders).
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

impl FileKind {
    /// The text stored in `snapshot_files.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "file" => Some(FileKind::File),
            "dir" => Some(FileKind::Dir),
            "symlink" => Some(FileKind::Symlink),
            _ => None,
        }
    }
}

/// The snapshots whose ranges a file version may span: consecutive backups of the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Series {
    /// Every snapshot of a source.
    Source(SourceId),
    /// Snapshots without a source: those of one host with the same backed-up paths.
    Host { host: String, paths: Vec<String> },
}

impl Series {
    /// The series of a catalog snapshot row: its source, or its host and paths.
    pub fn of_snapshot(row: &crate::entities::snapshots::Model) -> Series {
        match row.source_id {
            Some(source) => Series::Source(source.into()),
            None => Series::Host {
                host: row.host.clone(),
                paths: serde_json::from_str(&row.paths).unwrap_or_else(|_| vec![row.paths.clone()]),
            },
        }
    }

    /// The series' id: the source's id, or a UUIDv8 derived from the tenant, host and paths
    /// (sorted, so their order does not matter).
    pub fn id(&self, tenant: TenantId) -> Uuid {
        match self {
            Series::Source(source) => source.as_uuid(),
            Series::Host { host, paths } => {
                let mut paths = paths.clone();
                paths.sort();
                let mut hasher = blake3::Hasher::new_derive_key("arca-catalog file index series v1");
                hasher.update(tenant.as_uuid().as_bytes());
                hasher.update(&serde_json::to_vec(&(host, paths)).expect("strings serialise"));
                let digest = hasher.finalize();
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&digest.as_bytes()[..16]);
                uuid::Builder::from_custom_bytes(bytes).into_uuid()
            }
        }
    }

    /// What the series is, for `indexed_snapshots.series`.
    pub fn describe(&self) -> String {
        match self {
            Series::Source(source) => format!("source:{source}"),
            Series::Host { host, paths } => {
                format!("host:{host}:{}", serde_json::to_string(paths).expect("strings serialise"))
            }
        }
    }
}

/// `(parent, name)` of a normalised path: `/home/ann` → `("/home", "ann")`, `/home` → `("", "home")`.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => ("", path),
    }
}

/// A path as the index keeps it: a leading `/`, no trailing `/` (the root itself is `""`).
pub(crate) fn normalise_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_parent_and_name() {
        assert_eq!(split_path("/home/ann/report.pdf"), ("/home/ann", "report.pdf"));
        assert_eq!(split_path("/home"), ("", "home"));
        assert_eq!(normalise_path("home/ann/"), "/home/ann");
        assert_eq!(normalise_path("/"), "");
    }

    #[test]
    fn host_series_ids_depend_on_tenant_host_and_the_set_of_paths() {
        let tenant = TenantId::new();
        let a = Series::Host { host: "web-1".into(), paths: vec!["/etc".into(), "/home".into()] };
        let b = Series::Host { host: "web-1".into(), paths: vec!["/home".into(), "/etc".into()] };
        let c = Series::Host { host: "web-2".into(), paths: vec!["/etc".into(), "/home".into()] };
        assert_eq!(a.id(tenant), b.id(tenant));
        assert_ne!(a.id(tenant), c.id(tenant));
        assert_ne!(a.id(tenant), a.id(TenantId::new()));
    }
}
