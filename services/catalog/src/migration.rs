//! The catalog's schema, as sea-orm migrations. They run on every [`crate::db::connect`] and
//! work on SQLite and PostgreSQL alike.

use sea_orm::{EntityTrait, Schema};
use sea_orm_migration::prelude::*;

use crate::entities::*;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(FileIndex), Box::new(SourceQemu)]
    }
}

/// Every table, and the indexes the queries of [`crate::queries`] use.
///
/// It created a first, never used `snapshot_files` table until [`FileIndex`] replaced it;
/// [`FileIndex`] drops that one where it exists.
struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(manager, tenants::Entity).await?;
        create_table(manager, api_keys::Entity).await?;
        create_table(manager, targets::Entity).await?;
        create_table(manager, sources::Entity).await?;
        create_table(manager, policies::Entity).await?;
        create_table(manager, jobs::Entity).await?;
        create_table(manager, snapshots::Entity).await?;
        create_table(manager, replicas::Entity).await?;
        create_table(manager, restores::Entity).await?;
        create_table(manager, audit_events::Entity).await?;
        create_table(manager, projection_state::Entity).await?;
        create_table(manager, projection_errors::Entity).await?;

        // Cursor pagination inside a tenant: `WHERE tenant_id = ? AND id > ? ORDER BY id`.
        index(manager, api_keys::Entity, "api_keys_tenant_id", [api_keys::Column::TenantId, api_keys::Column::Id])
            .await?;
        index(manager, targets::Entity, "targets_tenant_id", [targets::Column::TenantId, targets::Column::Id]).await?;
        index(manager, sources::Entity, "sources_tenant_id", [sources::Column::TenantId, sources::Column::Id]).await?;
        index(manager, policies::Entity, "policies_tenant_id", [policies::Column::TenantId, policies::Column::Id])
            .await?;
        index(manager, jobs::Entity, "jobs_tenant_id", [jobs::Column::TenantId, jobs::Column::Id]).await?;
        index(manager, snapshots::Entity, "snapshots_tenant_id", [snapshots::Column::TenantId, snapshots::Column::Id])
            .await?;
        index(manager, replicas::Entity, "replicas_tenant_id", [replicas::Column::TenantId, replicas::Column::Id])
            .await?;
        index(manager, restores::Entity, "restores_tenant_id", [restores::Column::TenantId, restores::Column::Id])
            .await?;

        // Authentication looks keys up by hash.
        index(manager, api_keys::Entity, "api_keys_hash", [api_keys::Column::Hash]).await?;
        // Job lists filtered by status or kind.
        index(
            manager,
            jobs::Entity,
            "jobs_tenant_status",
            [jobs::Column::TenantId, jobs::Column::Status, jobs::Column::Id],
        )
        .await?;
        index(
            manager,
            jobs::Entity,
            "jobs_tenant_kind",
            [jobs::Column::TenantId, jobs::Column::Kind, jobs::Column::Id],
        )
        .await?;
        // Snapshots by time, and by source or target.
        index(
            manager,
            snapshots::Entity,
            "snapshots_tenant_time",
            [snapshots::Column::TenantId, snapshots::Column::Time],
        )
        .await?;
        index(
            manager,
            snapshots::Entity,
            "snapshots_tenant_source",
            [snapshots::Column::TenantId, snapshots::Column::SourceId, snapshots::Column::Id],
        )
        .await?;
        index(
            manager,
            snapshots::Entity,
            "snapshots_tenant_target",
            [snapshots::Column::TenantId, snapshots::Column::TargetId, snapshots::Column::Id],
        )
        .await?;
        // The audit log of one tenant.
        index(
            manager,
            audit_events::Entity,
            "audit_events_tenant_sequence",
            [audit_events::Column::TenantId, audit_events::Column::StreamSequence],
        )
        .await?;
        // One aggregate's history.
        index(
            manager,
            audit_events::Entity,
            "audit_events_aggregate",
            [audit_events::Column::AggregateId, audit_events::Column::StreamSequence],
        )
        .await?;
        Ok(())
    }
}

/// The file index of [`crate::files`]: `snapshot_files` as ranges of snapshot ordinals, and
/// `indexed_snapshots`.
struct FileIndex;

impl MigrationName for FileIndex {
    fn name(&self) -> &str {
        "m0002_file_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for FileIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The first `snapshot_files` never held a row: nothing filled it.
        manager.drop_table(Table::drop().table(snapshot_files::Entity).if_exists().to_owned()).await?;
        create_table(manager, snapshot_files::Entity).await?;
        create_table(manager, indexed_snapshots::Entity).await?;
        if manager.get_database_backend() == sea_orm::DbBackend::Postgres {
            // Paths compare byte by byte, as on SQLite, whatever the database's locale: prefix
            // searches are ranges of `parent`, which a linguistic collation would break.
            manager
                .get_connection()
                .execute_unprepared(
                    r#"ALTER TABLE snapshot_files ALTER COLUMN parent TYPE text COLLATE "C", ALTER COLUMN name TYPE text COLLATE "C""#,
                )
                .await?;
        }
        // Browsing a folder of one series, and loading a series' open rows when indexing.
        index(
            manager,
            snapshot_files::Entity,
            "snapshot_files_series_parent",
            [
                snapshot_files::Column::TenantId,
                snapshot_files::Column::SeriesId,
                snapshot_files::Column::Parent,
                snapshot_files::Column::Name,
            ],
        )
        .await?;
        // Searching a path, a folder or a glob's literal prefix across every series.
        index(
            manager,
            snapshot_files::Entity,
            "snapshot_files_tenant_parent",
            [snapshot_files::Column::TenantId, snapshot_files::Column::Parent, snapshot_files::Column::Name],
        )
        .await?;
        // One row per ordinal of a series.
        let mut unique = Index::create();
        unique
            .name("idx_indexed_snapshots_series_ordinal")
            .table(indexed_snapshots::Entity)
            .col(indexed_snapshots::Column::SeriesId)
            .col(indexed_snapshots::Column::Ordinal)
            .unique();
        manager.create_index(unique).await?;
        Ok(())
    }
}

/// `sources.qemu`: the running qemu an image source is tracked through. A database created
/// since has the column from [`Initial`] already.
struct SourceQemu;

impl MigrationName for SourceQemu {
    fn name(&self) -> &str {
        "m0003_source_qemu"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SourceQemu {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("sources", "qemu").await? {
            return Ok(());
        }
        let column = ColumnDef::new(sources::Column::Qemu).text().null().to_owned();
        manager.alter_table(Table::alter().table(sources::Entity).add_column(column).to_owned()).await
    }
}

async fn create_table<E: EntityTrait>(manager: &SchemaManager<'_>, entity: E) -> Result<(), DbErr> {
    let schema = Schema::new(manager.get_database_backend());
    manager.create_table(schema.create_table_from_entity(entity)).await
}

async fn index<E, C, const N: usize>(
    manager: &SchemaManager<'_>,
    entity: E,
    name: &str,
    columns: [C; N],
) -> Result<(), DbErr>
where
    E: EntityTrait,
    C: IntoIden,
{
    let mut index = Index::create();
    index.name(format!("idx_{name}")).table(entity);
    for column in columns {
        index.col(column);
    }
    manager.create_index(index).await
}
