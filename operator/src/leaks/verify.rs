//! Who sent a report: an ECDSA P-256 signature by one of the scanner's
//! published keys (the partner-program scheme), or an HMAC-SHA256 of the body
//! under a shared secret (for in-house scanners). Both over the raw body.
//!
//! Keys come from files read at start-up, never from the network: the
//! cluster may not reach the scanner, and a key fetched on demand would let
//! whoever answers that fetch sign reports.

use std::{collections::BTreeMap, fmt};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ring::{hmac, signature};
use serde::Deserialize;

/// Header naming the scanner key that signed the body.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// Header holding the base64 DER ECDSA signature of the body.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// Header holding `sha256=<hex HMAC-SHA256 of the body>` (shared secret).
pub const HMAC_HEADER: &str = "x-prodgy-signature-256";

/// Shortest shared secret accepted: 128 bits.
pub const MIN_SECRET_LEN: usize = 16;

/// The DER header of a P-256 SubjectPublicKeyInfo (id-ecPublicKey with the
/// prime256v1 curve, then a BIT STRING of 66 bytes), before the 65-byte
/// uncompressed point. Every P-256 public key PEM starts with these bytes.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The signature headers of one request (absent ones are `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    /// [`KEY_ID_HEADER`].
    pub key_id: Option<&'a str>,
    /// [`SIGNATURE_HEADER`].
    pub signature: Option<&'a str>,
    /// [`HMAC_HEADER`].
    pub hmac: Option<&'a str>,
}

/// How a report proved its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// Signed by the scanner key with this identifier.
    Key(String),
    /// Authenticated with the shared secret.
    SharedSecret,
}

/// Why a report is refused (all answered 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No signature headers at all, or only half of the key pair.
    #[error(
        "the report is not signed: send the key identifier and signature headers, or the shared-secret signature header"
    )]
    Missing,
    /// The key identifier names no configured key.
    #[error("the report is signed by an unknown key identifier")]
    UnknownKey,
    /// A shared-secret signature, but no shared secret is configured.
    #[error("shared-secret signatures are not accepted here")]
    NoSharedSecret,
    /// The signature does not verify (or is not decodable).
    #[error("the report's signature does not match its body")]
    BadSignature,
}

/// The configured keys and secret.
pub struct Verifier {
    keys: BTreeMap<String, signature::UnparsedPublicKey<Vec<u8>>>,
    secret: Option<hmac::Key>,
}

impl fmt::Debug for Verifier {
    // Key identifiers only; the shared secret is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("shared_secret", &self.secret.is_some())
            .finish()
    }
}

/// The key list as the partner program publishes it (unknown fields, such
/// as `is_current`, are ignored): save that document to a file and point
/// `--leak-public-keys-file` at it.
#[derive(Deserialize)]
struct KeyList {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl Verifier {
    /// A verifier from a key list (JSON, as published) and a shared secret.
    pub fn new(key_list: Option<&[u8]>, secret: Option<&[u8]>) -> Result<Self, String> {
        let mut keys = BTreeMap::new();
        if let Some(json) = key_list {
            let list: KeyList = serde_json::from_slice(json).map_err(|e| {
                format!("not a key list {{\"public_keys\":[{{\"key_identifier\",\"key\"}}]}}: {e}")
            })?;
            for k in list.public_keys {
                let point = p256_point(&k.key)
                    .map_err(|why| format!("key {:?}: {why}", k.key_identifier))?;
                let key =
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point);
                keys.insert(k.key_identifier, key);
            }
            if keys.is_empty() {
                return Err("the key list holds no key".into());
            }
        }
        let secret = match secret.map(trim_end) {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(format!(
                    "the shared secret must be at least {MIN_SECRET_LEN} bytes"
                ));
            }
            Some(s) => Some(hmac::Key::new(hmac::HMAC_SHA256, s)),
            None => None,
        };
        Ok(Self { keys, secret })
    }

    /// Identifiers of the configured keys.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks the request's signature over `body`.
    pub fn verify(&self, p: Presented<'_>, body: &[u8]) -> Result<Signer, AuthError> {
        match (p.key_id, p.signature, p.hmac) {
            (Some(id), Some(sig), _) => {
                let key = self.keys.get(id).ok_or(AuthError::UnknownKey)?;
                let der = STANDARD
                    .decode(sig.trim())
                    .map_err(|_| AuthError::BadSignature)?;
                key.verify(body, &der)
                    .map_err(|_| AuthError::BadSignature)?;
                Ok(Signer::Key(id.to_owned()))
            }
            (None, None, Some(mac)) => {
                let key = self.secret.as_ref().ok_or(AuthError::NoSharedSecret)?;
                let hex_mac = mac
                    .trim()
                    .strip_prefix("sha256=")
                    .ok_or(AuthError::BadSignature)?;
                let tag = hex::decode(hex_mac).map_err(|_| AuthError::BadSignature)?;
                // ring compares the tags in constant time.
                hmac::verify(key, body, &tag).map_err(|_| AuthError::BadSignature)?;
                Ok(Signer::SharedSecret)
            }
            _ => Err(AuthError::Missing),
        }
    }
}

/// The uncompressed point of a P-256 public key in PEM (SubjectPublicKeyInfo).
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let inner = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|s| s.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or("not a PEM public key (-----BEGIN PUBLIC KEY-----)")?;
    let b64: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in the PEM: {e}"))?;
    match der.strip_prefix(&P256_SPKI_HEADER[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("not an ECDSA P-256 public key".into()),
    }
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &s[..end]
}

/// Helpers that make keys and signatures, for tests here and in `tests/`.
pub mod testing {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use ring::{rand::SystemRandom, signature};

    use super::P256_SPKI_HEADER;

    /// A fresh P-256 key pair.
    #[derive(Debug)]
    pub struct TestKey {
        pair: signature::EcdsaKeyPair,
    }

    impl TestKey {
        /// Generates a key pair (panics only if the OS has no randomness).
        #[allow(clippy::expect_used)]
        pub fn generate() -> Self {
            let rng = SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
            let pair =
                signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pkcs8");
            Self { pair }
        }

        /// The public key as a PEM SubjectPublicKeyInfo.
        pub fn public_pem(&self) -> String {
            use signature::KeyPair as _;
            let mut der = P256_SPKI_HEADER.to_vec();
            der.extend_from_slice(self.pair.public_key().as_ref());
            let b64 = STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .filter_map(|c| std::str::from_utf8(c).ok())
                .collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            )
        }

        /// The base64 DER signature of `body`, as the signature header holds it.
        #[allow(clippy::expect_used)]
        pub fn sign(&self, body: &[u8]) -> String {
            let sig = self.pair.sign(&SystemRandom::new(), body).expect("sign");
            STANDARD.encode(sig.as_ref())
        }
    }

    /// A key list document naming each key by its identifier.
    pub fn key_list(keys: &[(&str, &TestKey)]) -> String {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|(id, k)| {
                serde_json::json!({"key_identifier": id, "key": k.public_pem(), "is_current": true})
            })
            .collect();
        serde_json::json!({ "public_keys": list }).to_string()
    }

    /// The shared-secret header value for `body`.
    pub fn hmac_header(secret: &[u8], body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        format!(
            "sha256={}",
            hex::encode(ring::hmac::sign(&key, body).as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    const SECRET: &[u8] = b"a shared secret of 32 bytes long";

    fn ecdsa<'a>(id: &'a str, sig: &'a str) -> Presented<'a> {
        Presented {
            key_id: Some(id),
            signature: Some(sig),
            hmac: None,
        }
    }

    fn shared(mac: &str) -> Presented<'_> {
        Presented {
            hmac: Some(mac),
            ..Presented::default()
        }
    }

    #[test]
    fn signatures_of_the_configured_keys_verify_and_nothing_else_does() {
        let (k1, k2, stranger) = (
            TestKey::generate(),
            TestKey::generate(),
            TestKey::generate(),
        );
        let list = key_list(&[("k1", &k1), ("k2", &k2)]);
        let v = Verifier::new(Some(list.as_bytes()), None).unwrap();
        assert_eq!(v.key_ids().collect::<Vec<_>>(), ["k1", "k2"]);
        let body = br#"[{"token":"x","type":"t","url":"u","source":"content"}]"#;
        let good = k2.sign(body);
        assert_eq!(
            v.verify(ecdsa("k2", &good), body),
            Ok(Signer::Key("k2".into()))
        );
        // The right signature under the wrong key identifier.
        assert_eq!(
            v.verify(ecdsa("k1", &good), body),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(ecdsa("k3", &good), body),
            Err(AuthError::UnknownKey)
        );
        let forged = stranger.sign(body);
        assert_eq!(
            v.verify(ecdsa("k1", &forged), body),
            Err(AuthError::BadSignature)
        );
        // One byte of the body changed.
        let mut other = body.to_vec();
        other[10] ^= 1;
        assert_eq!(
            v.verify(ecdsa("k2", &good), &other),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(ecdsa("k2", "%%%"), body),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(ecdsa("k2", ""), body),
            Err(AuthError::BadSignature)
        );
        let half = Presented {
            key_id: Some("k2"),
            ..Presented::default()
        };
        assert_eq!(v.verify(half, body), Err(AuthError::Missing));
        assert_eq!(
            v.verify(Presented::default(), body),
            Err(AuthError::Missing)
        );
        assert_eq!(
            v.verify(shared(&hmac_header(SECRET, body)), body),
            Err(AuthError::NoSharedSecret)
        );
    }

    #[test]
    fn the_shared_secret_authenticates_the_exact_body() {
        // A trailing newline in the mounted file is not part of the secret.
        let mut file = SECRET.to_vec();
        file.extend_from_slice(b"\n");
        let v = Verifier::new(None, Some(&file)).unwrap();
        let body = b"[]";
        let mac = hmac_header(SECRET, body);
        assert_eq!(v.verify(shared(&mac), body), Ok(Signer::SharedSecret));
        assert_eq!(v.verify(shared(&mac), b"[ ]"), Err(AuthError::BadSignature));
        let wrong = hmac_header(b"another secret of 32 bytes long!", body);
        assert_eq!(v.verify(shared(&wrong), body), Err(AuthError::BadSignature));
        let bare = mac.trim_start_matches("sha256=");
        assert_eq!(v.verify(shared(bare), body), Err(AuthError::BadSignature));
        assert_eq!(
            v.verify(shared("sha256=zz"), body),
            Err(AuthError::BadSignature)
        );
        let short = &mac[..mac.len() - 2];
        assert_eq!(v.verify(shared(short), body), Err(AuthError::BadSignature));
        // Key headers win over the shared secret: no keys, so unknown.
        let both = Presented {
            key_id: Some("k"),
            signature: Some("AAAA"),
            hmac: Some(&mac),
        };
        assert_eq!(v.verify(both, body), Err(AuthError::UnknownKey));
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("shared secret of"), "{dbg}");
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let k = TestKey::generate();
        let bad = |list: &str| Verifier::new(Some(list.as_bytes()), None).unwrap_err();
        assert!(bad("{").contains("not a key list"));
        assert!(bad(r#"{"public_keys":[]}"#).contains("no key"));
        let not_pem = r#"{"public_keys":[{"key_identifier":"a","key":"hello"}]}"#;
        assert!(bad(not_pem).contains("PEM"));
        // An RSA-sized blob is not a P-256 key.
        let other = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode([0x30u8; 91])
        );
        let list = serde_json::json!({"public_keys":[{"key_identifier":"a","key":other}]});
        assert!(bad(&list.to_string()).contains("P-256"));
        assert!(Verifier::new(Some(key_list(&[("a", &k)]).as_bytes()), None).is_ok());
        let short = Verifier::new(None, Some(b"short\n")).unwrap_err();
        assert!(short.contains("16 bytes"));
    }
}
