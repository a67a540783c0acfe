//! A tenant's targets as repositories: the location and settings from the target's events,
//! the credentials from the secret store, the key and identity from the server key.

use std::path::Path;

use arca_bus::secrets::SecretStore;
use arca_bus::{EventStore, ExecuteError};
use arca_domain::Lifecycle;
use arca_domain::target::Target;
use arca_events::{TargetId, TargetKind, TenantId};
use arca_repo::{Backend, InitOptions, Repository, TargetOptions};
use serde::{Deserialize, Serialize};

use crate::folders::Folders;
use crate::keys::{ServerKey, tenant_kdf};

/// Credentials of an object-store target, as sealed in the secret store (JSON).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TargetCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
}

impl std::fmt::Debug for TargetCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// Everything needed to open one tenant's target, resolved from the control plane.
#[derive(Clone)]
pub struct TargetSpec {
    pub tenant: TenantId,
    pub target: TargetId,
    pub name: String,
    pub kind: TargetKind,
    pub location: String,
    options: TargetOptions,
    passphrase: Vec<u8>,
    identity: arca_repo::RepositoryIdentity,
}

impl std::fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSpec")
            .field("tenant", &self.tenant)
            .field("target", &self.target)
            .field("name", &self.name)
            .field("location", &self.location)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {0} does not exist")]
    NotFound(TargetId),
    #[error("target `{0}` has been removed")]
    Removed(String),
    #[error("the credentials of target `{0}` are missing from the secret store")]
    CredentialsMissing(String),
    #[error("the credentials of target `{0}` are unreadable")]
    CredentialsMalformed(String),
    #[error(transparent)]
    Control(#[from] ExecuteError),
    #[error(transparent)]
    Repository(#[from] arca_repo::Error),
    #[error("{0}")]
    Folder(String),
}

impl TargetError {
    /// Worth retrying later: the control plane or the store was unreachable.
    pub fn is_temporary(&self) -> bool {
        match self {
            TargetError::Control(ExecuteError::Bus(e)) => e.is_retryable(),
            TargetError::Repository(e) => e.is_temporary(),
            _ => false,
        }
    }
}

impl TargetSpec {
    /// Opens the repository at this target (blocking: call from a blocking thread).
    pub fn open(&self) -> Result<Repository, arca_repo::Error> {
        let target = arca_repo::Target::parse(&self.location)?;
        let backend = Backend::open(&target, &self.options)?;
        Repository::open(backend, &self.passphrase)
    }

    /// Creates the tenant's repository at this target (blocking). Only
    /// [`Targets::ensure_repository`] calls it, under the platform-wide creation claim: two
    /// creators at once could each believe they won on a store without atomic creation.
    fn init(&self) -> Result<Repository, arca_repo::Error> {
        let target = arca_repo::Target::parse(&self.location)?;
        let backend = Backend::open(&target, &self.options)?;
        let options =
            InitOptions { kdf: tenant_kdf(), identity: Some(self.identity.clone()), ..InitOptions::default() };
        Repository::init(backend, &self.passphrase, &options)
    }
}

/// The bucket where a repository's creation is claimed, then recorded with its id.
const CLAIMS: &str = "arca-repositories";
/// A claim's value while its creator is at work.
const CREATING: &[u8] = b"creating";

/// How long a service waits for another one to finish creating a repository.
const CREATION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `work` with `spec` on a blocking thread (repository calls block).
async fn blocking<T: Send + 'static>(
    spec: &TargetSpec,
    work: impl FnOnce(&TargetSpec) -> Result<T, arca_repo::Error> + Send + 'static,
) -> Result<T, TargetError> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || work(&spec))
        .await
        .map_err(|e| TargetError::Repository(arca_repo::Error::Refused(format!("a repository thread stopped: {e}"))))?
        .map_err(TargetError::Repository)
}

/// Resolves targets for the services.
#[derive(Clone)]
pub struct Targets {
    store: EventStore,
    secrets: SecretStore,
    key: ServerKey,
    folders: Folders,
}

impl Targets {
    pub fn new(store: EventStore, secrets: SecretStore, key: ServerKey) -> Targets {
        Targets { store, secrets, key, folders: Folders::default() }
    }

    /// Tenants' folders (sources, destinations, local targets) confined as `folders` says.
    pub fn with_folders(self, folders: Folders) -> Targets {
        Targets { folders, ..self }
    }

    pub fn folders(&self) -> &Folders {
        &self.folders
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Makes sure the tenant's repository exists at `spec`, creating it when the target holds
    /// none. Creation is claimed in the `arca-repositories` key-value bucket (an atomic
    /// create), so exactly one service instance creates it while the others wait for it.
    ///
    /// A repository recorded as created there is not opened again: the caller opens it anyway,
    /// so every backup would otherwise pay for two opens (key files, KDF, config).
    pub async fn ensure_repository(&self, spec: &TargetSpec) -> Result<(), TargetError> {
        let claims =
            self.store.bus().key_value(CLAIMS).await.map_err(|e| TargetError::Control(ExecuteError::Bus(e)))?;
        let key = format!("{}.{}", spec.tenant, spec.target);
        if let Ok(Some(claim)) = claims.get(&key).await
            && &claim[..] != CREATING
        {
            return Ok(());
        }
        match blocking(spec, |spec| spec.open().map(|repo| repo.config().id.clone())).await {
            Err(TargetError::Repository(arca_repo::Error::NotARepository(_))) => {}
            Ok(id) => {
                // Made before claims existed (or by the standalone CLI): record it.
                let _ = claims.create(&key, id.into_bytes().into()).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let claimed = claims.create(&key, Vec::from(CREATING).into()).await.is_ok();
        if claimed {
            let created = blocking(spec, |spec| spec.init().map(|repo| repo.config().id.clone())).await;
            match created {
                Ok(id) => {
                    let _ = claims.put(&key, id.into_bytes().into()).await;
                    return Ok(());
                }
                Err(e) => {
                    // Let the next attempt claim it again.
                    let _ = claims.delete(&key).await;
                    return Err(e);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + CREATION_WAIT;
        loop {
            match blocking(spec, |spec| spec.open().map(|_| ())).await {
                Err(TargetError::Repository(arca_repo::Error::NotARepository(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(TargetError::Repository(arca_repo::Error::NotARepository(location))) => {
                    return Err(TargetError::Repository(arca_repo::Error::Locked(format!(
                        "another service is still creating the repository at {location}"
                    ))));
                }
                other => return other,
            }
        }
    }

    /// A repository in a local folder that one job owns (a replica's recovery points), under
    /// the tenant's key, created on first use. Blocking: call from a blocking thread.
    pub fn local_repository(&self, tenant: TenantId, folder: &std::path::Path) -> Result<Repository, arca_repo::Error> {
        let spec = TargetSpec {
            tenant,
            target: TargetId::from(uuid::Uuid::nil()),
            name: "local".into(),
            kind: TargetKind::Fs,
            location: format!("fs://{}", folder.display()),
            options: TargetOptions::default(),
            passphrase: self.key.tenant_passphrase(tenant),
            identity: self.key.tenant_identity(tenant),
        };
        match spec.open() {
            Err(arca_repo::Error::NotARepository(_)) => spec.init(),
            other => other,
        }
    }

    /// The target as the log describes it now, with its credentials.
    pub async fn describe(&self, tenant: TenantId, target: TargetId) -> Result<TargetSpec, TargetError> {
        let (state, _) = self.store.load_state::<Target>(tenant, target.as_uuid()).await?;
        let Some(kind) = state.kind else { return Err(TargetError::NotFound(target)) };
        if state.status != Lifecycle::Active {
            return Err(TargetError::Removed(state.name));
        }
        let credentials = match state.credentials {
            None => TargetCredentials::default(),
            Some(reference) => {
                let sealed = self
                    .secrets
                    .get(tenant, reference)
                    .await
                    .map_err(|e| TargetError::Control(ExecuteError::Bus(e)))?
                    .ok_or_else(|| TargetError::CredentialsMissing(state.name.clone()))?;
                serde_json::from_slice(&sealed).map_err(|_| TargetError::CredentialsMalformed(state.name.clone()))?
            }
        };
        if kind == TargetKind::Fs && self.folders.is_confined() {
            let path = state.location.strip_prefix("fs://").unwrap_or(&state.location);
            self.folders
                .check(tenant, Path::new(path), "the target's folder")
                .map_err(|e| TargetError::Folder(e.to_string()))?;
        }
        let setting = |key: &str| state.settings.get(key).cloned();
        let options = match kind {
            TargetKind::Fs => TargetOptions::default(),
            TargetKind::S3 => TargetOptions {
                s3_endpoint: setting("endpoint"),
                s3_region: setting("region"),
                s3_access_key_id: credentials.access_key_id,
                s3_secret_access_key: credentials.secret_access_key,
                ..TargetOptions::default()
            },
            TargetKind::Azblob => TargetOptions {
                azure_endpoint: setting("endpoint"),
                azure_account: setting("account_name"),
                azure_key: credentials.account_key,
                ..TargetOptions::default()
            },
        };
        Ok(TargetSpec {
            tenant,
            target,
            name: state.name,
            kind,
            location: state.location,
            options,
            passphrase: self.key.tenant_passphrase(tenant),
            identity: self.key.tenant_identity(tenant),
        })
    }
}
