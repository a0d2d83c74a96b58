//! The verdict, case by case, without a socket: one index, one clock, a
//! table of requests and what each must get.

use chrono::{TimeZone, Utc};
use prodgy_crds::{HashEntry, HashedRecord, RateLimit, RecordState, Token, scope};

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
