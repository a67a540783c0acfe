//! Value types that events carry. They are plain data: validation lives in `arca-domain`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{SecretId, TargetId};

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every tenant, and the tenants themselves.
    MspAdmin,
    /// Everything inside one tenant, including its keys.
    TenantAdmin,
    /// Run jobs and restores; read everything in the tenant.
    Operator,
    /// Read only.
    Viewer,
}

/// Where a repository lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Fs,
    S3,
    Azblob,
}

impl TargetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Fs => "fs",
            TargetKind::S3 => "s3",
            TargetKind::Azblob => "azblob",
        }
    }
}

/// A target's non-secret settings: endpoint, region, account name, … by kind.
pub type TargetSettings = BTreeMap<String, String>;

/// A reference to credentials sealed in the secret store. Events never carry the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    pub id: SecretId,
}

/// What a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Folders and files on a host.
    Files,
    /// A disk image file or block device, in fixed blocks.
    Image,
    /// A PostgreSQL database or cluster.
    Postgres,
}

/// When a policy fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// A cron expression (5 or 6 fields) evaluated in an IANA time zone.
    Cron { expression: String, timezone: String },
    /// Every `seconds` seconds (at least 60).
    Interval { seconds: u64 },
}

/// What to do with a firing that was missed (the scheduler was down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Forget missed firings; wait for the next one.
    #[default]
    Skip,
    /// Run once as soon as possible, however many were missed.
    RunOnce,
}

/// How a backup relates to earlier ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// Incremental forever: unchanged files are taken from the last snapshot.
    #[default]
    Incremental,
    /// Read everything again.
    Full,
    /// Changes since the last full backup.
    Differential,
}

/// Which snapshots a policy keeps. `None` means the rule is not used; all `None` keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// True when no rule is set: every snapshot is kept.
    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }
}

/// The kinds of work the job queue carries (`arca.job.<kind>[.<site>]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Backup,
    Copy,
    Verify,
    Forget,
    Prune,
    Restore,
    Replicate,
    /// Serve an image snapshot over NBD until stopped (instant recovery).
    Export,
    /// Make a replica's recovery point the live copy.
    Failover,
    /// Copy a failed-over replica's changes back to the source, then follow it again.
    Failback,
}

impl JobKind {
    pub const ALL: [JobKind; 10] = [
        JobKind::Backup,
        JobKind::Copy,
        JobKind::Verify,
        JobKind::Forget,
        JobKind::Prune,
        JobKind::Restore,
        JobKind::Replicate,
        JobKind::Export,
        JobKind::Failover,
        JobKind::Failback,
    ];

    /// The subject token: `backup`, `copy`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Copy => "copy",
            JobKind::Verify => "verify",
            JobKind::Forget => "forget",
            JobKind::Prune => "prune",
            JobKind::Restore => "restore",
            JobKind::Replicate => "replicate",
            JobKind::Export => "export",
            JobKind::Failover => "failover",
            JobKind::Failback => "failback",
        }
    }

    /// True for jobs that write new data and therefore count against the tenant's quota.
    pub fn adds_data(&self) -> bool {
        matches!(self, JobKind::Backup | JobKind::Copy | JobKind::Replicate)
    }
}

/// Why a job was requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// A policy's schedule fired for this time.
    Schedule { at: chrono::DateTime<chrono::Utc> },
    /// Someone asked (API, CLI).
    Manual,
    /// Another job asked for it (a backup's retention, copy, …).
    FollowUp { after: crate::JobId },
    /// A replica's work: following its source, failing over or back.
    Replica { replica: crate::ReplicaId },
}

/// Where a restore writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RestoreDestination {
    /// A folder on the host running a recovery (or transport) instance.
    Directory {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
    },
    /// Into another repository.
    Target { target: TargetId },
    /// A new PostgreSQL database, created by the restore (never an existing one), on the
    /// server a recovery instance (of `site`, if given) reaches through its `PG*` environment.
    Database {
        /// The database to create.
        name: String,
        /// Which dump of the snapshot to restore, by the name of the database it was taken
        /// from; needed only when the snapshot holds several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
    },
}

impl RestoreDestination {
    /// The site whose recovery instance must run the restore, if any.
    pub fn site(&self) -> Option<&str> {
        match self {
            RestoreDestination::Directory { site, .. } | RestoreDestination::Database { site, .. } => site.as_deref(),
            RestoreDestination::Target { .. } => None,
        }
    }
}

/// Where a replica is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplicaDestination {
    /// A local folder or disk image path: can be failed over in place.
    Directory { path: String },
    /// An S3 or Azure target: off-site recovery points.
    Target { target: TargetId },
}
