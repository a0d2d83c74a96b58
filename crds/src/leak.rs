//! Leak reports: what a secret scanner needs to find our tokens, and what the
//! operator records on an ApiToken when one is reported leaked.
//!
//! * [`TOKEN_PATTERN`] is the regular expression of every token
//!   [`crate::token`] generates, for registering with a scanner;
//!   [`pattern_for_prefix`] narrows it to one deployment's prefix.
//! * [`LEAK_ANNOTATION`] holds the last [`LeakNote`] (where the token was
//!   found, never the token); the operator turns it into the [`LEAKED`]
//!   condition and a Warning event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Every token, as a scanner should look for it: 1-16 ASCII alphanumerics
/// ([`crate::token::MAX_PREFIX_LEN`]), `_`, then 30 random and 6 checksum
/// base62 characters ([`crate::token::RANDOM_LEN`] +
/// [`crate::token::CHECKSUM_LEN`]). The word boundaries keep a longer run of
/// alphanumerics from matching in part. A match can still fail the CRC32
/// check of [`crate::token::check_format`]; the pattern cannot express it.
pub const TOKEN_PATTERN: &str = r"\b[A-Za-z0-9]{1,16}_[A-Za-z0-9]{36}\b";

/// [`TOKEN_PATTERN`] for tokens of one prefix (e.g. `prod`), the narrower
/// pattern to register when a deployment issues a single prefix. The prefix
/// is validated first, so it needs no escaping.
pub fn pattern_for_prefix(prefix: &str) -> crate::Result<String> {
    crate::token::validate_prefix(prefix)?;
    let body = crate::token::RANDOM_LEN + crate::token::CHECKSUM_LEN;
    Ok(format!(r"\b{prefix}_[A-Za-z0-9]{{{body}}}\b"))
}

/// Annotation on an ApiToken: the JSON [`LeakNote`] of its latest report.
pub const LEAK_ANNOTATION: &str = "prodgy.io/leak-report";
/// Condition type set (True) once a token has been reported leaked.
pub const LEAKED: &str = "Leaked";
/// Reason of the [`LEAKED`] condition and of its Warning event.
pub const REASON_LEAK_REPORTED: &str = "LeakReported";

/// Longest URL kept from a report; the rest is cut (an annotation and an
/// event note must stay small).
pub const MAX_URL_LEN: usize = 512;
/// Longest `type` or `source` kept from a report.
pub const MAX_LABEL_LEN: usize = 64;

/// Where a leaked token was found, as the scanner said. Never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakNote {
    /// Where the token was found (e.g. a commit's file URL).
    pub url: String,
    /// The scanner's name for the token type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where in the scanned service it was found (e.g. `content`).
    pub source: String,
    /// When the report arrived.
    pub reported_at: DateTime<Utc>,
}

impl LeakNote {
    /// A note from a report's fields, cut to their limits with control
    /// characters dropped, so a hostile report cannot bloat or garble the
    /// ApiToken, its condition or its events.
    pub fn new(url: &str, kind: &str, source: &str, reported_at: DateTime<Utc>) -> Self {
        Self {
            url: clean(url, MAX_URL_LEN),
            kind: clean(kind, MAX_LABEL_LEN),
            source: clean(source, MAX_LABEL_LEN),
            reported_at,
        }
    }

    /// The human sentence used in the condition message and the event note.
    pub fn message(&self) -> String {
        let or_unknown = |s: &str| if s.is_empty() { "unknown" } else { s }.to_owned();
        format!(
            "reported leaked at {} (type {}, source {})",
            or_unknown(&self.url),
            or_unknown(&self.kind),
            or_unknown(&self.source)
        )
    }

    /// The annotation value.
    pub fn to_json(&self) -> String {
        // A struct of strings and a date always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an annotation value; `None` when it is not a note.
    pub fn from_json(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::token::{FormatError, Token, check_format};

    #[test]
    fn the_docs_publish_this_pattern() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/leak-reports.md");
        let docs = std::fs::read_to_string(path).unwrap();
        assert!(docs.contains(TOKEN_PATTERN), "{path}");
        assert!(
            docs.contains(&pattern_for_prefix("prod").unwrap()),
            "{path}"
        );
    }

    fn whole(pattern: &str) -> Regex {
        Regex::new(&format!("^(?:{pattern})$")).unwrap()
    }

    #[test]
    fn the_pattern_matches_generated_tokens_in_text() {
        let any = Regex::new(TOKEN_PATTERN).unwrap();
        for prefix in ["prod", "a", "acme2", &"x".repeat(16)] {
            let specific = Regex::new(&pattern_for_prefix(prefix).unwrap()).unwrap();
            for _ in 0..200 {
                let t = Token::generate(prefix).unwrap();
                let text = format!("export KEY=\"{}\";\n", t.expose());
                for re in [&any, &specific] {
                    let m = re.find(&text).expect("token not found");
                    assert_eq!(m.as_str(), t.expose());
                }
            }
        }
        let prod = Regex::new(&pattern_for_prefix("prod").unwrap()).unwrap();
        assert!(!prod.is_match(Token::generate("acme").unwrap().expose()));
        assert!(pattern_for_prefix("pr_d").is_err());
    }

    #[test]
    fn the_pattern_rejects_near_misses() {
        let t = Token::generate("prod").unwrap();
        let s = t.expose();
        let body = &s[5..];
        let near = [
            format!("prod_{}", &body[1..]),
            format!("prod_{body}x"),
            format!("prod-{body}"),
            format!("prodx{body}"),
            format!("_{body}"),
            format!("{}_{body}", "p".repeat(17)),
            format!("prod_{}-", &body[1..]),
            format!("prod_{}é", &body[1..]),
            format!("prod_{}", &body[..35]),
        ];
        let any = Regex::new(TOKEN_PATTERN).unwrap();
        for n in &near {
            assert!(!any.is_match(n), "{n:?} matched");
        }
    }

    #[test]
    fn the_pattern_accepts_exactly_what_the_shape_check_accepts() {
        // Every single-character change of a token: the pattern and
        // check_format agree on "malformed"; only the checksum is beyond it.
        let re = whole(TOKEN_PATTERN);
        let t = Token::generate("prod").unwrap();
        let original = t.expose().as_bytes().to_vec();
        let alphabet = b"09AZaz_-. ";
        let mut checksum_only = 0;
        for i in 0..original.len() {
            for &c in alphabet {
                let mut m = original.clone();
                m[i] = c;
                let s = String::from_utf8(m).unwrap();
                let shape_ok = check_format(&s) != Err(FormatError::Malformed);
                assert_eq!(re.is_match(&s), shape_ok, "{s:?}");
                if check_format(&s) == Err(FormatError::BadChecksum) {
                    checksum_only += 1;
                }
            }
        }
        assert!(checksum_only > 0, "no mutation reached the checksum");
    }

    #[test]
    fn notes_are_cut_cleaned_and_round_trip() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = LeakNote::new(&"é".repeat(600), "api\ntoken", "content", at);
        assert!(n.url.len() <= MAX_URL_LEN && n.url.chars().all(|c| c == 'é'));
        assert_eq!(n.kind, "apitoken");
        assert_eq!(LeakNote::from_json(&n.to_json()), Some(n.clone()));
        let v: serde_json::Value = serde_json::from_str(&n.to_json()).unwrap();
        assert_eq!(v["type"], "apitoken");
        assert_eq!(v["reportedAt"], "2026-12-03T10:00:00Z");
        assert_eq!(LeakNote::from_json("nope"), None);
        let empty = LeakNote::new("", "", "", at);
        assert_eq!(
            empty.message(),
            "reported leaked at unknown (type unknown, source unknown)"
        );
    }
}
