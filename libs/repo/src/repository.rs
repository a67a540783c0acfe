//! Opening a repository: keys, config, sealed objects, the index, blobs and snapshots.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::backend::Backend;
use crate::crypto::{self, FLAG_ZSTD, KdfParams, SealKey};
use crate::error::{Error, Result};
use crate::format::{
    BlobId, BlobKind, ChunkerParams, Config, IndexFile, KeyFile, REPO_VERSION, Snapshot, SnapshotMap, Tree, from_json,
    from_msgpack, to_msgpack,
};

/// The object names inside a repository.
pub mod paths {
    pub const CONFIG: &str = "config";
    pub const KEYS: &str = "keys/";
    pub const DATA: &str = "data/";
    pub const INDEX: &str = "index/";
    pub const SNAPSHOTS: &str = "snapshots/";
    pub const LOCKS: &str = "locks/";
    /// Garbage collection's sweep records and candidate marks (see [`crate::gc`]).
    pub const SWEEPS: &str = "gc/sweeps/";
    pub const MARKS: &str = "gc/marks/";

    pub fn pack(id: &str) -> String {
        format!("data/{}/{id}", &id[..2])
    }
}

thread_local! {
    /// One zstd context per thread, reused for every blob (creating one is not free).
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd decompression context"));
}

/// Settings chosen at `init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub compression_level: i32,
    pub kdf: KdfParams,
    /// Sealed-pack target size in bytes.
    pub pack_size: u32,
    /// The blob-id key and chunker seed (random when `None`). Repositories created with the
    /// same identity give equal content equal blob ids, so a copy between them moves only the
    /// blobs the destination lacks; the services derive one identity per tenant.
    pub identity: Option<RepositoryIdentity>,
}

/// What makes two repositories' blob ids comparable: the keyed-hash key and the chunker seed.
#[derive(Clone)]
pub struct RepositoryIdentity {
    pub id_key: [u8; 32],
    pub chunker_seed: u64,
}

impl std::fmt::Debug for RepositoryIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryIdentity").finish_non_exhaustive()
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { compression_level: 3, kdf: KdfParams::from_env_or_default(), pack_size: 16 << 20, identity: None }
    }
}

/// A key as `key list` shows it (never the key material).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub hostname: String,
    pub username: String,
    /// This key opened the repository in this session.
    pub current: bool,
    /// The key file cannot be decoded (it opens nothing; remove it and add a new key).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// A pack known to the index.
#[derive(Clone, Debug)]
pub struct PackRecord {
    pub id: String,
    pub size: u64,
}

/// Every blob of the repository and where it is. When a blob is in two packs (two
/// writers stored it at once) the first one loaded is used; prune drops the others.
#[derive(Default, Clone)]
pub struct Index {
    pub packs: Vec<PackRecord>,
    pub blobs: HashMap<BlobId, Location>,
    /// Pack id → entries, as the index files list them (used by check and prune).
    pub pack_entries: HashMap<String, Vec<crate::format::PackEntry>>,
    /// Names of the index files this was loaded from.
    pub files: Vec<String>,
    /// Index files that could not be read (name, why); their packs were indexed from the
    /// packs' own headers instead (see [`Repository::load_index`]).
    pub damaged: Vec<Damaged>,
    /// Packs a finished prune deleted: an index file written late may still name them, so
    /// they are never trusted (see [`crate::gc::WriteGuard::trusted`]).
    pub ghosts: std::collections::HashSet<String>,
}

/// A stored object that cannot be read (it fails authentication or does not decode).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Damaged {
    pub object: String,
    pub reason: String,
}

impl Damaged {
    fn from_error(object: &str, error: &Error) -> Damaged {
        let reason = match error {
            Error::Corrupt { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        Damaged { object: object.to_string(), reason }
    }
}

impl Index {
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &BlobId) -> Option<(&PackRecord, Location)> {
        self.blobs.get(id).map(|loc| (&self.packs[loc.pack as usize], *loc))
    }

    /// Adds the packs of one index file.
    pub fn add_file(&mut self, name: String, file: IndexFile) {
        self.files.push(name);
        self.add_packs(file.packs);
    }

    /// This index without the packs in `ghosts` (which it remembers).
    pub fn without(self, ghosts: std::collections::HashSet<String>) -> Index {
        if !self.packs.iter().any(|p| ghosts.contains(&p.id)) {
            return Index { ghosts, ..self };
        }
        let mut trusted = Index { files: self.files, damaged: self.damaged, ..Index::default() };
        let mut entries = self.pack_entries;
        for pack in self.packs.into_iter().filter(|p| !ghosts.contains(&p.id)) {
            let entries = entries.remove(&pack.id).unwrap_or_default();
            trusted.add_packs(vec![crate::format::IndexedPack { id: pack.id, size: pack.size, entries }]);
        }
        Index { ghosts, ..trusted }
    }

    /// Adds packs that no index file names (read from the packs' own headers).
    pub fn add_packs(&mut self, packs: Vec<crate::format::IndexedPack>) {
        for pack in packs {
            if self.pack_entries.contains_key(&pack.id) {
                continue;
            }
            let pack_no = self.packs.len() as u32;
            for e in &pack.entries {
                self.blobs.entry(e.id).or_insert(Location {
                    pack: pack_no,
                    kind: e.kind,
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                });
            }
            self.packs.push(PackRecord { id: pack.id.clone(), size: pack.size });
            self.pack_entries.insert(pack.id, pack.entries);
        }
    }
}

/// An open repository: the target plus the keys that read and write it.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    master: [u8; 32],
    data_key: SealKey,
    id_key: [u8; 32],
    config: Config,
    key_id: String,
}

fn whoami() -> (String, String) {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let user = std::env::var("USER").unwrap_or_default();
    (host, user)
}

fn derive_data_key(master: &[u8; 32]) -> SealKey {
    SealKey::new(&blake3::derive_key("arca 2026-11 repository data key v1", master))
}

fn make_key_file(master: &[u8; 32], passphrase: &[u8], kdf: &KdfParams) -> Result<Vec<u8>> {
    let mut salt = [0u8; 16];
    crypto::random_bytes(&mut salt);
    let kek = crypto::derive_from_passphrase(passphrase, &salt, kdf)?;
    let (hostname, username) = whoami();
    let file = KeyFile {
        version: 1,
        created: chrono::Utc::now(),
        hostname,
        username,
        kdf: kdf.clone(),
        salt: B64.encode(salt),
        wrapped: B64.encode(SealKey::new(&kek).seal(0, master)),
    };
    Ok(serde_json::to_vec_pretty(&file).expect("key file serializes"))
}

fn unwrap_key_file(bytes: &[u8], passphrase: &[u8], name: &str) -> Result<Option<[u8; 32]>> {
    let file: KeyFile = from_json(bytes, name)?;
    let salt = B64.decode(&file.salt).map_err(|_| Error::corrupt(name, "bad salt"))?;
    let wrapped = B64.decode(&file.wrapped).map_err(|_| Error::corrupt(name, "bad wrapped key"))?;
    let kek = crypto::derive_from_passphrase(passphrase, &salt, &file.kdf)?;
    match SealKey::new(&kek).open(&wrapped, name) {
        Ok((_, master)) => {
            let master: [u8; 32] = master.try_into().map_err(|_| Error::corrupt(name, "master key is not 32 bytes"))?;
            Ok(Some(master))
        }
        Err(_) => Ok(None),
    }
}

impl Repository {
    /// Creates a new repository at the backend's target.
    pub fn init(backend: Backend, passphrase: &[u8], options: &InitOptions) -> Result<Repository> {
        if passphrase.is_empty() {
            return Err(Error::Refused("the passphrase must not be empty".into()));
        }
        // A repository exists once its config does. Keys without a config are strays of an
        // init that was interrupted between the two writes; they open nothing, so a new init
        // goes ahead beside them (and `open` skips them).
        if backend.exists(paths::CONFIG)? {
            return Err(Error::AlreadyInitialized(backend.target().to_string()));
        }
        let master = crypto::random_key();
        let identity = options.identity.clone().unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            crypto::random_bytes(&mut seed);
            RepositoryIdentity { id_key: crypto::random_key(), chunker_seed: u64::from_le_bytes(seed) }
        });
        let config = Config {
            version: REPO_VERSION,
            id: hex::encode(&crypto::random_key()[..16]),
            id_key: hex::encode(identity.id_key),
            chunker: ChunkerParams { min: 256 << 10, avg: 1 << 20, max: 4 << 20, seed: identity.chunker_seed },
            compression_level: options.compression_level,
            pack_size: options.pack_size,
        };
        let key_file = make_key_file(&master, passphrase, &options.kdf)?;
        let key_id = blake3::hash(&key_file).to_hex().to_string();
        // The key goes first and the config last: a repository exists once its config does.
        backend.write(&format!("{}{key_id}", paths::KEYS), key_file)?;
        let sealed = SealKey::new(&master).seal(0, &serde_json::to_vec(&config).expect("config serializes"));
        if !backend.write_new(paths::CONFIG, sealed)? {
            backend.delete(&format!("{}{key_id}", paths::KEYS))?;
            return Err(Error::AlreadyInitialized(backend.target().to_string()));
        }
        Ok(Self::from_parts(backend, master, config, key_id))
    }

    /// Opens an existing repository with a passphrase. Reads only; writes nothing.
    pub fn open(backend: Backend, passphrase: &[u8]) -> Result<Repository> {
        let config_bytes = match backend.read(paths::CONFIG) {
            Ok(bytes) => bytes,
            Err(Error::NotFound(_)) => return Err(Error::NotARepository(backend.target().to_string())),
            Err(e) => return Err(e),
        };
        let mut keys = backend.list(paths::KEYS)?;
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        // The error of a key that unwraps but does not open the config: a stray of an
        // interrupted init with the same passphrase (skipped), or a damaged config (reported
        // when no other key opens it).
        let mut unopened = None;
        // Key files that cannot be decoded: skipped, so they lock no other key out, and named
        // if no key opens.
        let mut damaged = Vec::new();
        for key in keys {
            let name = format!("{}{}", paths::KEYS, key.name);
            let bytes = match backend.read(&name) {
                Ok(bytes) => bytes,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let unwrapped = match unwrap_key_file(&bytes, passphrase, &name) {
                Ok(unwrapped) => unwrapped,
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!("skipping a damaged key file: {e}");
                    damaged.push(name);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(master) = unwrapped {
                let plain = match SealKey::new(&master).open(&config_bytes, paths::CONFIG) {
                    Ok((_, plain)) => plain,
                    Err(e) => {
                        unopened.get_or_insert(e);
                        continue;
                    }
                };
                let config: Config = from_json(&plain, paths::CONFIG)?;
                if config.version != REPO_VERSION {
                    return Err(Error::Refused(format!(
                        "repository version {} is not supported by this arca (it reads version {REPO_VERSION})",
                        config.version
                    )));
                }
                return Ok(Self::from_parts(backend, master, config, key.name));
            }
        }
        match (unopened, damaged.as_slice()) {
            (Some(e), _) => Err(e),
            (None, []) => Err(Error::WrongPassphrase),
            (None, damaged) => Err(Error::Corrupt {
                object: damaged.join(", "),
                reason: "the key file is damaged (it cannot be decoded), and no intact key opens with this \
                         passphrase: the passphrase is wrong, or its key is the damaged one"
                    .into(),
            }),
        }
    }

    fn from_parts(backend: Backend, master: [u8; 32], config: Config, key_id: String) -> Repository {
        let mut id_key = [0u8; 32];
        hex::decode_to_slice(&config.id_key, &mut id_key).expect("id key written by init is hex");
        Repository {
            inner: Arc::new(Inner { data_key: derive_data_key(&master), backend, master, id_key, config, key_id }),
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The keyed BLAKE3 id of a plaintext blob.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.inner.id_key, plaintext).as_bytes())
    }

    pub(crate) fn data_key(&self) -> &SealKey {
        &self.inner.data_key
    }

    // ------------------------------------------------------------------ keys

    /// Adds a key that opens the repository with another passphrase; returns its id.
    pub fn add_key(&self, passphrase: &[u8], kdf: &KdfParams) -> Result<String> {
        if passphrase.is_empty() {
            return Err(Error::Refused("the passphrase must not be empty".into()));
        }
        let key_file = make_key_file(&self.inner.master, passphrase, kdf)?;
        let key_id = blake3::hash(&key_file).to_hex().to_string();
        self.backend().write(&format!("{}{key_id}", paths::KEYS), key_file)?;
        Ok(key_id)
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for key in self.backend().list(paths::KEYS)? {
            let name = format!("{}{}", paths::KEYS, key.name);
            match from_json::<KeyFile>(&self.backend().read(&name)?, &name) {
                Ok(file) => out.push(KeyInfo {
                    current: key.name == self.inner.key_id,
                    id: key.name,
                    created: file.created,
                    hostname: file.hostname,
                    username: file.username,
                    damaged: false,
                }),
                // Listed, so it can be seen and removed.
                Err(Error::Corrupt { .. }) => out.push(KeyInfo {
                    current: false,
                    id: key.name,
                    created: chrono::DateTime::UNIX_EPOCH,
                    hostname: String::new(),
                    username: String::new(),
                    damaged: true,
                }),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes a key by id or unique id prefix. The last key can never be removed.
    pub fn remove_key(&self, id_or_prefix: &str) -> Result<String> {
        let keys = self.list_keys()?;
        let matching: Vec<_> = keys.iter().filter(|k| k.id.starts_with(id_or_prefix)).collect();
        let key = match matching.as_slice() {
            [] => return Err(Error::NotFound(format!("key `{id_or_prefix}`"))),
            [one] => *one,
            _ => return Err(Error::Ambiguous(id_or_prefix.to_string())),
        };
        if !key.damaged && keys.iter().filter(|k| !k.damaged).count() == 1 {
            return Err(Error::Refused("refusing to remove the last key: the repository would be lost".into()));
        }
        self.backend().delete(&format!("{}{}", paths::KEYS, key.id))?;
        Ok(key.id.clone())
    }

    // ------------------------------------------------------------------ sealed objects

    /// Seals (zstd + AES-GCM) and stores a small object; returns its content id.
    pub(crate) fn save_object(&self, dir: &str, plain: &[u8]) -> Result<String> {
        let compressed = zstd::bulk::compress(plain, 3).map_err(Error::io("compress", dir))?;
        let sealed = self.data_key().seal(FLAG_ZSTD, &compressed);
        let id = blake3::hash(&sealed).to_hex().to_string();
        self.backend().write(&format!("{dir}{id}"), sealed)?;
        Ok(id)
    }

    pub(crate) fn open_object(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let (flags, plain) = self.data_key().open(sealed, name)?;
        if flags & FLAG_ZSTD != 0 {
            zstd::stream::decode_all(plain.as_slice()).map_err(|e| Error::corrupt(name, format!("zstd: {e}")))
        } else {
            Ok(plain)
        }
    }

    pub(crate) fn load_object(&self, name: &str) -> Result<Vec<u8>> {
        let sealed = self.backend().read(name)?;
        self.open_object(name, &sealed)
    }

    // ------------------------------------------------------------------ index and blobs

    /// Reads every index file.
    pub fn load_index(&self) -> Result<Index> {
        let mut names: Vec<String> =
            self.backend().list(paths::INDEX)?.into_iter().map(|l| format!("{}{}", paths::INDEX, l.name)).collect();
        names.sort();
        let mut index = Index::default();
        let mut superseded = std::collections::HashSet::new();
        let mut files = Vec::new();
        for (name, bytes) in names.iter().zip(self.backend().read_many(&names, 16)) {
            let bytes = match bytes {
                Ok(bytes) => bytes,
                // Prune may have just removed a superseded index file.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match self.open_object(name, &bytes).and_then(|plain| from_msgpack::<IndexFile>(&plain, name)) {
                Ok(file) => {
                    superseded.extend(file.supersedes.iter().cloned());
                    files.push((name.clone(), file));
                }
                // One damaged file must not stop every backup and restore: its packs are read
                // from their headers below.
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!("index file {name} is damaged ({e}); indexing its packs from their headers");
                    index.damaged.push(Damaged::from_error(name, &e));
                }
                Err(e) => return Err(e),
            }
        }
        // Load newest-written (superseding) files first so their locations win.
        files.sort_by_key(|(name, _)| superseded.contains(name));
        for (name, file) in files {
            index.add_file(name, file);
        }
        if !index.damaged.is_empty() {
            let unindexed: Vec<(String, u64)> =
                self.list_packs()?.into_iter().filter(|(id, _)| !index.pack_entries.contains_key(id)).collect();
            let (packs, unreadable) = crate::packer::read_pack_headers(self, &unindexed);
            for (pack, why) in unreadable {
                tracing::warn!("pack {pack} is in no readable index file and its header cannot be read: {why}");
            }
            index.add_packs(packs);
        }
        Ok(index)
    }

    /// Every pack in the store: id → size as listed (0 where the store lists no sizes).
    pub fn list_packs(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        Ok(self
            .backend()
            .list(paths::DATA)?
            .into_iter()
            .filter_map(|l| l.name.rsplit('/').next().map(|id| (id.to_string(), l.size)))
            .collect())
    }

    /// Writes an index file; returns its name.
    pub(crate) fn save_index(&self, file: &IndexFile) -> Result<String> {
        let id = self.save_object(paths::INDEX, &to_msgpack(file))?;
        Ok(format!("{}{id}", paths::INDEX))
    }

    /// Decrypts, decompresses and authenticates one sealed blob.
    pub fn decode_blob(&self, id: &BlobId, sealed: &[u8], raw_length: u32) -> Result<Vec<u8>> {
        self.with_blob(id, &mut sealed.to_vec(), raw_length, |plain| plain.to_vec())
    }

    /// Like [`Repository::decode_blob`], but decrypts in `sealed`'s own buffer and lends the
    /// plaintext to `use_it`, sparing a copy on the restore path.
    pub fn with_blob<T>(
        &self,
        id: &BlobId,
        sealed: &mut [u8],
        raw_length: u32,
        use_it: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let what = || format!("blob {}", id.to_hex());
        let (flags, plain) = self.data_key().open_in_place(sealed, &what())?;
        let decompressed;
        let plain = if flags & FLAG_ZSTD != 0 {
            decompressed = DECOMPRESSOR
                .with_borrow_mut(|d| d.decompress(plain, raw_length as usize))
                .map_err(|e| Error::corrupt(what(), format!("zstd: {e}")))?;
            decompressed.as_slice()
        } else {
            plain
        };
        if self.blob_id(plain) != *id {
            return Err(Error::corrupt(what(), "content does not match its id"));
        }
        Ok(use_it(plain))
    }

    /// Reads one blob.
    pub fn read_blob(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        let (pack, loc) = index.get(id).ok_or_else(|| Error::NotFound(format!("blob {id} in the index")))?;
        let sealed = self.backend().read_range(&paths::pack(&pack.id), loc.offset as u64, loc.length as u64)?;
        self.decode_blob(id, &sealed, loc.raw_length)
    }

    // ------------------------------------------------------------------ snapshots

    /// Every snapshot that can be read, by id. A damaged snapshot file is skipped with a
    /// warning, so it stops no listing, backup, forget or restore of the others (prune and
    /// check use [`Repository::snapshots_checked`] and report it).
    pub fn snapshots(&self) -> Result<SnapshotMap> {
        let (snapshots, damaged) = self.snapshots_checked()?;
        for d in damaged {
            tracing::warn!("skipping damaged snapshot file {}: {}", d.object, d.reason);
        }
        Ok(snapshots)
    }

    /// Every snapshot that can be read, and the snapshot files that cannot.
    pub fn snapshots_checked(&self) -> Result<(SnapshotMap, Vec<Damaged>)> {
        let names: Vec<String> = self.backend().list(paths::SNAPSHOTS)?.into_iter().map(|l| l.name).collect();
        let full: Vec<String> = names.iter().map(|n| format!("{}{n}", paths::SNAPSHOTS)).collect();
        let mut out = SnapshotMap::new();
        let mut damaged = Vec::new();
        for ((id, name), bytes) in names.into_iter().zip(&full).zip(self.backend().read_many(&full, 16)) {
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match self.open_object(name, &bytes).and_then(|plain| from_json::<Snapshot>(&plain, name)) {
                Ok(snapshot) => {
                    out.insert(id, snapshot);
                }
                Err(e @ Error::Corrupt { .. }) => damaged.push(Damaged::from_error(name, &e)),
                Err(e) => return Err(e),
            }
        }
        Ok((out, damaged))
    }

    /// Finds a snapshot by id, unique id prefix, or `latest` (newest by time).
    pub fn find_snapshot(&self, id: &str) -> Result<(String, Snapshot)> {
        let all = self.snapshots()?;
        if id == "latest" {
            return all
                .into_iter()
                .max_by(|a, b| a.1.time.cmp(&b.1.time))
                .ok_or_else(|| Error::NotFound("snapshot `latest` (the repository has no snapshots)".into()));
        }
        let matching: Vec<_> = all.into_iter().filter(|(k, _)| k.starts_with(id)).collect();
        match matching.len() {
            0 => Err(Error::NotFound(format!("snapshot `{id}`"))),
            1 => Ok(matching.into_iter().next().expect("one element")),
            _ => Err(Error::Ambiguous(id.to_string())),
        }
    }

    /// Stores a snapshot manifest; returns its id.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<String> {
        self.save_object(paths::SNAPSHOTS, &serde_json::to_vec(snapshot).expect("snapshot serializes"))
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.backend().delete(&format!("{}{id}", paths::SNAPSHOTS))
    }
}

/// Reads trees, fetching each tree pack whole on first use: a snapshot's trees sit
/// together in a few packs, so walking it costs a few reads instead of one per folder.
pub struct TreeLoader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    packs: std::sync::Mutex<std::collections::VecDeque<(String, Arc<Vec<u8>>)>>,
}

const TREE_PACKS_CACHED: usize = 16;

impl<'a> TreeLoader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index) -> Self {
        TreeLoader { repo, index, packs: Default::default() }
    }

    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    pub fn load(&self, id: &BlobId) -> Result<Tree> {
        let (pack, loc) = self.index.get(id).ok_or_else(|| Error::NotFound(format!("tree {id} in the index")))?;
        let cached = {
            let packs = self.packs.lock().expect("tree cache poisoned");
            packs.iter().find(|(p, _)| *p == pack.id).map(|(_, bytes)| bytes.clone())
        };
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let bytes = Arc::new(self.repo.backend().read(&paths::pack(&pack.id))?);
                let mut packs = self.packs.lock().expect("tree cache poisoned");
                if packs.len() >= TREE_PACKS_CACHED {
                    packs.pop_front();
                }
                packs.push_back((pack.id.clone(), bytes.clone()));
                bytes
            }
        };
        let (start, end) = (loc.offset as usize, loc.offset as usize + loc.length as usize);
        let sealed =
            bytes.get(start..end).ok_or_else(|| Error::corrupt(paths::pack(&pack.id), "blob beyond pack end"))?;
        from_msgpack(&self.repo.decode_blob(id, sealed, loc.raw_length)?, &format!("tree {id}"))
    }
}
