//! The transport service moves data *in*: it pulls backup and copy jobs from the work queue
//! and runs them with `arca-repo`, straight from the source to the target (data never
//! passes through NATS).
//!
//! A backup job names its source and target (and the policy that fired it). The worker
//! checks the tenant's quota before anything is written, runs the source's pre-hook (a
//! failure fails the job with the hook's output), backs up (incremental, full or
//! differential, the parent found by host, paths and a `source:<id>` tag), always runs the
//! post-hook, then records the snapshot (`SnapshotCommitted`, with an id derived from the
//! target and the repository snapshot, so a retried attempt records it once). Its success
//! asks for the policy's follow-ups: a forget job when the policy has retention rules, and
//! a copy job to each copy target.
//!
//! A copy job copies one snapshot into another target of the tenant (see [`CopyHandler`]),
//! reading the first repository, never the production source, and records the copy as a
//! snapshot of the destination target.
//!
//! A worker killed mid-backup stops acknowledging; the queue redelivers the job to another
//! worker after the ack wait, which backs up again, reusing every pack the dead one indexed.
//! The snapshot is written last, so no partial snapshot becomes visible.

mod backup;
mod copy;
mod replicate;

use std::sync::Arc;
use std::time::Duration;

use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig, BusError};
use arca_worker::keys::ServerKey;
use arca_worker::runner::run_worker;
use arca_worker::{Folders, Targets, WorkerSettings};

pub use backup::BackupHandler;
pub use copy::CopyHandler;
pub use replicate::{FailbackHandler, FailoverHandler, ReplicateHandler};

/// How to run a transport worker.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub nats_url: String,
    pub replicas: usize,
    pub key: ServerKey,
    pub worker: WorkerSettings,
    /// The longest a pre- or post-hook may run.
    pub hook_timeout: Duration,
    /// How replicas follow their sources.
    pub follow: arca_replica::FollowSettings,
    /// Replicas followed at once (each holds a job for as long as it runs).
    pub replicas_followed: usize,
    /// On a host shared by tenants: each tenant's folders (sources, replicas, `fs://`
    /// targets) must be inside `<tenant_root>/<tenant id>`.
    pub tenant_root: Option<std::path::PathBuf>,
}

impl TransportConfig {
    pub fn new(nats_url: impl Into<String>, key: ServerKey) -> Self {
        TransportConfig {
            nats_url: nats_url.into(),
            replicas: 1,
            key,
            worker: WorkerSettings::default(),
            hook_timeout: Duration::from_secs(600),
            follow: arca_replica::FollowSettings::default(),
            replicas_followed: 64,
            tenant_root: None,
        }
    }
}

/// A built transport worker, ready to run.
pub struct Transport {
    targets: Targets,
    config: TransportConfig,
}

impl Transport {
    pub async fn build(config: TransportConfig) -> Result<Transport, BusError> {
        let bus = Bus::connect(BusConfig {
            replicas: config.replicas,
            client_name: "arca-transport".into(),
            ..BusConfig::new(&config.nats_url)
        })
        .await?;
        let store = bus.event_store().await?;
        let secrets = SecretStore::open(&bus, &config.key.secret_store_key()).await?;
        let folders = config.tenant_root.clone().map(Folders::confined_to).unwrap_or_default();
        let targets = Targets::new(store, secrets, config.key.clone()).with_folders(folders);
        Ok(Transport { targets, config })
    }

    /// Takes backup, copy and replica jobs until `shutdown` completes.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BusError> {
        let store = self.targets.store().clone();
        let backups = Arc::new(BackupHandler::new(self.targets.clone(), self.config.hook_timeout));
        let copies = Arc::new(CopyHandler::new(self.targets.clone()));
        let followers = Arc::new(ReplicateHandler::new(self.targets.clone(), self.config.follow.clone()));
        let failovers = Arc::new(FailoverHandler::new(self.targets.clone()));
        let replicas = WorkerSettings { parallel: self.config.replicas_followed, ..self.config.worker.clone() };
        tokio::select! {
            () = shutdown => Ok(()),
            result = run_worker(backups, store.clone(), self.config.worker.clone()) => result,
            result = run_worker(copies, store.clone(), self.config.worker.clone()) => result,
            result = run_worker(followers, store.clone(), replicas) => result,
            result = run_worker(failovers, store.clone(), self.config.worker.clone()) => result,
            result = run_worker(Arc::new(FailbackHandler::new(self.targets.folders().clone())), store, self.config.worker.clone()) => result,
        }
    }
}
