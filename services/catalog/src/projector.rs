//! The projection: events from the stream into the read model, a batch per transaction.
//!
//! A batch is applied in **one transaction** that also moves `projection_state.last_sequence`,
//! so the read model and the position in the stream never disagree: after a crash the consumer
//! redelivers from the stored position and events at or below it are skipped, never applied
//! twice. Bytes that are not a usable event (not JSON, an unknown type, a malformed payload, a
//! subject that does not match the envelope) are recorded in `projection_errors` and skipped:
//! one bad event never stops the projection.
//!
//! Speed comes from touching each row once per batch: the rows the batch's events refer to are
//! loaded with one query per table, the events are applied in memory in stream order, and the
//! changed rows are written back with one multi-row upsert per table, the audit rows with one
//! multi-row insert (on PostgreSQL split into statements of a few kilobytes, see
//! [`POSTGRES_STATEMENT_BYTES`]). Rows depend only on the events (times come from the
//! envelopes), so projecting the same stream in any batch sizes, or rebuilding it, gives
//! identical tables.

mod apply;

use arca_events::{AggregateRef, AggregateType, Envelope, Event};
use bytes::Bytes;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, Iterable, ModelTrait,
    QuerySelect, TransactionTrait,
};
use serde::Serialize;

use crate::entities::{audit_events, projection_errors, projection_state};
use crate::error::{CatalogError, db_err};

/// The `projection_state` row of this projection.
pub const PROJECTION_NAME: &str = "catalog";

/// One message from the event stream, as the consumer received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The message's sequence in the JetStream stream.
    pub stream_sequence: u64,
    /// The subject it was published on: `arca.evt.<tenant>.<aggregate>.<id>`.
    pub subject: String,
    /// The [`Envelope`] as JSON.
    pub payload: Bytes,
}

impl RawEvent {
    /// The message that carries `envelope` at `stream_sequence`, on the envelope's own subject.
    pub fn from_envelope(stream_sequence: u64, envelope: &Envelope) -> Self {
        Self { stream_sequence, subject: envelope.aggregate_ref().subject(), payload: envelope.to_json().into() }
    }
}

/// What [`Projector::apply_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchOutcome {
    /// Events decoded and applied (each has an audit row; an event its row has already seen, or
    /// one for a row that does not exist, changes no row and is logged).
    pub applied: u64,
    /// Events at or below the stored position: redeliveries, ignored.
    pub skipped_duplicates: u64,
    /// Events recorded in `projection_errors` and skipped.
    pub malformed: u64,
    /// The stored position after the batch: every stream sequence up to it is done.
    pub last_sequence: u64,
}

/// Applies batches of stream messages to the read model.
///
/// One projector per database: batches must come in stream order, and two projectors writing
/// the same database at once would race for the position (PostgreSQL serialises them with a
/// row lock; SQLite with its write lock and busy timeout).
#[derive(Clone, Debug)]
pub struct Projector {
    db: DatabaseConnection,
}

impl Projector {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The last stream sequence applied (or skipped as malformed); 0 before the first batch.
    pub async fn last_sequence(&self) -> Result<u64, CatalogError> {
        let state = projection_state::Entity::find_by_id(PROJECTION_NAME)
            .one(&self.db)
            .await
            .map_err(db_err("read the projection position"))?;
        Ok(state.map_or(0, |state| sequence_from_db(state.last_sequence)))
    }

    /// Applies `batch` (in stream order) in one transaction; see the module documentation.
    ///
    /// Errors are database errors only (the batch is then not applied at all, and can be
    /// retried); bad events are counted in [`BatchOutcome::malformed`].
    pub async fn apply_batch(&self, batch: &[RawEvent]) -> Result<BatchOutcome, CatalogError> {
        let txn = self.db.begin().await.map_err(db_err("begin the projection transaction"))?;
        let state = locked_state(&txn).await?;

        let mut outcome = BatchOutcome { last_sequence: sequence_from_db(state.last_sequence), ..Default::default() };
        let mut decoded = Vec::with_capacity(batch.len());
        let mut errors = Vec::new();
        for raw in batch {
            if raw.stream_sequence <= outcome.last_sequence {
                outcome.skipped_duplicates += 1;
                continue;
            }
            let stream_sequence = i64::try_from(raw.stream_sequence)
                .map_err(|_| CatalogError::SequenceOutOfRange(raw.stream_sequence))?;
            outcome.last_sequence = raw.stream_sequence;
            match decode(raw) {
                Ok((envelope, event)) => decoded.push((stream_sequence, envelope, event)),
                Err(error) => {
                    tracing::warn!(stream_sequence, subject = %raw.subject, %error, "skipping an event the catalog cannot use");
                    errors.push(projection_errors::Model { stream_sequence, subject: raw.subject.clone(), error });
                }
            }
        }
        if decoded.is_empty() && errors.is_empty() {
            // Nothing new: leave the transaction to roll back.
            return Ok(outcome);
        }
        outcome.applied = decoded.len() as u64;
        outcome.malformed = errors.len() as u64;

        let mut tables = apply::Tables::load(&txn, decoded.iter().map(|(_, envelope, _)| envelope)).await?;
        for (_, envelope, event) in &decoded {
            tables.apply(envelope, event);
        }
        tables.write(&txn).await?;

        let audit: Vec<audit_events::Model> =
            decoded.into_iter().map(|(stream_sequence, envelope, _)| audit_row(stream_sequence, envelope)).collect();
        insert_all::<audit_events::Entity>(&txn, audit, "insert audit events").await?;
        insert_all::<projection_errors::Entity>(&txn, errors, "record projection errors").await?;

        let state = projection_state::Model {
            name: PROJECTION_NAME.to_owned(),
            last_sequence: sequence_to_db(outcome.last_sequence),
            events_applied: state.events_applied + outcome.applied as i64,
            events_skipped: state.events_skipped + outcome.malformed as i64,
        };
        store_state(&txn, state).await?;
        txn.commit().await.map_err(db_err("commit the projection transaction"))?;
        tracing::debug!(?outcome, "projected a batch");
        Ok(outcome)
    }
}

impl Projector {
    /// Records `raw` as unusable (with `error`) and moves the position past it, without
    /// applying it: for an event the database refuses however often it is tried.
    pub async fn skip_unusable(&self, raw: &RawEvent, error: &str) -> Result<(), CatalogError> {
        let txn = self.db.begin().await.map_err(db_err("begin the projection transaction"))?;
        let state = locked_state(&txn).await?;
        if raw.stream_sequence <= sequence_from_db(state.last_sequence) {
            return Ok(());
        }
        let stream_sequence =
            i64::try_from(raw.stream_sequence).map_err(|_| CatalogError::SequenceOutOfRange(raw.stream_sequence))?;
        tracing::error!(stream_sequence, subject = %raw.subject, error, "skipping an event the database refuses");
        // The database refused this event's text once; keep the record plain.
        let error: String = error.chars().filter(|c| *c != '\0').take(2000).collect();
        let row = projection_errors::Model { stream_sequence, subject: raw.subject.replace('\0', ""), error };
        insert_all::<projection_errors::Entity>(&txn, vec![row], "record a projection error").await?;
        let state = projection_state::Model {
            last_sequence: stream_sequence,
            events_skipped: state.events_skipped + 1,
            ..state
        };
        store_state(&txn, state).await?;
        txn.commit().await.map_err(db_err("commit the projection transaction"))
    }
}

/// The projection's position, locked for this transaction (on PostgreSQL).
async fn locked_state(txn: &DatabaseTransaction) -> Result<projection_state::Model, CatalogError> {
    let state = projection_state::Entity::find_by_id(PROJECTION_NAME)
        .lock_exclusive()
        .one(txn)
        .await
        .map_err(db_err("read the projection position"))?;
    Ok(state.unwrap_or(projection_state::Model {
        name: PROJECTION_NAME.to_owned(),
        last_sequence: 0,
        events_applied: 0,
        events_skipped: 0,
    }))
}

async fn store_state(txn: &DatabaseTransaction, state: projection_state::Model) -> Result<(), CatalogError> {
    projection_state::Entity::insert(projection_state::ActiveModel::from(state))
        .on_conflict(
            OnConflict::column(projection_state::Column::Name)
                .update_columns([
                    projection_state::Column::LastSequence,
                    projection_state::Column::EventsApplied,
                    projection_state::Column::EventsSkipped,
                ])
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await
        .map_err(db_err("store the projection position"))?;
    Ok(())
}

/// The envelope and its event, or why the message is unusable.
fn decode(raw: &RawEvent) -> Result<(Envelope, Event), String> {
    let envelope = Envelope::from_json(&raw.payload).map_err(|e| e.to_string())?;
    let aggregate = envelope.aggregate_ref();
    if AggregateRef::from_subject(&raw.subject) != Some(aggregate) {
        return Err(format!(
            "subject `{}` does not match the envelope's aggregate `{}`",
            raw.subject,
            aggregate.subject()
        ));
    }
    if envelope.aggregate == AggregateType::Tenant && envelope.aggregate_id != envelope.tenant.as_uuid() {
        return Err(format!("tenant event for `{}` on tenant `{}`'s subject", envelope.aggregate_id, envelope.tenant));
    }
    let event = envelope.event().map_err(|e| e.to_string())?;
    Ok((envelope, event))
}

fn audit_row(stream_sequence: i64, envelope: Envelope) -> audit_events::Model {
    let payload = audit_payload(&envelope.event_type, envelope.payload).to_string();
    audit_events::Model {
        stream_sequence,
        event_id: envelope.id,
        tenant_id: envelope.tenant.as_uuid(),
        aggregate_type: envelope.aggregate.as_str().to_owned(),
        aggregate_id: envelope.aggregate_id,
        sequence: sequence_to_db(envelope.sequence),
        event_type: envelope.event_type,
        schema_version: i32::try_from(envelope.schema_version).unwrap_or(i32::MAX),
        time: envelope.time,
        correlation_id: envelope.correlation_id,
        causation_id: envelope.causation_id,
        payload,
    }
}

/// The payload as the audit log shows it: an API key's hash stays in the `api_keys` table,
/// which never lists it.
fn audit_payload(event_type: &str, mut payload: serde_json::Value) -> serde_json::Value {
    if event_type == "ApiKeyCreated"
        && let Some(fields) = payload.as_object_mut()
    {
        fields.remove("hash");
    }
    payload
}

/// Inserts `rows` with as few statements as [`statement_chunks`] allows.
async fn insert_all<E>(
    txn: &DatabaseTransaction,
    rows: Vec<E::Model>,
    operation: &'static str,
) -> Result<(), CatalogError>
where
    E: EntityTrait,
    E::Model: sea_orm::IntoActiveModel<E::ActiveModel>,
{
    for chunk in statement_chunks::<E>(&rows, txn.get_database_backend()) {
        E::insert_many(chunk.iter().cloned().map(sea_orm::IntoActiveModel::into_active_model))
            .exec_without_returning(txn)
            .await
            .map_err(db_err(operation))?;
    }
    Ok(())
}

/// The most a multi-row statement to PostgreSQL should carry, estimated.
///
/// sqlx 0.9.0 does not set `TCP_NODELAY` on its sockets (sqlx issue #4335, fixed after 0.9.0):
/// a message bigger than the kernel takes in one write (the send buffer starts at 16 KiB on
/// Linux) has its tail wait for PostgreSQL's delayed ACK, 40 ms per statement even on
/// loopback. Measured: batches of 500 events ran at ~1,700 events/s with 8,000-parameter
/// statements and ~10,000/s with statements under this size. The extra round trips cost little.
pub const POSTGRES_STATEMENT_BYTES: usize = 10 * 1024;

/// Bind parameters per PostgreSQL statement, whatever their size (the limit is 65,535).
pub const POSTGRES_MAX_PARAMETERS: usize = 1_000;

/// Bind parameters per SQLite statement (the limit is 32,766). SQLite has no socket, so big
/// statements are simply faster.
pub const SQLITE_MAX_PARAMETERS: usize = 8_000;

/// Per bind parameter: its length prefix and its `$n, ` in the SQL text.
const PARAMETER_OVERHEAD_BYTES: usize = 12;

/// Splits `rows` into runs that each make one multi-row statement: on PostgreSQL at most
/// [`POSTGRES_STATEMENT_BYTES`] (estimated from the values) and [`POSTGRES_MAX_PARAMETERS`], on
/// SQLite at most [`SQLITE_MAX_PARAMETERS`]. A single bigger row makes a statement of its own.
pub(crate) fn statement_chunks<E: EntityTrait>(rows: &[E::Model], backend: DbBackend) -> Vec<&[E::Model]> {
    let columns: Vec<E::Column> = E::Column::iter().collect();
    if backend != DbBackend::Postgres {
        return rows.chunks((SQLITE_MAX_PARAMETERS / columns.len()).max(1)).collect();
    }
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size: usize = columns.iter().map(|column| value_size(&row.get(*column)) + PARAMETER_OVERHEAD_BYTES).sum();
        let in_chunk = i - start;
        if in_chunk > 0
            && (bytes + size > POSTGRES_STATEMENT_BYTES || (in_chunk + 1) * columns.len() > POSTGRES_MAX_PARAMETERS)
        {
            chunks.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

/// Bytes a value takes on the wire, roughly: text as long as it is, anything else at most 16.
fn value_size(value: &sea_orm::Value) -> usize {
    match value {
        sea_orm::Value::String(Some(text)) => text.len(),
        _ => 16,
    }
}

/// Aggregate and stream sequences are u64 in events and i64 in SQL; neither gets near 2^63.
pub(crate) fn sequence_to_db(sequence: u64) -> i64 {
    i64::try_from(sequence).unwrap_or(i64::MAX)
}

fn sequence_from_db(sequence: i64) -> u64 {
    u64::try_from(sequence).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(n: usize, error_len: usize) -> Vec<projection_errors::Model> {
        (0..n)
            .map(|i| projection_errors::Model {
                stream_sequence: i as i64,
                subject: "arca.evt.x".into(),
                error: "e".repeat(error_len),
            })
            .collect()
    }

    #[test]
    fn postgres_statements_stay_small_and_keep_every_row_in_order() {
        let rows = errors(1000, 100);
        let chunks = statement_chunks::<projection_errors::Entity>(&rows, DbBackend::Postgres);
        assert!(chunks.len() > 1);
        let row_bytes = 16 + 10 + 100 + 3 * PARAMETER_OVERHEAD_BYTES;
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() * row_bytes <= POSTGRES_STATEMENT_BYTES));
        assert_eq!(chunks.concat(), rows);

        let huge = errors(2, POSTGRES_STATEMENT_BYTES * 2);
        let sizes: Vec<usize> =
            statement_chunks::<projection_errors::Entity>(&huge, DbBackend::Postgres).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [1, 1]);
        let narrow = errors(2500, 0);
        let chunks = statement_chunks::<projection_errors::Entity>(&narrow, DbBackend::Postgres);
        assert!(chunks.iter().all(|c| c.len() * 3 <= POSTGRES_MAX_PARAMETERS));
        assert!(statement_chunks::<projection_errors::Entity>(&[], DbBackend::Postgres).is_empty());
    }

    #[test]
    fn sqlite_statements_are_bounded_by_parameters_only() {
        let rows = errors(5000, 100);
        let chunks = statement_chunks::<projection_errors::Entity>(&rows, DbBackend::Sqlite);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [2666, 2334]);
    }
}
