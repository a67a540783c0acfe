//! Opening databases: SQLite files in WAL mode, migrations that run once, bad URLs.

use arca_catalog::db::connect;
use arca_catalog::{CatalogError, Projector};
use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::*;

#[tokio::test]
async fn a_sqlite_file_uses_wal_and_keeps_its_data_across_connections() {
    let dir = std::env::temp_dir().join(format!("arca-catalog-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("catalog.db").display());

    let (history, _) = mixed_history(1, 3);
    let events = history.raw();
    {
        let db = connect(&url).await.unwrap();
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), "PRAGMA journal_mode")).await;
        let mode: String = row.unwrap().unwrap().try_get_by_index(0).unwrap();
        assert_eq!(mode, "wal");
        project(&db, &events, 50).await;
        db.close().await.unwrap();
    }
    // Connecting again runs no migration twice and finds the projection where it was.
    let db = connect(&url).await.unwrap();
    assert_eq!(Projector::new(db.clone()).last_sequence().await.unwrap(), events.len() as u64);
    db.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn postgres_migrations_run_once() {
    let pg = arca_testkit::postgres_database();
    let first = connect(&pg.url).await.unwrap();
    let (history, _) = mixed_history(1, 1);
    project(&first, &history.raw(), 500).await;
    let second = connect(&pg.url).await.unwrap();
    assert_eq!(Projector::new(second.clone()).last_sequence().await.unwrap(), history.envelopes.len() as u64);
    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn unusable_urls_are_typed_errors() {
    let error = connect("mysql://root:hunter2@db/catalog").await.unwrap_err();
    assert!(matches!(error, CatalogError::UnsupportedUrl { .. }), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");

    let error = connect("sqlite:///nonexistent/dir/catalog.db?mode=rwc").await.unwrap_err();
    assert!(matches!(error, CatalogError::Connect { .. }), "{error}");

    // Refused connections are retried until the timeout: a database that is down fails slowly.
    let error = connect("postgres://nobody:hunter2@127.0.0.1:1/catalog").await.unwrap_err();
    assert!(matches!(error, CatalogError::Connect { .. }), "{error}");
    assert!(error.is_retryable(), "the database may come back");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}
