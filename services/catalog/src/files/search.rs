//! Reading the file index: search a path across snapshots, browse a folder of one snapshot.
//! Both are tenant-scoped in SQL and show only snapshots that are committed in the catalog and
//! not forgotten.

use std::collections::HashMap;

use arca_events::{SnapshotId, TenantId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use globset::{GlobBuilder, GlobMatcher};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, QueryResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{CatalogError, db_err};
use crate::files::sql::Sql;
use crate::files::{FileKind, normalise_path, split_path};
use crate::queries::{Page, PageRequest};

/// Rows a search reads per round trip while it filters a glob.
const SEARCH_BATCH: u64 = 500;

/// Rows one search page reads at most: a glob that matches rarely answers a short page with a
/// cursor to go on from, instead of reading the whole index in one request.
const SEARCH_SCAN_LIMIT: u64 = 20_000;

/// What to search: `files.search`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchRequest {
    /// `/home/ann/report.pdf`: that path; `/home/ann/`: everything below that folder; with `*`,
    /// `?`, `[…]`, `{a,b}` or `**`: a glob over whole paths (`*` stays inside one component,
    /// `**` crosses them). A glob is answered from the range of folders under its literal start
    /// (`/home/*/x` reads everything under `/home`), so globs that start with a wildcard read
    /// the whole tenant, a page at a time.
    pub path: String,
    /// Only this series: a source id, or a host series id ([`crate::files::Series::id`]).
    pub series: Option<Uuid>,
}

/// One version of a path and the snapshots that hold it (oldest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionHit {
    pub path: String,
    pub kind: FileKind,
    pub size: i64,
    pub mtime: DateTime<Utc>,
    pub series: Uuid,
    pub snapshots: Vec<SnapshotRef>,
}

/// A snapshot in an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    /// Its position in its series.
    pub ordinal: i64,
}

/// What to browse: `files.list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub snapshot: SnapshotId,
    /// The folder (`/` or empty for the top level).
    #[serde(default)]
    pub path: String,
}

/// A direct child of a folder in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderEntry {
    pub name: String,
    pub path: String,
    pub kind: FileKind,
    pub size: i64,
    pub mtime: DateTime<Utc>,
}

/// Versions of the paths `request.path` names, ordered by path (then age), each with the
/// snapshots that hold it. Versions held only by forgotten snapshots are left out. Pages: a page
/// holds at most `limit` versions; `next_cursor` is set when the page is full or when the page
/// read [`SEARCH_SCAN_LIMIT`] rows, so a page may be short, and the last page may be empty.
pub async fn search(
    db: &DatabaseConnection,
    tenant: TenantId,
    request: &SearchRequest,
    page: &PageRequest,
) -> Result<Page<VersionHit>, CatalogError> {
    let pattern = Pattern::parse(&request.path)?;
    let limit = page.limit();
    let mut after: Option<(String, String, i64)> = match &page.cursor {
        Some(cursor) => Some(
            serde_json::from_str(&crate::queries::decode_cursor(cursor)?)
                .map_err(|_| crate::queries::invalid_cursor(cursor))?,
        ),
        None => None,
    };
    let mut snapshots_of: HashMap<Uuid, Vec<SnapshotRef>> = HashMap::new();
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let batch = if pattern.glob.is_some() { SEARCH_BATCH } else { limit + 1 };
        let rows = search_rows(db, tenant, request.series, &pattern, after.as_ref(), batch).await?;
        let exhausted = (rows.len() as u64) < batch;
        for row in rows {
            scanned += 1;
            after = Some((row.parent.clone(), row.name.clone(), row.id));
            let path = format!("{}/{}", row.parent, row.name);
            if pattern.glob.as_ref().is_some_and(|glob| !glob.is_match(&path)) {
                continue;
            }
            let live = match snapshots_of.entry(row.series_id) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(live_snapshots(db, tenant, row.series_id).await?)
                }
            };
            let last = row.last_ordinal.unwrap_or(i64::MAX);
            let start = live.partition_point(|s| s.ordinal < row.first_ordinal);
            let end = live.partition_point(|s| s.ordinal <= last);
            if start >= end {
                continue;
            }
            items.push(VersionHit {
                path,
                kind: row.kind,
                size: row.size,
                mtime: DateTime::from_timestamp_nanos(row.mtime_ns),
                series: row.series_id,
                snapshots: live[start..end].to_vec(),
            });
            if items.len() as u64 == limit {
                return Ok(Page { items, next_cursor: after.as_ref().map(encode_cursor) });
            }
        }
        if exhausted {
            return Ok(Page { items, next_cursor: None });
        }
        if scanned >= SEARCH_SCAN_LIMIT {
            return Ok(Page { items, next_cursor: after.as_ref().map(encode_cursor) });
        }
    }
}

/// The direct children of a folder in one snapshot, by name. `None` when the tenant has no
/// such indexed, committed, unforgotten snapshot; an empty page when the folder is not in it.
pub async fn list_folder(
    db: &DatabaseConnection,
    tenant: TenantId,
    request: &ListRequest,
    page: &PageRequest,
) -> Result<Option<Page<FolderEntry>>, CatalogError> {
    let backend = db.get_database_backend();
    let mut find = Sql::new(
        backend,
        "SELECT i.series_id, i.ordinal FROM indexed_snapshots i JOIN snapshots s ON s.id = i.snapshot_id \
         WHERE i.snapshot_id = ",
    );
    find.bind(request.snapshot.as_uuid());
    live_snapshot_conditions(&mut find, tenant);
    let Some(found) = db.query_one_raw(find.build()).await.map_err(db_err("find an indexed snapshot"))? else {
        return Ok(None);
    };
    let (series_id, ordinal): (Uuid, i64) =
        (|| Ok::<_, DbErr>((found.try_get_by_index(0)?, found.try_get_by_index(1)?)))()
            .map_err(db_err("decode an indexed snapshot"))?;

    let folder = normalise_path(&request.path);
    let limit = page.limit();
    let mut select = Sql::new(backend, "SELECT name, kind, size, mtime_ns FROM snapshot_files WHERE tenant_id = ");
    select
        .bind(tenant.as_uuid())
        .push(" AND series_id = ")
        .bind(series_id)
        .push(" AND parent = ")
        .bind(folder.clone())
        .push(" AND first_ordinal <= ")
        .bind(ordinal)
        .push(" AND (last_ordinal IS NULL OR last_ordinal >= ")
        .bind(ordinal)
        .push(")");
    if let Some(cursor) = &page.cursor {
        select.push(" AND name > ").bind(crate::queries::decode_cursor(cursor)?);
    }
    select.push(" ORDER BY name LIMIT ").push(&(limit + 1).to_string());
    let rows = db.query_all_raw(select.build()).await.map_err(db_err("list a folder of a snapshot"))?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let entry = (|| -> Result<FolderEntry, DbErr> {
            let name: String = row.try_get_by_index(0)?;
            Ok(FolderEntry {
                path: format!("{folder}/{name}"),
                name,
                kind: kind_at(&row, 1)?,
                size: row.try_get_by_index(2)?,
                mtime: DateTime::from_timestamp_nanos(row.try_get_by_index(3)?),
            })
        })()
        .map_err(db_err("decode a file row"))?;
        items.push(entry);
    }
    Ok(Some(crate::queries::into_page(items, limit, |entry| entry.name.clone())))
}

/// A search pattern: the folders to read and, for globs, the matcher to filter them with.
struct Pattern {
    scope: Scope,
    glob: Option<GlobMatcher>,
}

enum Scope {
    /// One path.
    Exact { parent: String, name: String },
    /// Every path under a folder (`""` for all).
    Under(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, CatalogError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CatalogError::InvalidPattern("the search path is empty".into()));
        }
        let text = if text.starts_with('/') { text.to_owned() } else { format!("/{text}") };
        if let Some(wildcard) = text.find(['*', '?', '[', '{']) {
            let glob = GlobBuilder::new(&text)
                .literal_separator(true)
                .build()
                .map_err(|e| CatalogError::InvalidPattern(e.to_string()))?
                .compile_matcher();
            let folder = &text[..text[..wildcard].rfind('/').unwrap_or(0)];
            return Ok(Pattern { scope: Scope::Under(folder.to_owned()), glob: Some(glob) });
        }
        if text.ends_with('/') {
            return Ok(Pattern { scope: Scope::Under(normalise_path(&text)), glob: None });
        }
        let path = normalise_path(&text);
        let (parent, name) = split_path(&path);
        Ok(Pattern { scope: Scope::Exact { parent: parent.to_owned(), name: name.to_owned() }, glob: None })
    }
}

struct SearchRow {
    id: i64,
    series_id: Uuid,
    parent: String,
    name: String,
    kind: FileKind,
    size: i64,
    mtime_ns: i64,
    first_ordinal: i64,
    last_ordinal: Option<i64>,
}

/// Up to `limit` rows in the pattern's scope after `after`, ordered by `(parent, name, id)`.
async fn search_rows(
    db: &DatabaseConnection,
    tenant: TenantId,
    series: Option<Uuid>,
    pattern: &Pattern,
    after: Option<&(String, String, i64)>,
    limit: u64,
) -> Result<Vec<SearchRow>, CatalogError> {
    let mut select = Sql::new(
        db.get_database_backend(),
        "SELECT id, series_id, parent, name, kind, size, mtime_ns, first_ordinal, last_ordinal FROM snapshot_files \
         WHERE tenant_id = ",
    );
    select.bind(tenant.as_uuid());
    if let Some(series) = series {
        select.push(" AND series_id = ").bind(series);
    }
    match &pattern.scope {
        Scope::Exact { parent, name } => {
            select.push(" AND parent = ").bind(parent.clone()).push(" AND name = ").bind(name.clone());
        }
        Scope::Under(folder) if folder.is_empty() => {}
        Scope::Under(folder) => {
            // The folder itself, and every folder below it: `folder/` up to `folder0` (`0` is
            // the byte after `/`), compared byte by byte.
            select
                .push(" AND (parent = ")
                .bind(folder.clone())
                .push(" OR (parent >= ")
                .bind(format!("{folder}/"))
                .push(" AND parent < ")
                .bind(format!("{folder}0"))
                .push("))");
        }
    }
    if let Some((parent, name, id)) = after {
        select
            .push(" AND (parent, name, id) > (")
            .bind(parent.clone())
            .push(", ")
            .bind(name.clone())
            .push(", ")
            .bind(*id)
            .push(")");
    }
    select.push(" ORDER BY parent, name, id LIMIT ").push(&limit.to_string());
    let rows = db.query_all_raw(select.build()).await.map_err(db_err("search the file index"))?;
    rows.iter()
        .map(|row| {
            Ok(SearchRow {
                id: row.try_get_by_index(0)?,
                series_id: row.try_get_by_index(1)?,
                parent: row.try_get_by_index(2)?,
                name: row.try_get_by_index(3)?,
                kind: kind_at(row, 4)?,
                size: row.try_get_by_index(5)?,
                mtime_ns: row.try_get_by_index(6)?,
                first_ordinal: row.try_get_by_index(7)?,
                last_ordinal: row.try_get_by_index(8)?,
            })
        })
        .collect::<Result<_, DbErr>>()
        .map_err(db_err("decode a file row"))
}

/// The series' snapshots that answers may show, by ordinal.
async fn live_snapshots(
    db: &DatabaseConnection,
    tenant: TenantId,
    series_id: Uuid,
) -> Result<Vec<SnapshotRef>, CatalogError> {
    let mut select = Sql::new(
        db.get_database_backend(),
        "SELECT i.snapshot_id, i.time, i.ordinal FROM indexed_snapshots i JOIN snapshots s ON s.id = i.snapshot_id \
         WHERE i.series_id = ",
    );
    select.bind(series_id);
    live_snapshot_conditions(&mut select, tenant);
    select.push(" ORDER BY i.ordinal");
    let rows = db.query_all_raw(select.build()).await.map_err(db_err("list a series' snapshots"))?;
    rows.iter()
        .map(|row| {
            Ok(SnapshotRef {
                id: row.try_get_by_index(0)?,
                time: row.try_get_by_index(1)?,
                ordinal: row.try_get_by_index(2)?,
            })
        })
        .collect::<Result<_, DbErr>>()
        .map_err(db_err("decode an indexed snapshot"))
}

/// Joined `indexed_snapshots i` and `snapshots s`: the tenant's, committed, not forgotten.
fn live_snapshot_conditions(sql: &mut Sql, tenant: TenantId) {
    sql.push(" AND i.tenant_id = ")
        .bind(tenant.as_uuid())
        .push(" AND s.tenant_id = ")
        .bind(tenant.as_uuid())
        .push(" AND i.forgotten = ")
        .bind(false)
        .push(" AND s.status = ")
        .bind("committed");
}

fn kind_at(row: &QueryResult, index: usize) -> Result<FileKind, DbErr> {
    let kind: String = row.try_get_by_index(index)?;
    FileKind::parse(&kind).ok_or_else(|| DbErr::Custom(format!("unknown file kind `{kind}` in snapshot_files")))
}

fn encode_cursor(after: &(String, String, i64)) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_string(after).expect("a tuple serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> (String, bool) {
        let pattern = Pattern::parse(text).unwrap();
        let scope = match pattern.scope {
            Scope::Exact { parent, name } => format!("exact {parent} {name}"),
            Scope::Under(folder) => format!("under {folder}"),
        };
        (scope, pattern.glob.is_some())
    }

    #[test]
    fn patterns_read_the_narrowest_range_of_folders() {
        assert_eq!(scope("/home/ann/report.pdf"), ("exact /home/ann report.pdf".into(), false));
        assert_eq!(scope("home/ann/"), ("under /home/ann".into(), false));
        assert_eq!(scope("/home/*/report.pdf"), ("under /home".into(), true));
        assert_eq!(scope("/home/ann/rep*.pdf"), ("under /home/ann".into(), true));
        assert_eq!(scope("**/*.pdf"), ("under ".into(), true));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("/a/[").is_err());
    }

    #[test]
    fn globs_keep_star_inside_one_component() {
        let pattern = Pattern::parse("/home/*/report.pdf").unwrap();
        let glob = pattern.glob.unwrap();
        assert!(glob.is_match("/home/ann/report.pdf"));
        assert!(!glob.is_match("/home/ann/old/report.pdf"));
        let deep = Pattern::parse("/home/**/report.pdf").unwrap().glob.unwrap();
        assert!(deep.is_match("/home/ann/old/report.pdf"));
    }
}
