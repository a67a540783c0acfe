//! `audit_events`: every event the catalog applied, one row each, keyed by stream sequence.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// The event's position in the JetStream stream.
    #[sea_orm(primary_key, auto_increment = false)]
    pub stream_sequence: i64,
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    /// `tenant`, `api_key`, `target`, …
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// The event's position in its aggregate's history.
    pub sequence: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub time: DateTimeUtc,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// The payload as stored on the stream (in its stored schema version).
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub payload: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
