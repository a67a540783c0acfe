//! The deployment's secret key and what is derived from it.

use std::io::Write;
use std::path::Path;

use arca_events::TenantId;
use arca_repo::RepositoryIdentity;
use arca_repo::crypto::KdfParams;

/// 32 secret bytes shared by every instance of one deployment. `Debug` never shows them.
#[derive(Clone)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("server key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the server key must be 64 hex digits")]
    Malformed,
}

impl ServerKey {
    pub fn from_bytes(bytes: [u8; 32]) -> ServerKey {
        ServerKey(bytes)
    }

    /// Parses 64 hex digits (surrounding whitespace is ignored).
    pub fn from_hex(text: &str) -> Result<ServerKey, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| KeyError::Malformed)?;
        Ok(ServerKey(bytes))
    }

    /// Reads the key from `path`.
    pub fn load(path: &Path) -> Result<ServerKey, KeyError> {
        let file_error = |reason: String| KeyError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        ServerKey::from_hex(&text)
    }

    /// Reads the key from `path`, or creates it there (mode 0600) with fresh random bytes.
    pub fn load_or_create(path: &Path) -> Result<ServerKey, KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file_error = |reason: String| KeyError::File { path: path.display().to_string(), reason };
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                let mut bytes = [0u8; 32];
                arca_repo::crypto::random_bytes(&mut bytes);
                file.write_all(hex::encode(bytes).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| file_error(e.to_string()))?;
                Ok(ServerKey(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ServerKey::load(path),
            Err(e) => Err(file_error(e.to_string())),
        }
    }

    /// The key that seals credentials in the secret store.
    pub fn secret_store_key(&self) -> [u8; 32] {
        blake3::derive_key("arca 2026-11 secret store key", &self.0)
    }

    fn tenant_derived(&self, context: &str, tenant: TenantId) -> [u8; 32] {
        let mut material = self.0.to_vec();
        material.extend_from_slice(tenant.as_uuid().as_bytes());
        blake3::derive_key(context, &material)
    }

    /// The passphrase that wraps the master key of every repository of `tenant`.
    pub fn tenant_passphrase(&self, tenant: TenantId) -> Vec<u8> {
        hex::encode(self.tenant_derived("arca 2026-11 tenant repository key", tenant)).into_bytes()
    }

    /// The blob-id key and chunker seed every repository of `tenant` shares.
    pub fn tenant_identity(&self, tenant: TenantId) -> RepositoryIdentity {
        let seed = self.tenant_derived("arca 2026-11 tenant chunker seed", tenant);
        RepositoryIdentity {
            id_key: self.tenant_derived("arca 2026-11 tenant blob id key", tenant),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        }
    }
}

/// Argon2id settings for tenant passphrases: they are 256-bit random-equivalent keys, so a
/// memory-hard KDF adds nothing but opening time; a small one keeps the key file format.
pub fn tenant_kdf() -> KdfParams {
    KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_loads_again_and_tenants_get_different_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let created = ServerKey::load_or_create(&path).unwrap();
        let loaded = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(created.0, loaded.0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (a, b) = (TenantId::new(), TenantId::new());
        assert_ne!(created.tenant_passphrase(a), created.tenant_passphrase(b));
        assert_ne!(created.tenant_identity(a).id_key, created.tenant_identity(b).id_key);
        assert_eq!(created.tenant_identity(a).id_key, loaded.tenant_identity(a).id_key);
        assert!(!format!("{created:?}").contains(&hex::encode(created.0)));
    }

    #[test]
    fn a_malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(ServerKey::load(&path), Err(KeyError::Malformed)));
    }
}
