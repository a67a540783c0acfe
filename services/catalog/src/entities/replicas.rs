//! `replicas`: continuously refreshed copies of a source, with their recovery points.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "replicas")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub source_id: Uuid,
    /// `{"type": "directory", "path": …}` or `{"type": "target", "target": …}`.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub destination: String,
    pub rpo_seconds: i64,
    pub keep_points: i64,
    /// `active` or `failed_over`.
    pub status: String,
    pub last_point: Option<String>,
    pub last_point_at: Option<DateTimeUtc>,
    pub lag_ms: Option<i64>,
    /// When lag last exceeded the RPO; cleared by the next recovery point.
    pub lag_exceeded_at: Option<DateTimeUtc>,
    pub points_recorded: i64,
    /// The point failed over to, while failed over.
    pub failed_over_point: Option<String>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
