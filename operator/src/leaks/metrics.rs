//! The leak-report counters, registered in the operator's registry with
//! every label value at zero (a report that never came still shows).

use prometheus::{IntCounterVec, Opts, Registry};

use super::decide::Outcome;
use crate::Result;

/// The answer to a report (the `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportResult {
    /// Verified, parsed and acted on (200).
    Accepted,
    /// Signature missing or wrong (401).
    Unauthorized,
    /// Not a report (400).
    Malformed,
    /// Body over the limit (413).
    TooLarge,
    /// Over the rate limit (429).
    RateLimited,
    /// Hashed records not loaded yet, or a patch failed (503).
    Unavailable,
}

impl ReportResult {
    const ALL: [ReportResult; 6] = [
        ReportResult::Accepted,
        ReportResult::Unauthorized,
        ReportResult::Malformed,
        ReportResult::TooLarge,
        ReportResult::RateLimited,
        ReportResult::Unavailable,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReportResult::Accepted => "accepted",
            ReportResult::Unauthorized => "unauthorized",
            ReportResult::Malformed => "malformed",
            ReportResult::TooLarge => "too_large",
            ReportResult::RateLimited => "rate_limited",
            ReportResult::Unavailable => "unavailable",
        }
    }
}

/// Counters of reports and reported tokens.
#[derive(Debug)]
pub struct LeakMetrics {
    reports: IntCounterVec,
    tokens: IntCounterVec,
}

impl LeakMetrics {
    /// Registers the counters in `registry`.
    pub fn new(registry: &Registry) -> Result<Self> {
        let reports = IntCounterVec::new(
            Opts::new(
                "prodgy_operator_leak_reports_total",
                "Leak reports received, by result.",
            ),
            &["result"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "prodgy_operator_leaked_tokens_total",
                "Tokens in accepted leak reports, by outcome (matched, unknown, malformed).",
            ),
            &["outcome"],
        )?;
        for r in ReportResult::ALL {
            reports.with_label_values(&[r.as_str()]);
        }
        for o in Outcome::ALL {
            tokens.with_label_values(&[o.as_str()]);
        }
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Self { reports, tokens })
    }

    /// Records one report's answer.
    pub fn report(&self, result: ReportResult) {
        self.reports.with_label_values(&[result.as_str()]).inc();
    }

    /// Records `n` tokens of one outcome label.
    pub fn tokens(&self, outcome: &str, n: u64) {
        self.tokens.with_label_values(&[outcome]).inc_by(n);
    }
}
