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
//! by prune) and never a snapshot that points at missing data.
//!
//! # What may run together
//!
//! | | backup | restore / check / ls | forget | prune |
//! |---|---|---|---|---|
//! | backup | yes (they dedup through the index) | yes | yes | no |
//! | copy into | yes (like a backup) | yes | yes | no |
//! | prune | no | restore may fail and must be retried | yes | no |
//!
//! Backups and copies take a shared lease on the repository they write and prune an
//! exclusive one, so prune refuses to run while a backup or copy writes (see [`lock`]).
//! A copy only reads its source, like restore (see [`copy`]).

pub mod backend;
pub mod backup;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod format;
pub mod lock;
pub mod packer;
pub mod pipeline;
pub mod prune;
pub mod reader;
pub mod repository;
pub mod restore;
pub mod ticker;

pub use backend::{Backend, Target, TargetOptions};
pub use backup::{BackupOptions, BackupOutcome, BackupSource, NamedCommand, Progress, backup};
pub use error::{Error, Result};
pub use format::{BackupMode, BackupSummary, Node, NodeKind, RetentionPolicy, Snapshot, SourceKind, Tree};
pub use repository::{InitOptions, Repository, RepositoryIdentity};
