//! Storage targets through Apache OpenDAL: a URL names the target, options carry the
//! endpoint and credentials, and [`Backend`] gives the engine a small synchronous API
//! over the async operator (it owns a small Tokio runtime for the IO).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use crate::error::{Error, Result};

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `fs:///abs/path`
    Fs { path: PathBuf },
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `azblob://container/prefix`
    Azblob { container: String, prefix: String },
}

impl Target {
    /// Parses `fs:///abs/path`, `s3://bucket/prefix` or `azblob://container/prefix`.
    pub fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| Error::InvalidTarget(format!("`{url}`: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected fs:///abs/path, s3://bucket/prefix or azblob://container/prefix"))?;
        match scheme {
            "fs" | "file" => {
                if !rest.starts_with('/') {
                    return Err(bad("a filesystem path must be absolute (fs:///abs/path)"));
                }
                Ok(Target::Fs { path: PathBuf::from(rest) })
            }
            "s3" | "azblob" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("the bucket or container name is missing"));
                }
                let prefix = prefix.trim_matches('/').to_string();
                if scheme == "s3" {
                    Ok(Target::S3 { bucket: bucket.to_string(), prefix })
                } else {
                    Ok(Target::Azblob { container: bucket.to_string(), prefix })
                }
            }
            other => Err(bad(&format!("unknown scheme `{other}`"))),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fs { path } => write!(f, "fs://{}", path.display()),
            Target::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Target::Azblob { container, prefix } => write!(f, "azblob://{container}/{prefix}"),
        }
    }
}

/// Endpoint and credentials for object stores. Secrets are never printed (see `Debug`).
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetOptions {
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub azure_endpoint: Option<String>,
    pub azure_account: Option<String>,
    pub azure_key: Option<String>,
}

impl std::fmt::Debug for TargetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetOptions")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("azure_endpoint", &self.azure_endpoint)
            .field("azure_account", &self.azure_account)
            .finish_non_exhaustive()
    }
}

impl TargetOptions {
    /// Reads the usual variables: `AWS_ENDPOINT_URL`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AZURE_STORAGE_ENDPOINT`,
    /// `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY`.
    pub fn from_env() -> Self {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(env: &HashMap<String, String>) -> Self {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        TargetOptions {
            s3_endpoint: get("AWS_ENDPOINT_URL_S3").or_else(|| get("AWS_ENDPOINT_URL")),
            s3_region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            s3_access_key_id: get("AWS_ACCESS_KEY_ID"),
            s3_secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            azure_endpoint: get("AZURE_STORAGE_ENDPOINT"),
            azure_account: get("AZURE_STORAGE_ACCOUNT"),
            azure_key: get("AZURE_STORAGE_KEY"),
        }
    }

    /// Fields set in `self` win over those in `fallback`.
    pub fn or(self, fallback: TargetOptions) -> TargetOptions {
        TargetOptions {
            s3_endpoint: self.s3_endpoint.or(fallback.s3_endpoint),
            s3_region: self.s3_region.or(fallback.s3_region),
            s3_access_key_id: self.s3_access_key_id.or(fallback.s3_access_key_id),
            s3_secret_access_key: self.s3_secret_access_key.or(fallback.s3_secret_access_key),
            azure_endpoint: self.azure_endpoint.or(fallback.azure_endpoint),
            azure_account: self.azure_account.or(fallback.azure_account),
            azure_key: self.azure_key.or(fallback.azure_key),
        }
    }
}

/// One listed object: its path relative to the listed folder and its size.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// The engine's view of a target: whole-object reads and writes, ranges, lists, deletes.
#[derive(Clone)]
pub struct Backend {
    op: Operator,
    rt: Arc<IoRuntime>,
    target: Target,
}

/// The backend's runtime. Dropping a Tokio runtime the usual way blocks, which panics inside
/// async code; a backend (and the repository holding it) is often dropped there, long after
/// its last request, so this one shuts down in the background.
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for IoRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the runtime lives until the backend is dropped")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Retries of one storage request before it fails (`ARCA_STORAGE_RETRIES`, default 6: about a
/// minute of backoff). Services also retry whole jobs, so they may set it lower.
fn storage_retries() -> usize {
    std::env::var("ARCA_STORAGE_RETRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

fn install_process_defaults() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Two TLS crypto providers may be linked in; pick ring explicitly (see NOTES.md).
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

impl Backend {
    /// Connects to `target` (nothing is read or written yet).
    pub fn open(target: &Target, options: &TargetOptions) -> Result<Backend> {
        install_process_defaults();
        let missing = |what: &str| Error::InvalidTarget(format!("{target}: {what} is not set"));
        let to_err = |e: opendal::Error| Error::InvalidTarget(format!("{target}: {e}"));
        let op = match target {
            Target::Fs { path } => {
                let root = path.to_str().ok_or_else(|| Error::InvalidTarget("path is not UTF-8".into()))?;
                let tmp = path.join(".tmp");
                let builder = opendal::services::Fs::default()
                    .root(root)
                    // Writes land in a temporary file first and are renamed into place,
                    // so a killed writer never leaves a half-written object.
                    .atomic_write_dir(tmp.to_str().expect("checked UTF-8 above"));
                Operator::new(builder).map_err(to_err)?
            }
            Target::S3 { bucket, prefix } => {
                let mut builder = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(options.s3_region.as_deref().unwrap_or("us-east-1"))
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(endpoint) = &options.s3_endpoint {
                    builder = builder.endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) = (&options.s3_access_key_id, &options.s3_secret_access_key) {
                    builder = builder.access_key_id(id).secret_access_key(secret);
                } else {
                    return Err(missing("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"));
                }
                Operator::new(builder).map_err(to_err)?
            }
            Target::Azblob { container, prefix } => {
                let account = options.azure_account.as_deref().ok_or_else(|| missing("AZURE_STORAGE_ACCOUNT"))?;
                let key = options.azure_key.as_deref().ok_or_else(|| missing("AZURE_STORAGE_KEY"))?;
                let endpoint = options
                    .azure_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
                let builder = opendal::services::Azblob::default()
                    .container(container)
                    .root(&format!("/{prefix}"))
                    .endpoint(&endpoint)
                    .account_name(account)
                    .account_key(key);
                Operator::new(builder).map_err(to_err)?
            }
        };
        let op = op
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)).with_io_timeout(Duration::from_secs(60)))
            .layer(RetryLayer::new().with_jitter().with_max_times(storage_retries()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arca-io")
            .enable_all()
            .build()
            .map_err(Error::io("start IO runtime", PathBuf::new()))?;
        Ok(Backend { op, rt: Arc::new(IoRuntime(Some(rt))), target: target.clone() })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Pack uploads worth keeping in flight (each holds a pack in memory): on a local disk
    /// two, so one pack's fsync overlaps the next pack's writing; an object store hides its
    /// latency with several.
    pub fn write_concurrency(&self) -> usize {
        match self.target {
            Target::Fs { .. } => 2,
            Target::S3 { .. } | Target::Azblob { .. } => 4,
        }
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    fn storage_err(op: &'static str, path: &str) -> impl FnOnce(opendal::Error) -> Error {
        let object = path.to_string();
        move |source| Error::Storage { op, object, source: Box::new(source) }
    }

    /// Reads a whole object.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.rt.block_on(read_async(&self.op, path))
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let op = &self.op;
        self.rt.block_on(async {
            let buf = op.read_with(path).range(offset..offset + len).await.map_err(Self::storage_err("read", path))?;
            if buf.len() as u64 != len {
                return Err(Error::corrupt(path, format!("short read: {} of {len} bytes at {offset}", buf.len())));
            }
            Ok(buf.to_vec())
        })
    }

    /// Whether the object exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.rt.block_on(async {
            match self.op.stat(path).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Self::storage_err("stat", path)(e)),
            }
        })
    }

    /// The object's size in bytes.
    pub fn size(&self, path: &str) -> Result<u64> {
        self.rt.block_on(async {
            match self.op.stat(path).await {
                Ok(meta) => Ok(meta.content_length()),
                Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound(format!("object `{path}`"))),
                Err(e) => Err(Self::storage_err("stat", path)(e)),
            }
        })
    }

    /// When the object was last written, by the store's clock.
    pub fn modified(&self, path: &str) -> Result<chrono::DateTime<chrono::Utc>> {
        self.rt.block_on(async {
            let meta = match self.op.stat(path).await {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::NotFound(format!("object `{path}`"))),
                Err(e) => return Err(Self::storage_err("stat", path)(e)),
            };
            let at =
                meta.last_modified().ok_or_else(|| Error::corrupt(path, "the store reports no modification time"))?;
            let at = at.into_inner();
            chrono::DateTime::from_timestamp(at.as_second(), at.subsec_nanosecond().max(0) as u32)
                .ok_or_else(|| Error::corrupt(path, "modification time out of range"))
        })
    }

    /// Writes (or replaces) an object.
    pub fn write(&self, path: &str, data: Vec<u8>) -> Result<()> {
        self.rt.block_on(write_async(&self.op, path, data)).map_err(|e| self.no_space(e))
    }

    /// A storage error that says the target is full, as [`Error::NoSpace`].
    fn no_space(&self, error: Error) -> Error {
        no_space_on(&self.target.to_string(), error)
    }

    /// Fails at once, naming the target, when a filesystem target has less room than `bytes`
    /// (and a little more), instead of after the writes' retries.
    pub fn ensure_room_for(&self, bytes: u64) -> Result<()> {
        let Target::Fs { path } = &self.target else { return Ok(()) };
        let Ok(stat) = rustix::fs::statvfs(path) else { return Ok(()) };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let needed = bytes + (1 << 20);
        if free < needed {
            return Err(Error::NoSpace {
                target: self.target.to_string(),
                detail: format!("{free} bytes free, {needed} needed"),
            });
        }
        Ok(())
    }

    /// Writes an object only if none exists under that name; `Ok(false)` if one did.
    pub fn write_new(&self, path: &str, data: Vec<u8>) -> Result<bool> {
        if self.exists(path)? {
            return Ok(false);
        }
        self.rt.block_on(async {
            match self.op.write_with(path, data).if_not_exists(true).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(false),
                Err(e) => Err(Self::storage_err("write", path)(e)),
            }
        })
    }

    /// Starts writing an object in the background.
    pub(crate) fn spawn_write(&self, path: String, data: Vec<u8>) -> tokio::task::JoinHandle<Result<()>> {
        let (op, target) = (self.op.clone(), self.target.to_string());
        self.rt.spawn(async move { write_async(&op, &path, data).await.map_err(|e| no_space_on(&target, e)) })
    }

    /// Deletes an object; a missing one is not an error.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.rt.block_on(async { self.op.delete(path).await.map_err(Self::storage_err("delete", path)) })
    }

    /// Lists the objects (files only, recursively) under folder `dir` (e.g. `"data/"`).
    /// Names are relative to `dir`. A missing folder lists as empty.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        self.rt.block_on(async {
            let entries = match self.op.list_with(dir).recursive(true).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(Self::storage_err("list", dir)(e)),
            };
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                // The fs service lists the folder itself and sub-folders; object stores do not.
                if entry.metadata().is_dir() || entry.path().ends_with('/') {
                    continue;
                }
                let path = entry.path();
                let name = path.strip_prefix(dir).unwrap_or(path).to_string();
                out.push(Listed { name, size: entry.metadata().content_length() });
            }
            Ok(out)
        })
    }

    /// Runs several reads at once (up to `concurrency`), results in input order.
    pub fn read_many(&self, paths: &[String], concurrency: usize) -> Vec<Result<Vec<u8>>> {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        self.rt.block_on(async {
            let handles: Vec<_> = paths
                .iter()
                .map(|path| {
                    let op = self.op.clone();
                    let path = path.clone();
                    let sem = sem.clone();
                    self.rt.spawn(async move {
                        let _permit = sem.acquire().await.expect("semaphore is never closed");
                        read_async(&op, &path).await
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(handles.len());
            for handle in handles {
                out.push(handle.await.expect("read task panicked"));
            }
            out
        })
    }
}

async fn read_async(op: &Operator, path: &str) -> Result<Vec<u8>> {
    match op.read(path).await {
        Ok(buf) => Ok(buf.to_vec()),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound(format!("object `{path}`"))),
        Err(e) => Err(Backend::storage_err("read", path)(e)),
    }
}

/// Whether a storage error comes from a full disk (ENOSPC, EDQUOT).
fn no_space_on(target: &str, error: Error) -> Error {
    let Error::Storage { source, .. } = &error else { return error };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull || io.kind() == std::io::ErrorKind::QuotaExceeded)
        {
            return Error::NoSpace { target: target.to_string(), detail: io.to_string() };
        }
        cause = e.source();
    }
    error
}

async fn write_async(op: &Operator, path: &str, data: Vec<u8>) -> Result<()> {
    op.write(path, data).await.map(|_| ()).map_err(Backend::storage_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_url_kinds() {
        assert_eq!(Target::parse("fs:///a/b").unwrap(), Target::Fs { path: "/a/b".into() });
        assert_eq!(
            Target::parse("s3://bkt/some/prefix/").unwrap(),
            Target::S3 { bucket: "bkt".into(), prefix: "some/prefix".into() }
        );
        assert_eq!(
            Target::parse("azblob://ctr").unwrap(),
            Target::Azblob { container: "ctr".into(), prefix: String::new() }
        );
        for bad in ["fs://relative", "ftp://x/y", "s3:///nobucket", "/plain/path"] {
            assert!(Target::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let options = TargetOptions {
            s3_secret_access_key: Some("s3cr3t".into()),
            azure_key: Some("azk3y".into()),
            ..Default::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("azk3y"), "{shown}");
    }
}
