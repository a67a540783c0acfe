//! Opening the catalog database and bringing its schema up to date.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;

use crate::error::CatalogError;
use crate::migration::Migrator;

/// Opens the database at `url` and runs pending migrations.
///
/// - `sqlite://path?mode=rwc` (a file, created if missing) or `sqlite::memory:`. Files use WAL
///   with `synchronous = NORMAL`: a crash may lose the last commits but never corrupts, and the
///   projection simply re-reads them from the stream. The catalog has no foreign keys.
/// - `postgres://user@host:port/db`.
///
/// Statement logging is off: sqlx would log every query at INFO.
pub async fn connect(url: &str) -> Result<DatabaseConnection, CatalogError> {
    let mut options = ConnectOptions::new(url.to_owned());
    // Connecting and waiting for a pooled connection share one timeout: a database that is down
    // fails `connect` after it, and the caller decides whether to retry.
    options.sqlx_logging(false).acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory {
            // Every connection of the pool shares one in-memory database, which disappears with
            // the last connection: keep exactly one, forever.
            options.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        } else {
            // One writer (the projector) and a few readers; WAL lets them run together.
            options.max_connections(4).min_connections(1);
        }
        options.map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
        });
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        options.max_connections(8);
    } else {
        return Err(CatalogError::UnsupportedUrl { url: redact(url) });
    }
    let db = Database::connect(options).await.map_err(|source| CatalogError::Connect { url: redact(url), source })?;
    Migrator::up(&db, None).await.map_err(CatalogError::Migrate)?;
    Ok(db)
}

/// `url` without the password, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let redacted = if user.len() == userinfo.len() { user.to_owned() } else { format!("{user}:***") };
            format!("{scheme}://{redacted}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://arca:s3cret@db:5432/catalog"), "postgres://arca:***@db:5432/catalog");
        assert_eq!(redact("postgres://postgres@127.0.0.1:5432/x"), "postgres://postgres@127.0.0.1:5432/x");
        assert_eq!(redact("sqlite://catalog.db?mode=rwc"), "sqlite://catalog.db?mode=rwc");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
