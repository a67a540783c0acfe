//! `jobs`: every backup, copy, verify, forget, prune, restore and replicate job.

use std::fmt;
use std::str::FromStr;

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `backup`, `copy`, `verify`, `forget`, `prune`, `restore` or `replicate`.
    pub kind: String,
    /// A [`JobStatus`]: `requested`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Why it was requested: `{"type": "schedule", "at": …}`, `{"type": "manual"}`, …
    #[sea_orm(column_type = "Text")]
    #[serde(serialize_with = "crate::entities::json_text")]
    pub trigger: String,
    pub policy_id: Option<Uuid>,
    pub source_id: Option<Uuid>,
    pub target_id: Option<Uuid>,
    /// The snapshot the job works on (verify, restore, …).
    pub snapshot_id: Option<Uuid>,
    /// `incremental`, `full` or `differential`, for backups.
    pub mode: Option<String>,
    pub site: Option<String>,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
    /// The latest attempt, from 1; 0 until started.
    pub attempt: i64,
    /// How many checkpoints were recorded.
    pub checkpoints: i64,
    pub bytes_done: i64,
    pub files_done: i64,
    pub packs_uploaded: i64,
    /// The snapshot a successful backup or copy produced.
    pub result_snapshot_id: Option<Uuid>,
    pub bytes_read: i64,
    pub bytes_added: i64,
    pub files: i64,
    pub duration_ms: i64,
    /// Why it failed, or why it was cancelled.
    pub error: Option<String>,
    /// The work queue gave up on it.
    pub dead_lettered: bool,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Where a job is in its life; stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Requested,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Requested, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];

    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Requested => "requested",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// True once the job can change no more.
    pub fn is_final(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`JobStatus`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a job status (expected requested, running, succeeded, failed or cancelled)")]
pub struct UnknownJobStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownJobStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| UnknownJobStatus(s.to_owned()))
    }
}
