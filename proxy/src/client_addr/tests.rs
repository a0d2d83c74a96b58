//! The client address, case by case: peer, trusted proxies, headers, and
//! the address the source ranges are checked against.

use super::*;

fn ranges(list: &[&str]) -> Vec<SourceRange> {
    list.iter()
        .map(|r| SourceRange::parse(r).unwrap())
        .collect()
}

fn headers(lines: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in lines {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    h
}

/// Peer, forwarding header lines, and the client (`None`: unknown).
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Option<&'static str>,
);

const XFF: &str = "x-forwarded-for";
const FWD: &str = "forwarded";

#[test]
fn the_client_is_the_right_most_untrusted_address_from_a_trusted_peer() {
    // 10.0.0.0/8 and 2001:db8:1::/48 are the load balancers.
    let trusted = ranges(&["10.0.0.0/8", "2001:db8:1::/48"]);
    let cases: Vec<Case> = vec![
        // An untrusted peer: its headers are ignored, whatever they say.
        ("203.0.113.9", vec![], Some("203.0.113.9")),
        ("203.0.113.9", vec![(XFF, "10.0.0.1")], Some("203.0.113.9")),
        (
            "203.0.113.9",
            vec![(XFF, "198.51.100.1")],
            Some("203.0.113.9"),
        ),
        (
            "203.0.113.9",
            vec![(FWD, "for=198.51.100.1")],
            Some("203.0.113.9"),
        ),
        ("203.0.113.9", vec![(XFF, "garbage")], Some("203.0.113.9")),
        // A dual-stack socket's view of an IPv4 peer.
        (
            "::ffff:203.0.113.9",
            vec![(XFF, "1.1.1.1")],
            Some("203.0.113.9"),
        ),
        (
            "::ffff:10.0.0.2",
            vec![(XFF, "198.51.100.1")],
            Some("198.51.100.1"),
        ),
        // A trusted peer without a header is the client.
        ("10.0.0.2", vec![], Some("10.0.0.2")),
        ("10.0.0.2", vec![(XFF, "")], Some("10.0.0.2")),
        // X-Forwarded-For: the right-most untrusted entry.
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1, 10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "6.6.6.6, 198.51.100.1, 10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "6.6.6.6,198.51.100.1,\t10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "6.6.6.6"), (XFF, "198.51.100.1, 10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1"), (XFF, "10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1,,10.0.0.3,")],
            Some("198.51.100.1"),
        ),
        // All trusted: the left-most.
        (
            "10.0.0.2",
            vec![(XFF, "10.0.0.7, 10.0.0.3")],
            Some("10.0.0.7"),
        ),
        // Ports and IPv6.
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1:4711")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "2001:db8:2::5")],
            Some("2001:db8:2::5"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "[2001:db8:2::5]:4711, 2001:db8:1::9")],
            Some("2001:db8:2::5"),
        ),
        (
            "2001:db8:1::2",
            vec![(XFF, "198.51.100.1")],
            Some("198.51.100.1"),
        ),
        // What the walk stops at is not an address: unknown.
        ("10.0.0.2", vec![(XFF, "198.51.100.1, unknown")], None),
        ("10.0.0.2", vec![(XFF, "198.51.100.1, 10.0.0.3:x")], None),
        ("10.0.0.2", vec![(XFF, "fe80::1%eth0")], None),
        ("10.0.0.2", vec![(XFF, "[2001:db8::1")], None),
        ("10.0.0.2", vec![(XFF, "1.2.3.4.5")], None),
        // Garbage left of the client is never read.
        (
            "10.0.0.2",
            vec![(XFF, "garbage, 198.51.100.1")],
            Some("198.51.100.1"),
        ),
        // RFC 7239 Forwarded.
        (
            "10.0.0.2",
            vec![(FWD, "for=198.51.100.1")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, "For=198.51.100.1;proto=https;by=10.0.0.2")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, "for=6.6.6.6, for=198.51.100.1, for=10.0.0.3")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, r#"for="[2001:db8:cafe::17]:4711""#)],
            Some("2001:db8:cafe::17"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, r#"for="[2001:db8:cafe::17]""#)],
            Some("2001:db8:cafe::17"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, r#"for="198.51.100.1:47011""#)],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, r#"for="198.51.100.1:_port""#)],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(FWD, r#"for=198.51.100.1;x="a,b;c", for=10.0.0.3"#)],
            Some("198.51.100.1"),
        ),
        ("10.0.0.2", vec![(FWD, "for=unknown")], None),
        ("10.0.0.2", vec![(FWD, "for=_hidden, for=10.0.0.3")], None),
        (
            "10.0.0.2",
            vec![(FWD, "for=198.51.100.1, proto=https")],
            None,
        ),
        (
            "10.0.0.2",
            vec![(FWD, "for=_hidden, for=198.51.100.1")],
            Some("198.51.100.1"),
        ),
        // Both headers: they must agree.
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1"), (FWD, "for=198.51.100.1")],
            Some("198.51.100.1"),
        ),
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1"), (FWD, "for=192.0.2.1")],
            None,
        ),
        (
            "10.0.0.2",
            vec![(XFF, "198.51.100.1"), (FWD, "for=unknown")],
            None,
        ),
    ];
    for (peer, lines, want) in cases {
        let got = client_addr(peer.parse().unwrap(), &trusted, &headers(&lines));
        let want = want.map(|w| w.parse::<IpAddr>().unwrap());
        assert_eq!(got, want, "peer {peer}, {lines:?}");
    }
}

#[test]
fn without_trusted_proxies_the_peer_is_the_client() {
    let h = headers(&[(XFF, "198.51.100.1"), (FWD, "for=198.51.100.1")]);
    let peer: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(client_addr(peer, &[], &h), Some(peer));
    assert_eq!(Peer::direct(Some(peer)).client(&h), Some(peer));
    assert_eq!(Peer::direct(None).client(&h), None);
    let trusted = ranges(&["10.0.0.0/8"]);
    let behind = Peer {
        addr: Some(peer),
        trusted: &trusted,
    };
    assert_eq!(behind.client(&h), "198.51.100.1".parse().ok());
}

#[test]
fn header_values_that_are_not_text_leave_the_client_unknown() {
    let trusted = ranges(&["10.0.0.0/8"]);
    let mut h = HeaderMap::new();
    h.append(
        &X_FORWARDED_FOR,
        HeaderValue::from_bytes(b"198.51.100.1\xff").unwrap(),
    );
    assert_eq!(client_addr("10.0.0.2".parse().unwrap(), &trusted, &h), None);
    assert_eq!(
        client_addr("192.0.2.1".parse().unwrap(), &trusted, &h),
        "192.0.2.1".parse().ok()
    );
}

#[test]
fn quoted_separators_do_not_split() {
    let pieces: Vec<&str> = split_unquoted(r#"a="x,y",b,"c\",d",,"#, b',').collect();
    assert_eq!(pieces, [r#"a="x,y""#, "b", r#""c\",d""#, "", ""]);
    assert_eq!(split_unquoted("", b',').collect::<Vec<_>>(), [""]);
}
