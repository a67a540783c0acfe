//! The replication engine: a [`mirror::Mirror`] keeps a destination folder (or image file)
//! equal to a source, writing only changed blocks, and [`follow::follow`] drives it from
//! file-system notifications (debounced) with periodic full rescans as the safety net. The
//! transport service runs it as a replica job and records recovery points beside the mirror.
//! A raw image that a running qemu has open can be followed through qemu's dirty bitmaps
//! instead ([`qemu::Tracked`]): a pass then reads only the blocks the guest wrote.

pub mod follow;
pub mod mirror;
pub mod nbd;
pub mod qemu;

pub use follow::{Behind, FollowSettings, Pass, Replicator, follow};
pub use mirror::{Mirror, SyncStats};
pub use qemu::{QemuDisk, Tracked};
