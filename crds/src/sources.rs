//! Per-token source ranges (`spec.allowedSourceRanges`): the CIDR notation
//! the CRD, the hashed record, the CLI and the proxy's `--trusted-proxies`
//! accept, and whether an address lies inside a range.
//!
//! One spelling per range: `address/prefix-length`, the address in its
//! canonical form (RFC 5952 for IPv6) with no host bits set — `10.0.0.0/8`,
//! `2001:db8::/32`, `192.0.2.7/32`. A bare address is refused (write `/32`
//! or `/128`), as are IPv4-mapped IPv6 ranges (write the IPv4 range) and
//! zones. The API server applies the same rule with the Kubernetes CEL CIDR
//! library ([`crd_schema`]); [`SourceRange::parse`] is the rule for every
//! other reader.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Most ranges one token may carry.
pub const MAX_RANGES: usize = 64;
/// Longest range text: a full IPv6 address and `/128`.
pub const MAX_RANGE_LEN: usize = 43;

/// An IPv4 or IPv6 network, as the mask and the masked address bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceRange {
    /// An IPv4 network.
    V4 {
        /// Network bits (host bits zero).
        net: u32,
        /// Prefix mask.
        mask: u32,
    },
    /// An IPv6 network.
    V6 {
        /// Network bits (host bits zero).
        net: u128,
        /// Prefix mask.
        mask: u128,
    },
}

const HOW: &str = "write a CIDR: address/prefix-length, e.g. 10.0.0.0/8, 2001:db8::/32, \
                   or 192.0.2.7/32 for one address";

impl SourceRange {
    /// Parses one range in the canonical CIDR notation described above.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: String| Error::InvalidSourceRange(s.to_owned(), why);
        if s.len() > MAX_RANGE_LEN {
            return Err(bad(format!("longer than {MAX_RANGE_LEN} characters")));
        }
        let (addr, len) = s.split_once('/').ok_or_else(|| bad(HOW.to_owned()))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad(HOW.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = Some(len)
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse::<u8>().ok())
            .filter(|l| *l <= max)
            .ok_or_else(|| bad(format!("the prefix length must be 0 to {max}")))?;
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(bad(
                "IPv4-mapped IPv6 is not accepted: write the IPv4 range".into(),
            ));
        }
        let range = Self::new(addr, len);
        if range.to_string() != s {
            return Err(bad(format!(
                "write it as {range} (canonical address, no host bits set)"
            )));
        }
        Ok(range)
    }

    /// The network of `addr` with `len` prefix bits (host bits cleared).
    fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Self::V4 {
                    net: u32::from(a) & mask,
                    mask,
                }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Self::V6 {
                    net: u128::from(a) & mask,
                    mask,
                }
            }
        }
    }

    /// Whether `addr` is inside. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 client) is its IPv4
    /// address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (*self, addr.to_canonical()) {
            (Self::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u32 {
        match self {
            Self::V4 { mask, .. } => mask.count_ones(),
            Self::V6 { mask, .. } => mask.count_ones(),
        }
    }
}

impl fmt::Display for SourceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.prefix_len();
        match *self {
            Self::V4 { net, .. } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Self::V6 { net, .. } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

impl std::str::FromStr for SourceRange {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Parses a token's ranges (at most [`MAX_RANGES`]).
pub fn parse_all<'a>(ranges: impl IntoIterator<Item = &'a str>) -> Result<Vec<SourceRange>> {
    let parsed = ranges
        .into_iter()
        .map(SourceRange::parse)
        .collect::<Result<Vec<_>>>()?;
    if parsed.len() > MAX_RANGES {
        return Err(Error::InvalidSourceRange(
            format!("{} ranges", parsed.len()),
            format!("at most {MAX_RANGES} ranges per token"),
        ));
    }
    Ok(parsed)
}

/// Whether a token restricted to `ranges` may be used from `addr`: no
/// ranges means any source; otherwise `addr` must be known and inside one.
pub fn allows(ranges: &[SourceRange], addr: Option<IpAddr>) -> bool {
    ranges.is_empty() || addr.is_some_and(|a| ranges.iter().any(|r| r.contains(a)))
}

/// The message of the CRD rule that [`SourceRange::parse`]'s syntax check
/// matches (`isCIDR` of the Kubernetes CEL CIDR library, Kubernetes 1.31+).
pub const CEL_NOT_A_CIDR: &str =
    "must be a CIDR (address/prefix-length), e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7/32";
/// The message of the CRD rule asking for the canonical spelling.
pub const CEL_NOT_CANONICAL: &str =
    "must be written canonically with no host bits set, e.g. 10.0.0.0/8 rather than 10.1.2.3/8";

/// The schema of `spec.allowedSourceRanges`: a set of at most
/// [`MAX_RANGES`] strings, each checked by the API server with CEL.
pub fn crd_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": MAX_RANGES,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": MAX_RANGE_LEN,
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": CEL_NOT_A_CIDR},
                {
                    "rule": "!isCIDR(self) || string(cidr(self).masked()) == self",
                    "message": CEL_NOT_CANONICAL
                }
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn canonical_cidrs_parse_and_print_back() {
        for s in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1/128",
            "::/0",
            "fd00::/8",
            "2001:db8:0:1::/64",
        ] {
            assert_eq!(SourceRange::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        let cases = [
            ("10.0.0.1", "address/prefix-length"),
            ("2001:db8::1", "address/prefix-length"),
            ("", "address/prefix-length"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/33", "0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("10.0.0.0/+8", "0 to 32"),
            ("10.0.0.0/ 8", "0 to 32"),
            ("10.0.0.0/08", "write it as 10.0.0.0/8"),
            ("10.1.2.3/8", "write it as 10.0.0.0/8"),
            ("2001:DB8::/32", "write it as 2001:db8::/32"),
            ("2001:0db8::/32", "write it as 2001:db8::/32"),
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("fe80::1%eth0/128", "address/prefix-length"),
            ("010.0.0.0/8", "address/prefix-length"),
            ("10.0.0.0/8/8", "0 to 32"),
            ("example.com/8", "address/prefix-length"),
            (" 10.0.0.0/8", "address/prefix-length"),
        ];
        for (s, why) in cases {
            let e = SourceRange::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        let long = format!("{}/128", "0:".repeat(20));
        assert!(SourceRange::parse(&long).is_err());
    }

    #[test]
    fn containment_follows_the_prefix() {
        let cases = [
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("192.0.2.7/32", "192.0.2.7", true),
            ("192.0.2.7/32", "192.0.2.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "::1", true),
            ("::/0", "127.0.0.1", false),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
        ];
        for (range, addr, want) in cases {
            let r = SourceRange::parse(range).unwrap();
            assert_eq!(r.contains(ip(addr)), want, "{range} ∋ {addr}");
        }
    }

    #[test]
    fn no_ranges_allow_any_source_and_an_unknown_one_only_then() {
        let r = parse_all(["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        assert!(allows(&[], None));
        assert!(allows(&[], Some(ip("1.2.3.4"))));
        assert!(allows(&r, Some(ip("10.9.9.9"))));
        assert!(allows(&r, Some(ip("2001:db8::5"))));
        assert!(!allows(&r, Some(ip("192.0.2.1"))));
        assert!(!allows(&r, None));
    }

    #[test]
    fn a_token_holds_at_most_64_ranges() {
        let many: Vec<String> = (0..=MAX_RANGES).map(|i| format!("10.0.{i}.0/24")).collect();
        assert!(parse_all(many.iter().take(MAX_RANGES).map(String::as_str)).is_ok());
        let e = parse_all(many.iter().map(String::as_str)).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        assert!(parse_all(["10.0.0.0/8", "nope"]).is_err());
    }

    #[test]
    fn records_carry_ranges_and_records_without_them_still_parse() {
        let t = crate::Token::generate("prod").unwrap();
        let mut r = crate::HashedRecord::active("ns", "n", "u", "acme", &t.hash());
        let old = serde_json::to_value(&r).unwrap();
        assert!(old.get("allowedSourceRanges").is_none());
        assert!(crate::HashedRecord::from_json(old.to_string().as_bytes()).is_ok());
        r.allowed_source_ranges = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
        let json = serde_json::to_vec(&r).unwrap();
        let back = crate::HashedRecord::from_json(&json).unwrap();
        assert_eq!(back.source_ranges().unwrap().len(), 2);
        r.allowed_source_ranges.push("10.0.0.1".into());
        let e = crate::HashedRecord::from_json(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(e.to_string().contains("10.0.0.1"), "{e}");
    }
}
