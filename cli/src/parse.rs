//! Pure parsing of flag values: expiry, durations, scopes, names.
//!
//! Everything takes "now" as an argument so tests pin the clock.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use prodgy_crds::{Scope, duration};

use crate::{Error, Result};

/// Parses `--expires`: an RFC 3339 instant (`2027-01-01T00:00:00Z`) or a
/// Go-style duration from now (`30d`, `12h`, `1h30m`). The result must lie
/// in the future: a token that is born expired is a typo, not an intent.
pub fn parse_expiry(input: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let invalid = |reason: String| Error::InvalidExpiry {
        input: input.to_owned(),
        reason,
    };
    let trimmed = input.trim();
    let at = if let Ok(instant) = DateTime::parse_from_rfc3339(trimmed) {
        instant.with_timezone(&Utc)
    } else if let Ok(after) = duration::parse(trimmed) {
        let after = chrono::Duration::from_std(after)
            .map_err(|_| invalid("the duration is too long".into()))?;
        now.checked_add_signed(after)
            .ok_or_else(|| invalid("the duration is too long".into()))?
    } else {
        return Err(invalid(
            "use an RFC 3339 time (2027-01-01T00:00:00Z) or a duration from now (30d, 12h, 1h30m)"
                .into(),
        ));
    };
    if at <= now {
        return Err(invalid(format!(
            "{} is not in the future",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )));
    }
    // Kubernetes stores date-times at second precision; say what will be kept.
    Ok(truncate_to_seconds(at))
}

fn truncate_to_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// Parses a Go-style duration flag (`--timeout 30s`, `--grace 1h`).
pub fn parse_duration_flag(flag: &'static str, input: &str) -> Result<Duration> {
    duration::parse(input).map_err(|_| Error::InvalidArgument {
        flag,
        reason: format!(
            "{input:?} is not a duration: use digits with s, m, h or d, e.g. 90s, 1h30m, 7d"
        ),
    })
}

/// Renders a duration the way the flags accept it (`1h30m`, `45s`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Parses one `--scope` value, listing the valid ones on error.
pub fn parse_scope(input: &str) -> Result<Scope, String> {
    Scope::parse(input).ok_or_else(|| {
        let valid: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!(
            "unknown scope {input:?}; valid scopes: {}",
            valid.join(", ")
        )
    })
}

/// Checks one `--allow-source` value with the contract's CIDR rule.
pub fn parse_source_range(input: &str) -> Result<String, String> {
    prodgy_crds::SourceRange::parse(input)
        .map(|r| r.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a token name: a Kubernetes object name (DNS subdomain, ≤ 253).
pub fn validate_name(input: &str) -> Result<(), String> {
    validate_dns_subdomain(input).map_err(|why| format!("invalid token name {input:?}: {why}"))
}

/// Checks a product name as the CRD schema does.
pub fn validate_product(input: &str) -> Result<(), String> {
    validate_dns_subdomain(input).map_err(|why| format!("invalid product {input:?}: {why}"))
}

fn validate_dns_subdomain(s: &str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        _ if bytes.len() > 253 => Err("at most 253 characters"),
        (Some(first), Some(last))
            if ok_char(first)
                && ok_char(last)
                && bytes.iter().all(|b| ok_char(b) || *b == b'-' || *b == b'.') =>
        {
            Ok(())
        }
        _ => Err(
            "use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00.750Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn expiry_accepts_rfc3339_and_durations_relative_to_now() {
        assert_eq!(
            parse_expiry("2027-01-01T00:00:00Z", now())
                .unwrap()
                .to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_expiry("2027-01-01T02:00:00+02:00", now())
                .unwrap()
                .to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_expiry("30d", now()).unwrap().to_rfc3339(),
            "2026-03-31T12:00:00+00:00"
        );
        assert_eq!(
            parse_expiry("1h30m", now()).unwrap().to_rfc3339(),
            "2026-03-01T13:30:00+00:00"
        );
    }

    #[test]
    fn expiry_refuses_the_past_garbage_and_overflow() {
        for bad in [
            "2020-01-01T00:00:00Z",
            "2026-03-01T12:00:00Z",
            "0s",
            "tomorrow",
            "",
            "30",
            "2027-01-01",
            "-5d",
            "99999999999999d",
        ] {
            let err = parse_expiry(bad, now()).unwrap_err();
            assert!(matches!(err, Error::InvalidExpiry { .. }), "{bad}: {err}");
            assert!(err.to_string().starts_with("invalid expiry"), "{err}");
        }
        let past = parse_expiry("2020-01-01T00:00:00Z", now()).unwrap_err();
        assert!(past.to_string().contains("not in the future"), "{past}");
    }

    #[test]
    fn durations_round_trip_through_the_display_form() {
        for s in ["0s", "45s", "15m", "1h30m", "7d", "1d2h3m4s"] {
            let d = parse_duration_flag("--grace", s).unwrap();
            assert_eq!(format_duration(d), s);
        }
        let err = parse_duration_flag("--grace", "an hour").unwrap_err();
        assert!(err.to_string().starts_with("invalid --grace:"), "{err}");
    }

    #[test]
    fn scopes_parse_by_wire_name_and_errors_list_the_valid_ones() {
        assert_eq!(parse_scope("agents:read"), Ok(Scope::AgentsRead));
        let err = parse_scope("agents:admin").unwrap_err();
        assert!(err.contains("storage:write"), "{err}");
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for good in ["ci", "ci-bot", "a.b", "x1", &"a".repeat(253)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "CI", "-ci", "ci-", "ci_bot", "ci bot", &"a".repeat(254)] {
            assert!(validate_name(bad).is_err(), "{bad}");
            assert!(validate_product(bad).is_err(), "{bad}");
        }
    }
}
