//! The token format: `<prefix>_<30 base62 random chars><6 base62 CRC32 chars>`.
//!
//! * 30 base62 characters carry 30·log2(62) ≈ 178 bits from the OS CSPRNG.
//! * The CRC32 (IEEE) of everything before it, base62-encoded and zero-padded
//!   to 6 characters, lets a secret scanner or the proxy reject a mistyped or
//!   truncated token without any lookup. It is not a security control: the
//!   SHA-256 hash lookup is.
//! * The display prefix is the first 8 characters (`prod_abc`), safe to show
//!   anywhere because it holds at most 3 random characters.
//!
//! The plaintext type [`Token`] deliberately has no `Display` and a redacting
//! `Debug`, so it cannot end up in a log line by accident.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// The default token prefix (without the underscore).
pub const DEFAULT_PREFIX: &str = "prod";
/// Number of random base62 characters in a token body.
pub const RANDOM_LEN: usize = 30;
/// Number of base62 characters holding the CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Length of the display prefix shown in status and listings.
pub const DISPLAY_PREFIX_LEN: usize = 8;
/// Longest prefix accepted (keeps tokens short enough for any header limit).
pub const MAX_PREFIX_LEN: usize = 16;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A plaintext token. Only the operator (at issue time) and the delivery
/// Secret ever hold one.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}…)", self.display_prefix())
    }
}

impl Token {
    /// Generates a fresh token with the given prefix (e.g. `prod`).
    pub fn generate(prefix: &str) -> Result<Self> {
        validate_prefix(prefix)?;
        let mut out = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
        out.push_str(prefix);
        out.push('_');
        // Rejection sampling keeps every character uniformly distributed:
        // bytes >= 248 (= 4·62) would bias the first 8 symbols.
        let mut filled = 0;
        let mut buf = [0u8; 64];
        while filled < RANDOM_LEN {
            getrandom::fill(&mut buf).map_err(|e| Error::Random(e.to_string()))?;
            for b in buf {
                if filled == RANDOM_LEN {
                    break;
                }
                if b < 248 {
                    out.push(BASE62[usize::from(b % 62)] as char);
                    filled += 1;
                }
            }
        }
        let crc = crc32fast::hash(out.as_bytes());
        out.push_str(&encode_checksum(crc));
        Ok(Self(out))
    }

    /// Parses and checks a token's shape and checksum without any lookup.
    pub fn parse(s: &str) -> std::result::Result<Self, FormatError> {
        check_format(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The plaintext. Call only where the plaintext must be written: the
    /// delivery Secret and the one-time display to the owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first 8 characters, safe to display (`prod_abc`).
    pub fn display_prefix(&self) -> &str {
        display_prefix(&self.0)
    }

    /// The SHA-256 digest stored in the hashed Secret.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// The first [`DISPLAY_PREFIX_LEN`] characters of a token (or all of it if shorter).
pub fn display_prefix(token: &str) -> &str {
    let end = token
        .char_indices()
        .nth(DISPLAY_PREFIX_LEN)
        .map_or(token.len(), |(i, _)| i);
    &token[..end]
}

/// Why a string is not a well-formed token. Messages never echo the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not `<prefix>_<body>`, wrong length or a character outside base62.
    #[error("token is malformed")]
    Malformed,
    /// Well-formed but the CRC32 does not match: a typo or a truncated copy.
    #[error("token checksum does not match")]
    BadChecksum,
}

/// Checks the shape and the checksum of a candidate token, allocation-free.
/// This is the proxy's first gate and runs on every request.
pub fn check_format(s: &str) -> std::result::Result<(), FormatError> {
    let bytes = s.as_bytes();
    let Some(sep) = bytes.iter().rposition(|&b| b == b'_') else {
        return Err(FormatError::Malformed);
    };
    let (prefix, body) = (&bytes[..sep], &bytes[sep + 1..]);
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX_LEN
        || !prefix.iter().all(|b| b.is_ascii_alphanumeric())
        || body.len() != RANDOM_LEN + CHECKSUM_LEN
        || !body.iter().all(u8::is_ascii_alphanumeric)
    {
        return Err(FormatError::Malformed);
    }
    let split = sep + 1 + RANDOM_LEN;
    let expected = crc32fast::hash(&bytes[..split]);
    match decode_checksum(&bytes[split..]) {
        Some(actual) if actual == expected => Ok(()),
        _ => Err(FormatError::BadChecksum),
    }
}

/// Checks that a configured prefix is usable: 1–16 ASCII alphanumerics.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX_LEN
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::InvalidPrefix(prefix.to_owned()));
    }
    Ok(())
}

fn encode_checksum(mut crc: u32) -> String {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    digits.iter().map(|&b| b as char).collect()
}

fn decode_checksum(digits: &[u8]) -> Option<u32> {
    let mut value: u64 = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'A'..=b'Z' => d - b'A' + 10,
            b'a'..=b'z' => d - b'a' + 36,
            _ => return None,
        };
        value = value * 62 + u64::from(v);
    }
    u32::try_from(value).ok()
}

/// The value of each hex digit (`upper`: of either case); 0xff for any
/// other byte.
const fn hex_digits(upper: bool) -> [u8; 256] {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        if upper {
            t[b"0123456789ABCDEF"[i] as usize] = i as u8;
        }
        i += 1;
    }
    t
}
const HEX_LOWER: [u8; 256] = hex_digits(false);
const HEX_ANY: [u8; 256] = hex_digits(true);

/// The byte two lowercase hex digits spell, or `None`. A table lookup per
/// digit: the proxy decodes a million digests and UIDs as it starts.
pub fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let (h, l) = (HEX_LOWER[usize::from(hi)], HEX_LOWER[usize::from(lo)]);
    ((h | l) < 16).then_some(h << 4 | l)
}

/// A SHA-256 digest of a token. Equality is constant-time.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a candidate token (well-formed or not).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, as stored in the hashed Secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(Error::InvalidHash);
        }
        // Without a branch per digit: a bad digit is remembered and
        // refused at the end.
        let (mut out, mut bad) = ([0u8; 32], 0u8);
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let (h, l) = (HEX_ANY[usize::from(pair[0])], HEX_ANY[usize::from(pair[1])]);
            bad |= h | l;
            *o = h << 4 | l;
        }
        if bad < 16 {
            Ok(Self(out))
        } else {
            Err(Error::InvalidHash)
        }
    }

    /// Constant-time comparison: the time taken does not depend on where two
    /// digests first differ.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short form keeps logs readable.
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_token_has_the_documented_shape() {
        let t = Token::generate("prod").unwrap();
        let s = t.expose();
        assert!(s.starts_with("prod_"));
        assert_eq!(s.len(), 5 + RANDOM_LEN + CHECKSUM_LEN);
        assert_eq!(t.display_prefix().len(), 8);
        assert!(s.starts_with(t.display_prefix()));
        assert_eq!(check_format(s), Ok(()));
    }

    #[test]
    fn one_million_tokens_are_unique_and_valid() {
        let mut seen = HashSet::with_capacity(1_000_000);
        for _ in 0..1_000_000 {
            let t = Token::generate("prod").unwrap();
            assert_eq!(check_format(t.expose()), Ok(()));
            assert!(seen.insert(t.0), "duplicate token generated");
        }
    }

    #[test]
    fn any_single_character_change_fails_the_checksum() {
        let t = Token::generate("prod").unwrap();
        let original = t.expose().as_bytes().to_vec();
        for i in 0..original.len() {
            for &c in BASE62.iter().chain(b"_") {
                if c == original[i] {
                    continue;
                }
                let mut m = original.clone();
                m[i] = c;
                let s = String::from_utf8(m).unwrap();
                assert!(
                    check_format(&s).is_err(),
                    "mutation at {i} to {} passed",
                    c as char
                );
            }
        }
    }

    #[test]
    fn random_characters_are_spread_over_the_whole_alphabet() {
        let mut counts = [0u32; 62];
        for _ in 0..2_000 {
            let t = Token::generate("prod").unwrap();
            for b in t.expose()[5..5 + RANDOM_LEN].bytes() {
                let idx = BASE62.iter().position(|&x| x == b).unwrap();
                counts[idx] += 1;
            }
        }
        // 60,000 draws over 62 symbols: about 968 each. A biased sampler
        // (plain `b % 62`) puts ~25% more on the first 8 symbols.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *min > 800 && *max < 1_150,
            "skewed distribution {min}..{max}"
        );
    }

    #[test]
    fn malformed_inputs_are_rejected_without_panicking() {
        let good = Token::generate("prod").unwrap();
        let body = &good.expose()[5..];
        let cases = [
            String::new(),
            "prod".into(),
            "prod_".into(),
            "_".repeat(41),
            format!("_{body}"),
            format!("prod_{}", &body[1..]),
            format!("prod_{body}x"),
            format!("pr-d_{body}"),
            format!("{}_{body}", "p".repeat(17)),
            format!("prod_{}é", &body[..body.len() - 2]),
            format!("prod_{}\0", &body[..body.len() - 1]),
            format!("prod_{} ", &body[..body.len() - 1]),
        ];
        for c in &cases {
            assert!(check_format(c).is_err(), "{c:?} accepted");
        }
        // A wrong checksum with a valid shape is reported as such.
        let mut s = good.expose().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        assert_eq!(check_format(&s), Err(FormatError::BadChecksum));
    }

    #[test]
    fn prefix_is_configurable_and_validated() {
        let t = Token::generate("acme2").unwrap();
        assert!(t.expose().starts_with("acme2_"));
        assert_eq!(t.display_prefix(), &t.expose()[..8]);
        assert!(Token::generate("").is_err());
        assert!(Token::generate("has_underscore").is_err());
        assert!(Token::generate(&"x".repeat(17)).is_err());
    }

    #[test]
    fn checksum_encoding_round_trips_extremes() {
        for crc in [0, 1, 61, 62, u32::MAX / 2, u32::MAX] {
            assert_eq!(decode_checksum(encode_checksum(crc).as_bytes()), Some(crc));
        }
        // 6 base62 digits can exceed u32: such a checksum is rejected, not wrapped.
        assert_eq!(decode_checksum(b"zzzzzz"), None);
    }

    #[test]
    fn hash_is_sha256_hex_and_compares_by_value() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::from_hex(&h.to_hex()).unwrap(), h);
        assert_ne!(TokenHash::of("abd"), h);
        assert!(TokenHash::from_hex("zz").is_err());
        assert_eq!(TokenHash::from_hex(&h.to_hex().to_uppercase()).unwrap(), h);
        let mut bad = h.to_hex();
        for c in ["g", "/", ":", "@", "`", "G", "\u{e9}"] {
            bad.replace_range(63.., c);
            assert!(TokenHash::from_hex(&bad).is_err(), "{c:?}");
        }
        assert!(TokenHash::from_hex(&h.to_hex()[..62]).is_err());
    }

    #[test]
    fn debug_output_never_contains_the_plaintext() {
        let t = Token::generate("prod").unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&t.expose()[8..]));
        assert!(dbg.contains(t.display_prefix()));
    }
}
