//! Tenants' folders on a shared host. A worker that serves several tenants (an MSP's shared
//! transport or recovery instance) is given a tenant root `R`: every folder a tenant names —
//! what a source reads, where a restore, a replica or a local (`fs://`) target writes — must
//! then lie inside `R/<tenant id>`, with symlinks resolved, so no tenant reads or overwrites
//! another's data or the host's. Without a tenant root (a single-tenant host, or one per
//! tenant) any absolute path is taken as given.

use std::io;
use std::path::{Component, Path, PathBuf};

use arca_events::TenantId;

use crate::JobError;

/// Where tenants' folders may be.
#[derive(Clone, Debug, Default)]
pub struct Folders {
    root: Option<PathBuf>,
}

impl Folders {
    /// Every tenant confined to `root/<tenant id>`.
    pub fn confined_to(root: impl Into<PathBuf>) -> Folders {
        Folders { root: Some(root.into()) }
    }

    /// Whether tenants are confined.
    pub fn is_confined(&self) -> bool {
        self.root.is_some()
    }

    /// The tenant's own folder (created if missing), when tenants are confined.
    pub fn tenant_folder(&self, tenant: TenantId) -> io::Result<Option<PathBuf>> {
        let Some(root) = &self.root else { return Ok(None) };
        let folder = root.join(tenant.to_string());
        std::fs::create_dir_all(&folder)?;
        folder.canonicalize().map(Some)
    }

    /// `path` as the tenant may use it: unchanged when tenants are not confined; else the path
    /// with its existing part's symlinks resolved, refused unless it is inside the tenant's
    /// folder. `what` names it in the refusal ("the restore destination").
    pub fn check(&self, tenant: TenantId, path: &Path, what: &str) -> Result<PathBuf, JobError> {
        let Some(jail) = self
            .tenant_folder(tenant)
            .map_err(|e| JobError::Temporary(format!("cannot create the tenant's folder: {e}")))?
        else {
            return Ok(path.to_path_buf());
        };
        let refuse = || {
            JobError::Permanent(format!(
                "{what} `{}` is outside this tenant's folder on this host ({})",
                path.display(),
                jail.display()
            ))
        };
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse());
        }
        let resolved =
            resolve(path).map_err(|e| JobError::Temporary(format!("cannot resolve `{}`: {e}", path.display())))?;
        if resolved.starts_with(&jail) { Ok(resolved) } else { Err(refuse()) }
    }
}

/// `path` with the symlinks of its longest existing ancestor resolved (the rest does not
/// exist yet, so it holds none).
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        match existing.canonicalize() {
            Ok(found) => {
                return Ok(missing.iter().rev().fold(found, |whole: PathBuf, name| whole.join(name)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { return Err(e) };
                missing.push(name.to_owned());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_tenant_reaches_only_its_own_folder_symlinks_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tenants");
        let folders = Folders::confined_to(&root);
        let (ann, bob) = (TenantId::new(), TenantId::new());
        let own = folders.tenant_folder(ann).unwrap().unwrap();
        std::fs::create_dir_all(own.join("data")).unwrap();
        let outside = dir.path().join("host");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, own.join("escape")).unwrap();
        std::os::unix::fs::symlink(own.join("data"), own.join("inside")).unwrap();

        assert_eq!(folders.check(ann, &own.join("data/new/deeper"), "it").unwrap(), own.join("data/new/deeper"));
        assert_eq!(folders.check(ann, &own.join("inside/x"), "it").unwrap(), own.join("data/x"));
        for path in [
            outside.join("x"),
            own.join("escape/x"),
            own.join("data/../../x"),
            PathBuf::from("relative"),
            folders.tenant_folder(bob).unwrap().unwrap().join("x"),
        ] {
            let refused = folders.check(ann, &path, "the destination").unwrap_err().to_string();
            assert!(refused.contains("outside this tenant's folder"), "{path:?}: {refused}");
        }
        let free = Folders::default();
        assert_eq!(free.check(ann, &outside, "it").unwrap(), outside, "not confined: as given");
    }
}
