//! The hashed Secret: the data plane's only input.
//!
//! One Secret per ApiToken, named `apitoken-<uid>`, in a namespace that holds
//! nothing else (default `prodgy-tokens`), so the proxy's RBAC can be "list and
//! watch Secrets in that namespace" and reach no other Secret. The Secret has
//! type [`SECRET_TYPE`], the labels below, and one key, [`RECORD_KEY`], holding
//! a JSON [`HashedRecord`]. It never contains a plaintext token.
//!
//! The same JSON records, as files, feed the proxy where there is no cluster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    apitoken::{Phase, RateLimit},
    scope::{Scope, ScopeSet},
    token::TokenHash,
};

/// Secret type of hashed Secrets.
pub const SECRET_TYPE: &str = "prodgy.io/hashed-token";
/// Data key holding the JSON record.
pub const RECORD_KEY: &str = "record.json";
/// Label selecting hashed Secrets (value [`HASHED_LABEL_VALUE`]).
pub const HASHED_LABEL: &str = "prodgy.io/hashed-token";
/// Value of [`HASHED_LABEL`]: the record format version.
pub const HASHED_LABEL_VALUE: &str = "v1";
/// Label naming the ApiToken's namespace.
pub const TOKEN_NAMESPACE_LABEL: &str = "prodgy.io/token-namespace";
/// Label naming the ApiToken.
pub const TOKEN_NAME_LABEL: &str = "prodgy.io/token-name";
/// Label naming the ApiToken's UID.
pub const TOKEN_UID_LABEL: &str = "prodgy.io/token-uid";
/// Standard label; value [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Who manages hashed and delivery Secrets.
pub const MANAGED_BY: &str = "prodgy-operator";
/// Default namespace of hashed Secrets.
pub const DEFAULT_NAMESPACE: &str = "prodgy-tokens";
/// Hashed Secrets are named this followed by the ApiToken's UID.
const SECRET_NAME_PREFIX: &str = "apitoken-";
/// Label selector of hashed Secrets (what the proxy lists and watches).
pub const SELECTOR: &str = "prodgy.io/hashed-token=v1";

/// Label selector of the operator's delivery Secrets: managed by it, naming
/// a token UID (that of `uid` when given), and not hashed Secrets.
pub fn delivery_selector(uid: Option<&str>) -> String {
    let uid = uid.map(|u| format!("={u}")).unwrap_or_default();
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{TOKEN_UID_LABEL}{uid},!{HASHED_LABEL}")
}

/// Current record format version.
pub const RECORD_VERSION: u32 = 1;

/// The state the owner asked for. Expiry is not a state: the proxy checks
/// `expiresAt` against its own clock on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Accepted.
    Active,
    /// Deactivated.
    Inactive,
    /// Revoked for good.
    Revoked,
}

impl RecordState {
    /// The decision for a token in this state, expired or not, by the
    /// precedence of [`Phase::of`]. The proxy's compact records use it too.
    pub const fn verdict(self, expired: bool) -> std::result::Result<(), Refusal> {
        let revoked = matches!(self, RecordState::Revoked);
        let active = matches!(self, RecordState::Active);
        match Phase::of(revoked, expired, true, active) {
            Phase::Active => Ok(()),
            Phase::Revoked => Err(Refusal::Revoked),
            Phase::Expired => Err(Refusal::Expired),
            Phase::Inactive | Phase::Pending => Err(Refusal::Inactive),
        }
    }

    /// The state a spec asks for (expiry is checked against the clock).
    pub const fn of(revoked: bool, active: bool) -> RecordState {
        if revoked {
            RecordState::Revoked
        } else if active {
            RecordState::Active
        } else {
            RecordState::Inactive
        }
    }
}

/// One accepted digest. The current token has `notAfter: null`; a previous
/// token inside its grace period carries the instant it stops working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashEntry {
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// The `spec.regeneration` this token was issued for.
    pub regeneration: i64,
    /// End of the grace period for a superseded token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
}

/// Everything the proxy needs to decide about a token, and nothing secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashedRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// ApiToken namespace.
    pub namespace: String,
    /// ApiToken name.
    pub name: String,
    /// ApiToken UID: the identity usage is counted against.
    pub uid: String,
    /// Product the token grants access to.
    pub product: String,
    /// Active, inactive or revoked.
    pub state: RecordState,
    /// Expiry; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Scopes; empty means every scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<Scope>,
    /// Per-replica rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Source ranges (canonical CIDRs); empty means any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_ranges: Vec<String>,
    /// Accepted digests: the current one first.
    pub hashes: Vec<HashEntry>,
    /// Usage cap and the usage the operator summed for it (capped tokens;
    /// boxed, so records without one stay small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<Box<crate::usage_limit::RecordLimit>>,
}

/// Why a known token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Deactivated.
    Inactive,
    /// Past `expiresAt`, or a superseded token past its grace period.
    Expired,
    /// Revoked.
    Revoked,
}

impl HashEntry {
    /// The entry of a current (not superseded) token.
    pub fn current(hash: &TokenHash, regeneration: i64) -> Self {
        Self {
            sha256: hash.to_hex(),
            regeneration,
            not_after: None,
        }
    }
}

impl HashedRecord {
    /// An active record of one current token, without expiry, scopes or
    /// rate limit: the starting point that callers adjust field by field.
    pub fn active(namespace: &str, name: &str, uid: &str, product: &str, hash: &TokenHash) -> Self {
        Self {
            version: RECORD_VERSION,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            product: product.to_owned(),
            state: RecordState::Active,
            expires_at: None,
            scopes: Vec::new(),
            rate_limit: None,
            allowed_source_ranges: Vec::new(),
            hashes: vec![HashEntry::current(hash, 0)],
            usage_limit: None,
        }
    }

    /// Name of the hashed Secret for an ApiToken UID.
    pub fn secret_name(uid: &str) -> String {
        format!("{SECRET_NAME_PREFIX}{uid}")
    }

    /// The ApiToken UID a hashed Secret's name carries, if it is one.
    pub fn uid_of_secret_name(name: &str) -> Option<&str> {
        name.strip_prefix(SECRET_NAME_PREFIX)
            .filter(|uid| !uid.is_empty())
    }

    /// The scopes as a compact set.
    pub fn scope_set(&self) -> ScopeSet {
        self.scopes.iter().copied().collect()
    }

    /// The source ranges, parsed (empty: any source).
    pub fn source_ranges(&self) -> Result<Vec<crate::sources::SourceRange>> {
        crate::sources::parse_all(self.allowed_source_ranges.iter().map(String::as_str))
    }

    /// The decision for a request presenting the digest at `entry` at `now`,
    /// by the precedence of [`Phase::of`].
    pub fn check(&self, entry: &HashEntry, now: DateTime<Utc>) -> std::result::Result<(), Refusal> {
        let expired = |at: Option<DateTime<Utc>>| at.is_some_and(|at| now >= at);
        self.state
            .verdict(expired(self.expires_at) || expired(entry.not_after))
    }

    /// Checks the invariants a reader relies on.
    pub fn validate(&self) -> Result<()> {
        self.validate_fields()?;
        for h in &self.hashes {
            TokenHash::from_hex(&h.sha256)?;
        }
        self.source_ranges()?;
        Ok(())
    }

    /// [`Self::validate`] without decoding the digests and source ranges,
    /// for a reader that decodes them itself (the proxy, a million times).
    pub fn validate_fields(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidRecord(why.to_owned()));
        if self.version != RECORD_VERSION {
            return bad("unsupported record version");
        }
        if self.namespace.is_empty() || self.name.is_empty() || self.uid.is_empty() {
            return bad("namespace, name and uid are required");
        }
        if self.product.is_empty() {
            return bad("product is required");
        }
        if self.hashes.is_empty() {
            return bad("at least one hash is required");
        }
        Ok(())
    }

    /// The labels of the hashed Secret.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (HASHED_LABEL.to_owned(), HASHED_LABEL_VALUE.to_owned()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (TOKEN_NAMESPACE_LABEL.to_owned(), self.namespace.clone()),
            (TOKEN_NAME_LABEL.to_owned(), label_value(&self.name)),
            (TOKEN_UID_LABEL.to_owned(), self.uid.clone()),
        ])
    }

    /// The complete hashed Secret for `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Result<Secret> {
        let json = serde_json::to_vec(self).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(Self::secret_name(&self.uid)),
                namespace: Some(namespace.to_owned()),
                labels: Some(self.labels()),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(RECORD_KEY.to_owned(), ByteString(json))])),
            immutable: None,
            string_data: None,
        })
    }

    /// Reads and validates the record in a hashed Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        Self::from_json(Self::json_of_secret(secret)?)
    }

    /// The record's JSON in a hashed Secret.
    pub fn json_of_secret(secret: &Secret) -> Result<&[u8]> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(RECORD_KEY))
            .map(|b| b.0.as_slice())
            .ok_or_else(|| Error::InvalidRecord(format!("missing key {RECORD_KEY}")))
    }

    /// Parses and validates a record from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let record = Self::parse_json(bytes)?;
        record.validate()?;
        Ok(record)
    }

    /// Parses a record without checking it, for a reader that checks it as
    /// it decodes it ([`Self::validate_fields`], then the digests and source
    /// ranges): the proxy, a million times as it starts.
    pub fn parse_json(bytes: &[u8]) -> Result<Self> {
        // One UTF-8 check of the whole record; the parser then skips it for
        // each string.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::InvalidRecord(format!("record is not UTF-8: {e}")))?;
        serde_json::from_str(text).map_err(|e| Error::InvalidRecord(e.to_string()))
    }
}

/// A Kubernetes label value for a name: at most 63 characters, without a
/// trailing `-`, `.` or `_`. Longer names are cut; the objects themselves
/// always hold the full name.
pub fn label_value(s: &str) -> String {
    s.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::token::Token;

    fn record() -> HashedRecord {
        let t = Token::generate("prod").unwrap();
        HashedRecord {
            expires_at: Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()),
            scopes: vec![Scope::AgentsRead],
            rate_limit: Some(RateLimit {
                requests_per_second: 5,
                burst: None,
            }),
            ..HashedRecord::active("team-a", "ci-bot", "1f0c-uid", "acme", &t.hash())
        }
    }

    #[test]
    fn secret_round_trip_keeps_every_field() {
        let r = record();
        let secret = r.to_secret("prodgy-tokens").unwrap();
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(secret.metadata.name.as_deref(), Some("apitoken-1f0c-uid"));
        assert_eq!(secret.metadata.labels.as_ref().unwrap()[HASHED_LABEL], "v1");
        assert_eq!(HashedRecord::from_secret(&secret).unwrap(), r);
    }

    #[test]
    fn json_field_names_are_the_documented_ones() {
        let v = serde_json::to_value(record()).unwrap();
        for key in [
            "version",
            "namespace",
            "name",
            "uid",
            "product",
            "state",
            "expiresAt",
            "scopes",
            "rateLimit",
            "hashes",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["state"], "active");
        assert_eq!(v["hashes"][0]["regeneration"], 0);
    }

    #[test]
    fn invalid_records_are_refused_with_a_reason() {
        let mut r = record();
        r.hashes[0].sha256 = "not-hex".into();
        assert!(HashedRecord::from_json(&serde_json::to_vec(&r).unwrap()).is_err());
        let mut r = record();
        r.hashes.clear();
        assert!(r.validate().is_err());
        let mut r = record();
        r.version = 2;
        assert!(r.validate().is_err());
        assert!(HashedRecord::from_json(b"{").is_err());
        assert!(HashedRecord::from_secret(&Secret::default()).is_err());
    }

    #[test]
    fn secret_names_and_selectors_round_trip() {
        assert_eq!(HashedRecord::secret_name("u-1"), "apitoken-u-1");
        assert_eq!(
            HashedRecord::uid_of_secret_name("apitoken-u-1"),
            Some("u-1")
        );
        assert_eq!(HashedRecord::uid_of_secret_name("apitoken-"), None);
        assert_eq!(HashedRecord::uid_of_secret_name("other-u-1"), None);
        assert_eq!(SELECTOR, format!("{HASHED_LABEL}={HASHED_LABEL_VALUE}"));
        assert_eq!(
            delivery_selector(Some("u1")),
            "app.kubernetes.io/managed-by=prodgy-operator,prodgy.io/token-uid=u1,!prodgy.io/hashed-token"
        );
        assert_eq!(
            delivery_selector(None),
            "app.kubernetes.io/managed-by=prodgy-operator,prodgy.io/token-uid,!prodgy.io/hashed-token"
        );
    }

    #[test]
    fn check_follows_precedence_and_the_expiry_boundary() {
        let mut r = record();
        let at = r.expires_at.unwrap();
        let cur = r.hashes[0].clone();
        let second = chrono::Duration::seconds(1);
        assert_eq!(r.check(&cur, at - second), Ok(()));
        assert_eq!(r.check(&cur, at), Err(Refusal::Expired));
        r.state = RecordState::Inactive;
        assert_eq!(r.check(&cur, at - second), Err(Refusal::Inactive));
        assert_eq!(r.check(&cur, at), Err(Refusal::Expired));
        r.state = RecordState::Revoked;
        assert_eq!(r.check(&cur, at), Err(Refusal::Revoked));
        // A superseded token stops at the end of its grace period.
        let r = record();
        let prev = HashEntry {
            not_after: Some(at - second * 10),
            ..cur
        };
        assert_eq!(r.check(&prev, at - second * 11), Ok(()));
        assert_eq!(r.check(&prev, at - second * 10), Err(Refusal::Expired));
    }

    #[test]
    fn long_names_fit_in_labels() {
        let mut r = record();
        r.name = format!("{}-x", "a".repeat(70));
        let v = &r.labels()[TOKEN_NAME_LABEL];
        assert!(v.len() <= 63 && !v.ends_with('-'));
    }
}
