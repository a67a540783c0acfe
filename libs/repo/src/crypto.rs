//! Encryption, ids and key derivation.
//!
//! Every stored object except key files is sealed the same way:
//! `[magic 0xA1][flags][nonce 12 bytes][AES-256-GCM ciphertext + 16-byte tag]`.
//! The two header bytes are authenticated as associated data, so the compression
//! flag cannot be flipped. Key files hold the master key sealed with a key derived
//! from the passphrase by Argon2id.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

const MAGIC: u8 = 0xA1;
/// Flag bit: the plaintext is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Bytes a sealed object adds to its plaintext.
pub const OVERHEAD: usize = 2 + NONCE_LEN + 16;

/// Fills `buf` with random bytes from the operating system.
pub fn random_bytes(buf: &mut [u8]) {
    SystemRandom::new().fill(buf).expect("the OS random source failed");
}

/// A random 256-bit value.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    random_bytes(&mut key);
    key
}

/// An AES-256-GCM key that seals and opens objects.
pub struct SealKey {
    key: LessSafeKey,
}

impl SealKey {
    pub fn new(bytes: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is valid for AES-256");
        SealKey { key: LessSafeKey::new(unbound) }
    }

    /// Seals `plaintext` with a fresh random nonce; `flags` is authenticated.
    pub fn seal(&self, flags: u8, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_into(flags, plaintext, &mut out);
        out
    }

    /// Appends the sealed form of `plaintext` to `out`.
    pub fn seal_into(&self, flags: u8, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        let header = [MAGIC, flags];
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut out[start..])
            .expect("sealing cannot fail for in-memory sizes");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed object; returns its flags and plaintext. `what` names it in errors.
    pub fn open(&self, sealed: &[u8], what: &str) -> Result<(u8, Vec<u8>)> {
        let mut buf = sealed.to_vec();
        let flags = self.open_in_place(&mut buf, what)?.0;
        // The plaintext sits after the header and nonce, in place of the ciphertext.
        buf.truncate(buf.len() - 16);
        buf.drain(..2 + NONCE_LEN);
        Ok((flags, buf))
    }

    /// Opens a sealed object in its own buffer; returns its flags and the plaintext slice.
    pub fn open_in_place<'b>(&self, sealed: &'b mut [u8], what: &str) -> Result<(u8, &'b [u8])> {
        if sealed.len() < OVERHEAD || sealed[0] != MAGIC {
            return Err(Error::corrupt(what, "not a sealed object (bad header or too short)"));
        }
        let header = [sealed[0], sealed[1]];
        let nonce: [u8; NONCE_LEN] = sealed[2..2 + NONCE_LEN].try_into().expect("length checked");
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut sealed[2 + NONCE_LEN..])
            .map_err(|_| Error::corrupt(what, "authentication failed (tampered, damaged, or another key)"))?;
        Ok((header[1], plain))
    }
}

/// Derives a 256-bit key-encryption key from a passphrase with Argon2id.
pub fn derive_from_passphrase(passphrase: &[u8], salt: &[u8], params: &KdfParams) -> Result<[u8; 32]> {
    let argon_params = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
        .map_err(|e| Error::corrupt("key file", format!("bad argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| Error::corrupt("key file", format!("argon2 failed: {e}")))?;
    Ok(out)
}

/// Argon2id cost parameters, stored in each key file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 32 MiB and 4 passes, about 0.1 s on a current core: above OWASP's Argon2id
    /// guidance (19 MiB, 2 passes), costly to guess, and cheap to open. The memory is the
    /// floor of every command's peak, so it is not set higher than it needs to be.
    fn default() -> Self {
        KdfParams { memory_kib: 32 * 1024, iterations: 4, parallelism: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests, chosen by `ARCA_TEST_FAST_KDF=1`; never the default.
    pub fn from_env_or_default() -> Self {
        if std::env::var_os("ARCA_TEST_FAST_KDF").is_some_and(|v| v == "1") {
            KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }
        } else {
            KdfParams::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let key = SealKey::new(&random_key());
        let sealed = key.seal(FLAG_ZSTD, b"hello");
        let (flags, plain) = key.open(&sealed, "t").unwrap();
        assert_eq!((flags, plain.as_slice()), (FLAG_ZSTD, &b"hello"[..]));
        let mut flipped = sealed.clone();
        flipped[1] ^= FLAG_ZSTD;
        assert!(key.open(&flipped, "t").is_err(), "the flags byte is authenticated");
        let mut damaged = sealed;
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(key.open(&damaged, "t").is_err());
        let other = SealKey::new(&random_key());
        assert!(other.open(&key.seal(0, b"x"), "t").is_err());
    }
}
