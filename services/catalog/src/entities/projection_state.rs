//! `projection_state`: how far each projection has read the stream.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "projection_state")]
pub struct Model {
    /// The projection: `catalog`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The last stream sequence applied or skipped; everything up to it is done.
    pub last_sequence: i64,
    pub events_applied: i64,
    /// Events that could not be decoded (see `projection_errors`).
    pub events_skipped: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
