//! `snapshot_files`: the file index for search and browse (see [`crate::files`]).
//!
//! A row is one version of one path (kind, size and mtime) in one series of snapshots, kept as
//! the range of the series' ordinals in which it did not change: `first_ordinal..=last_ordinal`,
//! where `last_ordinal` is NULL while the version is still present in the newest indexed
//! snapshot (an open range). Indexing a snapshot in which a file did not change writes nothing
//! for it. Folders are rows too (kind `dir`), so a snapshot's tree can be browsed.
//!
//! `parent` is the folder's path (`""` for the top level, `/home` for `/home/ann`) and `name`
//! the last component: the full path is `parent + "/" + name`. Both are compared byte by byte
//! (PostgreSQL columns use the `C` collation) so that prefix ranges work.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "snapshot_files")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: Uuid,
    /// The series (see [`crate::files::Series::id`]).
    pub series_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub parent: String,
    #[sea_orm(column_type = "Text")]
    pub name: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: i64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The ordinal of the first snapshot of the series that holds this version.
    pub first_ordinal: i64,
    /// The ordinal of the last one, or NULL while the newest indexed snapshot still holds it.
    pub last_ordinal: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
