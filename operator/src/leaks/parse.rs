//! The report body: a JSON array of `{"token","type","url","source"}`
//! objects (unknown fields ignored, `type`, `url` and `source` optional).
//! Error messages say where the body is wrong, never what it holds, so a
//! token never comes back in an answer or a log line.

use serde::Deserialize;

/// One reported match.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Reported {
    /// The candidate token, as found.
    pub token: String,
    /// The scanner's name for the token type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Where it was found.
    #[serde(default)]
    pub url: String,
    /// What kind of place it was found in (e.g. `content`, `commit`).
    #[serde(default)]
    pub source: String,
}

impl std::fmt::Debug for Reported {
    // The candidate may be a live token: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reported")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a body is refused (all answered 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("the body is not JSON (line {line}, column {column})")]
    NotJson {
        /// Where parsing stopped.
        line: usize,
        /// Where parsing stopped.
        column: usize,
    },
    /// JSON, but not an array of report objects with a string `token`.
    #[error(
        "the body must be a JSON array of {{\"token\",\"type\",\"url\",\"source\"}} objects with string values (line {line}, column {column})"
    )]
    Shape {
        /// Where the first wrong value is.
        line: usize,
        /// Where the first wrong value is.
        column: usize,
    },
    /// More matches than one report may carry.
    #[error("the report holds {count} tokens; at most {max} are accepted per report")]
    TooMany {
        /// Tokens in the report.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl ParseError {
    /// The envelope's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::NotJson { .. } => "invalid_json",
            ParseError::Shape { .. } => "invalid_report",
            ParseError::TooMany { .. } => "too_many_tokens",
        }
    }
}

/// Parses a report of at most `max` tokens.
pub fn parse(body: &[u8], max: usize) -> Result<Vec<Reported>, ParseError> {
    let reports: Vec<Reported> = serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => ParseError::Shape { line, column },
            _ => ParseError::NotJson { line, column },
        }
    })?;
    if reports.len() > max {
        return Err(ParseError::TooMany {
            count: reports.len(),
            max,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_with_optional_fields_and_unknown_ones() {
        let body = br#"[
            {"token":"prod_a","type":"prodgy_api_token","url":"https://example.com/x","source":"content"},
            {"token":"prod_b","extra":{"nested":true}}
        ]"#;
        let r = parse(body, 10).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, "prodgy_api_token");
        assert_eq!(r[0].source, "content");
        assert_eq!((r[1].token.as_str(), r[1].url.as_str()), ("prod_b", ""));
        assert_eq!(parse(b"[]", 10).unwrap(), Vec::new());
    }

    #[test]
    fn malformed_bodies_are_refused_without_echoing_them() {
        let secret = "prod_0123456789abcdefghijABCDEFGHIJ012345";
        let cases: [(&str, &str); 8] = [
            ("", "invalid_json"),
            ("not json", "invalid_json"),
            (r#"[{"token":"x""#, "invalid_json"),
            (&format!("\"{secret}\""), "invalid_report"),
            (&format!(r#"{{"token":"{secret}"}}"#), "invalid_report"),
            (r#"[{"token":5}]"#, "invalid_report"),
            (
                &format!(r#"[{{"token":"{secret}","url":7}}]"#),
                "invalid_report",
            ),
            (r#"[{"type":"t"}]"#, "invalid_report"),
        ];
        for (body, code) in cases {
            let e = parse(body.as_bytes(), 10).unwrap_err();
            assert_eq!(e.code(), code, "{body}");
            assert!(!e.to_string().contains("prod_"), "{e}");
        }
    }

    #[test]
    fn a_report_may_carry_at_most_max_tokens() {
        let one = r#"{"token":"t"}"#;
        let body = format!("[{}]", [one; 3].join(","));
        assert_eq!(parse(body.as_bytes(), 3).unwrap().len(), 3);
        let e = parse(body.as_bytes(), 2).unwrap_err();
        assert_eq!(e, ParseError::TooMany { count: 3, max: 2 });
        assert_eq!(e.code(), "too_many_tokens");
    }

    #[test]
    fn debug_never_prints_the_candidate() {
        let r = &parse(br#"[{"token":"prod_secretvalue"}]"#, 1).unwrap()[0];
        assert!(!format!("{r:?}").contains("secretvalue"));
    }
}
