//! Writing the file index: one snapshot at a time, as the difference from the previous one of
//! its series.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use arca_events::{SnapshotId, TenantId};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, StreamTrait, TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use crate::entities::indexed_snapshots;
use crate::error::{CatalogError, db_err};
use crate::files::sql::Sql;
use crate::files::{FileEntry, FileKind, Series, normalise_path, split_path};
use crate::projector::{POSTGRES_MAX_PARAMETERS, POSTGRES_STATEMENT_BYTES, SQLITE_MAX_PARAMETERS};

/// What [`index_snapshot`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexOutcome {
    /// The snapshot's position in its series (from 1).
    pub ordinal: i64,
    /// Paths in the snapshot (files, folders and symlinks; a path listed twice counts once).
    pub entries: u64,
    /// `snapshot_files` rows opened: paths new or changed since the previous snapshot.
    pub rows_added: u64,
    /// `snapshot_files` rows closed: paths changed or gone since the previous snapshot.
    pub rows_closed: u64,
    /// The snapshot was indexed before; nothing was written.
    pub already_indexed: bool,
}

/// Indexes the paths of one snapshot of `series`, taken at `time`, in one transaction.
///
/// Reads the series' open rows once (into memory: about 60 bytes per path), walks `entries`
/// once, and writes only the difference with multi-row statements: new rows for new and changed
/// paths, `last_ordinal` for changed and removed ones, and the snapshot's `indexed_snapshots`
/// row. A second call for the same snapshot changes nothing. A snapshot older than the newest
/// indexed one of its series is refused ([`CatalogError::SnapshotOutOfOrder`]).
pub async fn index_snapshot<I>(
    db: &DatabaseConnection,
    tenant: TenantId,
    snapshot: SnapshotId,
    series: &Series,
    time: DateTime<Utc>,
    entries: I,
) -> Result<IndexOutcome, CatalogError>
where
    I: IntoIterator<Item = FileEntry>,
    I::IntoIter: Send,
{
    let started = std::time::Instant::now();
    let series_id = series.id(tenant);
    let txn = db.begin().await.map_err(db_err("begin indexing a snapshot"))?;
    let existing = indexed_snapshots::Entity::find_by_id(snapshot.as_uuid())
        .one(&txn)
        .await
        .map_err(db_err("look up an indexed snapshot"))?;
    if let Some(row) = existing {
        if row.tenant_id != tenant.as_uuid() || row.series_id != series_id {
            return Err(CatalogError::IndexConflict(format!(
                "snapshot {snapshot} is already indexed in another series or tenant"
            )));
        }
        return Ok(IndexOutcome {
            ordinal: row.ordinal,
            entries: u64::try_from(row.entries).unwrap_or(0),
            already_indexed: true,
            ..IndexOutcome::default()
        });
    }
    let newest = indexed_snapshots::Entity::find()
        .filter(indexed_snapshots::Column::SeriesId.eq(series_id))
        .order_by_desc(indexed_snapshots::Column::Ordinal)
        .one(&txn)
        .await
        .map_err(db_err("find the newest indexed snapshot of a series"))?;
    if let Some(newest) = &newest {
        if newest.tenant_id != tenant.as_uuid() {
            return Err(CatalogError::IndexConflict(format!("series {series_id} belongs to another tenant")));
        }
        if newest.time > time {
            return Err(CatalogError::SnapshotOutOfOrder { snapshot: snapshot.as_uuid(), newest: newest.snapshot_id });
        }
    }
    let ordinal = newest.as_ref().map_or(1, |row| row.ordinal + 1);
    let mut seen = match newest {
        Some(_) => load_open_rows(&txn, tenant.as_uuid(), series_id).await?,
        None => HashMap::new(),
    };

    let backend = ConnectionTrait::get_database_backend(&txn);
    let mut inserter = Inserter::new(backend, tenant.as_uuid(), series_id, ordinal);
    let mut closing = Vec::new();
    let mut count = 0u64;
    for entry in entries {
        let path = normalise_path(&entry.path);
        if path.is_empty() {
            // The root folder itself: browsing starts below it.
            continue;
        }
        let (parent, name) = split_path(&path);
        let size = i64::try_from(entry.size).unwrap_or(i64::MAX);
        let version = Version { kind: entry.kind, size, mtime_ns: entry.mtime_ns };
        match seen.entry(path_key(parent, name)) {
            Entry::Occupied(mut slot) => {
                let row = slot.get_mut();
                if row.seen {
                    continue;
                }
                row.seen = true;
                count += 1;
                if let Some((id, open)) = row.open {
                    if open == version {
                        continue;
                    }
                    closing.push(id);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(Seen { open: None, seen: true });
                count += 1;
            }
        }
        inserter.push(&txn, parent, name, version).await?;
    }
    let rows_added = inserter.finish(&txn).await?;
    closing.extend(seen.values().filter(|row| !row.seen).filter_map(|row| row.open.map(|(id, _)| id)));
    let rows_closed = close_rows(&txn, &closing, ordinal - 1).await?;

    let row = indexed_snapshots::Model {
        snapshot_id: snapshot.as_uuid(),
        tenant_id: tenant.as_uuid(),
        series_id,
        series: series.describe(),
        ordinal,
        time,
        entries: i64::try_from(count).unwrap_or(i64::MAX),
        rows_added: i64::try_from(rows_added).unwrap_or(i64::MAX),
        rows_closed: i64::try_from(rows_closed).unwrap_or(i64::MAX),
        forgotten: false,
    };
    indexed_snapshots::Entity::insert(sea_orm::IntoActiveModel::into_active_model(row))
        .exec_without_returning(&txn)
        .await
        .map_err(db_err("record an indexed snapshot"))?;
    txn.commit().await.map_err(db_err("commit a snapshot's file index"))?;
    tracing::info!(
        %tenant, %snapshot, series = %series_id, ordinal, entries = count, rows_added, rows_closed,
        seconds = started.elapsed().as_secs_f64(), "indexed a snapshot's files"
    );
    Ok(IndexOutcome { ordinal, entries: count, rows_added, rows_closed, already_indexed: false })
}

/// Marks an indexed snapshot forgotten (answers leave it out from now on) and deletes the
/// closed rows that no remaining snapshot of its series holds. Returns how many rows went.
/// A snapshot that is not indexed is not an error: there is nothing to forget.
///
/// Open rows stay even when only forgotten snapshots hold them: they are what the next
/// snapshot of the series is compared with.
pub async fn forget_snapshot(
    db: &DatabaseConnection,
    tenant: TenantId,
    snapshot: SnapshotId,
) -> Result<u64, CatalogError> {
    let txn = db.begin().await.map_err(db_err("begin forgetting a snapshot's files"))?;
    let Some(row) = indexed_snapshots::Entity::find_by_id(snapshot.as_uuid())
        .filter(indexed_snapshots::Column::TenantId.eq(tenant.as_uuid()))
        .one(&txn)
        .await
        .map_err(db_err("look up an indexed snapshot"))?
    else {
        return Ok(0);
    };
    let backend = ConnectionTrait::get_database_backend(&txn);
    let mut mark = Sql::new(backend, "UPDATE indexed_snapshots SET forgotten = ");
    mark.bind(true).push(" WHERE snapshot_id = ").bind(row.snapshot_id);
    txn.execute_raw(mark.build()).await.map_err(db_err("mark an indexed snapshot forgotten"))?;

    let mut delete = Sql::new(backend, "DELETE FROM snapshot_files WHERE tenant_id = ");
    delete
        .bind(row.tenant_id)
        .push(" AND series_id = ")
        .bind(row.series_id)
        .push(" AND first_ordinal <= ")
        .bind(row.ordinal)
        .push(" AND last_ordinal >= ")
        .bind(row.ordinal)
        .push(
            " AND NOT EXISTS (SELECT 1 FROM indexed_snapshots s WHERE s.series_id = snapshot_files.series_id \
             AND s.ordinal BETWEEN snapshot_files.first_ordinal AND snapshot_files.last_ordinal AND s.forgotten = ",
        )
        .bind(false)
        .push(")");
    let deleted = txn.execute_raw(delete.build()).await.map_err(db_err("delete forgotten file versions"))?;
    txn.commit().await.map_err(db_err("commit forgetting a snapshot's files"))?;
    Ok(deleted.rows_affected())
}

/// Deletes a series' whole file index (its rows and its indexed snapshots), to index its
/// snapshots again from the oldest, e.g. after [`CatalogError::SnapshotOutOfOrder`].
pub async fn delete_series(db: &DatabaseConnection, tenant: TenantId, series: &Series) -> Result<(), CatalogError> {
    let series_id = series.id(tenant);
    let txn = db.begin().await.map_err(db_err("begin deleting a series' file index"))?;
    let backend = ConnectionTrait::get_database_backend(&txn);
    for table in ["snapshot_files", "indexed_snapshots"] {
        let mut delete = Sql::new(backend, &format!("DELETE FROM {table} WHERE tenant_id = "));
        delete.bind(tenant.as_uuid()).push(" AND series_id = ").bind(series_id);
        txn.execute_raw(delete.build()).await.map_err(db_err("delete a series' file index"))?;
    }
    txn.commit().await.map_err(db_err("commit deleting a series' file index"))
}

/// What makes a file version: a change in any of these opens a new row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    kind: FileKind,
    size: i64,
    mtime_ns: i64,
}

/// A path of the series: its open row (if the previous snapshot held it) and whether the
/// snapshot being indexed holds it.
struct Seen {
    open: Option<(i64, Version)>,
    seen: bool,
}

/// 128 bits of BLAKE3 over the path: a fixed-size key keeps a million paths in ~60 MB.
type PathKey = [u8; 16];

fn path_key(parent: &str, name: &str) -> PathKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(parent.as_bytes());
    hasher.update(b"/");
    hasher.update(name.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

/// The series' open rows (the newest indexed snapshot's paths), streamed into a map.
async fn load_open_rows(
    txn: &DatabaseTransaction,
    tenant: Uuid,
    series_id: Uuid,
) -> Result<HashMap<PathKey, Seen>, CatalogError> {
    let mut select = Sql::new(
        ConnectionTrait::get_database_backend(txn),
        "SELECT id, parent, name, kind, size, mtime_ns FROM snapshot_files WHERE tenant_id = ",
    );
    select.bind(tenant).push(" AND series_id = ").bind(series_id).push(" AND last_ordinal IS NULL");
    let mut rows = txn.stream_raw(select.build()).await.map_err(db_err("read a series' open file rows"))?;
    let mut open = HashMap::new();
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_err("read a series' open file rows"))?;
        let read = || -> Result<(PathKey, i64, Version), sea_orm::DbErr> {
            let parent: String = row.try_get_by_index(1)?;
            let name: String = row.try_get_by_index(2)?;
            let kind: String = row.try_get_by_index(3)?;
            let kind = FileKind::parse(&kind)
                .ok_or_else(|| sea_orm::DbErr::Custom(format!("unknown file kind `{kind}` in snapshot_files")))?;
            let version = Version { kind, size: row.try_get_by_index(4)?, mtime_ns: row.try_get_by_index(5)? };
            Ok((path_key(&parent, &name), row.try_get_by_index(0)?, version))
        };
        let (key, id, version) = read().map_err(db_err("decode an open file row"))?;
        open.insert(key, Seen { open: Some((id, version)), seen: false });
    }
    Ok(open)
}

/// Per bind parameter: its length prefix and its `$n, ` in the SQL text.
const PARAMETER_BYTES: usize = 12;

const INSERT_COLUMNS: usize = 8;

/// Multi-row inserts into `snapshot_files`, each statement as big as the backend likes
/// (see [`POSTGRES_STATEMENT_BYTES`]).
struct Inserter {
    backend: DbBackend,
    tenant: Uuid,
    series_id: Uuid,
    ordinal: i64,
    statement: Option<Sql>,
    rows: usize,
    bytes: usize,
    added: u64,
}

impl Inserter {
    fn new(backend: DbBackend, tenant: Uuid, series_id: Uuid, ordinal: i64) -> Self {
        Self { backend, tenant, series_id, ordinal, statement: None, rows: 0, bytes: 0, added: 0 }
    }

    async fn push(
        &mut self,
        txn: &DatabaseTransaction,
        parent: &str,
        name: &str,
        version: Version,
    ) -> Result<(), CatalogError> {
        let kind = version.kind.as_str();
        let row_bytes = parent.len() + name.len() + kind.len() + 5 * 16 + INSERT_COLUMNS * PARAMETER_BYTES;
        let full = match self.backend {
            DbBackend::Postgres => {
                self.bytes + row_bytes > POSTGRES_STATEMENT_BYTES
                    || (self.rows + 1) * INSERT_COLUMNS > POSTGRES_MAX_PARAMETERS
            }
            _ => (self.rows + 1) * INSERT_COLUMNS > SQLITE_MAX_PARAMETERS,
        };
        if full && self.rows > 0 {
            self.flush(txn).await?;
        }
        let statement = self.statement.get_or_insert_with(|| {
            Sql::new(
                self.backend,
                "INSERT INTO snapshot_files (tenant_id, series_id, parent, name, kind, size, mtime_ns, first_ordinal) \
                 VALUES ",
            )
        });
        if self.rows > 0 {
            statement.push(",");
        }
        statement
            .push("(")
            .bind(self.tenant)
            .push(",")
            .bind(self.series_id)
            .push(",")
            .bind(parent)
            .push(",")
            .bind(name)
            .push(",")
            .bind(kind)
            .push(",")
            .bind(version.size)
            .push(",")
            .bind(version.mtime_ns)
            .push(",")
            .bind(self.ordinal)
            .push(")");
        self.rows += 1;
        self.bytes += row_bytes;
        Ok(())
    }

    async fn flush(&mut self, txn: &DatabaseTransaction) -> Result<(), CatalogError> {
        if let Some(statement) = self.statement.take() {
            txn.execute_raw(statement.build()).await.map_err(db_err("insert file rows"))?;
            self.added += self.rows as u64;
        }
        (self.rows, self.bytes) = (0, 0);
        Ok(())
    }

    /// Writes what is left; returns how many rows were inserted in all.
    async fn finish(mut self, txn: &DatabaseTransaction) -> Result<u64, CatalogError> {
        self.flush(txn).await?;
        Ok(self.added)
    }
}

/// Sets `last_ordinal` of the rows `ids`; returns how many changed.
async fn close_rows(txn: &DatabaseTransaction, ids: &[i64], last_ordinal: i64) -> Result<u64, CatalogError> {
    let backend = ConnectionTrait::get_database_backend(txn);
    // An id costs 8 bytes and its parameter overhead: ~400 stay under the PostgreSQL limit.
    let per_statement = match backend {
        DbBackend::Postgres => POSTGRES_STATEMENT_BYTES / (8 + PARAMETER_BYTES) - 1,
        _ => SQLITE_MAX_PARAMETERS - 1,
    };
    let mut closed = 0;
    for chunk in ids.chunks(per_statement) {
        let mut update = Sql::new(backend, "UPDATE snapshot_files SET last_ordinal = ");
        update.bind(last_ordinal).push(" WHERE id IN (");
        for (i, id) in chunk.iter().enumerate() {
            if i > 0 {
                update.push(",");
            }
            update.bind(*id);
        }
        update.push(")");
        closed += txn.execute_raw(update.build()).await.map_err(db_err("close file rows"))?.rows_affected();
    }
    Ok(closed)
}
