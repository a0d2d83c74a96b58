//! The verdict, case by case, without a socket: one index, one clock, a
//! table of requests and what each must get.

use chrono::{TimeZone, Utc};
use prodgy_crds::{HashEntry, HashedRecord, RateLimit, RecordLimit, RecordState, Token, scope};

use super::*;
use crate::index::{IndexWriter, ProductFilter};

/// 2030-01-01T00:00:00Z in nanoseconds.
const NOW: i64 = 1_893_456_000_000_000_000;

struct World {
    index: Arc<Index>,
    cells: Cells,
    tokens: Vec<(&'static str, Token)>,
}

fn at(secs_from_now: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_nanos(NOW + secs_from_now * 1_000_000_000)
}

fn world() -> World {
    let mut w = IndexWriter::new(
        Arc::new(Index::default()),
        ProductFilter::new(["acme".to_owned()]),
    );
    let mut tokens = Vec::new();
    let mut add = |label: &'static str, edit: &dyn Fn(&mut HashedRecord)| {
        let token = Token::generate("prod").unwrap();
        let mut r = HashedRecord::active("team-a", label, label, "acme", &token.hash());
        edit(&mut r);
        let compact = w.compact(&r).unwrap();
        w.upsert(&compact);
        tokens.push((label, token));
    };
    add("active", &|_| {});
    add("inactive", &|r| r.state = RecordState::Inactive);
    add("revoked", &|r| r.state = RecordState::Revoked);
    add("expired", &|r| r.expires_at = Some(at(0)));
    add("expiring", &|r| r.expires_at = Some(at(1)));
    add("other-product", &|r| r.product = "globex".into());
    add("agents-read", &|r| r.scopes = vec![Scope::AgentsRead]);
    add("rate-1", &|r| {
        r.rate_limit = Some(RateLimit {
            requests_per_second: 1,
            burst: None,
        });
    });
    let ranged = |r: &mut HashedRecord, ranges: &[&str]| {
        r.allowed_source_ranges = ranges.iter().map(|s| (*s).to_owned()).collect();
    };
    add("v4-only", &|r| ranged(r, &["10.0.0.0/8", "192.0.2.7/32"]));
    add("v6-only", &|r| ranged(r, &["2001:db8::/32"]));
    add("ranged-revoked", &|r| {
        ranged(r, &["10.0.0.0/8"]);
        r.state = RecordState::Revoked;
    });
    add("ranged-expired", &|r| {
        ranged(r, &["10.0.0.0/8"]);
        r.expires_at = Some(at(0));
    });
    add("ranged-agents-read", &|r| {
        ranged(r, &["10.0.0.0/8"]);
        r.scopes = vec![Scope::AgentsRead];
    });
    add("ranged-other-product", &|r| {
        ranged(r, &["10.0.0.0/8"]);
        r.product = "globex".into();
    });
    add("superseded", &|r| {
        r.hashes[0] = HashEntry {
            not_after: Some(at(0)),
            ..r.hashes[0].clone()
        };
    });
    World {
        index: w.index().clone(),
        cells: Cells::default(),
        tokens,
    }
}

impl World {
    fn bearer(&self, label: &str) -> String {
        let (_, t) = self.tokens.iter().find(|(l, _)| *l == label).unwrap();
        format!("Bearer {}", t.expose())
    }

    fn decide(&self, method: &str, path: &str, auth: &[&str]) -> Result<String, Reason> {
        self.judge(method, path, auth)
            .map(|(record, _)| record.name().to_owned())
            .map_err(|r| r.reason)
    }

    fn judge(
        &self,
        method: &str,
        path: &str,
        auth: &[&str],
    ) -> Result<(Arc<Record>, Arc<TokenCell>), Refused> {
        let peer = Peer::direct(Some(std::net::Ipv4Addr::LOCALHOST.into()));
        self.judge_from(method, path, auth, &[], peer)
    }

    fn judge_from(
        &self,
        method: &str,
        path: &str,
        auth: &[&str],
        extra: &[(&str, &str)],
        peer: Peer<'_>,
    ) -> Result<(Arc<Record>, Arc<TokenCell>), Refused> {
        let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for a in auth {
            req.append_header(header::AUTHORIZATION, *a).unwrap();
        }
        for (n, v) in extra {
            req.append_header(n.to_string(), *v).unwrap();
        }
        let head = Head {
            req: &req,
            len: 100,
            conflicting_framing: false,
            peer,
        };
        let clock = Clock {
            unix_ns: NOW,
            mono_ns: 1_000_000_000,
        };
        let route = scope::route(method, path);
        verdict(head, route, LIMITS, &self.index, &self.cells, clock)
    }
}

const LIMITS: HeadLimits = HeadLimits {
    bytes: 1000,
    headers: 10,
};

/// Method, path, `Authorization` values, and the verdict: the accepted
/// token's name or the refusal.
type Case = (
    &'static str,
    &'static str,
    Vec<String>,
    Result<&'static str, Reason>,
);

#[test]
fn every_refusal_and_the_acceptance_in_one_table() {
    use Reason as R;
    let w = world();
    let b = |label| w.bearer(label);
    let active = b("active");
    let cases: Vec<Case> = vec![
        ("GET", "/api/agent-base", vec![active.clone()], Ok("active")),
        ("GET", "/api/agent-base", vec![], Err(R::MissingToken)),
        (
            "GET",
            "/api/agent-base",
            vec!["Basic dTpw".into()],
            Err(R::UnsupportedScheme),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![active.clone(), active.clone()],
            Err(R::DuplicateAuthorization),
        ),
        (
            "GET",
            "/api/agent-base",
            vec!["Bearer".into()],
            Err(R::InvalidAuthorization),
        ),
        (
            "GET",
            "/api/agent-base",
            vec!["Bearer not-a-token".into()],
            Err(R::MalformedToken),
        ),
        (
            "GET",
            "/api/agent-base/../x",
            vec![active.clone()],
            Err(R::InvalidPath),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("inactive")],
            Err(R::InactiveToken),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("revoked")],
            Err(R::RevokedToken),
        ),
        // Expiry is checked against the clock: at `expiresAt` exactly, refused.
        (
            "GET",
            "/api/agent-base",
            vec![b("expired")],
            Err(R::ExpiredToken),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("expiring")],
            Ok("expiring"),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("superseded")],
            Err(R::ExpiredToken),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("other-product")],
            Err(R::WrongProduct),
        ),
        (
            "GET",
            "/api/agent-base",
            vec![b("agents-read")],
            Ok("agents-read"),
        ),
        (
            "POST",
            "/api/agent-base",
            vec![b("agents-read")],
            Err(R::InsufficientScope),
        ),
        // Outside the table only an unrestricted token passes.
        (
            "GET",
            "/nowhere",
            vec![b("agents-read")],
            Err(R::InsufficientScope),
        ),
        ("GET", "/nowhere", vec![active], Ok("active")),
    ];
    for (method, path, auth, want) in cases {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        assert_eq!(
            w.decide(method, path, &auth),
            want.map(str::to_owned),
            "{method} {path} {:?}",
            auth.iter()
                .map(|a| &a[..a.len().min(14)])
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_unknown_token_with_a_valid_checksum_is_unknown() {
    let w = world();
    let stranger = format!("Bearer {}", Token::generate("prod").unwrap().expose());
    assert_eq!(
        w.decide("GET", "/api/agent-base", &[&stranger]),
        Err(Reason::UnknownToken)
    );
}

#[test]
fn a_typo_fails_the_checksum_before_any_lookup() {
    let w = world();
    let mut text = w.bearer("active");
    let last = text.pop().unwrap();
    text.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(
        w.decide("GET", "/api/agent-base", &[&text]),
        Err(Reason::BadChecksum)
    );
}

#[test]
fn the_rate_limit_refuses_the_second_call_in_a_second_with_retry_after() {
    let w = world();
    let rate = w.bearer("rate-1");
    assert_eq!(
        w.decide("GET", "/api/agent-base", &[&rate]),
        Ok("rate-1".into())
    );
    let refused = w.judge("GET", "/api/agent-base", &[&rate]).unwrap_err();
    assert_eq!(refused.reason, Reason::RateLimited);
    assert_eq!(refused.retry_after, Some(1));
    assert!(
        refused.cell.is_some(),
        "a known token's refusal is counted on its cell"
    );
}

#[test]
fn bounds_and_framing_come_before_the_credential() {
    let w = world();
    let mut req = RequestHeader::build("GET", b"/api/agent-base", None).unwrap();
    req.append_header(header::AUTHORIZATION, w.bearer("active"))
        .unwrap();
    let clock = Clock {
        unix_ns: NOW,
        mono_ns: 0,
    };
    let route = scope::route("GET", "/api/agent-base");
    let decide = |req: &RequestHeader, len, conflicting_framing| {
        let head = Head {
            req,
            len,
            conflicting_framing,
            peer: Peer::direct(None),
        };
        verdict(head, route, LIMITS, &w.index, &w.cells, clock).map_err(|r| r.reason)
    };
    assert!(decide(&req, 1000, false).is_ok(), "exactly at the limit");
    assert_eq!(decide(&req, 1001, false).unwrap_err(), Reason::HeadTooLarge);
    assert_eq!(
        decide(&req, 10, true).unwrap_err(),
        Reason::AmbiguousFraming
    );
    for _ in 0..10 {
        req.append_header("x-pad", "1").unwrap();
    }
    assert_eq!(decide(&req, 10, false).unwrap_err(), Reason::TooManyHeaders);
}

/// Token, method, peer, forwarding headers, and the verdict.
type SourceCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<(&'static str, &'static str)>,
    Result<&'static str, Reason>,
);

#[test]
fn source_ranges_come_after_state_and_before_product_and_scope() {
    use Reason as R;
    let w = world();
    let trusted = [prodgy_crds::SourceRange::parse("172.16.0.0/12").unwrap()];
    let xff = "x-forwarded-for";
    let cases: Vec<SourceCase> = vec![
        // Tokens without ranges: any source, even an unknown one.
        ("active", "GET", Some("203.0.113.9"), vec![], Ok("active")),
        ("active", "GET", None, vec![], Ok("active")),
        ("v4-only", "GET", Some("10.1.2.3"), vec![], Ok("v4-only")),
        ("v4-only", "GET", Some("192.0.2.7"), vec![], Ok("v4-only")),
        (
            "v4-only",
            "GET",
            Some("::ffff:10.1.2.3"),
            vec![],
            Ok("v4-only"),
        ),
        (
            "v4-only",
            "GET",
            Some("192.0.2.8"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        (
            "v4-only",
            "GET",
            Some("2001:db8::1"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        ("v4-only", "GET", None, vec![], Err(R::SourceNotAllowed)),
        (
            "v6-only",
            "GET",
            Some("2001:db8:7::1"),
            vec![],
            Ok("v6-only"),
        ),
        (
            "v6-only",
            "GET",
            Some("2001:db9::1"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        (
            "v6-only",
            "GET",
            Some("10.1.2.3"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        // A spoofed header from an untrusted peer changes nothing.
        (
            "v4-only",
            "GET",
            Some("203.0.113.9"),
            vec![(xff, "10.1.2.3")],
            Err(R::SourceNotAllowed),
        ),
        (
            "v4-only",
            "GET",
            Some("10.1.2.3"),
            vec![(xff, "203.0.113.9")],
            Ok("v4-only"),
        ),
        // Behind a trusted proxy: the right-most untrusted address.
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![(xff, "10.1.2.3")],
            Ok("v4-only"),
        ),
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![(xff, "10.1.2.3, 172.16.0.9")],
            Ok("v4-only"),
        ),
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![(xff, "10.1.2.3, 203.0.113.9")],
            Err(R::SourceNotAllowed),
        ),
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![("forwarded", "for=10.1.2.3")],
            Ok("v4-only"),
        ),
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![("forwarded", "for=unknown")],
            Err(R::SourceNotAllowed),
        ),
        (
            "v4-only",
            "GET",
            Some("172.16.0.1"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        // State and expiry first: an outsider still learns the token is dead.
        (
            "ranged-revoked",
            "GET",
            Some("203.0.113.9"),
            vec![],
            Err(R::RevokedToken),
        ),
        (
            "ranged-expired",
            "GET",
            Some("203.0.113.9"),
            vec![],
            Err(R::ExpiredToken),
        ),
        // Product and scope after: an outsider learns nothing of them.
        (
            "ranged-other-product",
            "GET",
            Some("203.0.113.9"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        (
            "ranged-other-product",
            "GET",
            Some("10.1.2.3"),
            vec![],
            Err(R::WrongProduct),
        ),
        (
            "ranged-agents-read",
            "POST",
            Some("203.0.113.9"),
            vec![],
            Err(R::SourceNotAllowed),
        ),
        (
            "ranged-agents-read",
            "POST",
            Some("10.1.2.3"),
            vec![],
            Err(R::InsufficientScope),
        ),
        (
            "ranged-agents-read",
            "GET",
            Some("10.1.2.3"),
            vec![],
            Ok("ranged-agents-read"),
        ),
    ];
    for (label, method, peer, extra, want) in cases {
        let bearer = w.bearer(label);
        let peer = Peer {
            addr: peer.map(|p| p.parse().unwrap()),
            trusted: &trusted,
        };
        let got = w
            .judge_from(method, "/api/agent-base", &[&bearer], &extra, peer)
            .map(|(record, _)| record.name().to_owned())
            .map_err(|r| r.reason);
        assert_eq!(
            got,
            want.map(str::to_owned),
            "{label} {method} {peer:?} {extra:?}"
        );
    }
    // A refusal for the source is counted on the token's cell.
    let refused = w
        .judge_from(
            "GET",
            "/api/agent-base",
            &[&w.bearer("v4-only")],
            &[],
            Peer::direct(Some("203.0.113.9".parse().unwrap())),
        )
        .unwrap_err();
    assert!(refused.cell.is_some() && refused.scope.is_none());
}

/// One capped token whose record can be replaced, as the operator does
/// when the summed usage moves.
struct Capped {
    writer: IndexWriter,
    cells: Cells,
    token: Token,
}

/// A cap of `requests` (per `per` seconds, or lifetime), anchored 10 s
/// before `NOW`, whose record has summed `used` for the window starting at
/// `window_start` (seconds from the anchor), `mine` of them from epoch `e1`.
fn cap(requests: u64, per: Option<u64>, window_start: i64, used: u64, mine: u64) -> RecordLimit {
    RecordLimit {
        requests,
        per_seconds: per,
        anchor: at(-10),
        window_start: at(-10 + window_start),
        used,
        reported: std::collections::BTreeMap::from([("e1".to_owned(), mine)]),
    }
}

impl Capped {
    fn new(limit: RecordLimit) -> Self {
        let writer = IndexWriter::new(
            Arc::new(Index::default()),
            ProductFilter::new(["acme".to_owned()]),
        );
        let mut c = Self {
            writer,
            cells: Cells::default(),
            token: Token::generate("prod").unwrap(),
        };
        c.cells.set_epoch("e1");
        c.set(limit);
        c
    }

    fn set(&mut self, limit: RecordLimit) {
        let mut r = HashedRecord::active("team-a", "capped", "capped", "acme", &self.token.hash());
        r.usage_limit = Some(Box::new(limit));
        let compact = self.writer.compact(&r).unwrap();
        self.writer.upsert(&compact);
    }

    /// One call `secs` after `NOW`: accepted, or the reason and Retry-After.
    fn call(&self, secs: i64) -> Result<(), (Reason, Option<u64>)> {
        let mut req = RequestHeader::build("GET", b"/api/agent-base", None).unwrap();
        let bearer = format!("Bearer {}", self.token.expose());
        req.append_header(header::AUTHORIZATION, bearer).unwrap();
        let head = Head {
            req: &req,
            len: 100,
            conflicting_framing: false,
            peer: Peer::direct(None),
        };
        let clock = Clock {
            unix_ns: NOW + secs * 1_000_000_000,
            mono_ns: 1_000_000_000,
        };
        let route = scope::route("GET", "/api/agent-base");
        verdict(head, route, LIMITS, self.writer.index(), &self.cells, clock)
            .map(drop)
            .map_err(|r| (r.reason, r.retry_after))
    }

    fn accepted(&self, secs: i64, tries: usize) -> usize {
        (0..tries).filter(|_| self.call(secs).is_ok()).count()
    }
}

/// A cap, calls tried, how many are accepted, then the refusal and its
/// `Retry-After`.
type CapCase = (RecordLimit, usize, usize, Option<(Reason, Option<u64>)>);

#[test]
fn usage_caps_in_one_table() {
    use Reason::UsageLimitReached as Full;
    // (cap, calls tried at NOW, accepted, then the refusal)
    let hour = Some(3_600);
    let cases: Vec<CapCase> = vec![
        // Lifetime cap: refused without Retry-After, never renews.
        (cap(2, None, 0, 0, 0), 3, 2, Some((Full, None))),
        (cap(2, None, 0, 2, 0), 1, 0, Some((Full, None))),
        // Other replicas' summed calls count.
        (cap(5, hour, 0, 3, 0), 5, 2, Some((Full, Some(3_590)))),
        // Already over: refused with the time to renewal.
        (cap(5, hour, 0, 9, 0), 1, 0, Some((Full, Some(3_590)))),
        // A record summed for another window (the operator's clock ahead)
        // says nothing about this one.
        (cap(5, hour, 3_600, 5, 0), 5, 5, Some((Full, Some(3_590)))),
        // A one-minute window anchored 10 s ago ends in 50 s.
        (cap(1, Some(60), 0, 0, 0), 2, 1, Some((Full, Some(50)))),
        (cap(1_000, hour, 0, 0, 0), 100, 100, None),
    ];
    for (limit, tries, want, refusal) in cases {
        let label = format!("{limit:?}");
        let c = Capped::new(limit);
        assert_eq!(c.accepted(0, tries), want, "{label}");
        if let Some(r) = refusal {
            assert_eq!(c.call(0), Err(r), "{label}");
        }
    }
}

#[test]
fn calls_this_replica_reported_are_not_counted_twice() {
    // Three calls, reported and summed by the operator: used 3, all of epoch e1.
    let mut c = Capped::new(cap(5, None, 0, 0, 0));
    assert_eq!(c.accepted(0, 3), 3);
    c.set(cap(5, None, 0, 3, 3));
    assert_eq!(c.accepted(0, 5), 2, "3 summed + 2 = the cap, not 3 + 3 + …");
    // Another replica's summed calls (used 5, 3 of them mine): nothing left.
    let mut c = Capped::new(cap(5, None, 0, 0, 0));
    c.accepted(0, 3);
    c.set(cap(5, None, 0, 5, 3));
    assert_eq!(c.accepted(0, 5), 0);
    // A record of another epoch's part only: all three of mine are unreported.
    let mut c = Capped::new(cap(5, None, 0, 0, 0));
    c.accepted(0, 3);
    c.cells.set_epoch("e2");
    c.set(cap(5, None, 0, 1, 1));
    assert_eq!(c.accepted(0, 5), 1, "1 summed + 3 unreported + 1 = 5");
}

#[test]
fn a_capped_quota_renews_when_its_window_ends() {
    let c = Capped::new(cap(2, Some(60), 0, 0, 0));
    assert_eq!(c.accepted(0, 3), 2);
    assert_eq!(c.call(49), Err((Reason::UsageLimitReached, Some(1))));
    assert_eq!(c.accepted(50, 3), 2, "a new window at the anchor + 60 s");
    assert_eq!(c.call(109), Err((Reason::UsageLimitReached, Some(1))));
}

#[test]
fn a_refusal_before_the_cap_does_not_use_it_up() {
    let mut c = Capped::new(cap(1, None, 0, 0, 0));
    let mut r = HashedRecord::active("team-a", "capped", "capped", "acme", &c.token.hash());
    r.usage_limit = Some(Box::new(cap(1, None, 0, 0, 0)));
    r.state = RecordState::Inactive;
    let compact = c.writer.compact(&r).unwrap();
    c.writer.upsert(&compact);
    assert_eq!(c.call(0), Err((Reason::InactiveToken, None)));
    c.set(cap(1, None, 0, 0, 0));
    assert_eq!(c.call(0), Ok(()));
    assert_eq!(c.call(0), Err((Reason::UsageLimitReached, None)));
}
