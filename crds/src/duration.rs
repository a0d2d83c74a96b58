//! Go-style durations as written in manifests and flags: `90s`, `15m`,
//! `1h30m`, `7d`. Pure; used for the regeneration grace period and by the CLI.

use std::time::Duration;

use crate::{Error, Result};

/// Parses a sequence of `<digits><unit>` with units `s`, `m`, `h`, `d`.
pub fn parse(input: &str) -> Result<Duration> {
    let invalid = || Error::InvalidDuration(input.to_owned());
    if input.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut digits: u64 = 0;
    let mut seen_digit = false;
    for c in input.chars() {
        match c {
            '0'..='9' => {
                digits = digits
                    .checked_mul(10)
                    .and_then(|d| d.checked_add(u64::from(c as u8 - b'0')))
                    .ok_or_else(invalid)?;
                seen_digit = true;
            }
            's' | 'm' | 'h' | 'd' if seen_digit => {
                let unit = match c {
                    's' => 1,
                    'm' => 60,
                    'h' => 3_600,
                    _ => 86_400,
                };
                total = digits
                    .checked_mul(unit)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(invalid)?;
                digits = 0;
                seen_digit = false;
            }
            _ => return Err(invalid()),
        }
    }
    if seen_digit {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Writes a duration the way [`parse`] reads it, largest units first and
/// zero units left out (`90d`, `1h30m`, `0s`); sub-second parts are dropped.
pub fn format(d: Duration) -> String {
    let mut rest = d.as_secs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, secs) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if rest >= secs {
            out.push_str(&(rest / secs).to_string());
            out.push(unit);
            rest %= secs;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sequences() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn formats_what_it_parses() {
        for (secs, text) in [
            (0, "0s"),
            (3, "3s"),
            (5_400, "1h30m"),
            (7_776_000, "90d"),
            (90_061, "1d1h1m1s"),
        ] {
            assert_eq!(format(Duration::from_secs(secs)), text);
            assert_eq!(parse(text).unwrap(), Duration::from_secs(secs));
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "5",
            "h",
            "1x",
            "1h 2m",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
