//! `indexed_snapshots`: the snapshots whose files are in `snapshot_files`, each with its
//! ordinal, its position in its series (1, 2, …, in snapshot time order). A snapshot in which
//! nothing changed adds only its row here.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "indexed_snapshots")]
pub struct Model {
    /// The catalog's snapshot id (`snapshots.id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub snapshot_id: Uuid,
    pub tenant_id: Uuid,
    pub series_id: Uuid,
    /// What the series is, readable: `source:<id>` or `host:<host>:<paths as JSON>`.
    #[sea_orm(column_type = "Text")]
    pub series: String,
    pub ordinal: i64,
    /// When the snapshot was taken.
    pub time: DateTimeUtc,
    /// Files, folders and symlinks in the snapshot.
    pub entries: i64,
    /// `snapshot_files` rows this snapshot opened.
    pub rows_added: i64,
    /// `snapshot_files` rows this snapshot closed (changed or removed since the previous one).
    pub rows_closed: i64,
    /// The snapshot was forgotten: searches and browsing leave it out. The row stays so that
    /// ordinals are never reused.
    pub forgotten: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
