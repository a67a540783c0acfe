//! `targets`: where repositories live. **No secret columns**: whether credentials are sealed in
//! the secret store is all the catalog knows.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "targets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `fs`, `s3` or `azblob`.
    pub kind: String,
    /// `s3://bucket/prefix`, …; never with credentials.
    pub location: String,
    /// Non-secret settings (endpoint, region, …) as a JSON object.
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub settings: String,
    pub has_credentials: bool,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
