//! The catalog's integration tests: projection and queries against real databases. Every test
//! runs on SQLite and on PostgreSQL (`arca_testkit::postgres_database`).
//! Logs are silent unless `TEST_LOG` is set.

mod connect;
mod files;
mod helpers;
mod projection;
mod queries;
mod service;
