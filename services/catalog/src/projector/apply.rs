//! Events into rows: the rows a batch touches, loaded once, changed in memory, written once.

use std::collections::{BTreeMap, BTreeSet};

use arca_events::{AggregateType, Envelope, Event};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, IdenStatic, IntoActiveModel, Iterable,
    PrimaryKeyToColumn, QueryFilter,
};
use serde::Serialize;
use uuid::Uuid;

use crate::entities::*;
use crate::error::{CatalogError, db_err};
use crate::projector::{sequence_to_db, statement_chunks};

/// Ids per `WHERE id IN (…)`: 256 UUIDs keep the statement within
/// [`crate::projector::POSTGRES_STATEMENT_BYTES`].
const IDS_PER_STATEMENT: usize = 256;

/// The rows of every aggregate table that a batch refers to.
pub(crate) struct Tables {
    tenants: Table<tenants::Model>,
    api_keys: Table<api_keys::Model>,
    targets: Table<targets::Model>,
    sources: Table<sources::Model>,
    policies: Table<policies::Model>,
    jobs: Table<jobs::Model>,
    snapshots: Table<snapshots::Model>,
    replicas: Table<replicas::Model>,
    restores: Table<restores::Model>,
}

impl Tables {
    /// Loads the current rows of every aggregate the envelopes belong to (one query per table).
    pub(crate) async fn load<'a>(
        txn: &DatabaseTransaction,
        envelopes: impl Iterator<Item = &'a Envelope>,
    ) -> Result<Tables, CatalogError> {
        let mut ids: BTreeMap<AggregateType, BTreeSet<Uuid>> = BTreeMap::new();
        for envelope in envelopes {
            ids.entry(envelope.aggregate).or_default().insert(envelope.aggregate_id);
        }
        let mut ids_of = |aggregate| ids.remove(&aggregate).unwrap_or_default();
        Ok(Tables {
            tenants: Table::load::<tenants::Entity>(txn, ids_of(AggregateType::Tenant)).await?,
            api_keys: Table::load::<api_keys::Entity>(txn, ids_of(AggregateType::ApiKey)).await?,
            targets: Table::load::<targets::Entity>(txn, ids_of(AggregateType::Target)).await?,
            sources: Table::load::<sources::Entity>(txn, ids_of(AggregateType::Source)).await?,
            policies: Table::load::<policies::Entity>(txn, ids_of(AggregateType::Policy)).await?,
            jobs: Table::load::<jobs::Entity>(txn, ids_of(AggregateType::Job)).await?,
            snapshots: Table::load::<snapshots::Entity>(txn, ids_of(AggregateType::Snapshot)).await?,
            replicas: Table::load::<replicas::Entity>(txn, ids_of(AggregateType::Replica)).await?,
            restores: Table::load::<restores::Entity>(txn, ids_of(AggregateType::Restore)).await?,
        })
    }

    /// Writes every changed row back: one upsert per table (chunked), one delete for removals.
    pub(crate) async fn write(self, txn: &DatabaseTransaction) -> Result<(), CatalogError> {
        self.tenants.write::<tenants::Entity>(txn).await?;
        self.api_keys.write::<api_keys::Entity>(txn).await?;
        self.targets.write::<targets::Entity>(txn).await?;
        self.sources.write::<sources::Entity>(txn).await?;
        self.policies.write::<policies::Entity>(txn).await?;
        self.jobs.write::<jobs::Entity>(txn).await?;
        self.snapshots.write::<snapshots::Entity>(txn).await?;
        self.replicas.write::<replicas::Entity>(txn).await?;
        self.restores.write::<restores::Entity>(txn).await?;
        Ok(())
    }

    /// Applies one event to the rows in memory.
    ///
    /// The match names every event type, so a new one does not compile until it is projected.
    pub(crate) fn apply(&mut self, envelope: &Envelope, event: &Event) {
        let e = envelope;
        let id = e.aggregate_id;
        let tenant_id = e.tenant.as_uuid();
        let version = sequence_to_db(e.sequence);
        match event {
            // ---- Tenant ----
            Event::TenantCreated(p) => self.tenants.create(
                e,
                tenants::Model {
                    id,
                    name: p.name.clone(),
                    status: "active".into(),
                    suspended_reason: None,
                    quota_bytes: p.quota_bytes.map(int),
                    used_bytes: 0,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::TenantRenamed(p) => {
                if let Some(row) = self.tenants.update(e) {
                    row.name.clone_from(&p.name);
                }
            }
            Event::TenantQuotaSet(p) => {
                if let Some(row) = self.tenants.update(e) {
                    row.quota_bytes = p.quota_bytes.map(int);
                }
            }
            Event::TenantUsageReported(p) => {
                if let Some(row) = self.tenants.update(e) {
                    row.used_bytes = int(p.used_bytes);
                }
            }
            Event::TenantSuspended(p) => {
                if let Some(row) = self.tenants.update(e) {
                    row.status = "suspended".into();
                    row.suspended_reason = Some(p.reason.clone());
                }
            }
            Event::TenantResumed(_) => {
                if let Some(row) = self.tenants.update(e) {
                    row.status = "active".into();
                    row.suspended_reason = None;
                }
            }
            // A deleted tenant keeps its row (and everything it owned) so its history stays readable.
            Event::TenantDeleted(_) => {
                if let Some(row) = self.tenants.update(e) {
                    row.status = "deleted".into();
                }
            }

            // ---- ApiKey ----
            Event::ApiKeyCreated(p) => self.api_keys.create(
                e,
                api_keys::Model {
                    id,
                    tenant_id,
                    name: p.name.clone(),
                    role: snake(&p.role),
                    prefix: p.prefix.clone(),
                    hash: p.hash.clone(),
                    expires_at: p.expires_at,
                    status: "active".into(),
                    revoked_reason: None,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::ApiKeyRevoked(p) => {
                if let Some(row) = self.api_keys.update(e) {
                    row.status = "revoked".into();
                    row.revoked_reason.clone_from(&p.reason);
                }
            }

            // ---- Target ----
            Event::TargetAdded(p) => self.targets.create(
                e,
                targets::Model {
                    id,
                    tenant_id,
                    name: p.name.clone(),
                    kind: p.kind.as_str().to_owned(),
                    location: p.location.clone(),
                    settings: json(&p.settings),
                    has_credentials: p.credentials.is_some(),
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::TargetUpdated(p) => {
                if let Some(row) = self.targets.update(e) {
                    row.name.clone_from(&p.name);
                    row.settings = json(&p.settings);
                    row.has_credentials = p.credentials.is_some();
                }
            }
            Event::TargetRemoved(_) => self.targets.delete(e),

            // ---- Source ----
            Event::SourceAdded(p) => self.sources.create(
                e,
                sources::Model {
                    id,
                    tenant_id,
                    name: p.name.clone(),
                    kind: snake(&p.kind),
                    host: p.host.clone(),
                    paths: json(&p.paths),
                    excludes: json(&p.excludes),
                    site: p.site.clone(),
                    pre_hook: p.pre_hook.clone(),
                    post_hook: p.post_hook.clone(),
                    qemu: p.qemu.as_ref().map(json),
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::SourceUpdated(p) => {
                if let Some(row) = self.sources.update(e) {
                    row.name.clone_from(&p.name);
                    row.paths = json(&p.paths);
                    row.excludes = json(&p.excludes);
                    row.site.clone_from(&p.site);
                    row.pre_hook.clone_from(&p.pre_hook);
                    row.post_hook.clone_from(&p.post_hook);
                    row.qemu = p.qemu.as_ref().map(json);
                }
            }
            Event::SourceRemoved(_) => self.sources.delete(e),

            // ---- Policy ----
            Event::PolicyCreated(p) => self.policies.create(
                e,
                policies::Model {
                    id,
                    tenant_id,
                    name: p.name.clone(),
                    source_id: p.source.as_uuid(),
                    target_id: p.target.as_uuid(),
                    schedule: json(&p.schedule),
                    misfire: snake(&p.misfire),
                    mode: snake(&p.mode),
                    retention: json(&p.retention),
                    copy_targets: json(&p.copy_targets),
                    verify_schedule: p.verify_schedule.as_ref().map(json),
                    status: "active".into(),
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::PolicyUpdated(p) => {
                if let Some(row) = self.policies.update(e) {
                    row.name.clone_from(&p.name);
                    row.schedule = json(&p.schedule);
                    row.misfire = snake(&p.misfire);
                    row.mode = snake(&p.mode);
                    row.retention = json(&p.retention);
                    row.copy_targets = json(&p.copy_targets);
                    row.verify_schedule = p.verify_schedule.as_ref().map(json);
                }
            }
            Event::PolicyPaused(_) => {
                if let Some(row) = self.policies.update(e) {
                    row.status = "paused".into();
                }
            }
            Event::PolicyResumed(_) => {
                if let Some(row) = self.policies.update(e) {
                    row.status = "active".into();
                }
            }
            Event::PolicyDeleted(_) => self.policies.delete(e),

            // ---- Job ----
            Event::JobRequested(p) => self.jobs.create(
                e,
                jobs::Model {
                    id,
                    tenant_id,
                    kind: p.kind.as_str().to_owned(),
                    status: jobs::JobStatus::Requested.as_str().to_owned(),
                    trigger: json(&p.trigger),
                    policy_id: p.policy.map(Uuid::from),
                    source_id: p.source.map(Uuid::from),
                    target_id: p.target.map(Uuid::from),
                    snapshot_id: p.snapshot.map(Uuid::from),
                    mode: p.mode.as_ref().map(snake),
                    site: p.site.clone(),
                    worker: None,
                    attempt: 0,
                    checkpoints: 0,
                    bytes_done: 0,
                    files_done: 0,
                    packs_uploaded: 0,
                    result_snapshot_id: None,
                    bytes_read: 0,
                    bytes_added: 0,
                    files: 0,
                    duration_ms: 0,
                    error: None,
                    dead_lettered: false,
                    started_at: None,
                    finished_at: None,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::JobStarted(p) => {
                if let Some(row) = self.jobs.update(e) {
                    row.status = jobs::JobStatus::Running.as_str().to_owned();
                    row.worker = Some(p.worker.clone());
                    row.attempt = i64::from(p.attempt);
                    row.started_at = Some(e.time);
                }
            }
            Event::JobCheckpointed(p) => {
                if let Some(row) = self.jobs.update(e) {
                    row.checkpoints += 1;
                    row.bytes_done = int(p.bytes_done);
                    row.files_done = int(p.files_done);
                    row.packs_uploaded = int(p.packs_uploaded);
                }
            }
            Event::JobSucceeded(p) => {
                if let Some(row) = self.jobs.update(e) {
                    row.status = jobs::JobStatus::Succeeded.as_str().to_owned();
                    row.result_snapshot_id = p.snapshot.map(Uuid::from);
                    row.bytes_read = int(p.bytes_read);
                    row.bytes_added = int(p.bytes_added);
                    row.files = int(p.files);
                    row.duration_ms = int(p.duration_ms);
                    row.finished_at = Some(e.time);
                }
            }
            Event::JobFailed(p) => {
                if let Some(row) = self.jobs.update(e) {
                    row.status = jobs::JobStatus::Failed.as_str().to_owned();
                    row.error = Some(p.error.clone());
                    row.attempt = row.attempt.max(i64::from(p.attempts));
                    row.dead_lettered = p.dead_lettered;
                    row.finished_at = Some(e.time);
                }
            }
            Event::JobCancelled(p) => {
                if let Some(row) = self.jobs.update(e) {
                    row.status = jobs::JobStatus::Cancelled.as_str().to_owned();
                    row.error.clone_from(&p.reason);
                    row.finished_at = Some(e.time);
                }
            }

            // ---- Snapshot ----
            // Only snapshot events change `snapshots`: the gateway keeps snapshot pages until
            // a snapshot event of the tenant arrives (api-gateway `cache::PageCache`). An
            // event of another aggregate that changed this table would need following there.
            Event::SnapshotCommitted(p) => self.snapshots.create(
                e,
                snapshots::Model {
                    id,
                    tenant_id,
                    target_id: p.target.as_uuid(),
                    repo_snapshot: p.repo_snapshot.clone(),
                    time: p.time,
                    host: p.host.clone(),
                    paths: json(&p.paths),
                    tags: json(&p.tags),
                    source_id: p.source.map(Uuid::from),
                    policy_id: p.policy.map(Uuid::from),
                    job_id: p.job.map(Uuid::from),
                    files: int(p.files),
                    size_bytes: int(p.size_bytes),
                    added_bytes: int(p.added_bytes),
                    partial: p.partial,
                    status: "committed".into(),
                    locked_until: None,
                    forgotten_by_job_id: None,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::SnapshotLocked(p) => {
                if let Some(row) = self.snapshots.update(e) {
                    row.locked_until = Some(p.until);
                }
            }
            // Forgotten snapshots keep their row: jobs, restores and the file index refer to them.
            Event::SnapshotForgotten(p) => {
                if let Some(row) = self.snapshots.update(e) {
                    row.status = "forgotten".into();
                    row.forgotten_by_job_id = p.job.map(Uuid::from);
                }
            }

            // ---- Replica ----
            Event::ReplicaCreated(p) => self.replicas.create(
                e,
                replicas::Model {
                    id,
                    tenant_id,
                    name: p.name.clone(),
                    source_id: p.source.as_uuid(),
                    destination: json(&p.destination),
                    rpo_seconds: int(p.rpo_seconds),
                    keep_points: i64::from(p.keep_points),
                    status: "active".into(),
                    last_point: None,
                    last_point_at: None,
                    lag_ms: None,
                    lag_exceeded_at: None,
                    points_recorded: 0,
                    failed_over_point: None,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::ReplicaPointRecorded(p) => {
                if let Some(row) = self.replicas.update(e) {
                    row.last_point = Some(p.point.clone());
                    row.last_point_at = Some(p.at);
                    row.lag_ms = Some(int(p.lag_ms));
                    if row.rpo_seconds.saturating_mul(1000) >= int(p.lag_ms) {
                        row.lag_exceeded_at = None;
                    }
                    row.points_recorded += 1;
                }
            }
            Event::ReplicaLagExceeded(p) => {
                if let Some(row) = self.replicas.update(e) {
                    row.lag_ms = Some(int(p.lag_ms));
                    row.lag_exceeded_at = Some(e.time);
                }
            }
            Event::ReplicaFailedOver(p) => {
                if let Some(row) = self.replicas.update(e) {
                    row.status = "failed_over".into();
                    row.failed_over_point = Some(p.point.clone());
                }
            }
            Event::ReplicaFailedBack(_) => {
                if let Some(row) = self.replicas.update(e) {
                    row.status = "active".into();
                    row.failed_over_point = None;
                }
            }
            Event::ReplicaDeleted(_) => self.replicas.delete(e),

            // ---- Restore ----
            Event::RestoreRequested(p) => self.restores.create(
                e,
                restores::Model {
                    id,
                    tenant_id,
                    snapshot_id: p.snapshot.as_uuid(),
                    paths: json(&p.paths),
                    destination: json(&p.destination),
                    job_id: p.job.as_uuid(),
                    status: "requested".into(),
                    files: 0,
                    bytes: 0,
                    verified: false,
                    error: None,
                    version,
                    created_at: e.time,
                    updated_at: e.time,
                },
            ),
            Event::RestoreSucceeded(p) => {
                if let Some(row) = self.restores.update(e) {
                    row.status = "succeeded".into();
                    row.files = int(p.files);
                    row.bytes = int(p.bytes);
                    row.verified = p.verified;
                }
            }
            Event::RestoreFailed(p) => {
                if let Some(row) = self.restores.update(e) {
                    row.status = "failed".into();
                    row.error = Some(p.error.clone());
                }
            }

            // ---- Export ----
            // Short-lived: the gateway reads an export from its events; the audit log keeps them.
            Event::ExportRequested(_) | Event::ExportStarted(_) | Event::ExportStopped(_) => {}
        }
    }
}

/// The loaded rows of one table: `None` for an id with no row (not yet created, or removed).
struct Table<M> {
    rows: BTreeMap<Uuid, Option<M>>,
    /// Ids whose row changed in this batch.
    dirty: BTreeSet<Uuid>,
}

impl<M: AggregateRow + Clone> Table<M> {
    async fn load<E>(txn: &DatabaseTransaction, ids: BTreeSet<Uuid>) -> Result<Table<M>, CatalogError>
    where
        E: EntityTrait<Model = M>,
    {
        let mut rows: BTreeMap<Uuid, Option<M>> = ids.iter().map(|id| (*id, None)).collect();
        let id_column = primary_key_column::<E>();
        let ids: Vec<Uuid> = ids.into_iter().collect();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let found = E::find()
                .filter(id_column.is_in(chunk.iter().copied()))
                .all(txn)
                .await
                .map_err(db_err("load the rows of a batch"))?;
            for row in found {
                rows.insert(row.row_id(), Some(row));
            }
        }
        Ok(Table { rows, dirty: BTreeSet::new() })
    }

    /// Creates the aggregate's row from its first event.
    fn create(&mut self, envelope: &Envelope, row: M) {
        let id = envelope.aggregate_id;
        if let Some(Some(existing)) = self.rows.get(&id) {
            if existing.owner() != envelope.tenant.as_uuid() {
                foreign(envelope, existing.owner());
                return;
            }
            if existing.version() >= sequence_to_db(envelope.sequence) {
                stale(envelope, existing.version());
                return;
            }
        }
        self.rows.insert(id, Some(row));
        self.dirty.insert(id);
    }

    /// The row to change for a later event, already stamped with its version and time; `None`
    /// (and a warning) when there is no row or the row has already seen this event.
    fn update(&mut self, envelope: &Envelope) -> Option<&mut M> {
        let id = envelope.aggregate_id;
        let version = sequence_to_db(envelope.sequence);
        match self.rows.get(&id) {
            Some(Some(row)) if row.owner() != envelope.tenant.as_uuid() => {
                foreign(envelope, row.owner());
                return None;
            }
            Some(Some(row)) if row.version() >= version => {
                stale(envelope, row.version());
                return None;
            }
            Some(Some(_)) => {}
            _ => {
                tracing::warn!(
                    aggregate = envelope.aggregate.as_str(),
                    id = %id,
                    event_type = %envelope.event_type,
                    sequence = envelope.sequence,
                    "event for an aggregate the catalog has no row for; audited, not projected"
                );
                return None;
            }
        }
        self.dirty.insert(id);
        let row = self.rows.get_mut(&id)?.as_mut()?;
        row.stamp(version, envelope.time);
        Some(row)
    }

    /// Removes the row: removed targets, sources, policies and replicas are gone from the read
    /// model (the audit log keeps their history).
    fn delete(&mut self, envelope: &Envelope) {
        if self.update(envelope).is_some() {
            self.rows.insert(envelope.aggregate_id, None);
        }
    }

    async fn write<E>(mut self, txn: &DatabaseTransaction) -> Result<(), CatalogError>
    where
        E: EntityTrait<Model = M>,
        M: IntoActiveModel<E::ActiveModel>,
    {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            match self.rows.remove(&id) {
                Some(Some(row)) => upserts.push(row),
                _ => deletes.push(id),
            }
        }
        let id_column = primary_key_column::<E>();
        if !upserts.is_empty() {
            let other_columns = E::Column::iter().filter(|column| column.as_str() != id_column.as_str());
            let on_conflict = OnConflict::column(id_column).update_columns(other_columns).to_owned();
            for chunk in statement_chunks::<E>(&upserts, txn.get_database_backend()) {
                E::insert_many(chunk.iter().cloned().map(IntoActiveModel::into_active_model))
                    .on_conflict(on_conflict.clone())
                    .exec_without_returning(txn)
                    .await
                    .map_err(db_err("write the rows of a batch"))?;
            }
        }
        for chunk in deletes.chunks(IDS_PER_STATEMENT) {
            E::delete_many()
                .filter(id_column.is_in(chunk.iter().copied()))
                .exec(txn)
                .await
                .map_err(db_err("delete the rows of a batch"))?;
        }
        Ok(())
    }
}

fn primary_key_column<E: EntityTrait>() -> E::Column {
    E::PrimaryKey::iter().next().expect("every catalog table has a primary key").into_column()
}

/// An event the row has already seen (the same event published twice under two stream
/// sequences): applying it again would double counters, so it is audited only.
/// An event on another tenant's subject naming this tenant's aggregate id: ids are chosen by
/// callers, so this is refused rather than letting one tenant change another's rows.
fn foreign(envelope: &Envelope, owner: Uuid) {
    tracing::warn!(
        aggregate = envelope.aggregate.as_str(),
        id = %envelope.aggregate_id,
        tenant = %envelope.tenant,
        owner = %owner,
        event_type = %envelope.event_type,
        "event for an aggregate id that belongs to another tenant; audited, not projected"
    );
}

fn stale(envelope: &Envelope, row_version: i64) {
    tracing::warn!(
        aggregate = envelope.aggregate.as_str(),
        id = %envelope.aggregate_id,
        event_type = %envelope.event_type,
        sequence = envelope.sequence,
        row_version,
        "event older than the row it applies to; audited, not projected"
    );
}

/// Counts are u64 in events and i64 in SQL; a count beyond 2^63 does not happen, so saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A serde enum's snake_case name: `tenant_admin`, `run_once`.
fn snake<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value).expect("event values always serialise") {
        serde_json::Value::String(name) => name,
        other => other.to_string(),
    }
}

/// A value as the JSON text stored in the column.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("event values always serialise")
}
