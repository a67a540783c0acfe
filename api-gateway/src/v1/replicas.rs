//! Replicas: a live copy of a source kept nearly in step, with recovery points, measured lag
//! (RPO), failover to a point and failback. The data work runs as jobs of the transport
//! service; this is where they are asked for.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use arca_domain::Lifecycle;
use arca_domain::job::{Job, JobCommand};
use arca_domain::replica::{Replica, ReplicaCommand};
use arca_domain::source::Source;
use arca_domain::target::Target;
use arca_events::{AggregateType, JobId, JobKind, ReplicaDestination, ReplicaId, Trigger};
use arca_worker::ids::replicate_job_id;
use arca_worker::runner::start_job;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Data, ListParams, Result, StartedJob, TenantParams, list};
use crate::auth::Authorized;
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};

/// Where a replica is kept.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReplicaTo {
    /// A folder (absolute path) on the host of the transport worker that reads the source:
    /// the live copy in `<path>/live`, recovery points in `<path>/points`.
    Directory {
        #[schema(min_length = 2, example = "/srv/standby/www")]
        path: String,
    },
    /// An S3 or Azure target of the tenant: recovery points only (snapshots in its repository,
    /// restorable like any other); failed over by restoring one.
    Target { target: Uuid },
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "www standby",
    "source": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "destination": { "type": "directory", "path": "/srv/standby/www" },
    "rpo_seconds": 60,
    "keep_points": 24
}))]
pub struct CreateReplica {
    #[schema(min_length = 1)]
    pub name: String,
    /// A source with one folder or one disk image.
    pub source: Uuid,
    pub destination: ReplicaTo,
    /// The recovery point objective: a lag above it raises `ReplicaLagExceeded`.
    #[serde(default = "default_rpo")]
    #[schema(minimum = 1, maximum = 86_400, default = 60)]
    pub rpo_seconds: u64,
    /// Recovery points kept (newest first).
    #[serde(default = "default_points")]
    #[schema(minimum = 1, maximum = 10_000, default = 24)]
    pub keep_points: u32,
}

fn default_rpo() -> u64 {
    60
}

fn default_points() -> u32 {
    24
}

/// A new replica and the job that follows its source.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreatedReplica {
    pub id: Uuid,
    pub job: Uuid,
}

/// Create a replica (tenant admins): its job makes a full copy, then follows every change.
#[utoipa::path(post, path = "/v1/replicas", tag = "replicas", request_body = CreateReplica, params(TenantParams),
    responses((status = 201, body = CreatedReplica), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_replica(
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreateReplica>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    if !(1..=86_400).contains(&body.rpo_seconds) {
        return Err(ApiError::bad_request("invalid", "rpo_seconds is 1 to 86400").with_field("rpo_seconds"));
    }
    if !(1..=10_000).contains(&body.keep_points) {
        return Err(ApiError::bad_request("invalid", "keep_points is 1 to 10000").with_field("keep_points"));
    }
    let (source, _) = state.store.load_state::<Source>(auth.tenant, body.source).await?;
    if source.status != Lifecycle::Active {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("source `{}` does not exist", body.source),
        )
        .with_field("source"));
    }
    let destination = match body.destination {
        ReplicaTo::Directory { path } => ReplicaDestination::Directory { path },
        ReplicaTo::Target { target } => {
            let (found, _) = state.store.load_state::<Target>(auth.tenant, target).await?;
            if found.status != Lifecycle::Active {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    format!("target `{target}` does not exist"),
                )
                .with_field("destination.target"));
            }
            ReplicaDestination::Target { target: target.into() }
        }
    };
    let command = ReplicaCommand::Create {
        name: body.name,
        source: body.source.into(),
        destination,
        rpo_seconds: body.rpo_seconds,
        keep_points: body.keep_points,
    };
    let id = ReplicaId::new();
    let meta = command_metadata();
    state.store.execute::<Replica>(auth.tenant, id, &command, &meta).await?;
    let job = replicate_job_id(id, 0);
    let request = JobCommand::request(JobKind::Replicate, Trigger::Replica { replica: id })
        .with_source(body.source.into())
        .with_site(source.site.clone());
    start_job(&state.store, auth.tenant, job, &request, &meta).await?;
    Ok(HttpResponse::Created().json(CreatedReplica { id: id.into(), job: job.into() }))
}

/// List replicas with their last recovery point and lag.
#[utoipa::path(get, path = "/v1/replicas", tag = "replicas", params(ListParams),
    responses((status = 200, body = super::Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_replicas(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "replicas", Some(auth), &page, json!({})).await
}

/// One replica: status, last point, lag (`lag_ms`), when lag last exceeded the RPO.
#[utoipa::path(get, path = "/v1/replicas/{id}", tag = "replicas",
    params(("id" = Uuid, Path, description = "The replica"), TenantParams),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn get_replica(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    super::get(&state, "replicas", AggregateType::Replica, auth, id.into_inner()).await
}

async fn active(state: &Data, auth: &Authorized, id: Uuid) -> Result<Replica> {
    let (replica, _) = state.store.load_state::<Replica>(auth.tenant, id).await?;
    if replica.status != Lifecycle::Active {
        return Err(ApiError::not_found());
    }
    Ok(replica)
}

async fn start_replica_job(
    state: &Data,
    auth: &Authorized,
    replica: ReplicaId,
    kind: JobKind,
    site: Option<String>,
) -> Result<JobId> {
    let job = JobId::new();
    let request = JobCommand::request(kind, Trigger::Replica { replica }).with_site(site);
    start_job(&state.store, auth.tenant, job, &request, &command_metadata()).await?;
    Ok(job)
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "point": "9f2c4e…" }))]
pub struct Failover {
    /// A kept recovery point (`last_point` of the replica, or an older one to roll back to);
    /// the newest when left out.
    #[schema(min_length = 1)]
    pub point: Option<String>,
}

/// Fail a folder replica over (operators and up): it stops following the source and the
/// chosen recovery point becomes its live copy, writable. A job does the swap; follow it.
#[utoipa::path(post, path = "/v1/replicas/{id}/failover", tag = "replicas", request_body = Failover,
    params(("id" = Uuid, Path, description = "The replica"), TenantParams),
    responses((status = 202, body = StartedJob), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn fail_over(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
    body: Option<web::Json<Failover>>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    let work = async {
        let replica = active(&state, &auth, id).await?;
        let point = match &body.point {
            Some(point) => point.clone(),
            None => match replica.latest_point() {
                Some(latest) => latest.point.clone(),
                None => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "no_point",
                        "the replica has no recovery point yet",
                    ));
                }
            },
        };
        let meta = command_metadata();
        state.store.execute::<Replica>(auth.tenant, id, &ReplicaCommand::FailOver { point }, &meta).await?;
        let job = start_replica_job(&state, &auth, id.into(), JobKind::Failover, None).await?;
        Ok((StatusCode::ACCEPTED, json!(StartedJob { job: job.into() })))
    };
    state.idempotency.answer(&req, &auth, &body, work).await
}

/// Fail a replica back (operators and up): the live copy, with what changed while failed over,
/// is copied back over the source, and the replica follows the source again.
#[utoipa::path(post, path = "/v1/replicas/{id}/failback", tag = "replicas",
    params(("id" = Uuid, Path, description = "The replica"), TenantParams),
    responses((status = 202, body = StartedJob), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn fail_back(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let work = async {
        let replica = active(&state, &auth, id).await?;
        if !replica.is_failed_over() {
            return Err(ApiError::new(StatusCode::CONFLICT, "illegal_transition", "the replica is not failed over"));
        }
        let job = start_replica_job(&state, &auth, id.into(), JobKind::Failback, None).await?;
        Ok((StatusCode::ACCEPTED, json!(StartedJob { job: job.into() })))
    };
    state.idempotency.answer(&req, &auth, &(), work).await
}

/// Delete a replica (tenant admins): it stops following; its folder is left as it is.
#[utoipa::path(delete, path = "/v1/replicas/{id}", tag = "replicas",
    params(("id" = Uuid, Path, description = "The replica"), TenantParams),
    responses((status = 204, description = "Deleted"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn delete_replica(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = id.into_inner();
    let replica = active(&state, &auth, id).await?;
    let meta = command_metadata();
    state.store.execute::<Replica>(auth.tenant, id, &ReplicaCommand::Delete, &meta).await?;
    let cancel = JobCommand::Cancel { reason: Some("the replica was deleted".into()) };
    let follower = replicate_job_id(id.into(), replica.failbacks);
    match state.store.execute::<Job>(auth.tenant, follower, &cancel, &meta).await {
        Ok(_) | Err(arca_bus::ExecuteError::Domain(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(HttpResponse::NoContent().finish())
}
