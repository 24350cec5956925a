//! The SSRF guard: refuses webhook targets on private networks unless the operator allows them
//! (`webhooks.allow_private_networks`).
//!
//! Owns: the address classification ([`non_public_reason`]), the operator's policy
//! ([`NetPolicy`], [`Cidr`] over the `ipnet` crate), the check of one address ([`check_ip`]), the vetting of a
//! webhook URL before any connection ([`vet_url`], including IPv4 literals in alternate
//! encodings, [`parse_ip_host`]) and the DNS resolver the webhook client must use
//! ([`GuardedResolver`]), which hands reqwest only addresses that pass — so the address
//! checked is the address connected to (no DNS-rebinding window).
//!
//! Must not: do any I/O other than the resolver's lookup; follow redirects or consult proxies
//! (the client that uses this turns both off); echo a full URL in an error (its path or
//! query may hold a token) — errors name the scheme, host or address only.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What private targets the operator allowed: `allow_private_networks: false | true | [CIDR…]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NetPolicy {
    /// `false` (default): only public unicast addresses.
    #[default]
    PublicOnly,
    /// `true`: everything but unspecified and multicast addresses.
    AllowAll,
    /// A list of CIDRs: public addresses plus exactly these networks.
    Allow(Vec<Cidr>),
}

/// An IPv4 or IPv6 network (host bits cleared): `ipnet`'s, with this module's reading of an
/// operator's text (a bare address is one host; errors say what was expected) and of
/// IPv4-mapped addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is judged as the IPv4 address it stands for.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, ip.to_canonical()) {
            (IpNet::V4(net), IpAddr::V4(v4)) => net.contains(&v4),
            (IpNet::V6(net), IpAddr::V6(v6)) => net.contains(&v6),
            // A v6 network may still contain the mapped form literally (::ffff:0:0/96).
            (IpNet::V6(net), IpAddr::V4(_)) => match ip {
                IpAddr::V6(v6) => net.contains(&v6),
                IpAddr::V4(_) => false,
            },
            (IpNet::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.network(), self.0.prefix_len())
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// "127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"; a bare address = /32 or /128.
    /// Host bits after the prefix are cleared ("10.1.2.3/8" is 10.0.0.0/8).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty network: expected an address or CIDR like 10.0.0.0/8".into());
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr_text = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let network: IpAddr = addr_text.parse().map_err(|_| {
            format!("{addr:?} is not an IP address (expected e.g. 10.0.0.0/8 or fd00::/8)")
        })?;
        let max: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let ok = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if ok && n <= max => n,
                    _ => {
                        return Err(format!(
                            "prefix length {p:?} in {s:?} must be a number from 0 to {max}"
                        ));
                    }
                }
            }
        };
        let net = IpNet::new(network, prefix)
            .map_err(|e| format!("{s:?}: {e}"))?
            .trunc();
        Ok(Cidr(net))
    }
}

/// Whether `ip` is in `net/len` (a table entry).
fn in_v4(ip: u32, net: [u8; 4], len: u8) -> bool {
    Ipv4Net::new(Ipv4Addr::from(net), len).is_ok_and(|n| n.contains(&Ipv4Addr::from(ip)))
}

fn in_v6(ip: u128, net: u128, len: u8) -> bool {
    Ipv6Net::new(Ipv6Addr::from(net), len).is_ok_and(|n| n.contains(&Ipv6Addr::from(ip)))
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    let table: &[([u8; 4], u8, &'static str)] = &[
        ([0, 0, 0, 0], 32, "the unspecified address"),
        ([0, 0, 0, 0], 8, "a 'this network' address (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "a loopback address (127.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "a private address (10.0.0.0/8)"),
        ([172, 16, 0, 0], 12, "a private address (172.16.0.0/12)"),
        ([192, 168, 0, 0], 16, "a private address (192.168.0.0/16)"),
        (
            [169, 254, 169, 254],
            32,
            "the cloud metadata address (169.254.169.254)",
        ),
        (
            [169, 254, 0, 0],
            16,
            "a link-local address (169.254.0.0/16)",
        ),
        (
            [100, 64, 0, 0],
            10,
            "a carrier-grade NAT address (100.64.0.0/10)",
        ),
        (
            [198, 18, 0, 0],
            15,
            "a benchmarking address (198.18.0.0/15)",
        ),
        ([192, 0, 2, 0], 24, "a documentation address (192.0.2.0/24)"),
        (
            [198, 51, 100, 0],
            24,
            "a documentation address (198.51.100.0/24)",
        ),
        (
            [203, 0, 113, 0],
            24,
            "a documentation address (203.0.113.0/24)",
        ),
        (
            [192, 0, 0, 0],
            24,
            "an IETF protocol assignment (192.0.0.0/24)",
        ),
        (
            [192, 88, 99, 0],
            24,
            "a 6to4 relay anycast address (192.88.99.0/24)",
        ),
        ([224, 0, 0, 0], 4, "a multicast address (224.0.0.0/4)"),
        ([255, 255, 255, 255], 32, "the broadcast address"),
        ([240, 0, 0, 0], 4, "a reserved address (240.0.0.0/4)"),
    ];
    table
        .iter()
        .find(|(net, len, _)| in_v4(n, *net, *len))
        .map(|(_, _, reason)| *reason)
}

/// The IPv4 address in the low 32 bits.
fn low_v4(n: u128) -> Ipv4Addr {
    Ipv4Addr::from((n & 0xffff_ffff) as u32)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    const fn net(segments: [u16; 8]) -> u128 {
        let mut n: u128 = 0;
        let mut i = 0;
        while i < 8 {
            n = (n << 16) | segments[i] as u128;
            i += 1;
        }
        n
    }
    if n == 0 {
        return Some("the unspecified address");
    }
    if n == 1 {
        return Some("a loopback address (::1)");
    }
    // Addresses that carry an IPv4 address are judged by it.
    let mapped = in_v6(n, net([0, 0, 0, 0, 0, 0xffff, 0, 0]), 96); // ::ffff:a.b.c.d
    let compatible = in_v6(n, 0, 96); // ::a.b.c.d (deprecated)
    let nat64 = in_v6(n, net([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96); // 64:ff9b::/96
    if mapped || compatible || nat64 {
        return v4_reason(low_v4(n));
    }
    if in_v6(n, net([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16) {
        // 6to4: the IPv4 address of the tunnel end is bits 16..48.
        return v4_reason(Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32));
    }
    let table: &[(u128, u8, &'static str)] = &[
        (
            net([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]),
            48,
            "a local-use NAT64 address (64:ff9b:1::/48)",
        ),
        (
            net([0x100, 0, 0, 0, 0, 0, 0, 0]),
            64,
            "a discard-only address (100::/64)",
        ),
        (
            net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
            32,
            "a documentation address (2001:db8::/32)",
        ),
        (
            net([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
            20,
            "a documentation address (3fff::/20)",
        ),
        (
            net([0x2001, 0, 0, 0, 0, 0, 0, 0]),
            32,
            "a Teredo address (2001::/32)",
        ),
        (
            net([0x2001, 2, 0, 0, 0, 0, 0, 0]),
            48,
            "a benchmarking address (2001:2::/48)",
        ),
        (
            net([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
            10,
            "a link-local address (fe80::/10)",
        ),
        (
            net([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
            10,
            "a site-local address (fec0::/10)",
        ),
        (
            net([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
            7,
            "a unique local address (fc00::/7)",
        ),
        (
            net([0xff00, 0, 0, 0, 0, 0, 0, 0]),
            8,
            "a multicast address (ff00::/8)",
        ),
    ];
    if let Some((_, _, reason)) = table.iter().find(|(net, len, _)| in_v6(n, *net, *len)) {
        return Some(reason);
    }
    // Only 2000::/3 is allocated for global unicast; everything else is reserved.
    if !in_v6(n, net([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3) {
        return Some("a reserved IPv6 address (outside 2000::/3)");
    }
    None
}

/// Why an address is not public, or None if it is a public unicast address.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => v4_reason(a),
        IpAddr::V6(a) => v6_reason(a),
    }
}

/// Never allowed, whatever the policy: unspecified (0.0.0.0, ::, and their mapped forms)
/// and multicast.
fn never_allowed(ip: IpAddr) -> Option<&'static str> {
    let canonical = ip.to_canonical();
    if canonical.is_unspecified() {
        Some("the unspecified address")
    } else if canonical.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Checks one address against the policy: Ok, or Err with the reason. AllowAll allows all
/// but unspecified and multicast; Allow(list) allows exactly the listed networks (plus
/// public addresses; 127.0.0.1/32 does not allow 127.0.0.2).
pub fn check_ip(ip: IpAddr, policy: &NetPolicy) -> Result<(), String> {
    if let Some(reason) = never_allowed(ip) {
        return Err(format!("{ip} is {reason}, never a webhook target"));
    }
    let Some(reason) = non_public_reason(ip) else {
        return Ok(());
    };
    let allowed = match policy {
        NetPolicy::PublicOnly => false,
        NetPolicy::AllowAll => true,
        NetPolicy::Allow(list) => list.iter().any(|cidr| cidr.contains(ip)),
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{ip} is {reason}; refused unless webhooks.allow_private_networks allows it"
        ))
    }
}

/// Parses a host the way browsers/libc do for IPv4 alternate encodings: "2130706433",
/// "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1" → Some(127.0.0.1); bracketed/unbracketed
/// IPv6 → Some; a DNS name → None.
///
/// IPv4 follows the WHATWG URL host parser: 1 to 4 dot-separated parts (one trailing dot
/// allowed), each decimal, octal (leading `0`) or hex (`0x`); the last part fills the
/// remaining bytes. An IPv6 zone id (`fe80::1%eth0`) is not accepted.
pub fn parse_ip_host(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    if host.contains(':') {
        return host.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_ipv4_loose(host).map(IpAddr::V4)
}

fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_ipv4_number(part)?);
    }
    let (last, init) = values.split_last()?;
    if init.iter().any(|v| *v > 255) {
        return None;
    }
    // The last part fills 4 - (parts - 1) bytes.
    let last_bits = 8 * (5 - values.len() as u32);
    if last_bits < 64 && *last >= 1u64 << last_bits {
        return None;
    }
    let mut n: u64 = *last;
    for (i, v) in init.iter().enumerate() {
        n |= v << (8 * (3 - i as u32));
    }
    u32::try_from(n).ok().map(Ipv4Addr::from)
}

/// One IPv4 part: decimal, octal with a leading 0, or hex with 0x ("0x" alone is 0).
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Leading zeros may be many; strip them so huge-but-valid-looking input can't overflow
    // from them alone. Anything above u32 range is rejected by the caller anyway.
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(trimmed, radix)
        .ok()
        .filter(|v| *v <= u64::from(u32::MAX))
}

/// A url fit for an error message or a log line: credentials (`user:password@`) become
/// `***@` and every query value `***`, so a secret written into a url never reaches a
/// terminal or a log. Works on text that is not a valid url too.
pub fn redacted(url: &str) -> String {
    let (head, fragment) = url
        .split_once('#')
        .map_or((url, None), |(h, f)| (h, Some(f)));
    let (base, query) = head
        .split_once('?')
        .map_or((head, None), |(b, q)| (b, Some(q)));
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => base.to_string(),
            }
        }
        None => {
            let authority_end = base.find('/').unwrap_or(base.len());
            let (authority, path) = base.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}{path}"),
                None => base.to_string(),
            }
        }
    };
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#…");
    }
    out
}

/// A header value fit for output: `***` when the header's name says it carries a credential
/// (authorization, cookies, tokens, keys, secrets, passwords, signatures), else as is.
pub fn redacted_header<'a>(name: &str, value: &'a str) -> &'a str {
    const SECRET: [&str; 7] = [
        "auth",
        "cookie",
        "token",
        "key",
        "secret",
        "pass",
        "signature",
    ];
    let name = name.to_ascii_lowercase();
    if SECRET.iter().any(|w| name.contains(w)) {
        "***"
    } else {
        value
    }
}

/// [`vet_url`], and `localhost` (or `*.localhost`) vetted as the loopback address it always
/// is, for `check`: what the policy will refuse at delivery is refused in advance, naming
/// the config key that allows it.
pub fn vet_url_literal(url: &str, policy: &NetPolicy) -> Result<(), String> {
    let hint = |e: String| {
        if matches!(policy, NetPolicy::AllowAll) {
            e
        } else {
            format!(
                "{e} — webhooks.allow_private_networks in the config allows private, loopback and link-local targets (true, or a list of CIDRs)"
            )
        }
    };
    vet_url(url, policy).map_err(hint)?;
    let host = reqwest::Url::parse(url.trim())
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    if let Some(h) = host
        && (h == "localhost" || h.ends_with(".localhost"))
    {
        check_ip(std::net::IpAddr::from([127, 0, 0, 1]), policy)
            .map_err(|e| hint(format!("`{h}` is the loopback address: {e}")))?;
    }
    Ok(())
}

/// Vets a webhook URL before any connection: scheme http or https only, no userinfo, a
/// host present; if the host is an IP literal in any encoding, check_ip it. Returns Ok(())
/// for names (they're checked after resolution by GuardedResolver).
pub fn vet_url(url: &str, policy: &NetPolicy) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("not a valid URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {other:?} is not allowed: use http or https"
            ));
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URL must not carry credentials (user:password@); use headers".into());
    }
    // The WHATWG parser already turned numeric hosts (2130706433, 0x7f.1, …) into
    // addresses and prints them canonically ("127.0.0.1", "[::1]"); parse_ip_host reads
    // those, and catches any encoding the parser might have left as a name.
    match parsed.host_str() {
        None | Some("") => Err("URL has no host".into()),
        Some(host) => match parse_ip_host(host) {
            Some(ip) => check_ip(ip, policy),
            None => Ok(()),
        },
    }
}

/// A reqwest DNS resolver that resolves with tokio's `lookup_host` and returns only
/// addresses that pass `check_ip`; fails closed (error) when none pass or resolution fails.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: NetPolicy,
}

impl GuardedResolver {
    pub fn new(policy: NetPolicy) -> Self {
        GuardedResolver { policy }
    }

    /// Resolves `host` and keeps the addresses that pass; the error says why none did.
    pub async fn resolve_host(
        &self,
        host: &str,
    ) -> Result<Vec<std::net::SocketAddr>, ResolveError> {
        let lookup = match parse_ip_host(host) {
            // A literal (in any encoding) never goes to libc, which might read it differently.
            Some(ip) => vec![std::net::SocketAddr::new(ip, 0)],
            None => tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.to_string(),
                    source,
                })?
                .collect(),
        };
        let mut refused = Vec::new();
        let mut passed = Vec::new();
        for addr in lookup {
            match check_ip(addr.ip(), &self.policy) {
                Ok(()) => passed.push(addr),
                Err(why) => refused.push(why),
            }
        }
        if !passed.is_empty() {
            return Ok(passed);
        }
        if refused.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_string(),
            });
        }
        Err(ResolveError::Refused {
            host: host.to_string(),
            reasons: refused.join("; "),
        })
    }
}

/// Why [`GuardedResolver`] gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed (the dispatcher retries).
    #[error("could not resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    /// Every address is one the policy refuses (the dispatcher dead-letters, never retries).
    #[error("{host} refused by the SSRF guard: {reasons}")]
    Refused { host: String, reasons: String },
}

/// Whether `e`, or an error it was caused by, is the resolver's refusal: how the dispatcher
/// tells a refused destination from a network failure in the HTTP client's error chain.
pub fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<ResolveError>(),
            Some(ResolveError::Refused { .. })
        ) {
            return true;
        }
        cur = err.source();
    }
    false
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve_host(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests;
