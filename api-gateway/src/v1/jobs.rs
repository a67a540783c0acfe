//! Jobs at work: cancel, live events (Server-Sent Events), and restores.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use arca_bus::jobs::progress_subject;
use arca_domain::Aggregate;
use arca_domain::job::{Job, JobCommand, JobStatus};
use arca_domain::restore::{Restore, RestoreCommand};
use arca_events::{
    AggregateRef, AggregateType, Envelope, JobId, JobKind, RestoreDestination, SnapshotId, TargetId, Trigger,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Data, ListParams, Result, StartedJob, TenantParams, list};
use crate::auth::Authorized;
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};

/// Cancel a job that has not ended (operators and up). A running job stops soon: a backup
/// stops reading and writes no snapshot; what it uploaded is reused by the next run.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job"), TenantParams),
    responses((status = 200, body = Object, description = "The job, now cancelled"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn cancel_job(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = JobId::from(id.into_inner());
    let work = async {
        let command = JobCommand::Cancel { reason: Some(format!("cancelled through the API by key {}", auth.key)) };
        let committed = state.store.execute::<Job>(auth.tenant, id, &command, &command_metadata()).await?;
        Ok((StatusCode::OK, json!({ "job": id, "status": committed.state.status.as_str() })))
    };
    state.idempotency.answer(&req, &auth, &(), work).await
}

/// Follow a job live: Server-Sent Events `state` (now, then at each change of the job),
/// `progress` (bytes, files, rate, ETA while it runs) and `end` (when it has ended), with a
/// comment line every 15 s to keep proxies from closing the stream.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job"), TenantParams),
    responses((status = 200, content_type = "text/event-stream", body = JobStreamEvent,
            description = "A stream of Server-Sent Events, each one as `JobStreamEvent` describes it"),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn job_events(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = JobId::from(id.into_inner());
    // Progress first, then the state and the events after it: nothing falls in between.
    let progress = state
        .bus
        .client()
        .subscribe(progress_subject(auth.tenant, id))
        .await
        .map_err(|_| ApiError::unavailable("the platform is not reachable; try again"))?;
    let (job, version) = state.store.load_state::<Job>(auth.tenant, id.as_uuid()).await?;
    if job.status == JobStatus::Missing {
        return Err(ApiError::not_found());
    }
    let first = frame("state", &job_state(&job, None));
    let mut sse = HttpResponse::Ok();
    sse.content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    if job.status.is_terminal() {
        let all = [first, frame("end", &json!({ "status": job.status.as_str() }))].concat();
        return Ok(sse.body(all));
    }
    let aggregate = AggregateRef::new(auth.tenant, AggregateType::Job, id);
    let events = arca_bus::follow::follow_aggregate(&state.bus, aggregate, version.stream_sequence).await?;
    let beats = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(15)).await;
        Some((Item::Beat, ()))
    });
    let merged = futures::stream::select(
        futures::stream::select(progress.map(|m| Item::Progress(m.payload)), events.map(Item::Event)),
        beats,
    );
    let updates = futures::stream::unfold(Some((Box::pin(merged), job)), |current| async move {
        let (mut merged, mut job) = current?;
        let bytes = match merged.next().await? {
            Item::Beat => Bytes::from_static(b": keep-alive\n\n"),
            Item::Progress(payload) => Bytes::from([b"event: progress\ndata: ", &payload[..], b"\n\n"].concat()),
            Item::Event(Ok(envelope)) => {
                if let Ok(event) = envelope.event() {
                    job.apply(&event);
                }
                let update = frame("state", &job_state(&job, Some(&envelope)));
                if job.status.is_terminal() {
                    let end = frame("end", &json!({ "status": job.status.as_str() }));
                    return Some((Ok([update, end].concat().into()), None));
                }
                update.into()
            }
            Item::Event(Err(e)) => {
                // The client reconnects and starts again from the job's state.
                tracing::warn!(error = %e, "a job's event stream broke");
                return None;
            }
        };
        Some((Ok::<_, actix_web::Error>(bytes), Some((merged, job))))
    });
    let body = futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(updates);
    Ok(sse.streaming(body))
}

/// One Server-Sent Event of a job's stream, as it is framed (`event: …`, `data: …`).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStreamEvent {
    pub event: JobStreamEventKind,
    /// A JSON object. `state`: the job's `status`, `attempt`, `worker`, `error`, `snapshot` and
    /// the `event` that changed it (`null` in the first); `progress`: bytes, files, rate, ETA;
    /// `end`: the final `status`.
    pub data: String,
}

/// What a job stream's event tells.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStreamEventKind {
    /// The job's state: first the current one, then at each change.
    State,
    /// How far a running job is.
    Progress,
    /// The job has ended; the stream closes.
    End,
}

enum Item {
    Beat,
    Progress(Bytes),
    Event(std::result::Result<Envelope, arca_bus::BusError>),
}

fn frame(event: &str, data: &Value) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

fn job_state(job: &Job, envelope: Option<&Envelope>) -> Value {
    json!({
        "event": envelope.map(|e| e.event_type.as_str()),
        "status": job.status.as_str(),
        "attempt": job.attempt,
        "worker": job.worker,
        "error": job.error,
        "snapshot": job.outcome.as_ref().and_then(|o| o.snapshot),
    })
}

// ---- Restores ----

/// Where a restore writes.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTo {
    /// A folder (absolute path) on the host of a recovery worker (of `site`, if given).
    Directory { path: String, site: Option<String> },
    /// Another target of the tenant: the snapshot is copied into its repository.
    Target { target: Uuid },
    /// A new PostgreSQL database (a snapshot of a `postgres` source): created by the restore,
    /// which refuses a name that exists, on the server the recovery worker (of `site`, if given)
    /// reaches through its `PG*` environment; the dump is restored with `pg_restore`.
    Database {
        /// The database to create: letters, digits, `_` and `-`, starting with a letter or `_`,
        /// at most 63 characters.
        #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_-]{0,62}$", example = "app_restored")]
        name: String,
        /// Which dump of the snapshot, by the name of the database it was taken from; needed
        /// only when the snapshot holds several.
        #[schema(min_length = 1, max_length = 63)]
        from: Option<String>,
        site: Option<String>,
    },
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({
        "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "paths": ["/home/ann/**"],
        "to": { "type": "directory", "path": "/srv/restore" }
    }),
    json!({ "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "to": { "type": "target", "target": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c" } }),
    json!({ "snapshot": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "to": { "type": "database", "name": "app_restored" } })
))]
pub struct CreateRestore {
    pub snapshot: Uuid,
    /// Only these paths (globs allowed); none restores everything.
    #[serde(default)]
    pub paths: Vec<String>,
    pub to: RestoreTo,
}

/// Restore a snapshot (operators and up): the whole snapshot or chosen paths, into a folder
/// or another target, where the result is verified against the snapshot; or a PostgreSQL
/// source's dump into a new database (never an existing one). Follow it as a job.
#[utoipa::path(post, path = "/v1/restores", tag = "restores", request_body = CreateRestore, params(TenantParams),
    responses((status = 202, body = StartedJob), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_restore(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreateRestore>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    let work = async {
        let snapshot = SnapshotId::from(body.snapshot);
        let (destination, site) = match &body.to {
            RestoreTo::Directory { path, site } => {
                if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        format!("`{path}` is not an absolute folder path without `..`"),
                    )
                    .with_field("to.path"));
                }
                (RestoreDestination::Directory { path: path.into(), site: site.clone() }, site.clone())
            }
            RestoreTo::Target { target } => (RestoreDestination::Target { target: TargetId::from(*target) }, None),
            RestoreTo::Database { name, from, site } => (
                RestoreDestination::Database { name: name.clone(), from: from.clone(), site: site.clone() },
                site.clone(),
            ),
        };
        let job = JobId::new();
        let meta = command_metadata();
        let restore = RestoreCommand::Request { snapshot, paths: body.paths.clone(), destination, job };
        state.store.execute::<Restore>(auth.tenant, job, &restore, &meta).await?;
        let command = JobCommand::request(JobKind::Restore, Trigger::Manual).with_snapshot(snapshot).with_site(site);
        arca_worker::runner::start_job(&state.store, auth.tenant, job, &command, &meta).await?;
        Ok((StatusCode::ACCEPTED, json!(StartedJob { job: job.into() })))
    };
    state.idempotency.answer(&req, &auth, &body, work).await
}

/// List restores, newest first.
#[utoipa::path(get, path = "/v1/restores", tag = "restores", params(ListParams),
    responses((status = 200, body = super::Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_restores(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "restores", Some(auth), &page, json!({})).await
}

/// One restore (its id is its job's id).
#[utoipa::path(get, path = "/v1/restores/{id}", tag = "restores",
    params(("id" = Uuid, Path, description = "The restore"), TenantParams),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn get_restore(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    super::get(&state, "restores", AggregateType::Restore, auth, id.into_inner()).await
}
