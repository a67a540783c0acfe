//! `projection_errors`: stream entries the projection could not use, and why.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "projection_errors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub stream_sequence: i64,
    pub subject: String,
    #[sea_orm(column_type = "Text")]
    pub error: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
