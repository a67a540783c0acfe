//! `restores`: requested restores and how they ended.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "restores")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub snapshot_id: Uuid,
    /// JSON array of globs; empty means everything.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub paths: String,
    /// `{"type": "directory", "path": …}` or `{"type": "target", "target": …}`.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub destination: String,
    pub job_id: Uuid,
    /// `requested`, `succeeded` or `failed`.
    pub status: String,
    pub files: i64,
    pub bytes: i64,
    /// The restored data was read back and matched the snapshot.
    pub verified: bool,
    pub error: Option<String>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
