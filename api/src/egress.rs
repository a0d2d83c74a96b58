//! Where `http` agents may connect.
//!
//! An agent's output is returned to its caller, so an agent that could call
//! loopback, private or link-local addresses would let any token holder read
//! internal services (cloud metadata, cluster services). Unless
//! `--agent-allow-private-networks` is set, the agents' HTTP client resolves
//! names itself and keeps only public addresses (so DNS rebinding cannot
//! sneak a private address in), refuses IP literals that are not public, and
//! refuses redirects to them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::Policy;

use crate::error::{Error, Result};

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (b & 0xC0) == 64)
                // Benchmarking, 198.18.0.0/15.
                || (a == 198 && (b & 0xFE) == 18))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xFE00) == 0xFC00
                || (first & 0xFFC0) == 0xFE80)
        }
    }
}

/// The refusal for a non-public URL host, if it is an IP literal.
pub fn literal_refusal(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    (!is_public(ip)).then(|| {
        format!(
            "blocked: {ip} is a loopback, private or link-local address \
             (start the API with --agent-allow-private-networks to allow it)"
        )
    })
}

/// A resolver that keeps only public addresses.
#[derive(Debug)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "blocked: {host} resolves only to loopback, private or link-local addresses \
                     (start the API with --agent-allow-private-networks to allow it)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client of `http` agents.
pub fn agent_client(allow_private: bool) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("prodgy-api/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b
            .dns_resolver(Arc::new(PublicOnly))
            .redirect(Policy::custom(|attempt| {
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if let Some(refusal) = literal_refusal(attempt.url()) {
                    attempt.error(refusal)
                } else {
                    attempt.follow()
                }
            }));
    }
    b.build()
        .map_err(|e| Error::Internal(format!("http client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ip_literals_are_checked_and_names_left_to_the_resolver() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(literal_refusal(&u("http://169.254.169.254/latest/meta-data")).is_some());
        assert!(literal_refusal(&u("http://[::1]:8080/")).is_some());
        assert!(literal_refusal(&u("https://1.1.1.1/")).is_none());
        assert!(literal_refusal(&u("https://example.com/")).is_none());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        let r = PublicOnly
            .resolve("localhost".parse::<Name>().unwrap())
            .await;
        let e = r.err().expect("localhost is refused").to_string();
        assert!(e.contains("blocked: localhost"), "{e}");
    }
}
