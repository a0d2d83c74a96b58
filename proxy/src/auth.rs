//! The pure half of enforcement: reading the bearer credential out of the
//! `Authorization` header(s) and naming every way a request can be refused.
//!
//! Header grammar (RFC 6750 §2.1, RFC 7235 §2.1):
//! `credentials = auth-scheme 1*SP b64token`. The scheme is matched without
//! regard to case (`bearer`, `BEARER` are accepted, as RFC 7235 requires).
//! Anything outside that grammar — a tab, a control or non-ASCII byte, a second
//! `Authorization` header, trailing parameters, an oversized value — is a 400
//! `invalid_request`: the client sent something no token can be read from.
//! A well-formed header whose token does not have the token shape is a 401
//! `malformed_token`; a bad CRC32 is a 401 `bad_checksum`. No lookup happens
//! for either.

use prodgy_crds::{FormatError, Refusal, Scope, token};

/// Longest `Authorization` value read; tokens are at most 53 bytes, so
/// anything far longer is refused without further parsing.
pub const MAX_AUTHORIZATION_LEN: usize = 512;

/// Why a request was refused. Each has its own error code, used in the JSON
/// body and as the `reason` label of the auth-failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No `Authorization` header.
    MissingToken,
    /// An `Authorization` header with another scheme (e.g. `Basic`).
    UnsupportedScheme,
    /// More than one `Authorization` header.
    DuplicateAuthorization,
    /// The header is not `Bearer <b64token>` (tabs, control or non-ASCII
    /// bytes, no token, extra parameters).
    InvalidAuthorization,
    /// The header is longer than [`MAX_AUTHORIZATION_LEN`].
    AuthorizationTooLong,
    /// The bearer value does not have the token shape.
    MalformedToken,
    /// The token's checksum does not match (a typo or truncated copy).
    BadChecksum,
    /// No token has this hash.
    UnknownToken,
    /// The token is deactivated.
    InactiveToken,
    /// The token (or a superseded token's grace period) has expired.
    ExpiredToken,
    /// The token is revoked.
    RevokedToken,
    /// The token's product is not served by this proxy.
    WrongProduct,
    /// The token lacks the scope the route needs.
    InsufficientScope,
    /// The token is over its rate limit on this replica.
    RateLimited,
    /// The token has used up its usage cap (for the window, or for good).
    UsageLimitReached,
    /// Both `Content-Length` and `Transfer-Encoding` were sent.
    AmbiguousFraming,
    /// The path holds dot segments, which could route differently upstream.
    InvalidPath,
    /// The request head is over `--max-request-head-bytes`.
    HeadTooLarge,
    /// The request has more than `--max-request-headers` header fields.
    TooManyHeaders,
    /// The client address is outside the token's source ranges.
    SourceNotAllowed,
}

impl Reason {
    /// Every reason, in a stable order (metrics are pre-registered with it).
    pub const ALL: [Reason; 20] = [
        Reason::MissingToken,
        Reason::UnsupportedScheme,
        Reason::DuplicateAuthorization,
        Reason::InvalidAuthorization,
        Reason::AuthorizationTooLong,
        Reason::MalformedToken,
        Reason::BadChecksum,
        Reason::UnknownToken,
        Reason::InactiveToken,
        Reason::ExpiredToken,
        Reason::RevokedToken,
        Reason::WrongProduct,
        Reason::InsufficientScope,
        Reason::RateLimited,
        Reason::UsageLimitReached,
        Reason::AmbiguousFraming,
        Reason::InvalidPath,
        Reason::HeadTooLarge,
        Reason::TooManyHeaders,
        Reason::SourceNotAllowed,
    ];

    /// Position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The HTTP status sent.
    pub const fn status(self) -> u16 {
        match self {
            Reason::DuplicateAuthorization
            | Reason::InvalidAuthorization
            | Reason::AuthorizationTooLong
            | Reason::AmbiguousFraming
            | Reason::InvalidPath => 400,
            Reason::MissingToken
            | Reason::UnsupportedScheme
            | Reason::MalformedToken
            | Reason::BadChecksum
            | Reason::UnknownToken
            | Reason::InactiveToken
            | Reason::ExpiredToken
            | Reason::RevokedToken => 401,
            Reason::WrongProduct | Reason::InsufficientScope | Reason::SourceNotAllowed => 403,
            Reason::RateLimited | Reason::UsageLimitReached => 429,
            Reason::HeadTooLarge | Reason::TooManyHeaders => 431,
        }
    }

    /// The `error.code` of the JSON body and the metrics label.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::DuplicateAuthorization => "duplicate_authorization",
            Reason::InvalidAuthorization => "invalid_authorization",
            Reason::AuthorizationTooLong => "authorization_too_long",
            Reason::MalformedToken => "malformed_token",
            Reason::BadChecksum => "bad_checksum",
            Reason::UnknownToken => "unknown_token",
            Reason::InactiveToken => "inactive_token",
            Reason::ExpiredToken => "expired_token",
            Reason::RevokedToken => "revoked_token",
            Reason::WrongProduct => "wrong_product",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::RateLimited => "rate_limited",
            Reason::UsageLimitReached => "usage_limit_reached",
            Reason::AmbiguousFraming => "ambiguous_framing",
            Reason::InvalidPath => "invalid_path",
            Reason::HeadTooLarge => "request_head_too_large",
            Reason::TooManyHeaders => "too_many_headers",
            Reason::SourceNotAllowed => "source_not_allowed",
        }
    }

    /// The human message. Never contains anything the client sent.
    pub const fn message(self) -> &'static str {
        match self {
            Reason::MissingToken => "send the token as: Authorization: Bearer <token>",
            Reason::UnsupportedScheme => "only the Bearer authorization scheme is accepted",
            Reason::DuplicateAuthorization => "send exactly one Authorization header",
            Reason::InvalidAuthorization => {
                "the Authorization header must be: Bearer <token>, separated by spaces, ASCII only"
            }
            Reason::AuthorizationTooLong => "the Authorization header is too long",
            Reason::MalformedToken => "the bearer value is not an API token",
            Reason::BadChecksum => "the token's checksum does not match: it was mistyped or cut",
            Reason::UnknownToken => "the token is not known",
            Reason::InactiveToken => "the token is deactivated",
            Reason::ExpiredToken => "the token has expired",
            Reason::RevokedToken => "the token has been revoked",
            Reason::WrongProduct => "the token is for a product this endpoint does not serve",
            Reason::InsufficientScope => "the token lacks the scope this request needs",
            Reason::RateLimited => "the token's rate limit is exceeded; retry later",
            Reason::UsageLimitReached => {
                "the token has used up its usage limit; Retry-After says when it renews, if it does"
            }
            Reason::AmbiguousFraming => "send either Content-Length or Transfer-Encoding, not both",
            Reason::InvalidPath => "the path must not contain dot segments",
            Reason::HeadTooLarge => "the request line and headers are too large",
            Reason::TooManyHeaders => "the request has too many header fields",
            Reason::SourceNotAllowed => "the token may not be used from this address",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), when one applies.
    /// Scope refusals are built by [`scope_challenge`] instead.
    pub const fn challenge(self) -> Option<&'static str> {
        Some(match self {
            // No bearer credentials were sent: a plain challenge, no error
            // code (RFC 6750 §3.1).
            Reason::MissingToken | Reason::UnsupportedScheme => r#"Bearer realm="prodgy""#,
            Reason::DuplicateAuthorization => {
                r#"Bearer realm="prodgy", error="invalid_request", error_description="send exactly one Authorization header""#
            }
            Reason::InvalidAuthorization => {
                r#"Bearer realm="prodgy", error="invalid_request", error_description="malformed Authorization header""#
            }
            Reason::AuthorizationTooLong => {
                r#"Bearer realm="prodgy", error="invalid_request", error_description="Authorization header too long""#
            }
            Reason::MalformedToken => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="the bearer value is not an API token""#
            }
            Reason::BadChecksum => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="token checksum mismatch""#
            }
            Reason::UnknownToken => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="unknown token""#
            }
            Reason::InactiveToken => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="token is deactivated""#
            }
            Reason::ExpiredToken => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="token has expired""#
            }
            Reason::RevokedToken => {
                r#"Bearer realm="prodgy", error="invalid_token", error_description="token has been revoked""#
            }
            Reason::WrongProduct
            | Reason::InsufficientScope
            | Reason::RateLimited
            | Reason::UsageLimitReached
            | Reason::AmbiguousFraming
            | Reason::InvalidPath
            | Reason::HeadTooLarge
            | Reason::TooManyHeaders
            | Reason::SourceNotAllowed => return None,
        })
    }

    /// The JSON error body: the contract's envelope, as the API's errors.
    pub fn body(self) -> String {
        prodgy_crds::envelope::ErrorBody::new(self.code(), self.message()).to_json()
    }
}

impl From<FormatError> for Reason {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Malformed => Reason::MalformedToken,
            FormatError::BadChecksum => Reason::BadChecksum,
        }
    }
}

impl From<Refusal> for Reason {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Inactive => Reason::InactiveToken,
            Refusal::Expired => Reason::ExpiredToken,
            Refusal::Revoked => Reason::RevokedToken,
        }
    }
}

/// The challenge of a 403 for a missing scope; `None` means the route is
/// outside the route table and only unrestricted tokens may call it.
pub fn scope_challenge(scope: Option<Scope>) -> String {
    match scope {
        Some(s) => format!(
            r#"Bearer realm="prodgy", error="insufficient_scope", error_description="the token lacks the {s} scope", scope="{s}""#
        ),
        None => r#"Bearer realm="prodgy", error="insufficient_scope", error_description="this path is open to unrestricted tokens only""#.to_owned(),
    }
}

/// Reads the bearer token from the values of every `Authorization` header
/// of a request and checks its shape and checksum. Allocation-free; the
/// returned token borrows from the header value.
pub fn bearer_token<'a, I>(mut values: I) -> Result<&'a str, Reason>
where
    I: Iterator<Item = &'a [u8]>,
{
    let value = values.next().ok_or(Reason::MissingToken)?;
    if values.next().is_some() {
        return Err(Reason::DuplicateAuthorization);
    }
    let token = parse_credentials(value)?;
    token::check_format(token)?;
    Ok(token)
}

/// `Bearer 1*SP b64token`, scheme case-insensitive. Returns the b64token.
fn parse_credentials(value: &[u8]) -> Result<&str, Reason> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Reason::AuthorizationTooLong);
    }
    // Visible ASCII and spaces only: tabs, CR/LF, NUL, obs-text and anything
    // that is not UTF-8 end here.
    if !value.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        return Err(Reason::InvalidAuthorization);
    }
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(if scheme.is_empty() {
            Reason::InvalidAuthorization
        } else {
            Reason::UnsupportedScheme
        });
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let cred = &rest[start..];
    if cred.is_empty() || !is_b64token(cred) {
        return Err(Reason::InvalidAuthorization);
    }
    // All bytes are ASCII, checked above.
    std::str::from_utf8(cred).map_err(|_| Reason::InvalidAuthorization)
}

/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(s: &[u8]) -> bool {
    let body_end = s.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body_end > 0
        && s[..body_end].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Whether a request path holds a `.` or `..` segment, literally or
/// percent-encoded. The route table classifies the path as written; an
/// upstream that normalised dot segments would route it elsewhere, so such
/// paths are refused rather than guessed at.
pub fn has_dot_segment(path: &[u8]) -> bool {
    let path = match path.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => &path[..i],
        None => path,
    };
    path.split(|&b| b == b'/').any(|seg| {
        let mut dots = 0;
        let mut i = 0;
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg.len() - i >= 3
                && seg[i] == b'%'
                && seg[i + 1] == b'2'
                && (seg[i + 2] | 0x20) == b'e'
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

#[cfg(test)]
mod tests {
    use prodgy_crds::Token;

    use super::*;

    fn parse(values: &[&[u8]]) -> Result<String, Reason> {
        bearer_token(values.iter().copied()).map(str::to_owned)
    }

    #[test]
    fn a_well_formed_bearer_header_yields_the_token() {
        let t = Token::generate("prod").unwrap();
        let v = format!("Bearer {}", t.expose());
        assert_eq!(parse(&[v.as_bytes()]).unwrap(), t.expose());
        // RFC 7235: the scheme is case-insensitive; RFC 6750: 1*SP.
        for v in [
            format!("bearer {}", t.expose()),
            format!("BEARER {}", t.expose()),
            format!("Bearer   {}", t.expose()),
        ] {
            assert_eq!(parse(&[v.as_bytes()]).unwrap(), t.expose(), "{v}");
        }
    }

    #[test]
    fn every_header_problem_has_its_own_reason() {
        let t = Token::generate("prod").unwrap();
        let good = format!("Bearer {}", t.expose());
        let mut bad_sum = good.clone().into_bytes();
        let last = bad_sum.len() - 1;
        bad_sum[last] = if bad_sum[last] == b'0' { b'1' } else { b'0' };
        let cases: Vec<(Vec<Vec<u8>>, Reason)> = vec![
            (vec![], Reason::MissingToken),
            (
                vec![b"Basic dXNlcjpwYXNz".to_vec()],
                Reason::UnsupportedScheme,
            ),
            (vec![b"Token abc".to_vec()], Reason::UnsupportedScheme),
            (
                vec![good.clone().into_bytes(), good.clone().into_bytes()],
                Reason::DuplicateAuthorization,
            ),
            (vec![b"Bearer".to_vec()], Reason::InvalidAuthorization),
            (vec![b"Bearer ".to_vec()], Reason::InvalidAuthorization),
            (vec![b"".to_vec()], Reason::InvalidAuthorization),
            (vec![b" Bearer x".to_vec()], Reason::InvalidAuthorization),
            (
                vec![format!("Bearer\t{}", t.expose()).into_bytes()],
                Reason::InvalidAuthorization,
            ),
            (
                vec![format!("{good} ").into_bytes()],
                Reason::InvalidAuthorization,
            ),
            (
                vec![format!("{good}, realm=x").into_bytes()],
                Reason::InvalidAuthorization,
            ),
            (
                vec![format!("{good}\u{e9}").into_bytes()],
                Reason::InvalidAuthorization,
            ),
            (
                vec![[b"Bearer ".as_slice(), &[0xff, 0xfe]].concat()],
                Reason::InvalidAuthorization,
            ),
            (
                vec![format!("Bearer {}", "a".repeat(600)).into_bytes()],
                Reason::AuthorizationTooLong,
            ),
            (vec![b"Bearer abc".to_vec()], Reason::MalformedToken),
            (vec![b"Bearer ====".to_vec()], Reason::InvalidAuthorization),
            (vec![b"Bearer dG9rZW4=".to_vec()], Reason::MalformedToken),
            (vec![bad_sum], Reason::BadChecksum),
        ];
        for (values, want) in cases {
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            assert_eq!(parse(&refs), Err(want), "{values:?}");
        }
    }

    #[test]
    fn every_reason_has_a_distinct_code_status_and_json_body() {
        let mut codes = std::collections::HashSet::new();
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(codes.insert(r.code()), "duplicate code {}", r.code());
            let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
            assert_eq!(body["error"]["code"], r.code());
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            if r.status() == 401 {
                assert!(
                    r.challenge()
                        .unwrap()
                        .starts_with(r#"Bearer realm="prodgy""#)
                );
            }
        }
        assert_eq!(
            Reason::MissingToken.challenge(),
            Some(r#"Bearer realm="prodgy""#)
        );
        assert!(
            Reason::RevokedToken
                .challenge()
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );
        assert!(scope_challenge(Some(Scope::AgentsWrite)).contains(r#"scope="agents:write""#));
    }

    #[test]
    fn dot_segments_are_found_literally_and_encoded() {
        for p in [
            "/api/knowledge-base/../agent-base",
            "/api/./agent-base",
            "/api/agent-base/..",
            "/api/%2e%2E/x",
            "/api/.%2e/x",
            "/..?q=1",
        ] {
            assert!(has_dot_segment(p.as_bytes()), "{p}");
        }
        for p in [
            "/api/agent-base",
            "/api/knowledge-base/storage/report.v2.pdf",
            "/api/x/.../y",
            "/api/x?path=../y",
            "/",
            "",
        ] {
            assert!(!has_dot_segment(p.as_bytes()), "{p}");
        }
    }
}
