//! `tenants`: one row per tenant (the MSP's customers).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    /// `active`, `suspended` or `deleted` (a deleted tenant keeps its row).
    pub status: String,
    pub suspended_reason: Option<String>,
    /// `None`: no quota.
    pub quota_bytes: Option<i64>,
    /// The last usage the storage service reported.
    pub used_bytes: i64,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
