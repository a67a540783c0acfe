//! Every table as JSON, for comparing two databases (a live projection and a rebuild).

use std::collections::BTreeMap;

use sea_orm::{DatabaseConnection, EntityTrait, Iterable, PrimaryKeyToColumn, QueryOrder};

use crate::entities::*;
use crate::error::{CatalogError, db_err};

/// Every row of every catalog table (not the migrations bookkeeping), by table name, each
/// table's rows sorted by primary key; values as the database returns them.
pub async fn dump_all(db: &DatabaseConnection) -> Result<BTreeMap<String, Vec<serde_json::Value>>, CatalogError> {
    let mut tables = BTreeMap::new();
    dump::<tenants::Entity>(db, &mut tables).await?;
    dump::<api_keys::Entity>(db, &mut tables).await?;
    dump::<targets::Entity>(db, &mut tables).await?;
    dump::<sources::Entity>(db, &mut tables).await?;
    dump::<policies::Entity>(db, &mut tables).await?;
    dump::<jobs::Entity>(db, &mut tables).await?;
    dump::<snapshots::Entity>(db, &mut tables).await?;
    dump::<snapshot_files::Entity>(db, &mut tables).await?;
    dump::<indexed_snapshots::Entity>(db, &mut tables).await?;
    dump::<replicas::Entity>(db, &mut tables).await?;
    dump::<restores::Entity>(db, &mut tables).await?;
    dump::<audit_events::Entity>(db, &mut tables).await?;
    dump::<projection_state::Entity>(db, &mut tables).await?;
    dump::<projection_errors::Entity>(db, &mut tables).await?;
    Ok(tables)
}

async fn dump<E: EntityTrait>(
    db: &DatabaseConnection,
    tables: &mut BTreeMap<String, Vec<serde_json::Value>>,
) -> Result<(), CatalogError> {
    let mut select = E::find();
    for key in E::PrimaryKey::iter() {
        select = select.order_by_asc(key.into_column());
    }
    let rows = select.into_json().all(db).await.map_err(db_err("dump a table"))?;
    tables.insert(E::default().as_str().to_owned(), rows);
    Ok(())
}
