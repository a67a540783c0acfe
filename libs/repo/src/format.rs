//! The stored data structures: blob ids, pack headers, index files, trees, snapshots,
//! the repository config and key files. Encoded with MessagePack (named fields, so new
//! optional fields can be added) or JSON for the small, rarely read objects.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::KdfParams;
use crate::error::{Error, Result};

/// Version of the repository layout written in `config`.
pub const REPO_VERSION: u32 = 1;

/// The id of a blob: keyed BLAKE3 of its plaintext (the key is secret to the repository,
/// so ids say nothing about content to anyone without it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn parse(s: &str) -> Result<BlobId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::NotFound(format!("id `{s}`")))?;
        Ok(BlobId(out))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for BlobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; 32] =
            bytes.as_ref().try_into().map_err(|_| serde::de::Error::custom("blob id must be 32 bytes"))?;
        Ok(BlobId(arr))
    }
}

/// Which kind of blob: file data or a directory tree. They go to separate packs so
/// trees of a snapshot can be read without touching data packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

/// One blob in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Length of the plaintext after decompression.
    pub raw_length: u32,
}

/// The header sealed at the end of every pack: `[blobs…][sealed header][u32 LE header length]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackHeader {
    pub entries: Vec<PackEntry>,
}

/// A pack and the blobs it holds, as recorded in an index file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexedPack {
    /// Hex BLAKE3 of the whole pack file (its name under `data/`).
    pub id: String,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// An index file: which blobs each pack holds. `supersedes` names older index files
/// this one replaces (written by prune, so they can be deleted afterwards).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexedPack>,
    #[serde(default)]
    pub supersedes: Vec<String>,
}

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// A piece of file content: a blob, or (id `None`) a hole of zeros that is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef(pub Option<BlobId>, pub u32);

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The file name as raw bytes (names need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub link_target: Option<Vec<u8>>,
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(serde_bytes::Bytes::new(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

impl Node {
    /// The name as text for display (lossy for non-UTF-8 names).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// A name that is safe to join onto a directory: not empty, not `.` or `..`, no `/` or NUL.
    pub fn name_is_safe(&self) -> bool {
        !(self.name.is_empty()
            || self.name == b"."
            || self.name == b".."
            || self.name.contains(&b'/')
            || self.name.contains(&0))
    }
}

/// A directory: its entries sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// How a backup chose its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// Unchanged files (size, mtime, ctime, inode) are taken from the last snapshot.
    #[default]
    Incremental,
    /// Every file is read again (still deduplicated).
    Full,
    /// Unchanged files are taken from the last *full* snapshot.
    Differential,
}

/// What the snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Files,
    Image,
    Stream,
}

/// Counters a backup reports and the snapshot keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub bytes_read: u64,
    /// Bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// Sealed bytes of new blobs added to the repository.
    pub bytes_stored: u64,
    pub blobs_new: u64,
    pub warnings: u64,
    pub duration_ms: u64,
}

/// A snapshot manifest: written last, after every pack and index it needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: chrono::DateTime<chrono::Utc>,
    pub tree: BlobId,
    pub paths: Vec<String>,
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub source_kind: SourceKind,
    #[serde(default)]
    pub mode: BackupMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Some files could not be read; the rest is complete.
    #[serde(default)]
    pub partial: bool,
    #[serde(default)]
    pub summary: BackupSummary,
    /// Locked snapshots are kept by forget and prune until this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The platform job that wrote it, so a retried job finds the snapshot an earlier
    /// attempt wrote before it could be recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The repository config, sealed with the master key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    pub id: String,
    /// Key of the keyed BLAKE3 blob ids (hex).
    pub id_key: String,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u32,
}

/// FastCDC parameters; a secret seed hides content fingerprints in chunk sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub seed: u64,
}

/// A key file under `keys/`: the master key sealed with a passphrase-derived key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    pub username: String,
    pub kdf: KdfParams,
    /// Base64 salt.
    pub salt: String,
    /// Base64 sealed master key.
    pub wrapped: String,
}

/// A lease under `locks/`: backups hold shared ones, prune an exclusive one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockFile {
    pub exclusive: bool,
    pub hostname: String,
    /// The holder's random instance id (what names it; the pid alone never does).
    #[serde(default)]
    pub instance: String,
    /// The boot and PID namespace the pid belongs to (empty in leases of older versions).
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub pid_namespace: String,
    pub pid: u32,
    pub operation: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub refreshed: chrono::DateTime<chrono::Utc>,
}

/// Encodes a tree, pack header or index file as stored.
pub fn to_msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("in-memory values always serialize")
}

pub(crate) fn from_msgpack<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::corrupt(what, format!("cannot decode: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, format!("cannot decode: {e}")))
}

/// Which snapshots a forget keeps: the newest N overall and per hour, day, week, month, year.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// Snapshot id → snapshot, ordered by id.
pub type SnapshotMap = BTreeMap<String, Snapshot>;
