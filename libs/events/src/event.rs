//! Every event type, its aggregate and its current schema version.
//!
//! Names are in the past tense. A payload is never edited in place: a change that old
//! readers cannot take bumps the version and adds an upcaster in [`crate::upcast`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::types::*;
use crate::{AggregateType, JobId, PolicyId, SnapshotId, SourceId, TargetId};

macro_rules! events {
    ($($aggregate:ident { $($name:ident = $version:literal),* $(,)? })*) => {
        /// Any event, as the current version of its payload.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $($($name($name),)*)*
        }

        impl Event {
            /// Every event type name, for exhaustive checks.
            pub const TYPES: &'static [&'static str] = &[$($(stringify!($name),)*)*];

            /// The type name stored in the envelope, e.g. `PolicyCreated`.
            pub fn event_type(&self) -> &'static str {
                match self { $($(Event::$name(_) => stringify!($name),)*)* }
            }

            /// The aggregate this event belongs to.
            pub fn aggregate(&self) -> AggregateType {
                match self { $($(Event::$name(_) => AggregateType::$aggregate,)*)* }
            }

            /// The schema version this code writes.
            pub fn schema_version(&self) -> u32 {
                match self { $($(Event::$name(_) => $version,)*)* }
            }

            /// The aggregate an event type belongs to, by name.
            pub fn aggregate_of(event_type: &str) -> Option<AggregateType> {
                match event_type { $($(stringify!($name) => Some(AggregateType::$aggregate),)*)* _ => None }
            }

            /// The payload as JSON.
            pub fn to_payload(&self) -> serde_json::Value {
                let value = match self { $($(Event::$name(payload) => serde_json::to_value(payload),)*)* };
                value.expect("event payloads are plain data and always serialise")
            }

            /// Reads a payload already upcast to the current version.
            pub(crate) fn from_current_payload(event_type: &str, payload: serde_json::Value) -> Result<Event, crate::DecodeError> {
                match event_type {
                    $($(stringify!($name) => serde_json::from_value(payload).map(Event::$name).map_err(|e| crate::DecodeError::Payload { event_type: event_type.to_owned(), reason: e.to_string() }),)*)*
                    other => Err(crate::DecodeError::UnknownType(other.to_owned())),
                }
            }

            /// The current schema version of an event type, by name.
            pub fn current_version_of(event_type: &str) -> Option<u32> {
                match event_type { $($(stringify!($name) => Some($version),)*)* _ => None }
            }
        }

        $($(
            impl From<$name> for Event {
                fn from(payload: $name) -> Event {
                    Event::$name(payload)
                }
            }
        )*)*
    };
}

events! {
    Tenant {
        TenantCreated = 1,
        TenantRenamed = 1,
        TenantQuotaSet = 1,
        TenantUsageReported = 1,
        TenantSuspended = 1,
        TenantResumed = 1,
        TenantDeleted = 1,
    }
    ApiKey {
        ApiKeyCreated = 1,
        ApiKeyRevoked = 1,
    }
    Target {
        TargetAdded = 1,
        TargetUpdated = 1,
        TargetRemoved = 1,
    }
    Source {
        SourceAdded = 1,
        SourceUpdated = 1,
        SourceRemoved = 1,
    }
    Policy {
        PolicyCreated = 2,
        PolicyUpdated = 1,
        PolicyPaused = 1,
        PolicyResumed = 1,
        PolicyDeleted = 1,
    }
    Job {
        JobRequested = 1,
        JobStarted = 1,
        JobCheckpointed = 1,
        JobSucceeded = 1,
        JobFailed = 1,
        JobCancelled = 1,
    }
    Snapshot {
        SnapshotCommitted = 1,
        SnapshotLocked = 1,
        SnapshotForgotten = 1,
    }
    Replica {
        ReplicaCreated = 1,
        ReplicaPointRecorded = 1,
        ReplicaLagExceeded = 1,
        ReplicaFailedOver = 1,
        ReplicaFailedBack = 1,
        ReplicaDeleted = 1,
    }
    Restore {
        RestoreRequested = 1,
        RestoreSucceeded = 1,
        RestoreFailed = 1,
    }
    Export {
        ExportRequested = 1,
        ExportStarted = 1,
        ExportStopped = 1,
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---- Tenant ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRenamed {
    pub name: String,
}

/// `None` removes the quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantQuotaSet {
    pub quota_bytes: Option<u64>,
}

/// Stored bytes across the tenant's repositories, as measured by the storage service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsageReported {
    pub used_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSuspended {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantResumed {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantDeleted {}

// ---- ApiKey ----

/// The key itself is shown once to its creator; only its hash is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub name: String,
    pub role: Role,
    /// The first characters of the key, to recognise it in lists.
    pub prefix: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---- Target ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetAdded {
    pub name: String,
    pub kind: TargetKind,
    /// `fs:///path`, `s3://bucket/prefix`, `azblob://container/prefix`; never with credentials.
    pub location: String,
    #[serde(default)]
    pub settings: TargetSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetUpdated {
    pub name: String,
    #[serde(default)]
    pub settings: TargetSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRemoved {}

// ---- Source ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAdded {
    pub name: String,
    pub kind: SourceKind,
    /// The host the data is read on (a transport instance there, or agentless over a site).
    pub host: String,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuDisk>,
}

/// The running qemu (a VM, or `qemu-storage-daemon`) that has an image source open: replicas
/// then ask it which blocks changed instead of reading the whole image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuDisk {
    /// Its QMP monitor socket.
    pub monitor: String,
    /// The image's block node (`node-name`).
    pub node: String,
    /// The socket of an NBD server it already runs; without one, replicas start one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUpdated {
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRemoved {}

// ---- Policy ----

/// Version 2. Version 1 had `cron` (UTC) and `keep_last` only; see [`crate::upcast`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCreated {
    pub name: String,
    pub source: SourceId,
    pub target: TargetId,
    pub schedule: Schedule,
    #[serde(default)]
    pub misfire: Misfire,
    #[serde(default)]
    pub mode: BackupMode,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_targets: Vec<TargetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_schedule: Option<Schedule>,
}

/// Replaces everything but the source and target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyUpdated {
    pub name: String,
    pub schedule: Schedule,
    #[serde(default)]
    pub misfire: Misfire,
    #[serde(default)]
    pub mode: BackupMode,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_targets: Vec<TargetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_schedule: Option<Schedule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPaused {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyResumed {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDeleted {}

// ---- Job ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequested {
    pub kind: JobKind,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BackupMode>,
    /// Only workers with this site label take the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A worker took the job; `attempt` counts from 1 and grows on redelivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub worker: String,
    pub attempt: u32,
}

/// Coarse progress (per uploaded pack batch). Fine-grained progress goes over core NATS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCheckpointed {
    pub bytes_done: u64,
    pub files_done: u64,
    #[serde(default)]
    pub packs_uploaded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSucceeded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotId>,
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(default)]
    pub bytes_added: u64,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailed {
    pub error: String,
    #[serde(default)]
    pub attempts: u32,
    /// The work queue gave up after its last try.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dead_lettered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---- Snapshot ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCommitted {
    pub target: TargetId,
    /// The snapshot's id inside the repository (hex).
    pub repo_snapshot: String,
    pub time: DateTime<Utc>,
    pub host: String,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub added_bytes: u64,
    /// Some files could not be read.
    #[serde(default, skip_serializing_if = "is_false")]
    pub partial: bool,
}

/// Kept by every forget and prune until `until`; a lock can be extended, never shortened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLocked {
    pub until: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotForgotten {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
}

// ---- Replica ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCreated {
    pub name: String,
    pub source: SourceId,
    pub destination: ReplicaDestination,
    /// The recovery point objective: an alert is raised when lag exceeds it.
    pub rpo_seconds: u64,
    /// How many recovery points to keep.
    pub keep_points: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPointRecorded {
    pub point: String,
    pub at: DateTime<Utc>,
    pub lag_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLagExceeded {
    pub lag_ms: u64,
    pub rpo_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFailedOver {
    pub point: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFailedBack {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDeleted {}

// ---- Restore ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequested {
    pub snapshot: SnapshotId,
    /// Paths (globs) to restore; empty means everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    pub destination: RestoreDestination,
    pub job: JobId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSucceeded {
    pub files: u64,
    pub bytes: u64,
    /// The restored data was read back and matched the snapshot.
    pub verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFailed {
    pub error: String,
}

// ---- Export ----

/// An image snapshot is to be served over NBD (instant recovery) by a recovery instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequested {
    pub snapshot: SnapshotId,
    /// Writes go to a temporary overlay on the serving host, never into the repository.
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
    /// BLAKE3 of the export name a client must ask for (the name itself is shown once).
    pub name_hash: String,
    pub job: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A recovery instance started serving the export at `address` (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStarted {
    pub address: String,
}

/// The export is no longer served: stopped through the API, or it failed (`error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStopped {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
