//! What a user reads: the list table, the token card and the JSON/YAML
//! documents, all rendered from one flat [`TokenView`].
//!
//! The JSON/YAML field names are part of the plugin's interface (scripts
//! parse them), so they are spelled out here rather than derived from the
//! CRD's nested shape, which may grow.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prodgy_crds::{ApiToken, Phase};
use serde::{Deserialize, Serialize};

use crate::usage_limit::UsageLimitView;
use crate::{Error, Result};

/// Output formats of `list` and `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable table (`list`) or card (`get`).
    Table,
    /// Pretty JSON with stable camelCase field names.
    Json,
    /// YAML with the same field names as JSON.
    Yaml,
}

/// One token as the plugin shows it: the guide's fields plus ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Namespace of the ApiToken.
    pub namespace: String,
    /// Token name (the resource name).
    pub name: String,
    /// Product (workspace) the token grants access to.
    pub product: String,
    /// `spec.displayName`.
    pub description: Option<String>,
    /// First 8 characters of the current token; null until issued.
    pub prefix: Option<String>,
    /// Active, Inactive, Expired, Revoked, or Pending before the first issue.
    pub status: String,
    /// When the ApiToken was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When the current token was issued (changes on regenerate).
    pub issued_at: Option<DateTime<Utc>>,
    /// Expiration; null means "Never".
    pub expires_at: Option<DateTime<Utc>>,
    /// API calls made with the token.
    pub usage: i64,
    /// Last accepted call; null if never used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Scopes; empty means every resource of the product.
    pub scopes: Vec<String>,
    /// Per-token rate limit, if any.
    pub rate_limit: Option<RateLimitView>,
    /// Source ranges the token is accepted from; empty means any source.
    #[serde(default)]
    pub allowed_sources: Vec<String>,
    /// Usage cap and what is left of it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<UsageLimitView>,
    /// `spec.regeneration`.
    pub regeneration: i64,
    /// Until when the previous token still works after a regeneration.
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Name of the delivery Secret while it exists.
    pub delivery_secret: Option<String>,
    /// Whether the operator has caught up with the latest spec change.
    pub up_to_date: bool,
    /// Status conditions (`Ready`, …).
    pub conditions: Vec<ConditionView>,
    /// The operator's lifecycle notices, e.g. `deactivated: unused 90d`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

/// A rate limit in the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitView {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Effective burst.
    pub burst: u32,
}

/// A status condition in the view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Last transition.
    pub last_transition_time: Option<DateTime<Utc>>,
}

/// The document `list -o json|yaml` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    /// Tokens, sorted by namespace then name.
    pub items: Vec<TokenView>,
}

impl TokenView {
    /// Flattens an ApiToken into what the plugin shows.
    pub fn from_token(token: &ApiToken) -> Self {
        let status = token.status.clone().unwrap_or_default();
        let spec = &token.spec;
        let meta = &token.metadata;
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            product: spec.product.clone(),
            description: spec.display_name.clone(),
            prefix: status.prefix.clone(),
            status: status.phase.unwrap_or(Phase::Pending).as_str().to_owned(),
            created_at: meta.creation_timestamp.as_ref().and_then(to_chrono),
            issued_at: status.created_at,
            // The spec is the owner's intent and what the proxy enforces from
            // the hashed Secret; status only copies it.
            expires_at: spec.expires_at.or(status.expires_at),
            usage: status.usage,
            last_used_at: status.last_used_at,
            scopes: spec.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            rate_limit: spec.rate_limit.map(|r| RateLimitView {
                requests_per_second: r.requests_per_second,
                burst: r.burst(),
            }),
            allowed_sources: spec.allowed_source_ranges.clone(),
            usage_limit: spec.usage_limit.as_ref().map(|l| UsageLimitView {
                requests: l.requests,
                per: l.per.clone(),
                remaining: status.usage_limit.as_ref().map(|s| s.remaining),
                renews_at: status.usage_limit.as_ref().and_then(|s| s.renews_at),
            }),
            regeneration: spec.regeneration,
            previous_valid_until: status.previous_valid_until,
            delivery_secret: status.delivery_secret_name.clone(),
            up_to_date: match (meta.generation, status.observed_generation) {
                (Some(generation), Some(observed)) => observed >= generation,
                (None, _) => true,
                (Some(_), None) => false,
            },
            conditions: status
                .conditions
                .iter()
                .map(|c| ConditionView {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: to_chrono(&c.last_transition_time),
                })
                .collect(),
            notices: crate::notices::markers(&status),
        }
    }
}

fn to_chrono(time: &Time) -> Option<DateTime<Utc>> {
    let ts = time.0;
    let nanos = u32::try_from(ts.subsec_nanosecond()).unwrap_or(0);
    DateTime::from_timestamp(ts.as_second(), nanos)
}

/// A date and time as the table and card show it.
pub fn format_time(at: Option<DateTime<Utc>>, absent: &str) -> String {
    at.map_or_else(
        || absent.to_owned(),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// The `list` table: the guide's columns plus Product and Last used.
pub fn render_table(tokens: &[TokenView], with_namespace: bool) -> String {
    let mut header = vec![
        "NAME",
        "PRODUCT",
        "PREFIX",
        "CREATED AT",
        "EXPIRATION",
        "USAGE",
        "STATUS",
        "LAST USED",
    ];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    // Shown only when some token has a cap, so uncapped lists stay as they were.
    let capped = tokens.iter().any(|t| t.usage_limit.is_some());
    if capped {
        header.push("REMAINING");
    }
    let rows = tokens.iter().map(|t| {
        let mut row = vec![
            t.name.clone(),
            t.product.clone(),
            t.prefix.clone().unwrap_or_else(|| "-".into()),
            format_time(t.created_at, "-"),
            format_time(t.expires_at, "Never"),
            t.usage.to_string(),
            crate::notices::status_cell(&t.status, &t.notices),
            format_time(t.last_used_at, "Never"),
        ];
        if with_namespace {
            row.insert(0, t.namespace.clone());
        }
        if capped {
            row.push(UsageLimitView::cell(t.usage_limit.as_ref()));
        }
        row
    });
    align(&header, rows)
}

/// Left-aligned columns separated by three spaces, like kubectl's tables.
fn align(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 3));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `get` card: every field of the guide's token card, then ours, then
/// the conditions.
pub fn render_card(t: &TokenView) -> String {
    let lines = card_fields(t);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &lines {
        out.push_str(&format!("{:<width$}{value}\n", format!("{key}:")));
    }
    out.push_str(&render_conditions(&t.conditions));
    out
}

/// The card's fields in card order. One declarative list, longer than most
/// functions here on purpose: split, the card's order would be spread over
/// several.
fn card_fields(t: &TokenView) -> Vec<(&'static str, String)> {
    let mut lines: Vec<(&str, String)> = vec![
        ("Name", t.name.clone()),
        ("Namespace", t.namespace.clone()),
        ("Product", t.product.clone()),
        (
            "Description",
            t.description.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "Prefix",
            t.prefix
                .clone()
                .unwrap_or_else(|| "- (not issued yet)".into()),
        ),
        (
            "Status",
            if t.up_to_date {
                t.status.clone()
            } else {
                format!(
                    "{} (the operator has not yet applied the latest change)",
                    t.status
                )
            },
        ),
        ("Created at", format_time(t.created_at, "-")),
        ("Issued at", format_time(t.issued_at, "-")),
        ("Expiration", format_time(t.expires_at, "Never")),
        ("Usage", t.usage.to_string()),
        ("Last used", format_time(t.last_used_at, "Never")),
        (
            "Scopes",
            if t.scopes.is_empty() {
                "all resources of the product".into()
            } else {
                t.scopes.join(", ")
            },
        ),
        (
            "Rate limit",
            t.rate_limit.map_or_else(
                || "none".into(),
                |r| format!("{} requests/s (burst {})", r.requests_per_second, r.burst),
            ),
        ),
        (
            "Allowed sources",
            if t.allowed_sources.is_empty() {
                "any".into()
            } else {
                t.allowed_sources.join(", ")
            },
        ),
        ("Regeneration", t.regeneration.to_string()),
    ];
    if let Some(limit) = &t.usage_limit {
        lines.push(("Usage limit", limit.describe()));
    }
    if let Some(until) = t.previous_valid_until {
        lines.push((
            "Previous token",
            format!("valid until {}", format_time(Some(until), "-")),
        ));
    }
    lines.push((
        "Delivery Secret",
        t.delivery_secret.clone().unwrap_or_else(|| "-".into()),
    ));
    lines
}

/// The card's "Conditions:" block, one aligned row a condition.
fn render_conditions(conditions: &[ConditionView]) -> String {
    let mut out = String::from("Conditions:");
    if conditions.is_empty() {
        out.push_str(" none\n");
    } else {
        out.push('\n');
        let rows = conditions.iter().map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                format_time(c.last_transition_time, "-"),
                c.message.replace('\n', " "),
            ]
        });
        for line in align(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Serialises a document as pretty JSON or YAML, newline-terminated.
pub fn render_document<T: Serialize>(doc: &T, format: Format) -> Result<String> {
    match format {
        Format::Json => serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(|e| Error::Render(e.to_string())),
        Format::Yaml => serde_yaml::to_string(doc).map_err(|e| Error::Render(e.to_string())),
        Format::Table => Err(Error::Render("a table is not a document".into())),
    }
}

#[cfg(test)]
mod tests {
    use prodgy_crds::{ApiTokenSpec, ApiTokenStatus, RateLimit, Scope};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn token(name: &str, status: Option<ApiTokenStatus>) -> ApiToken {
        let spec: ApiTokenSpec = serde_json::from_value(serde_json::json!({
            "product": "acme",
            "displayName": "CI pipeline",
            "scopes": ["agents:read", "storage:write"],
            "rateLimit": {"requestsPerSecond": 5}
        }))
        .unwrap();
        let mut t = ApiToken::new(name, spec);
        t.metadata.namespace = Some("team-a".into());
        t.metadata.generation = Some(2);
        t.metadata.creation_timestamp = Some(Time(
            "2026-01-02T03:04:05Z"
                .parse::<k8s_openapi::jiff::Timestamp>()
                .unwrap(),
        ));
        t.status = status;
        t
    }

    fn issued() -> ApiTokenStatus {
        ApiTokenStatus {
            phase: Some(Phase::Active),
            prefix: Some("prod_abc".into()),
            created_at: Some(at("2026-01-02T03:04:06Z")),
            usage: 1234,
            last_used_at: Some(at("2026-02-03T10:11:12Z")),
            observed_generation: Some(2),
            delivery_secret_name: Some("ci-token".into()),
            ..Default::default()
        }
    }

    #[test]
    fn view_flattens_spec_status_and_metadata() {
        let v = TokenView::from_token(&token("ci", Some(issued())));
        assert_eq!(v.namespace, "team-a");
        assert_eq!(v.status, "Active");
        assert_eq!(v.prefix.as_deref(), Some("prod_abc"));
        assert_eq!(v.created_at, Some(at("2026-01-02T03:04:05Z")));
        assert_eq!(v.scopes, ["agents:read", "storage:write"]);
        assert_eq!(
            v.rate_limit,
            Some(RateLimitView {
                requests_per_second: 5,
                burst: 5
            })
        );
        assert!(v.up_to_date);

        let pending = TokenView::from_token(&token("new", None));
        assert_eq!(pending.status, "Pending");
        assert_eq!(pending.prefix, None);
        assert!(!pending.up_to_date);
    }

    #[test]
    fn table_has_the_guide_columns_and_says_never() {
        let mut a = TokenView::from_token(&token("ci", Some(issued())));
        a.expires_at = Some(at("2027-01-01T00:00:00Z"));
        let b = TokenView::from_token(&token("brand-new-token", None));
        let table = render_table(&[a, b], false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NAME              PRODUCT   PREFIX     CREATED AT             EXPIRATION             USAGE   STATUS    LAST USED"
        );
        assert_eq!(
            lines[1],
            "ci                acme      prod_abc   2026-01-02 03:04 UTC   2027-01-01 00:00 UTC   1234    Active    2026-02-03 10:11 UTC"
        );
        assert_eq!(
            lines[2],
            "brand-new-token   acme      -          2026-01-02 03:04 UTC   Never                  0       Pending   Never"
        );
        let all = render_table(&[TokenView::from_token(&token("ci", Some(issued())))], true);
        assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
        assert!(
            all.lines().nth(1).unwrap().starts_with("team-a      ci"),
            "{all}"
        );
    }

    #[test]
    fn a_usage_cap_adds_remaining_to_the_table_and_a_line_to_the_card() {
        let mut capped = token("capped", Some(issued()));
        capped.spec.usage_limit = crate::usage_limit::parse("1000/30d").ok();
        let status = capped.status.as_mut().unwrap();
        status.usage_limit = Some(prodgy_crds::UsageLimitStatus {
            requests: 1000,
            used: 3,
            remaining: 997,
            window_start: Some(at("2026-01-02T03:04:05Z")),
            renews_at: Some(at("2026-02-01T03:04:05Z")),
        });
        let capped = TokenView::from_token(&capped);
        let plain = TokenView::from_token(&token("plain", Some(issued())));
        let table = render_table(&[capped.clone(), plain.clone()], false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("   REMAINING"), "{}", lines[0]);
        assert!(lines[1].ends_with("997"), "{}", lines[1]);
        assert!(lines[2].ends_with('-'), "{}", lines[2]);
        assert!(!render_table(std::slice::from_ref(&plain), false).contains("REMAINING"));
        let card = render_card(&capped);
        assert!(
            card.contains(
                "Usage limit:     1000 requests per 30d: 997 left, renews 2026-02-01 03:04 UTC\n"
            ),
            "{card}"
        );
        assert!(!render_card(&plain).contains("Usage limit"));
    }

    #[test]
    fn card_shows_every_guide_field_and_ours() {
        let mut status = issued();
        status.previous_valid_until = Some(at("2026-02-03T11:00:00Z"));
        status.conditions = vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Active".into(),
            message: "token issued".into(),
            last_transition_time: Time(
                "2026-01-02T03:04:06Z"
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .unwrap(),
            ),
            observed_generation: Some(2),
        }];
        let card = render_card(&TokenView::from_token(&token("ci", Some(status))));
        for expected in [
            "Name:            ci\n",
            "Prefix:          prod_abc\n",
            "Created at:      2026-01-02 03:04 UTC\n",
            "Expiration:      Never\n",
            "Usage:           1234\n",
            "Status:          Active\n",
            "Product:         acme\n",
            "Description:     CI pipeline\n",
            "Last used:       2026-02-03 10:11 UTC\n",
            "Scopes:          agents:read, storage:write\n",
            "Rate limit:      5 requests/s (burst 5)\n",
            "Previous token:  valid until 2026-02-03 11:00 UTC\n",
            "Delivery Secret: ci-token\n",
            "Conditions:\n  TYPE    STATUS   REASON   SINCE                  MESSAGE\n  Ready   True     Active   2026-01-02 03:04 UTC   token issued\n",
        ] {
            assert!(card.contains(expected), "missing {expected:?} in\n{card}");
        }
    }

    #[test]
    fn card_explains_unrestricted_scopes_and_pending_changes() {
        let mut t = token(
            "ci",
            Some(ApiTokenStatus {
                observed_generation: Some(1),
                ..issued()
            }),
        );
        t.spec.scopes = vec![];
        t.spec.rate_limit = Some(RateLimit {
            requests_per_second: 10,
            burst: Some(20),
        });
        let card = render_card(&TokenView::from_token(&t));
        assert!(
            card.contains("Scopes:          all resources of the product\n"),
            "{card}"
        );
        assert!(card.contains("10 requests/s (burst 20)"), "{card}");
        assert!(card.contains("not yet applied the latest change"), "{card}");
        assert!(card.ends_with("Conditions: none\n"), "{card}");
        assert!(!card.contains("Previous token"), "{card}");
    }

    #[test]
    fn documents_use_stable_camel_case_names_and_round_trip() {
        let list = TokenList {
            items: vec![TokenView::from_token(&token("ci", Some(issued())))],
        };
        let json = render_document(&list, Format::Json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let item = &value["items"][0];
        for key in [
            "namespace",
            "name",
            "product",
            "description",
            "prefix",
            "status",
            "createdAt",
            "issuedAt",
            "expiresAt",
            "usage",
            "lastUsedAt",
            "scopes",
            "rateLimit",
            "regeneration",
            "previousValidUntil",
            "deliverySecret",
            "upToDate",
            "conditions",
        ] {
            assert!(item.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(item["expiresAt"], serde_json::Value::Null);
        assert_eq!(item["createdAt"], "2026-01-02T03:04:05Z");
        assert_eq!(item["scopes"][1], Scope::StorageWrite.as_str());

        let yaml = render_document(&list, Format::Yaml).unwrap();
        assert!(yaml.contains("lastUsedAt: 2026-02-03T10:11:12Z"), "{yaml}");
        let back: TokenList = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn the_card_and_documents_show_the_allowed_sources() {
        let mut t = token("ci", None);
        let any = render_card(&TokenView::from_token(&t));
        assert!(any.contains("Allowed sources: any\n"), "{any}");
        t.spec.allowed_source_ranges = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
        let view = TokenView::from_token(&t);
        let card = render_card(&view);
        assert!(
            card.contains("Allowed sources: 10.0.0.0/8, 2001:db8::/32\n"),
            "{card}"
        );
        let json = render_document(&view, Format::Json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["allowedSources"][1], "2001:db8::/32");
    }
}
