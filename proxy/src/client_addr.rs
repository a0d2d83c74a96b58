//! Who the client is: the address a token's source ranges are checked
//! against.
//!
//! The client is the TCP peer, unless the peer is one of `--trusted-proxies`
//! (a load balancer or ingress in front of this proxy). Then the forwarding
//! headers that proxy wrote are read: `X-Forwarded-For` (`client, hop, …`)
//! or RFC 7239 `Forwarded` (`for=…`), all lines of a header in order, walked
//! from the right (the hop nearest this proxy) past every trusted address;
//! the first address that is not trusted is the client. Every address left
//! of it was written by someone untrusted and is never read. When every
//! entry is trusted, the left-most is the client; without a header, the
//! peer. An entry that is not an address (`unknown`, an obfuscated
//! `_hidden`, garbage) where the walk stops leaves the client unknown: a
//! token with source ranges is then refused.
//!
//! An untrusted peer's forwarding headers are ignored entirely: anyone can
//! write them. A request that carries both headers from a trusted peer is
//! read by both; when they disagree about the client, the client is unknown
//! (the proxy cannot tell which header its trusted hop wrote and which one
//! came from the client).
//!
//! Everything here is pure and allocation-free: the verdict calls it only
//! for tokens that have source ranges.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use prodgy_crds::SourceRange;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The connection a request came on: its TCP peer and the proxies whose
/// forwarding headers are believed.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// The TCP peer's address (`None` when the socket has none).
    pub addr: Option<IpAddr>,
    /// `--trusted-proxies`.
    pub trusted: &'a [SourceRange],
}

impl<'a> Peer<'a> {
    /// A peer whose forwarding headers are never read.
    pub const fn direct(addr: Option<IpAddr>) -> Self {
        Self { addr, trusted: &[] }
    }

    /// The client address of a request with `headers` on this connection.
    pub fn client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        client_addr(self.addr?, self.trusted, headers)
    }
}

fn trusted(ranges: &[SourceRange], addr: IpAddr) -> bool {
    ranges.iter().any(|r| r.contains(addr))
}

/// The client address; see the module documentation for the rules.
pub fn client_addr(
    peer: IpAddr,
    trusted_proxies: &[SourceRange],
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !trusted(trusted_proxies, peer) {
        return Some(peer);
    }
    let xff = walk(
        trusted_proxies,
        headers.get_all(&X_FORWARDED_FOR).iter(),
        xff_entries,
    );
    let fwd = walk(
        trusted_proxies,
        headers.get_all(header::FORWARDED).iter(),
        forwarded_entries,
    );
    match (xff, fwd) {
        (Walk::Absent, Walk::Absent) => Some(peer),
        (w, Walk::Absent) | (Walk::Absent, w) => w.client(),
        (a, b) => a.client().filter(|c| b.client() == Some(*c)),
    }
}

/// What one header told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// The request does not carry it (or only empty entries).
    Absent,
    /// The right-most untrusted entry (`None`: not an address), or the
    /// left-most entry when all are trusted.
    Found(Option<IpAddr>),
}

impl Walk {
    fn client(self) -> Option<IpAddr> {
        match self {
            Walk::Absent => None,
            Walk::Found(a) => a,
        }
    }
}

/// One pass, left to right, over the entries of every line of a header: the
/// last untrusted entry is the first one a right-to-left walk stops at.
fn walk<'h, I>(
    ranges: &[SourceRange],
    lines: I,
    entries: fn(&str, &mut dyn FnMut(Option<IpAddr>)),
) -> Walk
where
    I: Iterator<Item = &'h HeaderValue>,
{
    let mut first: Option<Option<IpAddr>> = None;
    let mut untrusted: Option<Option<IpAddr>> = None;
    for line in lines {
        let mut see = |entry: Option<IpAddr>| {
            let entry = entry.map(|a| a.to_canonical());
            first.get_or_insert(entry);
            if !entry.is_some_and(|a| trusted(ranges, a)) {
                untrusted = Some(entry);
            }
        };
        match line.to_str() {
            Ok(text) => entries(text, &mut see),
            Err(_) => see(None),
        }
    }
    match untrusted.or(first) {
        None => Walk::Absent,
        Some(a) => Walk::Found(a),
    }
}

/// `X-Forwarded-For: 203.0.113.7, 10.0.0.1`; entries may carry a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`). Empty entries are skipped.
fn xff_entries(line: &str, see: &mut dyn FnMut(Option<IpAddr>)) {
    for entry in line.split(',').map(|e| e.trim_matches([' ', '\t'])) {
        if !entry.is_empty() {
            see(node(entry));
        }
    }
}

/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`: the
/// `for` of each element (an element without one is an unknown hop).
/// Commas and semicolons inside quoted strings do not split.
fn forwarded_entries(line: &str, see: &mut dyn FnMut(Option<IpAddr>)) {
    for element in split_unquoted(line, b',') {
        if element.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let mut found = None;
        for pair in split_unquoted(element, b';') {
            if let Some((k, v)) = pair.split_once('=')
                && k.trim_matches([' ', '\t']).eq_ignore_ascii_case("for")
            {
                found = Some(node(unquote(v.trim_matches([' ', '\t']))));
            }
        }
        see(found.flatten());
    }
}

/// Pieces of `s` between unquoted `sep` bytes.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut i = 0;
    std::iter::from_fn(move || {
        let bytes = s.as_bytes();
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    let piece = &s[start..i - 1];
                    start = i;
                    return Some(piece);
                }
                _ => {}
            }
        }
        (start <= bytes.len()).then(|| {
            let piece = &s[start..];
            start = bytes.len() + 1;
            piece
        })
    })
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`. `None` for anything
/// else (`unknown`, `_hidden`, a zone, garbage).
fn node(s: &str) -> Option<IpAddr> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port)) {
            return None;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    let (addr, p) = s.split_once(':')?;
    port(p)
        .then(|| addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
        .flatten()
}

/// A port number, or an RFC 7239 obfuscated port (`_abc`).
fn port(p: &str) -> bool {
    (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        || (p.len() > 1
            && p.starts_with('_')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
}

#[cfg(test)]
mod tests;
