//! `snapshots`: committed snapshots, their locks, and the forgotten ones (kept, marked).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "snapshots")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub target_id: Uuid,
    /// The snapshot's id inside the repository (hex).
    pub repo_snapshot: String,
    /// When the snapshot was taken.
    pub time: DateTimeUtc,
    pub host: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub paths: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub tags: String,
    pub source_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub files: i64,
    pub size_bytes: i64,
    pub added_bytes: i64,
    /// Some files could not be read.
    pub partial: bool,
    /// `committed` or `forgotten`.
    pub status: String,
    pub locked_until: Option<DateTimeUtc>,
    /// The forget job that removed it.
    pub forgotten_by_job_id: Option<Uuid>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
