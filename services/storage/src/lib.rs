//! The storage service looks after repositories: it creates a tenant's repository when a
//! target is added (the master key wrapped by the tenant's key, the tenant's blob-id
//! identity), and runs the jobs that change or read a whole repository — forget (a policy's
//! retention), prune (garbage collection) and verify.
//!
//! **Forget** keeps what the policy's rules keep among the snapshots of the policy's source
//! (tagged `source:<id>`), and what is locked: a snapshot is removed from the repository only
//! after its `SnapshotForgotten` is appended, and the domain refuses that for a snapshot
//! locked in the control plane. A forget asks for a prune of the same target.
//! **Prune** needs the repository to itself: it takes the exclusive lease, which every backup
//! and copy holds shared. When one is writing, the lease is refused, the attempt fails as
//! temporary and the work queue tries it again after its backoff — prune waits for backups
//! instead of racing them. **Verify** checks the structure, and reads back a share of the
//! packs each run when the job asks for it.

mod jobs;
mod targets;

use std::sync::Arc;

use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig, BusError};
use arca_worker::keys::ServerKey;
use arca_worker::runner::run_worker;
use arca_worker::{Targets, WorkerSettings};

pub use jobs::{ForgetHandler, PruneHandler, VerifyHandler};

/// How to run a storage worker.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub nats_url: String,
    pub replicas: usize,
    pub key: ServerKey,
    pub worker: WorkerSettings,
    /// On a host shared by tenants: `fs://` targets only inside `<tenant_root>/<tenant id>`.
    pub tenant_root: Option<std::path::PathBuf>,
}

impl StorageConfig {
    pub fn new(nats_url: impl Into<String>, key: ServerKey) -> Self {
        StorageConfig {
            nats_url: nats_url.into(),
            replicas: 1,
            key,
            worker: WorkerSettings::default(),
            tenant_root: None,
        }
    }
}

/// A built storage service, ready to run.
pub struct Storage {
    targets: Targets,
    config: StorageConfig,
}

impl Storage {
    pub async fn build(config: StorageConfig) -> Result<Storage, BusError> {
        let bus = Bus::connect(BusConfig {
            replicas: config.replicas,
            client_name: "arca-storage".into(),
            ..BusConfig::new(&config.nats_url)
        })
        .await?;
        let store = bus.event_store().await?;
        let secrets = SecretStore::open(&bus, &config.key.secret_store_key()).await?;
        let folders = config.tenant_root.clone().map(arca_worker::Folders::confined_to).unwrap_or_default();
        let targets = Targets::new(store, secrets, config.key.clone()).with_folders(folders);
        Ok(Storage { targets, config })
    }

    /// Creates repositories and runs jobs until `shutdown` completes.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BusError> {
        let store = self.targets.store().clone();
        let worker = self.config.worker.clone();
        tokio::select! {
            () = shutdown => Ok(()),
            result = targets::create_repositories(self.targets.clone()) => result,
            result = run_worker(Arc::new(ForgetHandler::new(self.targets.clone())), store.clone(), worker.clone()) => result,
            result = run_worker(Arc::new(PruneHandler::new(self.targets.clone())), store.clone(), worker.clone()) => result,
            result = run_worker(Arc::new(VerifyHandler::new(self.targets.clone())), store, worker) => result,
        }
    }
}
