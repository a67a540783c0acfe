//! `snapshot_files`: the file index for search and browse. A file version is stored once, as the
//! range of consecutive snapshots of its source (`first_snapshot_id..=last_snapshot_id`) in
//! which it did not change. Filled from snapshot contents (not from events).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "snapshot_files")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: Uuid,
    pub source_id: Option<Uuid>,
    #[sea_orm(column_type = "Text")]
    pub path: String,
    pub size: i64,
    pub mtime: DateTimeUtc,
    pub first_snapshot_id: Uuid,
    pub last_snapshot_id: Uuid,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
