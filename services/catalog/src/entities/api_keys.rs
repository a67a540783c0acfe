//! `api_keys`: API keys by tenant. Only the key's hash is stored, never the key.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// `msp_admin`, `tenant_admin`, `operator` or `viewer`.
    pub role: String,
    /// The first characters of the key, to recognise it in lists.
    pub prefix: String,
    /// Hex SHA-256 of the whole key: what authentication looks keys up by. Not serialised, so
    /// it never leaves the catalog in a listing.
    #[serde(skip_serializing)]
    pub hash: String,
    pub expires_at: Option<DateTimeUtc>,
    /// `active` or `revoked`.
    pub status: String,
    pub revoked_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
