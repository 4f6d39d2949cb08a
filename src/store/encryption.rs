//! Encryption at rest: a store folder's key, how the folder says it is encrypted, and the sealing of
//! snapshot blocks.
//!
//! Why it exists: a store holds copies of production rows on a laptop. Owner-only files
//! ([`crate::owner_only`]) keep other accounts out; encryption keeps the rows unreadable to anyone
//! who gets the disk, a backup of it, or the files without the owner's keychain.
//!
//! How: each encrypted store folder has its own random 256-bit [`StoreKey`], kept only in the OS
//! keychain. The folder's `encryption.json` says which keychain entry holds it (an id, never the
//! key). The SQLite databases (the store and the consumers' ledger) are SQLCipher databases opened
//! with the raw key; snapshot files are sealed block by block with AES-256-GCM under a key derived
//! per file (HKDF-SHA256 over a random salt in the file's header), so a nonce is never reused.
//!
//! Invariants:
//! - A key never reaches a file, a log line, an error message or the UI: [`StoreKey`]'s `Debug` is
//!   redacted, it does not implement `Serialize`, and its bytes are overwritten on drop.
//! - A folder is encrypted exactly when it has `encryption.json`; the marker is written before the
//!   first database or snapshot file, so nothing of an encrypted store is ever written in the clear.
//! - A missing or wrong key is an [`ErrorKind::Locked`] error naming the store, never garbage:
//!   SQLCipher rejects a wrong key on the first read, AES-GCM rejects a block it did not seal.
//! - Losing the key loses the local copy only; the source is untouched and a new capture rebuilds it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::{Keychain, Secret, SecretKey};

/// The marker file of an encrypted store folder.
pub const MARKER: &str = "encryption.json";

/// A store's 256-bit key.
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// A new random key from the OS.
    pub fn generate() -> Result<StoreKey> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| Error::internal("the OS gave no random bytes for a store key"))?;
        Ok(StoreKey(key))
    }

    fn from_hex(hex: &str) -> Option<StoreKey> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            key[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(StoreKey(key))
    }

    fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The SQLCipher statement that opens a database with this key. It passes the raw key (`x'…'`),
    /// so SQLCipher skips its password derivation, and goes straight to the connection: it is never
    /// logged, and SQLite does not keep it in any table.
    pub fn sqlcipher_pragma(&self) -> Secret {
        Secret::new(format!(
            "PRAGMA key = \"{}\";",
            self.sqlcipher_key().expose()
        ))
    }

    /// The key as SQLCipher takes it raw (`x'…'`), for `ATTACH … KEY ?`: an attached database
    /// does not reuse the main one's raw key, whose page keys depend on each file's salt.
    pub fn sqlcipher_key(&self) -> Secret {
        Secret::new(format!("x'{}'", self.to_hex()))
    }

    /// The sealing key of the snapshot file whose header holds `salt`.
    pub fn file_sealer(&self, salt: &[u8; SALT_BYTES]) -> Sealer {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(&self.0);
        let mut bytes = [0u8; 32];
        // Expanding 32 bytes for AES-256 cannot fail: the length is within HKDF's limit.
        let okm = prk
            .expand(&[b"tidepool snapshot v1"], &AES_256_GCM)
            .expect("32 bytes is within HKDF-SHA256's output limit");
        okm.fill(&mut bytes)
            .expect("the output length matches the algorithm");
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("AES-256 takes a 32-byte key");
        for byte in &mut bytes {
            // SAFETY: a plain write to a local; volatile so the derived key does not linger.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
        Sealer {
            key: LessSafeKey::new(key),
        }
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        for byte in &mut self.0 {
            // SAFETY: a plain write to owned memory; volatile so it is not elided before the free.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// Bytes of a snapshot file's salt.
pub const SALT_BYTES: usize = 32;
/// Bytes AES-GCM adds to each sealed block.
pub const TAG_BYTES: usize = 16;

/// A random salt for a new snapshot file.
pub fn new_salt() -> Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| Error::internal("the OS gave no random bytes for a snapshot salt"))?;
    Ok(salt)
}

/// Seals and opens the blocks of one snapshot file. Block `n` uses nonce `n`: the key is the
/// file's own, so a nonce is used once per key.
pub struct Sealer {
    key: LessSafeKey,
}

fn nonce(chunk: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&chunk.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl Sealer {
    /// Seals `data` in place as chunk `chunk`, bound to `aad`; appends the tag.
    pub fn seal(&self, chunk: u64, aad: &[u8], data: &mut Vec<u8>) -> Result<()> {
        self.key
            .seal_in_place_append_tag(nonce(chunk), Aad::from(aad), data)
            .map_err(|_| Error::internal("sealing a snapshot block failed"))
    }

    /// Opens chunk `chunk` sealed by [`Sealer::seal`]; `None` when it was not sealed by this key as
    /// this chunk with this `aad` (a wrong key, a damaged or swapped block).
    pub fn open(&self, chunk: u64, aad: &[u8], data: &mut Vec<u8>) -> Option<()> {
        let len = self
            .key
            .open_in_place(nonce(chunk), Aad::from(aad), data)
            .ok()?
            .len();
        data.truncate(len);
        Some(())
    }
}

/// What `encryption.json` says. No secret: the key stays in the keychain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// The format version.
    pub version: u32,
    /// The id of the keychain entry holding the key ([`SecretKey::StoreKey`]).
    pub key_id: String,
    /// What protects the store, for a person reading the file.
    pub cipher: String,
}

/// The marker of the store folder `dir`, if it is encrypted.
pub fn marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(MARKER);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::new(
                ErrorKind::Locked,
                format!("{} is not a valid encryption marker: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::new(
            ErrorKind::Storage,
            format!("reading {}: {e}", path.display()),
        )),
    }
}

/// Keys this process has read from a keychain, by key id: a store is opened many times (capture,
/// preview, delivery) and the keychain is asked once.
fn cache() -> &'static Mutex<HashMap<String, Arc<StoreKey>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<StoreKey>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn keychain_label(dir: &Path) -> String {
    format!("Tidepool: store key ({})", dir.display())
}

/// Makes `dir` an encrypted store folder: a new key goes to `keychain`, then the marker is written.
/// Refused when the folder already holds a store: an existing plain store is not encrypted in place
/// (its rows are already on disk in the clear); it is discarded and captured again instead.
pub fn create(dir: &Path, keychain: &Keychain) -> Result<Marker> {
    if let Some(marker) = marker(dir)? {
        return Ok(marker);
    }
    if dir.join("tidepool.db").exists() {
        return Err(Error::invalid_input(
            "encryption",
            format!(
                "{} already holds an unencrypted store; discard it (the source is untouched) and capture again to encrypt it",
                dir.display()
            ),
        ));
    }
    crate::owner_only::create_dir_all(dir).map_err(|e| {
        Error::new(
            ErrorKind::Storage,
            format!("creating {}: {e}", dir.display()),
        )
    })?;
    let key_id = crate::secrets::random_hex(16)?;
    let key = StoreKey::generate()?;
    keychain.set(
        &SecretKey::StoreKey(key_id.clone()),
        &keychain_label(dir),
        &Secret::new(key.to_hex()),
    )?;
    let marker = Marker {
        version: 1,
        key_id: key_id.clone(),
        cipher:
            "SQLCipher 4 (AES-256) databases, AES-256-GCM snapshot blocks; key in the OS keychain"
                .into(),
    };
    let json = serde_json::to_vec_pretty(&marker).map_err(Error::internal)?;
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.partial"));
    let written = (|| {
        use std::io::Write;
        let mut file = crate::owner_only::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = keychain.delete(&SecretKey::StoreKey(key_id));
        return Err(Error::new(
            ErrorKind::Storage,
            format!("writing {}: {e}", path.display()),
        ));
    }
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key_id, Arc::new(key));
    tracing::info!(store = %dir.display(), "store encrypted at rest; its key is in the OS keychain");
    Ok(marker)
}

/// Reads the key of store folder `dir` from `keychain` into this process, so later opens need no
/// keychain. A no-op for a folder that is not encrypted.
pub fn unlock(dir: &Path, keychain: &Keychain) -> Result<()> {
    if let Some(marker) = marker(dir)? {
        load(dir, &marker, Some(keychain))?;
    }
    Ok(())
}

/// The key of store folder `dir`: `None` when it is not encrypted. A key not read yet comes from the
/// OS keychain.
pub fn key_for(dir: &Path) -> Result<Option<Arc<StoreKey>>> {
    match marker(dir)? {
        Some(marker) => load(dir, &marker, None).map(Some),
        None => Ok(None),
    }
}

fn load(dir: &Path, marker: &Marker, keychain: Option<&Keychain>) -> Result<Arc<StoreKey>> {
    if let Some(key) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&marker.key_id)
    {
        return Ok(key.clone());
    }
    let opened;
    let keychain = match keychain {
        Some(k) => k,
        None => {
            opened = Keychain::open().map_err(|e| {
                e.context(format!(
                    "the store in {} is encrypted and its key is in the keychain",
                    dir.display()
                ))
            })?;
            &opened
        }
    };
    let secret = keychain
        .get(&SecretKey::StoreKey(marker.key_id.clone()))?
        .ok_or_else(|| lost(dir, "its key is not in the OS keychain (it was deleted, or this is another account or machine)"))?;
    let key = StoreKey::from_hex(secret.expose()).ok_or_else(|| {
        lost(
            dir,
            "the keychain entry holding its key is not a 256-bit key",
        )
    })?;
    let key = Arc::new(key);
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(marker.key_id.clone(), key.clone());
    Ok(key)
}

/// The error for a store that cannot be decrypted.
pub fn lost(dir: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!(
            "the store in {} is encrypted and cannot be opened: {why}. The local copy is unreadable without \
             its key, the source database is untouched: discard the local copy (`tidepool discard-store \
             --profile <name> --yes`, or \"Discard the local copy\" in the app) and capture again to rebuild it",
            dir.display()
        ),
    )
}

/// Removes the key of store folder `dir` from `keychain` and this process. Returns the entry's id if
/// the folder was encrypted.
pub fn forget(dir: &Path, keychain: &Keychain) -> Result<Option<String>> {
    let Some(marker) = marker(dir)? else {
        return Ok(None);
    };
    keychain.delete(&SecretKey::StoreKey(marker.key_id.clone()))?;
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&marker.key_id);
    Ok(Some(marker.key_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_opens_only_with_its_key_chunk_and_aad() {
        let key = StoreKey::generate().unwrap();
        let salt = new_salt().unwrap();
        let sealer = key.file_sealer(&salt);
        let mut data = b"alice@example.com".to_vec();
        sealer.seal(3, b"aad", &mut data).unwrap();
        assert_eq!(data.len(), 17 + TAG_BYTES);
        assert!(!data.windows(5).any(|w| w == b"alice"));
        let mut copy = data.clone();
        assert!(sealer.open(4, b"aad", &mut copy).is_none(), "another chunk");
        let mut copy = data.clone();
        assert!(sealer.open(3, b"other", &mut copy).is_none(), "another aad");
        let mut copy = data.clone();
        let other = StoreKey::generate().unwrap().file_sealer(&salt);
        assert!(other.open(3, b"aad", &mut copy).is_none(), "another key");
        let mut copy = data.clone();
        assert!(
            key.file_sealer(&new_salt().unwrap())
                .open(3, b"aad", &mut copy)
                .is_none(),
            "another file"
        );
        sealer.open(3, b"aad", &mut data).unwrap();
        assert_eq!(data, b"alice@example.com");
    }

    #[test]
    fn keys_are_redacted_and_round_trip_through_hex() {
        let key = StoreKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "StoreKey(<redacted>)");
        let back = StoreKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(back.0, key.0);
        assert!(StoreKey::from_hex("zz").is_none());
        assert!(StoreKey::from_hex(&"g".repeat(64)).is_none());
        assert!(!format!("{:?}", key.sqlcipher_pragma()).contains(&key.to_hex()));
    }

    #[test]
    fn a_folder_is_encrypted_once_and_its_key_comes_back_from_the_keychain() {
        let keychain = Keychain::with_store(keyring_core::mock::Store::new().unwrap(), "mock");
        let dir =
            std::env::temp_dir().join(format!("tp-enc-{}", crate::secrets::random_hex(6).unwrap()));
        let marker = create(&dir, &keychain).unwrap();
        assert_eq!(
            create(&dir, &keychain).unwrap(),
            marker,
            "creating again keeps the key"
        );
        let text = std::fs::read_to_string(dir.join(MARKER)).unwrap();
        let key = key_for(&dir).unwrap().unwrap();
        assert!(!text.contains(&key.to_hex()), "the marker holds no key");
        cache().lock().unwrap().clear();
        unlock(&dir, &keychain).unwrap();
        assert_eq!(key_for(&dir).unwrap().unwrap().0, key.0);
        forget(&dir, &keychain).unwrap();
        let err = load(&dir, &marker, Some(&keychain)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        assert!(err.message().contains("discard"), "{}", err.message());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
