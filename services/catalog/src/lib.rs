//! The catalog service projects the event log into SQL read models (sea-orm) and
//! answers queries.
//!
//! - [`db::connect`] opens SQLite (`sqlite://path?mode=rwc`, `sqlite::memory:`) or PostgreSQL
//!   (`postgres://…`) and runs the [`migration::Migrator`].
//! - [`projector::Projector::apply_batch`] applies a batch of stream messages in one
//!   transaction that also stores the stream position: redeliveries are skipped, bad events
//!   recorded in `projection_errors` and skipped, every event gets an `audit_events` row.
//! - [`queries`] reads the [`entities`], always inside one tenant, with cursor pagination.
//! - [`files`] is the file index: each snapshot's paths as ranges of snapshots per series,
//!   filled from repositories ([`files::index_snapshot`], [`files::entries_from_repository`]),
//!   searched and browsed over the same queries.
//! - [`dump::dump_all`] dumps every table, to check that a rebuild equals the live projection.
//!
//! **Architecture Invariant**: read-model rows are a function of the events alone. Times come
//! from the envelopes, never the clock, and ids from the events, so projecting the stream again
//! (in any batch sizes) gives identical tables, and the read model can always be thrown away
//! and rebuilt. **No secret is stored**: targets know only whether they have credentials, API
//! keys only their hash.

pub mod api;
pub mod db;
pub mod dump;
pub mod entities;
pub mod error;
pub mod files;
pub mod indexer;
pub mod migration;
pub mod projector;
pub mod queries;
pub mod service;

pub use error::CatalogError;
pub use projector::{BatchOutcome, Projector, RawEvent};
