//! `--usage-limit N[/PER]` and how a usage cap is shown (pure).

use chrono::{DateTime, Utc};
use prodgy_crds::{UsageLimit, usage_limit::MAX_REQUESTS};
use serde::{Deserialize, Serialize};

use crate::render::format_time;

/// Parses `--usage-limit`: `N` (for the token's whole life) or `N/PER`
/// with `PER` a duration of at least `1m` (`1000/30d`, `50/1h`).
pub fn parse(input: &str) -> Result<UsageLimit, String> {
    let (n, per) = match input.trim().split_once('/') {
        Some((n, per)) => (n, Some(per.trim().to_owned())),
        None => (input.trim(), None),
    };
    let requests: i64 = n
        .trim()
        .parse()
        .ok()
        .filter(|r| (1..=MAX_REQUESTS).contains(r))
        .ok_or_else(|| {
            format!("{n:?} is not a number of requests between 1 and {MAX_REQUESTS}; use N or N/PER, e.g. 1000/30d")
        })?;
    let limit = UsageLimit { requests, per };
    limit.period_secs().map_err(|_| {
        "the period must be a duration of at least 1m (and at most 3650d), e.g. 30d, 12h, 1h30m"
            .to_owned()
    })?;
    Ok(limit)
}

/// A usage cap as `list -o json|yaml` and the card show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageLimitView {
    /// Calls allowed per window.
    pub requests: i64,
    /// Window length; absent: the token's whole life.
    pub per: Option<String>,
    /// Calls left in the current window (null until the operator summed it).
    pub remaining: Option<i64>,
    /// When the quota renews; null for a lifetime cap.
    pub renews_at: Option<DateTime<Utc>>,
}

impl UsageLimitView {
    /// The card's line, e.g. `1000 requests per 30d: 997 left, renews …`.
    pub fn describe(&self) -> String {
        let cap = match &self.per {
            Some(per) => format!("{} requests per {per}", self.requests),
            None => format!("{} requests in the token's life", self.requests),
        };
        let left = self
            .remaining
            .map_or_else(|| "not counted yet".to_owned(), |r| format!("{r} left"));
        match self.renews_at {
            Some(at) => format!("{cap}: {left}, renews {}", format_time(Some(at), "-")),
            None => format!("{cap}: {left}"),
        }
    }

    /// The table's REMAINING cell.
    pub fn cell(view: Option<&Self>) -> String {
        view.map_or_else(
            || "-".to_owned(),
            |v| {
                v.remaining
                    .map_or_else(|| "?".to_owned(), |r| r.to_string())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_or_without_a_period_parse() {
        let l = parse("1000/30d").unwrap();
        assert_eq!((l.requests, l.per.as_deref()), (1000, Some("30d")));
        let l = parse(" 5 ").unwrap();
        assert_eq!((l.requests, l.per), (5, None));
        assert_eq!(parse("50/1h30m").unwrap().per.as_deref(), Some("1h30m"));
    }

    #[test]
    fn bad_values_say_what_to_write() {
        for (bad, hint) in [
            ("0", "between 1 and"),
            ("-3/1d", "between 1 and"),
            ("lots", "N/PER"),
            ("10/30s", "at least 1m"),
            ("10/soon", "at least 1m"),
            ("10/", "at least 1m"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(hint), "{bad}: {err}");
        }
    }

    #[test]
    fn the_card_line_and_cell_say_what_is_left() {
        let at = DateTime::parse_from_rfc3339("2027-01-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = UsageLimitView {
            requests: 1000,
            per: Some("30d".into()),
            remaining: Some(997),
            renews_at: Some(at),
        };
        assert_eq!(
            v.describe(),
            "1000 requests per 30d: 997 left, renews 2027-01-31 00:00 UTC"
        );
        assert_eq!(UsageLimitView::cell(Some(&v)), "997");
        let life = UsageLimitView {
            per: None,
            remaining: None,
            renews_at: None,
            ..v
        };
        assert_eq!(
            life.describe(),
            "1000 requests in the token's life: not counted yet"
        );
        assert_eq!(UsageLimitView::cell(Some(&life)), "?");
        assert_eq!(UsageLimitView::cell(None), "-");
    }
}
