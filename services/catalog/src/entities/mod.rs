//! The read model's tables, one sea-orm entity each.
//!
//! Conventions every table follows:
//! - ids are UUIDs (UUIDv7 for aggregates, so they sort by creation); tenant-owned tables carry
//!   `tenant_id` and are indexed on `(tenant_id, id)` for cursor pagination;
//! - aggregate tables have `version` (the aggregate's event sequence, for ETags) and
//!   `created_at`/`updated_at` taken from the events' `time`, never from the clock, so a rebuild
//!   from the log produces identical rows;
//! - enums are snake_case strings (`succeeded`, `tenant_admin`) and structured values (paths,
//!   settings, schedules, retention) are JSON text; the models serialise that text as JSON;
//! - **no secret is stored**: targets have `has_credentials` only, API keys their hash only.

pub mod api_keys;
pub mod audit_events;
pub mod indexed_snapshots;
pub mod jobs;
pub mod policies;
pub mod projection_errors;
pub mod projection_state;
pub mod replicas;
pub mod restores;
pub mod snapshot_files;
pub mod snapshots;
pub mod sources;
pub mod targets;
pub mod tenants;

use chrono::{DateTime, Utc};
use serde::Serializer;
use uuid::Uuid;

/// A row of an aggregate table: known by its id, stamped by each event applied to it.
pub trait AggregateRow {
    fn row_id(&self) -> Uuid;

    /// Records that the event with aggregate `sequence`, decided at `time`, was applied.
    fn stamp(&mut self, sequence: i64, time: DateTime<Utc>);

    /// The aggregate sequence of the last event applied.
    fn version(&self) -> i64;

    /// The tenant the row belongs to.
    fn owner(&self) -> Uuid;
}

macro_rules! aggregate_row {
    ($owner:ident: $($table:ident),*) => {
        $(
            impl AggregateRow for $table::Model {
                fn row_id(&self) -> Uuid {
                    self.id
                }

                fn stamp(&mut self, sequence: i64, time: DateTime<Utc>) {
                    self.version = sequence;
                    self.updated_at = time;
                }

                fn version(&self) -> i64 {
                    self.version
                }

                fn owner(&self) -> Uuid {
                    self.$owner
                }
            }
        )*
    };
}

aggregate_row!(id: tenants);
aggregate_row!(tenant_id: api_keys, targets, sources, policies, jobs, snapshots, replicas, restores);

/// Serialises a JSON text column as the JSON it holds (text that is not JSON stays a string).
pub(crate) fn json_text<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => serializer.serialize_some(&value),
        Err(_) => serializer.serialize_str(text),
    }
}

/// [`json_text`] for a nullable column.
pub(crate) fn json_text_opt<S: Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => json_text(text, serializer),
        None => serializer.serialize_none(),
    }
}
