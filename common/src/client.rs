//! Which client sent a request. Behind a load balancer every request comes from the
//! balancer's address, and the client's is in `X-Forwarded-For`, which each proxy
//! extends with the address it heard from. Only proxies the operator names are
//! believed: from the connection's peer back along the header, the first address
//! that is not one of them is the client. A client can write anything into the
//! header it sends, but not what the proxies append after it.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};

const FORWARDED_FOR: &str = "x-forwarded-for";

/// The networks whose `X-Forwarded-For` is believed; empty (the default) believes none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client behind a request that came over a connection from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        // Each proxy appends, so the nearest hop is last: walk back from it while the
        // hop is a trusted proxy. Headers sent several times read as one list, and
        // each entry is read on its own, so one entry that is not text spoils only itself.
        let hops = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
        for hop in hops {
            // An entry that is not an address stops the walk: what lies before it
            // cannot be told apart from what the client wrote.
            let Some(address) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, bracketed IPv6 and a port allowed (some
/// proxies add them).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = IpAddr::from_str(hop) {
        return Some(address.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (address, _) = rest.split_once(']')?;
        return IpAddr::from_str(address).ok().map(|a| a.to_canonical());
    }
    let (address, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    std::net::Ipv4Addr::from_str(address).ok().map(IpAddr::V4)
}

/// Whose budget of refused key checks an address spends: its own for IPv4, its /64
/// for IPv6, since one IPv6 host commonly holds a whole /64 and could otherwise take
/// a fresh budget for every request.
pub fn budget_holder(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// A network as addresses are compared: one written as IPv4-mapped IPv6
/// (`::ffff:10.0.0.0/104`) is the IPv4 network it maps.
fn canonical(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(network, IpNet::V4),
            None => network,
        },
        other => other,
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of networks (`10.0.0.0/8`) or single addresses.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let network = IpNet::from_str(item)
                .or_else(|_| IpAddr::from_str(item).map(IpNet::from))
                .map_err(|_| format!("\"{item}\" is neither an address nor a network like 10.0.0.0/8"))?;
            networks.push(canonical(network));
        }
        Ok(Self(networks))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.5"), &headers(&["203.0.113.7"])), ip("10.0.0.5"));
    }

    #[test]
    fn a_peer_that_is_not_a_trusted_proxy_is_the_client_whatever_it_sends() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().expect("networks");
        assert_eq!(
            proxies.client(ip("198.51.100.9"), &headers(&["203.0.113.7"])),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn the_first_untrusted_hop_back_from_the_peer_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().expect("networks");
        // The client forged the first entry; the proxies appended the rest.
        let forwarded = headers(&["1.2.3.4, 203.0.113.7, 192.168.1.1"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &forwarded), ip("203.0.113.7"));
        // The same list sent as several header lines.
        let split = headers(&["1.2.3.4", "203.0.113.7", "192.168.1.1"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &split), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().expect("networks");
        assert_eq!(proxies.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
        // Every hop a proxy: the farthest one is as near the client as can be told.
        let all_proxies = headers(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &all_proxies), ip("10.1.1.1"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_proxy() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().expect("networks");
        let forwarded = headers(&["203.0.113.7, unknown, 10.9.9.9"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &forwarded), ip("10.9.9.9"));
        let garbage = headers(&["not an address"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &garbage), ip("10.0.0.5"));
    }

    #[test]
    fn entries_may_carry_ports_and_ipv6_and_mapped_addresses_match() {
        let proxies: TrustedProxies = "10.0.0.0/8, fd00::/8".parse().expect("networks");
        let forwarded = headers(&["[2001:db8::1]:4711, 203.0.113.7:8443"]);
        assert_eq!(proxies.client(ip("fd00::1"), &forwarded), ip("203.0.113.7"));
        let v6 = headers(&["2001:db8::1"]);
        assert_eq!(proxies.client(ip("::ffff:10.0.0.5"), &v6), ip("2001:db8::1"));
    }

    #[test]
    fn an_entry_that_is_not_text_spoils_only_itself() {
        let proxies: TrustedProxies = "10.0.0.0/8".parse().expect("networks");
        let mut forwarded = HeaderMap::new();
        forwarded.append(
            FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").expect("a header value"),
        );
        assert_eq!(proxies.client(ip("10.0.0.5"), &forwarded), ip("203.0.113.7"));
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        assert_eq!(budget_holder(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_holder(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_ne!(budget_holder(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_holder(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(budget_holder(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
    }

    #[test]
    fn settings_name_networks_or_addresses() {
        let parsed: TrustedProxies = "10.0.0.0/8,192.168.1.1, ::1".parse().expect("networks");
        assert_eq!(parsed.0.len(), 3);
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        let mapped: TrustedProxies = "::ffff:10.0.0.0/104".parse().expect("networks");
        assert_eq!(mapped, "10.0.0.0/8".parse().expect("networks"));
        assert_eq!(
            mapped.client(ip("10.1.2.3"), &headers(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
        let message = "10.0.0.0/33".parse::<TrustedProxies>().unwrap_err();
        assert!(message.contains("10.0.0.0/33"), "{message}");
    }
}
