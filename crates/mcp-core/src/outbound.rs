//! The outbound guard's rules: which addresses a call made for a client (`http.request`,
//! webhooks, VCC repository and package URLs) may reach. Everything a client names is refused
//! when it points at the hub's own machine or network — loopback, private, link-local,
//! unique-local, CGNAT, benchmarking, documentation, reserved, multicast, unspecified and
//! broadcast addresses, and the IPv6 forms that carry an IPv4 address (mapped, compatible,
//! NAT64, 6to4, Teredo) — unless the operator allows it (`outbound_allow_private`,
//! `outbound_allow`).
//!
//! Pure classification, no I/O: the creation paths check literal hosts here
//! ([`Policy::check_url`]), and the integration layer's HTTP client checks every address it
//! resolves and every redirect hop with [`Policy::check_ip`] and [`Policy::check_host`].

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
pub use url::{Host, Url};

/// The task type that makes one HTTP call to a client-supplied URL. Creating it needs
/// `http:request` (see `TaskService`).
pub const HTTP_REQUEST_TASK: &str = "http.request";

/// Why a destination was refused: the host as named, the address it is or resolved to, and the
/// special-purpose range that address lies in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Forbidden {
    pub host: String,
    pub ip: IpAddr,
    pub range: &'static str,
}

impl Forbidden {
    fn describe(&self) -> String {
        if self.host == self.ip.to_string() {
            format!(
                "{} is a {} address; outbound calls may not reach it",
                self.host, self.range
            )
        } else {
            format!(
                "{} resolves to {}, a {} address; outbound calls may not reach it",
                self.host, self.ip, self.range
            )
        }
    }
}

/// Who may be reached beyond the public internet. The default forbids every special-purpose
/// address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Lets every address through (tests, a hub that talks to its own LAN).
    pub allow_private: bool,
    /// Networks always allowed (`10.1.2.0/24`, `127.0.0.1`).
    pub nets: Vec<IpNet>,
    /// Host names always allowed, whatever they resolve to (lowercase, no trailing dot).
    pub hosts: Vec<String>,
    /// When set and holding rules, those replace the three fields above: the `outbound_allow*`
    /// runtime settings, shared by every client built from this policy.
    pub live: Option<LiveRules>,
}

/// Outbound rules a running hub may replace (runtime settings): every policy holding the same
/// `LiveRules` follows the latest ones.
#[derive(Debug, Clone, Default)]
pub struct LiveRules(Arc<std::sync::RwLock<Option<Arc<Policy>>>>);

impl PartialEq for LiveRules {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LiveRules {}

impl LiveRules {
    /// Replaces the rules (its own `live` is ignored).
    pub fn set(&self, rules: Policy) {
        let rules = Policy {
            live: None,
            ..rules
        };
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(rules));
    }

    fn current(&self) -> Option<Arc<Policy>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Policy {
    /// The policy of `outbound_allow_private` and `outbound_allow` (CIDRs, addresses or host
    /// names). An entry that is none of those is an error naming it.
    pub fn new(allow_private: bool, allow: &[String]) -> Result<Policy, String> {
        let mut policy = Policy {
            allow_private,
            ..Policy::default()
        };
        for entry in allow {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.nets.push(net.trunc());
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if is_host_name(entry) {
                policy.hosts.push(normal_host(entry));
            } else {
                return Err(format!(
                    "outbound_allow: `{entry}` is neither a CIDR, an address nor a host name"
                ));
            }
        }
        Ok(policy)
    }

    /// Whether `host` (a name as written in a URL) is allowed whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        if let Some(rules) = self.live.as_ref().and_then(LiveRules::current) {
            return rules.allows_host(host);
        }
        self.allow_private || {
            let host = normal_host(host);
            self.hosts.contains(&host)
        }
    }

    /// Checks one address `host` is or resolved to.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Forbidden> {
        if let Some(rules) = self.live.as_ref().and_then(LiveRules::current) {
            return rules.check_ip(host, ip);
        }
        if self.allow_private || self.nets.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(range) => Err(Forbidden {
                host: host.trim_matches(['[', ']']).to_owned(),
                ip,
                range,
            }),
        }
    }

    /// Checks a URL's host when it is an address (however spelt: the `url` crate turns
    /// `2130706433`, `0x7f.1` and `127.1` into `127.0.0.1`); a name passes here and is checked
    /// after resolution.
    pub fn check_url(&self, url: &Url) -> Result<(), Forbidden> {
        match url.host() {
            Some(host) => self.check_host(&host),
            None => Ok(()),
        }
    }

    /// [`Policy::check_url`] for a host alone.
    pub fn check_host(&self, host: &Host<&str>) -> Result<(), Forbidden> {
        match host {
            Host::Ipv4(v4) => self.check_ip(&v4.to_string(), IpAddr::V4(*v4)),
            Host::Ipv6(v6) => self.check_ip(&v6.to_string(), IpAddr::V6(*v6)),
            Host::Domain(_) => Ok(()),
        }
    }

    /// Parses `text` as an http(s) URL and checks its literal host; `None` if it is not such a
    /// URL (its own validation reports that).
    pub fn check_literal(&self, text: &str) -> Option<Result<(), Forbidden>> {
        let url = Url::parse(text).ok()?;
        matches!(url.scheme(), "http" | "https").then(|| self.check_url(&url))
    }
}

fn is_host_name(entry: &str) -> bool {
    let name = entry.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The special-purpose range `ip` lies in, or `None` for an ordinary public address. IPv6 forms
/// that embed an IPv4 address (mapped, NAT64 `64:ff9b::/96`, 6to4) are judged by that address;
/// those whose target cannot be judged (IPv4-compatible, Teredo, local-use NAT64) are refused.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// IANA's IPv4 special-purpose address registry, every entry, and the rest of 240/4.
fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: [(Ipv4Addr, u8, &str); 19] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
        (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
        (Ipv4Addr::new(100, 64, 0, 0), 10, "shared (CGNAT)"),
        (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
        (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
        (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
        (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
        (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
        (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112"),
        (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT"),
        (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay"),
        (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
        (Ipv4Addr::new(192, 175, 48, 0), 24, "AS112"),
        (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
        (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
        (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
        (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
        (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
        (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    ];
    let bits = u32::from(ip);
    RANGES.iter().find_map(|(net, len, name)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        (bits & mask == u32::from(*net) & mask).then_some(*name)
    })
}

/// IANA's IPv6 special-purpose address registry; outside 2000::/3 (global unicast) everything
/// not listed is reserved.
fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let within = |net: u128, len: u32| {
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        bits & mask == net & mask
    };
    let embedded = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if within(0xffff << 32, 96) {
        // ::ffff:a.b.c.d reaches a.b.c.d.
        return classify_v4(embedded(0));
    }
    if within(0, 96) {
        return Some("IPv4-compatible");
    }
    if within(0x0064_ff9b << 96, 96) {
        return classify_v4(embedded(0));
    }
    if within(0x0064_ff9b_0001 << 80, 48) {
        return Some("local-use NAT64");
    }
    if within(0x0100 << 112, 64) {
        return Some("discard-only");
    }
    if within(0x2001_0db8 << 96, 32) || within(0x3fff << 112, 20) {
        return Some("documentation");
    }
    if within(0x2001 << 112, 32) {
        return Some("Teredo");
    }
    if within(0x2001 << 112, 23) {
        return Some("IETF protocol assignment");
    }
    if within(0x2002 << 112, 16) {
        // 2002:AABB:CCDD::/48 is the 6to4 prefix of a.b.c.d.
        return classify_v4(embedded(80));
    }
    if within(0x5f00 << 112, 16) {
        return Some("segment routing");
    }
    if within(0xfc00 << 112, 7) {
        return Some("unique-local");
    }
    if within(0xfe80 << 112, 10) {
        return Some("link-local");
    }
    if within(0xfec0 << 112, 10) {
        return Some("site-local");
    }
    if within(0xff00 << 112, 8) {
        return Some("multicast");
    }
    if !within(0x2000 << 112, 3) {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(text: &str) -> bool {
        classify(text.parse().unwrap()).is_some()
    }

    #[test]
    fn refuses_every_special_purpose_ipv4_range() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn lets_public_ipv4_through() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert!(!forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn refuses_special_ipv6_and_the_forms_that_carry_a_private_ipv4() {
        for ip in [
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::8.8.8.8",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "4000::1",
            "1::1",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn lets_public_ipv6_and_forms_of_public_ipv4_through() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn numeric_host_spellings_are_normalised_before_the_check() {
        let policy = Policy::default();
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://017700000001/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "https://169.254.169.254/latest/meta-data/",
            "http://0/",
            "http://[64:ff9b::7f00:1]:8080/",
        ] {
            assert!(
                matches!(policy.check_literal(url), Some(Err(_))),
                "{url} passed"
            );
        }
        for url in [
            "https://example.com/",
            "http://8.8.8.8/",
            "http://localhost/",
        ] {
            assert_eq!(policy.check_literal(url), Some(Ok(())), "{url}");
        }
        assert_eq!(policy.check_literal("ftp://127.0.0.1/"), None);
        assert_eq!(policy.check_literal("not a url"), None);
    }

    #[test]
    fn allow_list_admits_networks_addresses_and_host_names() {
        let policy = Policy::new(
            false,
            &[
                "10.1.0.0/16".into(),
                "127.0.0.1".into(),
                "Hooks.Internal.".into(),
                "[::1]".into(),
            ],
        )
        .unwrap();
        assert!(policy.check_ip("x", "10.1.2.3".parse().unwrap()).is_ok());
        assert!(policy.check_ip("x", "10.2.0.1".parse().unwrap()).is_err());
        assert!(policy.check_ip("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check_ip("x", "127.0.0.2".parse().unwrap()).is_err());
        assert!(policy.check_ip("x", "::1".parse().unwrap()).is_ok());
        assert!(policy.allows_host("hooks.internal"));
        assert!(!policy.allows_host("other.internal"));
        assert!(Policy::new(false, &["not a host/42".into()]).is_err());
        let open = Policy::new(true, &[]).unwrap();
        assert!(open.check_ip("x", "127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn forbidden_names_host_address_and_range() {
        let err = Policy::default()
            .check_ip("localhost", "127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "localhost resolves to 127.0.0.1, a loopback address; outbound calls may not reach it"
        );
        let err = Policy::default()
            .check_ip("[::1]", "::1".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "::1 is a loopback address; outbound calls may not reach it"
        );
    }
}
