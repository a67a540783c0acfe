//! The replication engine: a [`mirror::Mirror`] keeps a destination folder (or image file)
//! equal to a source, writing only changed blocks, and [`follow::follow`] drives it from
//! file-system notifications (debounced) with periodic full rescans as the safety net. The
//! transport service runs it as a replica job and records recovery points beside the mirror.

pub mod follow;
pub mod mirror;

pub use follow::{Behind, FollowSettings, Pass, Replicator, follow};
pub use mirror::{Mirror, SyncStats};
