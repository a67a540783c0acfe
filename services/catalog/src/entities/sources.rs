//! `sources`: what is backed up (folders on a host, an image, a database).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "sources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `files`, `image` or `postgres`.
    pub kind: String,
    pub host: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub paths: String,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub excludes: String,
    pub site: Option<String>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    /// JSON object: the running qemu that has an image source open (`monitor`, `node`, `nbd`).
    #[sea_orm(column_type = "Text", nullable)]
    #[serde(serialize_with = "crate::entities::json_text_opt")]
    pub qemu: Option<String>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
