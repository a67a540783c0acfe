//! Arca's repository format and backup engine.
//!
//! # Layout of a repository
//!
//! | object | what |
//! |---|---|
//! | `config` | sealed with the master key: format version, repository id, the blob-id key, chunker parameters (with a secret seed), default zstd level, pack size |
//! | `keys/<id>` | JSON: Argon2id parameters and salt, the master key sealed with the passphrase-derived key; several keys may open one repository |
//! | `data/<xx>/<id>` | packs: sealed blobs followed by a sealed header listing them and its length (4 bytes LE); `<id>` is the BLAKE3 of the pack |
//! | `index/<id>` | sealed MessagePack: which blobs each pack holds and where |
//! | `snapshots/<id>` | sealed JSON manifest: time, host, paths, tags, root tree id, summary |
//! | `locks/<id>` | sealed leases: shared for backups, exclusive for prune |
//! | `gc/sweeps/<id>`, `gc/sweeps/<id>.done` | a prune's sweep record (sealed, refreshed while it runs) and its end |
//! | `gc/marks/<id>` | sealed MessagePack: the packs the last prune found unused, and since when |
//!
//! "Sealed" is zstd (when it helps) then AES-256-GCM with a random nonce; see [`crypto`].
//! Blob ids are keyed BLAKE3 of the plaintext. File content is cut by FastCDC (256 KiB
//! minimum, 1 MiB average, 4 MiB maximum), image content in fixed 4 MiB blocks; all-zero
//! chunks are holes, not stored. Each folder is one tree blob, so unchanged folders dedup.
//!
//! # Write order and crash safety
//!
//! Packs first, then the index files naming them, the snapshot last. A killed backup
//! leaves packs (indexed ones are reused by the next backup; unindexed ones are removed
//! by prune once their grace period is over) and never a snapshot that points at missing data.
//!
//! # Garbage collection and what may run together
//!
//! Leases (`locks/`, see [`lock`]) keep prune from starting while a backup writes, as a
//! courtesy; nothing depends on them for safety, because a lease can be lost (a holder
//! paused past [`lock::STALE_AFTER`]) or misjudged. What keeps every snapshot whole is the
//! protocol in [`gc`]:
//!
//! - **Two-phase deletion.** A prune records every pack nothing uses in a candidate mark
//!   (`gc/marks/`), with when it was first found unused by the store's clock; it deletes a
//!   pack only once it has stayed unused for the grace period across prunes. Unused packs
//!   stay indexed meanwhile, so a backup that uses their blobs again simply revives them.
//! - **Sweep records.** A prune writes `gc/sweeps/<id>` before it lists snapshots, keeps it
//!   fresh while it works, deletes only while its own heartbeat is recent, and writes
//!   `gc/sweeps/<id>.done` after its last delete.
//! - **Writers check before they commit.** A backup or copy lists the sweep records before it
//!   loads the index, and again before and after writing its snapshots. If no sweep that was
//!   unfinished at its start shows up, nothing it relies on was deleted: every prune that
//!   deleted anything in between would have written a record first. Otherwise it waits for
//!   those sweeps to end and checks that every blob its snapshots use is indexed in a pack
//!   that exists; if one is gone it removes the snapshots it wrote and fails with
//!   [`Error::DataRemoved`] (a file or image backup then runs once more and stores the data
//!   anew). A prune that starts after a snapshot is written lists it, so it keeps its data.
//! - **Deleted packs are remembered.** A sweep's `.done` record names every pack it deleted
//!   (later sweeps carry the list on for a week). A writer drops those packs from the index it
//!   loads: one that stalled between uploading a pack and indexing it may write an index file
//!   naming a pack a prune already deleted, and no sweep record would warn a later writer.
//! - **Prune refuses an incomplete index**: if a snapshot uses a blob no index file holds,
//!   or a pack with used blobs is missing, it deletes nothing and says how to repair.
//!
//! One backup B against one prune P, on a timeline (store operations are atomic and a list
//! sees every object written before it):
//!
//! | time | backup B | prune P | why B's snapshot is whole |
//! |---|---|---|---|
//! | t0 | lists `gc/sweeps/` (sees S0), then loads the index | | |
//! | t1 | dedups against pack X | writes `gc/sweeps/p` | |
//! | t2 | (paused for an hour) | lists snapshots, marks X unused since before the grace period, deletes X, writes `p.done` | |
//! | t3 | lists `gc/sweeps/`: `p` was not finished in S0 | | B must not trust its index |
//! | t4 | waits for `p.done`, finds X gone, writes no snapshot, runs again | | nothing unrestorable is recorded |
//!
//! Had P started after B wrote its snapshot, P would have listed it and kept X. Had P
//! finished before t0, B's index would not have listed X, or listed it only through an index
//! file written late, and `p.done` names X. Two assumptions are left: a delete request reaches
//! the store within half of [`gc::sweep_stale_after`] of the check that precedes it (a prune
//! whose heartbeat lapsed stops deleting), and no writer stalls for more than a week between
//! uploading a pack and writing the index file that names it (the next prune removes such a
//! file; a backup that ran in between could have trusted it).
//!
//! | | backup | restore / check / ls | forget | prune |
//! |---|---|---|---|---|
//! | backup | yes (they dedup through the index) | yes | yes | safe (see above); the lease makes prune wait |
//! | copy into | yes (like a backup) | yes | yes | safe (like a backup) |
//! | prune | safe; the lease makes prune wait | restore may fail and must be retried | yes | no (the lease) |
//!
//! A copy only reads its source, like restore (see [`copy`]).

pub mod backend;
pub mod backup;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod format;
pub mod gc;
pub mod lock;
pub mod packer;
pub mod pipeline;
pub mod prune;
pub mod reader;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod ticker;

pub use backend::{Backend, Target, TargetOptions};
pub use backup::{BackupOptions, BackupOutcome, BackupSource, NamedCommand, Progress, backup};
pub use error::{Error, Result};
pub use format::{BackupMode, BackupSummary, Node, NodeKind, RetentionPolicy, Snapshot, SourceKind, Tree};
pub use repository::{InitOptions, Repository, RepositoryIdentity};
