//! Getting data back without a full restore: image snapshots exported over NBD (instant
//! recovery, served by a recovery instance), single files with HTTP range requests and folders
//! as a streamed tar, both read by the gateway straight from the repository.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use arca_domain::export::{Export, ExportCommand, ExportStatus};
use arca_domain::job::{Job, JobCommand};
use arca_domain::snapshot::Snapshot;
use arca_events::{JobId, JobKind, SnapshotId, TargetId, TenantId, Trigger};
use arca_repo::reader::{FileReader, find_node};
use arca_repo::repository::Index;
use arca_repo::restore::walk_tree;
use arca_repo::{Node, NodeKind, Repository};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Data, ListParams, Result, TenantParams};
use crate::auth::Authorized;
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};

// ---- NBD exports ----

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "writable": false }))]
pub struct CreateExport {
    /// An image snapshot.
    pub snapshot: Uuid,
    /// Accept writes into a temporary overlay on the serving host (never into the repository).
    #[serde(default)]
    pub writable: bool,
    /// Served by a recovery instance of this site.
    #[schema(min_length = 1)]
    pub site: Option<String>,
}

/// A new export: the export name is shown only here.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreatedExport {
    pub id: Uuid,
    /// The job serving it; stopping the export cancels it.
    pub job: Uuid,
    /// The NBD export name a client asks for (`nbd://<address>/<export_name>`). Shown once.
    pub export_name: String,
}

/// An export as it is now.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ExportView {
    pub id: Uuid,
    pub snapshot: Uuid,
    pub writable: bool,
    /// `requested`, `serving`, `stopped` or `failed`.
    pub status: String,
    /// `host:port` of the NBD listener while serving.
    pub address: Option<String>,
    pub error: Option<String>,
}

/// Export an image snapshot over NBD (operators and up): a recovery instance serves it
/// read-only (or with a throw-away write overlay) straight from the repository, so a
/// hypervisor or `qemu-img` can read or boot it at once. Poll the export until it is
/// `serving`, then connect to `nbd://<address>/<export_name>`.
#[utoipa::path(post, path = "/v1/exports", tag = "exports", request_body = CreateExport, params(TenantParams),
    responses((status = 202, body = CreatedExport), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_export(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreateExport>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    let work = async {
        let snapshot = SnapshotId::from(body.snapshot);
        let (found, _) = state.store.load_state::<Snapshot>(auth.tenant, snapshot.as_uuid()).await?;
        if found.commit.is_none() || found.forgotten {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such snapshot").with_field("snapshot"));
        }
        let name = hex::encode(rand::random::<[u8; 24]>());
        let job = JobId::new();
        let meta = command_metadata();
        let request = ExportCommand::Request {
            snapshot,
            writable: body.writable,
            name_hash: blake3::hash(name.as_bytes()).to_hex().to_string(),
            job,
            site: body.site.clone(),
        };
        state.store.execute::<Export>(auth.tenant, job, &request, &meta).await?;
        let command =
            JobCommand::request(JobKind::Export, Trigger::Manual).with_snapshot(snapshot).with_site(body.site.clone());
        arca_worker::runner::start_job(&state.store, auth.tenant, job, &command, &meta).await?;
        let created = CreatedExport { id: job.into(), job: job.into(), export_name: name };
        Ok((StatusCode::ACCEPTED, json!(created)))
    };
    state.idempotency.answer(&req, &auth, &body, work).await
}

async fn load_export(state: &Data, auth: &Authorized, id: Uuid) -> Result<Export> {
    let (export, _) = state.store.load_state::<Export>(auth.tenant, id).await?;
    if export.status == ExportStatus::Missing {
        return Err(ApiError::not_found());
    }
    Ok(export)
}

fn view(id: Uuid, export: &Export) -> ExportView {
    ExportView {
        id,
        snapshot: export.snapshot.into(),
        writable: export.writable,
        status: export.status.as_str().into(),
        address: export.address.clone().filter(|_| export.status == ExportStatus::Serving),
        error: export.error.clone(),
    }
}

/// One page of exports; pass `next_cursor` as `cursor` for the next.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportPage {
    pub items: Vec<ExportView>,
    pub next_cursor: Option<String>,
}

/// List exports, newest first, stopped ones included (an export is its job: the catalog's
/// export jobs, each shown as its export).
#[utoipa::path(get, path = "/v1/exports", tag = "exports", params(ListParams),
    responses((status = 200, body = ExportPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_exports(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    let query = super::list_query(Some(auth), &page, json!({ "kind": JobKind::Export }))?;
    let jobs: super::Page = state.catalog("jobs.list", query).await?;
    let mut items = Vec::with_capacity(jobs.items.len());
    for job in &jobs.items {
        let Some(id) = job["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()) else { continue };
        let (export, _) = state.store.load_state::<Export>(auth.tenant, id).await?;
        if export.status != ExportStatus::Missing {
            items.push(view(id, &export));
        }
    }
    Ok(HttpResponse::Ok().json(ExportPage { items, next_cursor: jobs.next_cursor }))
}

/// One export.
#[utoipa::path(get, path = "/v1/exports/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "The export"), TenantParams),
    responses((status = 200, body = ExportView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn get_export(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let export = load_export(&state, &auth, id).await?;
    Ok(HttpResponse::Ok().json(view(id, &export)))
}

/// Stop an export (operators and up): its clients are disconnected and a write overlay is
/// thrown away.
#[utoipa::path(delete, path = "/v1/exports/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "The export"), TenantParams),
    responses((status = 202, body = ExportView, description = "Stopping (or already over)"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn stop_export(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let export = load_export(&state, &auth, id).await?;
    let meta = command_metadata();
    if !export.status.is_over() {
        let cancel = JobCommand::Cancel { reason: Some(format!("export stopped through the API by key {}", auth.key)) };
        match state.store.execute::<Job>(auth.tenant, export.job, &cancel, &meta).await {
            Ok(_) | Err(arca_bus::ExecuteError::Domain(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Not served yet: no recovery instance will record the stop, so record it here.
        if export.status == ExportStatus::Requested {
            let stop = ExportCommand::Stop { error: None };
            match state.store.execute::<Export>(auth.tenant, export.job, &stop, &meta).await {
                Ok(_) | Err(arca_bus::ExecuteError::Domain(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let export = load_export(&state, &auth, id).await?;
    Ok(HttpResponse::Accepted().json(view(id, &export)))
}

// ---- Files and folders ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContentParams {
    /// The file's (or folder's) path in the snapshot, e.g. `/home/ann/report.pdf`.
    #[param(min_length = 1, example = "/home/ann/report.pdf")]
    pub path: String,
    pub tenant: Option<Uuid>,
}

/// How a folder is packed for download.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    /// POSIX tar with PAX times: modes, owners, times to the nanosecond, symlinks.
    #[default]
    Tar,
    /// Zip (deflated, ZIP64 for large files): modes, times to two seconds, symlinks; no
    /// owners. Opens without extra tools on Windows and macOS.
    Zip,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ArchiveParams {
    /// The folder's (or file's) path in the snapshot, e.g. `/home/ann`.
    #[param(min_length = 1, example = "/home/ann")]
    pub path: String,
    /// `tar` unless asked.
    #[param(inline)]
    pub format: Option<ArchiveFormat>,
    pub tenant: Option<Uuid>,
}

/// Tenants' repositories opened for downloads, kept for a while: opening one derives its key
/// and loads its index, which a client's run of range requests would otherwise pay each
/// time. An entry that fails to find a snapshot or path (a snapshot newer than its index, a
/// prune since) is opened afresh.
#[derive(Default)]
pub struct OpenRepositories {
    open: Mutex<HashMap<(TenantId, TargetId), OpenRepository>>,
}

struct OpenRepository {
    repo: Repository,
    index: Arc<Index>,
    opened: Instant,
}

/// How long an opened repository is reused.
const KEEP_OPEN: Duration = Duration::from_secs(60);
/// The most repositories kept open at once (each holds its index in memory).
const MAX_OPEN: usize = 8;

impl OpenRepositories {
    fn get(&self, key: (TenantId, TargetId)) -> Option<(Repository, Arc<Index>)> {
        let open = self.open.lock().expect("open repositories");
        open.get(&key).filter(|o| o.opened.elapsed() < KEEP_OPEN).map(|o| (o.repo.clone(), o.index.clone()))
    }

    fn put(&self, key: (TenantId, TargetId), repo: Repository, index: Arc<Index>) {
        let mut open = self.open.lock().expect("open repositories");
        open.retain(|_, o| o.opened.elapsed() < KEEP_OPEN);
        if open.len() >= MAX_OPEN
            && let Some(oldest) = open.iter().min_by_key(|(_, o)| o.opened).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(key, OpenRepository { repo, index, opened: Instant::now() });
    }

    fn forget(&self, key: (TenantId, TargetId)) {
        self.open.lock().expect("open repositories").remove(&key);
    }
}

/// The repository and the node at a snapshot path, opened on the blocking pool.
async fn open_path(
    state: &Data,
    auth: &Authorized,
    snapshot: Uuid,
    path: String,
) -> Result<(Repository, Arc<Index>, Node, String)> {
    let (found, _) = state.store.load_state::<Snapshot>(auth.tenant, snapshot).await?;
    let Some(commit) = found.commit.filter(|_| !found.forgotten) else { return Err(ApiError::not_found()) };
    let Some(targets) = &state.targets else {
        return Err(ApiError::unavailable("this gateway has no server key, so it cannot read repositories"));
    };
    let spec = targets.describe(auth.tenant, commit.target).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot describe a snapshot's target");
        ApiError::unavailable("the snapshot's target cannot be read now")
    })?;
    let repo_snapshot = commit.repo_snapshot;
    let (repositories, key) = (state.repositories.clone(), (auth.tenant, commit.target));
    tokio::task::spawn_blocking(move || {
        let lookup = |repo: &Repository, index: &Index| -> arca_repo::Result<Node> {
            let (_, snapshot) = repo.find_snapshot(&repo_snapshot)?;
            find_node(repo, index, &snapshot, &path)
        };
        if let Some((repo, index)) = repositories.get(key) {
            match lookup(&repo, &index) {
                Ok(node) => return Ok((repo, index, node, path)),
                Err(_) => repositories.forget(key),
            }
        }
        let repo = spec.open()?;
        let index = Arc::new(repo.load_index()?);
        let node = lookup(&repo, &index)?;
        repositories.put(key, repo.clone(), index.clone());
        Ok((repo, index, node, path))
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("a repository thread stopped: {e}")))?
    .map_err(|e: arca_repo::Error| match e {
        arca_repo::Error::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what}")),
        arca_repo::Error::Refused(why) => ApiError::bad_request("invalid", why),
        e => {
            tracing::warn!(error = %e, "cannot read a snapshot");
            ApiError::unavailable("the snapshot cannot be read now")
        }
    })
}

/// A byte range `[start, end)` asked for with `Range: bytes=…`; `Err` when it cannot be
/// satisfied, `None` for no (or several) ranges: the whole file.
fn requested_range(req: &HttpRequest, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(value) = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().map_err(|_| ())?;
        if suffix == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size)
    } else {
        let start: u64 = first.parse().map_err(|_| ())?;
        let end = if last.is_empty() { size } else { last.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(size) };
        (start, end)
    };
    if range.0 >= size || range.0 >= range.1 { Err(()) } else { Ok(Some(range)) }
}

/// Streams what a blocking producer writes, in pieces of about `PIECE` bytes.
const PIECE: usize = 1 << 20;

struct ChannelWriter {
    sender: mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(PIECE)));
        self.sender.blocking_send(Ok(piece)).map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A response body fed by `produce` on the blocking pool; an error ends the stream early
/// (the client sees a truncated transfer, never wrong bytes).
fn streamed(
    produce: impl FnOnce(&mut ChannelWriter) -> std::io::Result<()> + Send + 'static,
) -> impl futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter { sender: sender.clone(), buffer: Vec::with_capacity(PIECE) };
        let result = produce(&mut writer).and_then(|()| writer.flush());
        if let Err(e) = result {
            tracing::warn!(error = %e, "a download stopped");
            let _ = sender.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) })
}

/// Reads `[offset, end)` of a file into `out`.
fn copy_range(reader: &FileReader, mut offset: u64, end: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut buffer = vec![0u8; PIECE];
    while offset < end {
        let take = (end - offset).min(PIECE as u64) as usize;
        let read = reader.read_at(offset, &mut buffer[..take]).map_err(std::io::Error::other)?;
        if read == 0 {
            break;
        }
        out.write_all(&buffer[..read])?;
        offset += read as u64;
    }
    Ok(())
}

/// Download one file of a snapshot (operators and up), straight from the repository, with
/// HTTP range requests (`Range: bytes=…`, answered `206` with `Content-Range`).
#[utoipa::path(get, path = "/v1/snapshots/{id}/content", tag = "snapshots",
    params(("id" = Uuid, Path, description = "The snapshot"), ContentParams),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "The whole file"),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>, description = "The range asked for"),
        (status = 416, body = Problem, content_type = "application/problem+json", description = "The range is outside the file"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn file_content(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    query: web::Query<ContentParams>,
) -> Result<HttpResponse> {
    let (repo, index, node, _) = open_path(&state, &auth, id.into_inner(), query.into_inner().path).await?;
    if node.kind != NodeKind::File {
        return Err(ApiError::bad_request(
            "not_a_file",
            "the path is a folder or a link; download folders as an archive",
        )
        .with_field("path"));
    }
    let reader = FileReader::new(repo, index, &node).map_err(|e| {
        tracing::warn!(error = %e, "cannot read a file of a snapshot");
        ApiError::unavailable("the file cannot be read now")
    })?;
    let size = reader.size();
    let (status, (start, end)) = match requested_range(&req, size) {
        Ok(Some(range)) => (StatusCode::PARTIAL_CONTENT, range),
        Ok(None) => (StatusCode::OK, (0, size)),
        Err(()) => {
            let response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            );
            let mut response = actix_web::ResponseError::error_response(&response);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header::HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            );
            return Ok(response);
        }
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .no_chunking(end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1)));
    }
    Ok(response.streaming(streamed(move |out| copy_range(&reader, start, end, out))))
}

/// Download a folder of a snapshot (operators and up) as an archive streamed straight from the
/// repository: a tar (the default) or a zip, with files, folders and symlinks.
#[utoipa::path(get, path = "/v1/snapshots/{id}/archive", tag = "snapshots",
    params(("id" = Uuid, Path, description = "The snapshot"), ArchiveParams),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>, description = "A tar archive of the folder"),
        (status = 200, content_type = "application/zip", body = Vec<u8>, description = "A zip archive of the folder (`format=zip`)"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn folder_archive(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    query: web::Query<ArchiveParams>,
) -> Result<HttpResponse> {
    let ArchiveParams { path, format, .. } = query.into_inner();
    let (repo, index, node, path) = open_path(&state, &auth, id.into_inner(), path).await?;
    let top = node.name_lossy();
    let format = format.unwrap_or_default();
    let (extension, content_type) = match format {
        ArchiveFormat::Tar => ("tar", "application/x-tar"),
        ArchiveFormat::Zip => ("zip", "application/zip"),
    };
    let filename = format!("{}.{extension}", top.replace(['"', '\\', '/'], "_"));
    let body = streamed(move |out| {
        let mut archive: Box<dyn Archive> = match format {
            ArchiveFormat::Tar => {
                let mut tar = tar::Builder::new(out);
                tar.follow_symlinks(false);
                Box::new(tar)
            }
            ArchiveFormat::Zip => Box::new(zip::ZipWriter::new_stream(out)),
        };
        archive.append(&repo, &index, top.as_bytes(), &node)?;
        if let Some(subtree) = node.subtree {
            let loader = arca_repo::repository::TreeLoader::new(&repo, &index);
            walk_tree(&loader, &subtree, top.as_bytes(), &mut |path, node| {
                archive.append(&repo, &index, path, node).map_err(|e| arca_repo::Error::Io {
                    op: "archive",
                    path: std::path::PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                    source: e,
                })?;
                Ok(true)
            })
            .map_err(std::io::Error::other)?;
        }
        archive.finish()
    });
    tracing::debug!(%path, ?format, "streaming a folder as an archive");
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")))
        .streaming(body))
}

/// An archive being written: nodes go in one by one, in the order of a walk.
trait Archive {
    /// Adds one node at `path` (relative, `/`-separated bytes).
    fn append(&mut self, repo: &Repository, index: &Arc<Index>, path: &[u8], node: &Node) -> std::io::Result<()>;

    /// Writes what ends the archive and flushes it.
    fn finish(self: Box<Self>) -> std::io::Result<()>;
}

impl<W: Write> Archive for tar::Builder<W> {
    fn append(&mut self, repo: &Repository, index: &Arc<Index>, path: &[u8], node: &Node) -> std::io::Result<()> {
        append_node(self, repo, index, path, node)
    }

    fn finish(self: Box<Self>) -> std::io::Result<()> {
        self.into_inner()?.flush()
    }
}

impl<W: Write> Archive for zip::ZipWriter<zip::write::StreamWriter<W>> {
    fn append(&mut self, repo: &Repository, index: &Arc<Index>, path: &[u8], node: &Node) -> std::io::Result<()> {
        let path = String::from_utf8_lossy(path.strip_prefix(b"/").unwrap_or(path)).into_owned();
        let options = zip::write::SimpleFileOptions::default()
            .unix_permissions(node.mode & 0o7777)
            .last_modified_time(zip_time(node.mtime_ns))
            // Deflate may grow incompressible data a little: ZIP64 well before 4 GiB.
            .large_file(node.size >= 0xF000_0000);
        match node.kind {
            NodeKind::Dir => self.add_directory(format!("{path}/"), options)?,
            NodeKind::Symlink => {
                let target = String::from_utf8_lossy(node.link_target.as_deref().unwrap_or_default()).into_owned();
                self.add_symlink(path, target, options)?;
            }
            NodeKind::File => {
                self.start_file(path, options.compression_method(zip::CompressionMethod::Deflated))?;
                let reader = FileReader::new(repo.clone(), index.clone(), node).map_err(std::io::Error::other)?;
                std::io::copy(&mut FileRead { reader, offset: 0 }, self)?;
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> std::io::Result<()> {
        zip::ZipWriter::finish(*self)?.into_inner().flush()
    }
}

/// A zip entry's time (local, to two seconds, 1980 to 2107) from nanoseconds since the epoch:
/// UTC is used, as the archive does not say which zone it is in.
fn zip_time(mtime_ns: i64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let at = chrono::DateTime::from_timestamp(mtime_ns.div_euclid(1_000_000_000), 0).unwrap_or_default();
    let part = |value: u32| u8::try_from(value).unwrap_or(0);
    u16::try_from(at.year())
        .ok()
        .and_then(|year| {
            zip::DateTime::from_date_and_time(
                year,
                part(at.month()),
                part(at.day()),
                part(at.hour()),
                part(at.minute()),
                part(at.second()),
            )
            .ok()
        })
        .unwrap_or_default()
}

/// Adds one node at `path` (relative, `/`-separated bytes) to the archive.
fn append_node<W: Write>(
    tar: &mut tar::Builder<W>,
    repo: &Repository,
    index: &Arc<Index>,
    path: &[u8],
    node: &Node,
) -> std::io::Result<()> {
    let path = String::from_utf8_lossy(path.strip_prefix(b"/").unwrap_or(path)).into_owned();
    // The header keeps whole seconds; a PAX record keeps the nanoseconds (GNU tar reads it).
    let mtime = format!("{}.{:09}", node.mtime_ns.div_euclid(1_000_000_000), node.mtime_ns.rem_euclid(1_000_000_000));
    tar.append_pax_extensions([("mtime", mtime.as_bytes())])?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode & 0o7777);
    header.set_uid(u64::from(node.uid));
    header.set_gid(u64::from(node.gid));
    header.set_mtime(u64::try_from(node.mtime_ns / 1_000_000_000).unwrap_or(0));
    match node.kind {
        NodeKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), std::io::empty())
        }
        NodeKind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = String::from_utf8_lossy(node.link_target.as_deref().unwrap_or_default()).into_owned();
            tar.append_link(&mut header, path, target)
        }
        NodeKind::File => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(node.size);
            let reader = FileReader::new(repo.clone(), index.clone(), node).map_err(std::io::Error::other)?;
            tar.append_data(&mut header, path, FileRead { reader, offset: 0 })
        }
    }
}

/// [`Read`] over a [`FileReader`] from the start.
struct FileRead {
    reader: FileReader,
    offset: u64,
}

impl Read for FileRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.reader.read_at(self.offset, buf).map_err(std::io::Error::other)?;
        self.offset += read as u64;
        Ok(read)
    }
}
