//! `policies`: what to back up where, when, and what to keep.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "policies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub source_id: Uuid,
    pub target_id: Uuid,
    /// `{"type": "cron", "expression": …, "timezone": …}` or `{"type": "interval", "seconds": …}`.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub schedule: String,
    /// `skip` or `run_once`.
    pub misfire: String,
    /// `incremental`, `full` or `differential`.
    pub mode: String,
    /// JSON object of `keep_*` rules.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub retention: String,
    /// JSON array of target ids.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub copy_targets: String,
    #[sea_orm(column_type = "Text", nullable)]
    #[serde(serialize_with = "crate::entities::json_text_opt")]
    pub verify_schedule: Option<String>,
    /// `active` or `paused`.
    pub status: String,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
