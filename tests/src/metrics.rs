//! A small parser for the Prometheus text exposition format, enough to
//! assert on the series the proxy exports.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `prodgy_proxy_requests_total`.
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Sample value.
    pub value: f64,
}

/// Every sample of a scrape.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Samples in exposition order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses exposition text; comment lines and malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Adds another scrape's samples (e.g. one per proxy replica).
    pub fn extend(&mut self, other: Scrape) {
        self.samples.extend(other.samples);
    }

    /// Sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_at(line.find(char::is_whitespace)?),
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match head.find('{') {
        Some(open) => (
            &head[..open],
            parse_labels(&head[open + 1..head.len() - 1])?,
        ),
        None => (head, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        out.insert(key, value);
        s = &s[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_escapes() {
        let text = "# HELP x y\n# TYPE x counter\n\
            prodgy_proxy_requests_total{namespace=\"team-a\",name=\"ci\",status_class=\"2xx\"} 3\n\
            prodgy_proxy_requests_total{namespace=\"team-a\",name=\"other\",status_class=\"2xx\"} 4\n\
            prodgy_proxy_auth_failures_total{reason=\"unknown_token\"} 2\n\
            weird{v=\"a\\\"b,c\"} 1.5\n\
            prodgy_proxy_tokens_loaded 7\n\
            garbage line\n";
        let s = Scrape::parse(text);
        assert_eq!(
            s.sum("prodgy_proxy_requests_total", &[("namespace", "team-a")]),
            7.0
        );
        assert_eq!(s.sum("prodgy_proxy_requests_total", &[("name", "ci")]), 3.0);
        assert_eq!(
            s.sum(
                "prodgy_proxy_auth_failures_total",
                &[("reason", "unknown_token")]
            ),
            2.0
        );
        assert_eq!(s.sum("weird", &[("v", "a\"b,c")]), 1.5);
        assert_eq!(s.sum("prodgy_proxy_tokens_loaded", &[]), 7.0);
        assert_eq!(
            s.sum("prodgy_proxy_requests_total", &[("name", "nobody")]),
            0.0
        );
        assert!(!s.has("garbage"));
    }
}
