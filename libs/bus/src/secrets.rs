//! Credentials (a target's access keys) sealed in a JetStream key-value bucket.
//!
//! Events carry only a [`SecretRef`]. The value is AES-256-GCM sealed with the server's
//! secret key, bound to its tenant and id (associated data), so a copied bucket entry
//! is useless without the key and cannot be moved to another tenant.

use arca_events::{SecretId, SecretRef, TenantId};
use async_nats::jetstream::kv;
use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Bus, BusError};

const BUCKET: &str = "arca-secrets";

/// Sealed credentials by reference.
#[derive(Clone)]
pub struct SecretStore {
    kv: kv::Store,
    key: std::sync::Arc<LessSafeKey>,
}

impl SecretStore {
    /// Opens (or creates) the bucket; `key` is the server's 32-byte secret key.
    pub async fn open(bus: &Bus, key: &[u8; 32]) -> Result<SecretStore, BusError> {
        let kv = bus.key_value(BUCKET).await?;
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is a valid AES-256 key");
        Ok(SecretStore { kv, key: std::sync::Arc::new(LessSafeKey::new(key)) })
    }

    /// Seals and stores `secret` for `tenant`.
    pub async fn put(&self, tenant: TenantId, secret: &[u8]) -> Result<SecretRef, BusError> {
        let id = SecretId::new();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system random source works");
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(tenant, id)), &mut sealed)
            .expect("sealing a short value cannot fail");
        let mut value = nonce.to_vec();
        value.extend_from_slice(&sealed);
        self.kv
            .put(key_name(tenant, id), Bytes::from(value))
            .await
            .map_err(|e| BusError::unavailable("store a secret", e))?;
        Ok(SecretRef { id })
    }

    /// The secret behind `reference`, if it exists and belongs to `tenant`.
    pub async fn get(&self, tenant: TenantId, reference: SecretRef) -> Result<Option<Vec<u8>>, BusError> {
        let Some(value) =
            self.kv.get(key_name(tenant, reference.id)).await.map_err(|e| BusError::unavailable("read a secret", e))?
        else {
            return Ok(None);
        };
        if value.len() < NONCE_LEN {
            return Err(BusError::Malformed { what: format!("secret {}", reference.id), reason: "too short".into() });
        }
        let (nonce, sealed) = value.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce has the right length");
        let plain = self.key.open_in_place(nonce, Aad::from(aad(tenant, reference.id)), &mut sealed).map_err(|_| {
            BusError::Malformed {
                what: format!("secret {}", reference.id),
                reason: "cannot be opened with this server's secret key".into(),
            }
        })?;
        Ok(Some(plain.to_vec()))
    }

    pub async fn delete(&self, tenant: TenantId, reference: SecretRef) -> Result<(), BusError> {
        self.kv.purge(key_name(tenant, reference.id)).await.map_err(|e| BusError::unavailable("delete a secret", e))
    }
}

fn key_name(tenant: TenantId, id: SecretId) -> String {
    format!("{tenant}.{id}")
}

fn aad(tenant: TenantId, id: SecretId) -> Vec<u8> {
    [tenant.as_uuid().as_bytes().as_slice(), id.as_uuid().as_bytes().as_slice()].concat()
}
