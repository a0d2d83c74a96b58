//! Identifiers, timestamps and cursor pagination.
//!
//! Ids are `<prefix>_<26 chars>`: 48 bits of milliseconds then 80 random bits
//! in Crockford base32, so they sort by creation time and lists can page by
//! id alone (keyset pagination: stable under inserts, no OFFSET scans).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new id with the given prefix, e.g. `agt_01J…`.
pub fn new_id(prefix: &str) -> String {
    let mut random = [0u8; 10];
    // The OS random source failing is not recoverable in any useful way; a
    // time-derived fallback keeps ids unique enough rather than panicking.
    if getrandom::fill(&mut random).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        random.copy_from_slice(&nanos.to_le_bytes()[..10]);
    }
    encode_id(prefix, now_ms(), random)
}

fn encode_id(prefix: &str, ms: i64, random: [u8; 10]) -> String {
    let mut value: u128 = (u128::from(ms as u64 & 0xFFFF_FFFF_FFFF)) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        let idx = ((value >> (5 * i)) & 0x1F) as usize;
        out.push(char::from(CROCKFORD[idx]));
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 (UTC, milliseconds) for a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Optional RFC 3339 for an optional timestamp.
pub fn rfc3339_opt(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 200;

/// Pagination query parameters shared by every list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1–200 (default 50).
    pub limit: Option<u32>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A validated page request: newest first, strictly older than `before`.
#[derive(Debug, Clone)]
pub struct Page {
    /// Rows to return.
    pub limit: i64,
    /// Id of the last row of the previous page.
    pub before: Option<String>,
}

impl PageQuery {
    /// Validates the parameters.
    pub fn page(&self) -> Result<Page> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let before = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(Page {
            limit: i64::from(limit),
            before,
        })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paginated<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Paginated<T> {
    /// Builds a page from `limit + 1` fetched rows and a way to read a row's id.
    pub fn from_rows(mut rows: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> Self {
        let more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit.max(0) as usize);
        let next_cursor = if more {
            rows.last().map(|r| encode_cursor(id(r)))
        } else {
            None
        };
        Paginated {
            items: rows,
            next_cursor,
        }
    }

    /// Maps the items, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paginated<U> {
        Paginated {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

fn encode_cursor(id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(cursor: &str) -> Result<String> {
    use base64::Engine;
    let bad = || Error::invalid("cursor", "not a cursor returned by this API");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let id = String::from_utf8(bytes).map_err(|_| bad())?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_carry_their_prefix() {
        let a = encode_id("agt", 1_000, [0xFF; 10]);
        let b = encode_id("agt", 1_001, [0; 10]);
        assert!(a < b);
        assert!(a.starts_with("agt_"));
        assert_eq!(a.len(), 4 + 26);
        assert_ne!(new_id("x"), new_id("x"));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let page = PageQuery {
            limit: Some(2),
            cursor: Some(encode_cursor("agt_01ABC")),
        }
        .page()
        .unwrap();
        assert_eq!(page.before.as_deref(), Some("agt_01ABC"));
        for bad in ["%%%", "AAAA", &encode_cursor("x' OR 1=1")] {
            let q = PageQuery {
                limit: None,
                cursor: Some(bad.to_owned()),
            };
            assert!(q.page().is_err(), "{bad}");
        }
        for limit in [0, 201] {
            let q = PageQuery {
                limit: Some(limit),
                cursor: None,
            };
            assert!(q.page().is_err());
        }
    }

    #[test]
    fn a_full_page_has_a_cursor_and_a_short_one_not() {
        let page = Page {
            limit: 2,
            before: None,
        };
        let p = Paginated::from_rows(vec!["c", "b", "a"], &page, |s| s);
        assert_eq!(p.items, vec!["c", "b"]);
        assert_eq!(p.next_cursor.as_deref(), Some(encode_cursor("b").as_str()));
        let p = Paginated::from_rows(vec!["a"], &page, |s| s);
        assert!(p.next_cursor.is_none());
    }
}
