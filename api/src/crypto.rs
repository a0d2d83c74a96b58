//! Encryption at rest for integration credentials.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per ciphertext and the
//! owning row (product and integration id) as associated data, so a
//! ciphertext copied onto another row does not decrypt. Each ciphertext
//! records the id of its key (first 8 hex digits of the key's SHA-256), so
//! a keyring may hold old keys for decryption while the first key encrypts:
//! rotation is "put the new key first, restart, run `prodgy-api reencrypt`,
//! then drop the old key".

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const NONCE_LEN: usize = 24;

/// One key and its id.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The keys in use: the first encrypts, all decrypt.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: key material never reaches a log.
        f.debug_struct("Keyring")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A ciphertext and the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key id.
    pub key_id: String,
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    pub data: String,
}

/// Where the keyring came from (for the start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The environment variable.
    Env,
    /// A file given by flag.
    File(PathBuf),
    /// A key file generated in the data directory on first start.
    Generated(PathBuf),
    /// An existing key file in the data directory.
    DataDir(PathBuf),
}

impl Keyring {
    /// Parses keys: base64 of 32 bytes each, separated by newlines, commas or
    /// spaces; `#` starts a comment line. The first key is the primary.
    pub fn parse(text: &str) -> Result<Keyring> {
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            for item in line.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
                let bytes = STANDARD
                    .decode(item)
                    .map_err(|_| Error::Config("encryption key: not base64".into()))?;
                if bytes.len() != 32 {
                    return Err(Error::Config(format!(
                        "encryption key: must be 32 bytes, got {}",
                        bytes.len()
                    )));
                }
                let id = hex::encode(&Sha256::digest(&bytes)[..4]);
                let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                    .map_err(|_| Error::Config("encryption key: unusable".into()))?;
                if !keys.iter().any(|k: &Key| k.id == id) {
                    keys.push(Key { id, cipher });
                }
            }
        }
        if keys.is_empty() {
            return Err(Error::Config("encryption key: no key found".into()));
        }
        Ok(Keyring { keys })
    }

    /// Loads the keyring from the environment value, else the given file,
    /// else `<data_dir>/encryption.key`, generating that file (mode 0600)
    /// when `generate` allows.
    pub fn load(
        env: Option<&str>,
        file: Option<&Path>,
        data_dir: &Path,
        generate: bool,
    ) -> Result<(Keyring, KeySource)> {
        if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
            return Ok((Keyring::parse(text)?, KeySource::Env));
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("--encryption-key-file {}: {e}", path.display()))
            })?;
            return Ok((Keyring::parse(&text)?, KeySource::File(path.to_owned())));
        }
        let path = data_dir.join("encryption.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((Keyring::parse(&text)?, KeySource::DataDir(path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                let text = generate_key_file(&path)?;
                Ok((Keyring::parse(&text)?, KeySource::Generated(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Config(
                "PostgreSQL needs a shared key: set --encryption-key-file or PRODGY_ENCRYPTION_KEY"
                    .into(),
            )),
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    /// Id of the key that encrypts.
    pub fn primary_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Ids of every key, primary first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Encrypts `plaintext` bound to `aad` with the primary key.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Sealed> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| Error::Crypto("empty keyring".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Crypto(format!("random: {e}")))?;
        let ct = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Crypto("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(Sealed {
            key_id: key.id.clone(),
            data: STANDARD.encode(out),
        })
    }

    /// Decrypts a ciphertext made by any key of the ring for `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Vec<u8>> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| {
                Error::Crypto(format!(
                    "credentials were encrypted with key {} which is not in the keyring",
                    sealed.key_id
                ))
            })?;
        let raw = STANDARD
            .decode(&sealed.data)
            .map_err(|_| Error::Crypto("ciphertext is not base64".into()))?;
        if raw.len() < NONCE_LEN {
            return Err(Error::Crypto("ciphertext too short".into()));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Crypto("ciphertext does not authenticate".into()))
    }
}

/// Writes a fresh random key to `path` (mode 0600, never overwriting).
fn generate_key_file(path: &Path) -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::Crypto(format!("random: {e}")))?;
    let text = format!(
        "# Prodgy API encryption key (generated). Back it up: without it stored\n\
         # integration credentials cannot be decrypted.\n{}\n",
        STANDARD.encode(key)
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(text)
}

/// A fresh key, base64 (for documentation and tests).
pub fn random_key_base64() -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::Crypto(format!("random: {e}")))?;
    Ok(STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_binds_to_its_row() {
        let ring = Keyring::parse(&random_key_base64().unwrap()).unwrap();
        let s = ring.seal(b"hunter2", "a/int_1").unwrap();
        assert_eq!(ring.open(&s, "a/int_1").unwrap(), b"hunter2");
        assert!(ring.open(&s, "b/int_1").is_err(), "moved to another row");
        assert!(!s.data.contains("hunter2"));
        let tampered = Sealed {
            data: STANDARD.encode(b"x".repeat(60)),
            ..s
        };
        assert!(ring.open(&tampered, "a/int_1").is_err());
    }

    #[test]
    fn old_keys_decrypt_and_the_first_key_encrypts() {
        let (old, new) = (random_key_base64().unwrap(), random_key_base64().unwrap());
        let before = Keyring::parse(&old).unwrap();
        let sealed = before.seal(b"v", "x").unwrap();
        let after = Keyring::parse(&format!("# rotated\n{new}\n{old}\n")).unwrap();
        assert_eq!(after.open(&sealed, "x").unwrap(), b"v");
        assert_ne!(after.seal(b"v", "x").unwrap().key_id, sealed.key_id);
        assert_eq!(after.primary_id(), after.key_ids()[0]);
        let only_new = Keyring::parse(&new).unwrap();
        let err = only_new.open(&sealed, "x").unwrap_err().to_string();
        assert!(err.contains(&sealed.key_id), "{err}");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Keyring::parse("").is_err());
        assert!(Keyring::parse("not base64!").is_err());
        assert!(Keyring::parse(&STANDARD.encode([0u8; 16])).is_err());
    }

    #[test]
    fn a_key_file_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = Keyring::load(None, None, dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::Generated(_)));
        let (b, src) = Keyring::load(None, None, dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::DataDir(_)));
        assert_eq!(a.primary_id(), b.primary_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("encryption.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(Keyring::load(None, None, empty.path(), false).is_err());
    }
}
