#[test]
fn urls_in_messages_lose_credentials_and_query_values() {
    let cases = [
        (
            "https://user:pw@hooks.example.com/a?token=s3cret&x=1",
            "https://***@hooks.example.com/a?token=***&x=***",
        ),
        (
            "https://hooks.example.com/a/b",
            "https://hooks.example.com/a/b",
        ),
        ("http://u:p@@host:8080", "http://***@host:8080"),
        ("user:pw@hooks.example.com/x", "***@hooks.example.com/x"),
        ("ftp://a:b@c/d#frag", "ftp://***@c/d#…"),
        ("https://host/p?flag", "https://host/p?flag"),
    ];
    for (url, want) in cases {
        assert_eq!(redacted(url), want, "{url}");
    }
}

#[test]
fn header_values_that_name_a_credential_are_hidden() {
    for name in [
        "Authorization",
        "X-Api-Key",
        "Cookie",
        "X-Auth-Token",
        "X-Signature",
    ] {
        assert_eq!(redacted_header(name, "s3cret"), "***", "{name}");
    }
    assert_eq!(redacted_header("X-Team", "support"), "support");
}

use super::*;

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("bad test address {s:?}: {e}"),
    }
}

fn cidr(s: &str) -> Cidr {
    match s.parse() {
        Ok(c) => c,
        Err(e) => panic!("bad test cidr {s:?}: {e}"),
    }
}

#[test]
fn cidr_parse_table() {
    let ok: &[(&str, &str)] = &[
        ("127.0.0.1/32", "127.0.0.1/32"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("::1/128", "::1/128"),
        ("fd00::/8", "fd00::/8"),
        ("[fd00::1]/8", "fd00::/8"),
        ("127.0.0.1", "127.0.0.1/32"),
        ("::1", "::1/128"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
        (" 192.168.0.0/16 ", "192.168.0.0/16"),
    ];
    for (input, want) in ok {
        assert_eq!(cidr(input).to_string(), *want, "{input}");
    }
    let bad: &[(&str, &str)] = &[
        ("", "empty"),
        ("10.0.0.0/33", "0 to 32"),
        ("::/129", "0 to 128"),
        ("10.0.0.0/", "prefix length"),
        ("10.0.0.0/-1", "prefix length"),
        ("10.0.0.0/+8", "prefix length"),
        ("10.0.0.0/8/8", "prefix length"),
        ("10.0.0/8", "not an IP address"),
        ("localhost/8", "not an IP address"),
        ("10.0.0.0/abc", "prefix length"),
        ("10.0.0.0/0008", "prefix length"),
    ];
    for (input, want) in bad {
        match input.parse::<Cidr>() {
            Ok(c) => panic!("{input:?} parsed as {c}"),
            Err(e) => assert!(e.contains(want), "{input:?}: {e:?} should mention {want:?}"),
        }
    }
}

#[test]
fn cidr_contains_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("127.0.0.1/32", "127.0.0.1", true),
        ("127.0.0.1/32", "127.0.0.2", false),
        ("127.0.0.0/8", "127.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("0.0.0.0/0", "8.8.8.8", true),
        ("0.0.0.0/0", "::1", false),
        ("127.0.0.1/32", "::ffff:127.0.0.1", true),
        ("::1/128", "::1", true),
        ("::1/128", "127.0.0.1", false),
        ("fd00::/8", "fd12:3456::1", true),
        ("fd00::/8", "fe00::1", false),
        ("::/0", "2606:4700::1111", true),
        ("::ffff:0:0/96", "::ffff:10.0.0.1", true),
    ];
    for (net, addr, want) in cases {
        assert_eq!(cidr(net).contains(ip(addr)), *want, "{net} ∋ {addr}");
    }
}

#[test]
fn non_public_reason_table() {
    let cases: &[(&str, Option<&str>)] = &[
        ("0.0.0.0", Some("unspecified")),
        ("0.1.2.3", Some("this network")),
        ("127.0.0.1", Some("loopback")),
        ("127.255.0.9", Some("loopback")),
        ("10.1.2.3", Some("private")),
        ("172.16.0.1", Some("private")),
        ("172.31.255.255", Some("private")),
        ("172.32.0.1", None),
        ("172.15.255.255", None),
        ("192.168.1.1", Some("private")),
        ("169.254.169.254", Some("metadata")),
        ("169.254.1.1", Some("link-local")),
        ("100.64.0.1", Some("carrier-grade NAT")),
        ("100.127.255.255", Some("carrier-grade NAT")),
        ("100.128.0.1", None),
        ("198.18.0.1", Some("benchmarking")),
        ("198.19.255.255", Some("benchmarking")),
        ("198.20.0.1", None),
        ("192.0.2.7", Some("documentation")),
        ("198.51.100.7", Some("documentation")),
        ("203.0.113.7", Some("documentation")),
        ("192.0.0.8", Some("IETF")),
        ("224.0.0.1", Some("multicast")),
        ("239.255.255.250", Some("multicast")),
        ("255.255.255.255", Some("broadcast")),
        ("240.0.0.1", Some("reserved")),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("::ffff:10.0.0.1", Some("private")),
        ("::ffff:8.8.8.8", None),
        ("::127.0.0.1", Some("loopback")),
        ("::169.254.169.254", Some("metadata")),
        ("64:ff9b::7f00:1", Some("loopback")),
        ("64:ff9b::a9fe:a9fe", Some("metadata")),
        ("64:ff9b::808:808", None),
        ("64:ff9b:1::1", Some("local-use NAT64")),
        ("2002:7f00:1::", Some("loopback")),
        ("2002:c0a8:101::1", Some("private")),
        ("2002:808:808::1", None),
        ("fe80::1", Some("link-local")),
        ("febf::1", Some("link-local")),
        ("fec0::1", Some("site-local")),
        ("fc00::1", Some("unique local")),
        ("fd00::1", Some("unique local")),
        ("fd00:ec2::254", Some("unique local")),
        ("ff02::1", Some("multicast")),
        ("2001:db8::1", Some("documentation")),
        ("3fff::1", Some("documentation")),
        ("100::1", Some("discard")),
        ("2001::1", Some("Teredo")),
        ("2001:2::1", Some("benchmarking")),
        ("4000::1", Some("reserved")),
        ("::2", Some("this network")), // IPv4-compatible ::0.0.0.2
        ("2606:4700::1111", None),
        ("2001:4860:4860::8888", None),
    ];
    for (addr, want) in cases {
        let got = non_public_reason(ip(addr));
        match (got, want) {
            (None, None) => {}
            (Some(g), Some(w)) if g.contains(w) => {}
            _ => panic!("{addr}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn check_ip_policies() {
    let allow_lo = NetPolicy::Allow(vec![cidr("127.0.0.1/32"), cidr("::1/128")]);
    let allow_10 = NetPolicy::Allow(vec![cidr("10.0.0.0/8")]);
    let cases: &[(&str, &NetPolicy, bool)] = &[
        ("8.8.8.8", &NetPolicy::PublicOnly, true),
        ("127.0.0.1", &NetPolicy::PublicOnly, false),
        ("127.0.0.1", &allow_lo, true),
        ("127.0.0.2", &allow_lo, false),
        ("::1", &allow_lo, true),
        ("::ffff:127.0.0.1", &allow_lo, true),
        ("10.0.0.1", &allow_lo, false),
        ("8.8.8.8", &allow_lo, true),
        ("10.200.0.1", &allow_10, true),
        ("11.0.0.1", &allow_10, true),
        ("10.0.0.1", &NetPolicy::AllowAll, true),
        ("169.254.169.254", &NetPolicy::AllowAll, true),
        ("255.255.255.255", &NetPolicy::AllowAll, true),
        ("0.0.0.0", &NetPolicy::AllowAll, false),
        ("::", &NetPolicy::AllowAll, false),
        ("::ffff:0.0.0.0", &NetPolicy::AllowAll, false),
        ("224.0.0.1", &NetPolicy::AllowAll, false),
        ("ff02::1", &NetPolicy::AllowAll, false),
        ("0.0.0.0", &NetPolicy::Allow(vec![cidr("0.0.0.0/0")]), false),
        (
            "224.0.0.1",
            &NetPolicy::Allow(vec![cidr("224.0.0.0/4")]),
            false,
        ),
    ];
    for (addr, policy, want) in cases {
        let got = check_ip(ip(addr), policy);
        assert_eq!(got.is_ok(), *want, "{addr} under {policy:?}: {got:?}");
        if let Err(e) = got {
            assert!(e.contains(&ip(addr).to_string()), "{e:?} names the address");
        }
    }
}

#[test]
fn parse_ip_host_table() {
    let some = |s: &str| Some(ip(s));
    let cases: &[(&str, Option<IpAddr>)] = &[
        ("127.0.0.1", some("127.0.0.1")),
        ("2130706433", some("127.0.0.1")),
        ("0x7f000001", some("127.0.0.1")),
        ("0X7F000001", some("127.0.0.1")),
        ("0177.0.0.1", some("127.0.0.1")),
        ("0177.0.0.01", some("127.0.0.1")),
        ("127.1", some("127.0.0.1")),
        ("127.0.1", some("127.0.0.1")),
        ("0x7f.1", some("127.0.0.1")),
        ("0x7f.0x0.0x0.0x1", some("127.0.0.1")),
        ("127.0.0.1.", some("127.0.0.1")),
        ("0", some("0.0.0.0")),
        ("0x", some("0.0.0.0")),
        ("00000000000000000000177.1", some("127.0.0.1")),
        ("4294967295", some("255.255.255.255")),
        ("169.254.43518", some("169.254.169.254")),
        ("10.0x10203", some("10.1.2.3")),
        ("[::1]", some("::1")),
        ("::1", some("::1")),
        ("[::ffff:127.0.0.1]", some("::ffff:127.0.0.1")),
        ("[fe80::1%25eth0]", None),
        ("[::1", None),
        ("4294967296", None),
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
        ("127.0.0.256", None),
        ("127.65536", some("127.1.0.0")),
        ("127.16777216", None),
        ("1.2.65536", None),
        ("1..2", None),
        (".1", None),
        ("08.0.0.1", None),
        ("0x7g.0.0.1", None),
        ("localhost", None),
        ("example.com", None),
        ("hooks.example.com", None),
        ("1e2", None),
        ("", None),
        ("99999999999999999999999999", None),
    ];
    for (host, want) in cases {
        assert_eq!(parse_ip_host(host), *want, "{host:?}");
    }
}

/// The host as written in the URL, before any normalization.
fn raw_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return host_port.find(']').map(|i| &host_port[..=i]);
    }
    Some(host_port.split(':').next().unwrap_or(host_port))
}

#[test]
fn vet_url_table() {
    let pub_ = NetPolicy::PublicOnly;
    let allow_lo = NetPolicy::Allow(vec![cidr("127.0.0.1/32")]);
    let all = NetPolicy::AllowAll;
    // (url, policy, ok?, the address a connection would use, if the host is a literal)
    let cases: &[(&str, &NetPolicy, bool, Option<&str>)] = &[
        ("http://127.0.0.1", &pub_, false, Some("127.0.0.1")),
        (
            "http://127.0.0.1:8080/hook",
            &pub_,
            false,
            Some("127.0.0.1"),
        ),
        ("http://localhost", &pub_, true, None),
        ("http://localhost./", &pub_, true, None),
        ("http://2130706433/", &pub_, false, Some("127.0.0.1")),
        ("http://0x7f000001/", &pub_, false, Some("127.0.0.1")),
        ("http://0177.0.0.1/", &pub_, false, Some("127.0.0.1")),
        ("http://127.1/", &pub_, false, Some("127.0.0.1")),
        ("http://0x7f.1/", &pub_, false, Some("127.0.0.1")),
        ("http://127.0.0.1./", &pub_, false, Some("127.0.0.1")),
        ("http://[::1]/", &pub_, false, Some("::1")),
        (
            "http://[::ffff:127.0.0.1]/",
            &pub_,
            false,
            Some("::ffff:127.0.0.1"),
        ),
        (
            "http://[::ffff:7f00:1]/",
            &pub_,
            false,
            Some("::ffff:127.0.0.1"),
        ),
        (
            "http://169.254.169.254/latest/meta-data",
            &pub_,
            false,
            Some("169.254.169.254"),
        ),
        (
            "http://169.254.43518/",
            &pub_,
            false,
            Some("169.254.169.254"),
        ),
        ("http://[fe80::1]/", &pub_, false, Some("fe80::1")),
        ("http://10.1.2.3/", &pub_, false, Some("10.1.2.3")),
        ("http://172.16.0.1/", &pub_, false, Some("172.16.0.1")),
        ("http://172.32.0.1/", &pub_, true, Some("172.32.0.1")),
        ("http://192.168.1.1/", &pub_, false, Some("192.168.1.1")),
        ("http://100.64.0.1/", &pub_, false, Some("100.64.0.1")),
        ("http://198.18.0.1/", &pub_, false, Some("198.18.0.1")),
        ("http://0.0.0.0/", &pub_, false, Some("0.0.0.0")),
        ("http://0/", &pub_, false, Some("0.0.0.0")),
        ("http://[::]/", &pub_, false, Some("::")),
        ("http://224.0.0.1/", &pub_, false, Some("224.0.0.1")),
        (
            "http://255.255.255.255/",
            &pub_,
            false,
            Some("255.255.255.255"),
        ),
        ("http://[fd00::1]/", &pub_, false, Some("fd00::1")),
        (
            "http://[64:ff9b::7f00:1]/",
            &pub_,
            false,
            Some("64:ff9b::7f00:1"),
        ),
        (
            "http://[2002:7f00:1::]/",
            &pub_,
            false,
            Some("2002:7f00:1::"),
        ),
        ("ftp://example.com/", &pub_, false, None),
        ("file:///etc/passwd", &pub_, false, None),
        ("gopher://127.0.0.1:25/", &pub_, false, None),
        ("javascript:alert(1)", &pub_, false, None),
        ("http://user:pw@example.com/", &pub_, false, None),
        ("http://user@example.com/", &pub_, false, None),
        ("http://:pw@example.com/", &pub_, false, None),
        ("https://hooks.example.com/x", &pub_, true, None),
        ("HTTPS://Hooks.Example.COM/x?token=abc", &pub_, true, None),
        ("http://8.8.8.8/", &pub_, true, Some("8.8.8.8")),
        (
            "http://[2606:4700::1111]/",
            &pub_,
            true,
            Some("2606:4700::1111"),
        ),
        ("not a url", &pub_, false, None),
        ("http://", &pub_, false, None),
        ("http:///path", &pub_, true, None), // WHATWG: host "path"; a name, left to the resolver
        ("http://127.0.0.1/", &allow_lo, true, Some("127.0.0.1")),
        ("http://127.0.0.2/", &allow_lo, false, Some("127.0.0.2")),
        ("http://2130706434/", &allow_lo, false, Some("127.0.0.2")),
        ("http://10.0.0.1/", &all, true, Some("10.0.0.1")),
        ("http://0.0.0.0/", &all, false, Some("0.0.0.0")),
        ("http://[ff02::1]/", &all, false, Some("ff02::1")),
    ];
    assert!(cases.len() >= 30);
    for (url, policy, want_ok, want_ip) in cases {
        let got = vet_url(url, policy);
        assert_eq!(got.is_ok(), *want_ok, "{url} under {policy:?}: {got:?}");
        if let Err(e) = &got {
            assert!(
                !e.contains("/latest") && !e.contains("pw"),
                "{e:?} echoes the URL"
            );
        }
        // Layer 1: the WHATWG parser (what reqwest connects to) normalizes the host.
        let parsed = reqwest::Url::parse(url).ok();
        let normalized = parsed.as_ref().and_then(|u| u.host_str()).and_then(|h| {
            // Strict std parsing: the URL parser must have produced a canonical form.
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            h.parse::<IpAddr>().ok()
        });
        let scheme_ok = parsed
            .as_ref()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https"));
        if scheme_ok {
            assert_eq!(normalized, want_ip.map(ip), "{url}: URL parser host");
        }
        // Layer 2: our own parser reads the raw host text the same way.
        if let (Some(want), true) = (want_ip, scheme_ok) {
            let raw = raw_host(url).unwrap_or("");
            assert_eq!(
                parse_ip_host(raw),
                Some(ip(want)),
                "{url}: parse_ip_host({raw:?})"
            );
            // What the resolver would see for this address gets the same verdict.
            assert_eq!(
                check_ip(ip(want), policy).is_ok(),
                *want_ok,
                "{url}: check_ip"
            );
        }
    }
}

#[tokio::test]
async fn resolver_refuses_localhost_unless_allowed() {
    use reqwest::dns::Resolve as _;

    let name = |s: &str| match s.parse::<reqwest::dns::Name>() {
        Ok(n) => n,
        Err(e) => panic!("bad name {s:?}: {e:?}"),
    };

    let strict = GuardedResolver::new(NetPolicy::PublicOnly);
    match strict.resolve(name("localhost")).await {
        Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("refused by the SSRF guard"), "{msg}");
            assert!(msg.contains("loopback"), "{msg}");
        }
    }

    let allowed = GuardedResolver::new(NetPolicy::Allow(vec![
        cidr("127.0.0.1/32"),
        cidr("::1/128"),
    ]));
    let addrs: Vec<_> = match allowed.resolve(name("localhost")).await {
        Ok(a) => a.collect(),
        Err(e) => panic!("localhost refused: {e}"),
    };
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");

    // Only 127.0.0.1 exactly, not the whole loopback range.
    let narrow = GuardedResolver::new(NetPolicy::Allow(vec![cidr("127.0.0.2/32")]));
    assert!(narrow.resolve(name("localhost")).await.is_err());
}

#[tokio::test]
async fn resolver_judges_literals_and_fails_closed() {
    let strict = GuardedResolver::new(NetPolicy::PublicOnly);
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "::1",
        "169.254.169.254",
    ] {
        let got = strict.resolve_host(host).await;
        assert!(
            matches!(got, Err(ResolveError::Refused { .. })),
            "{host}: {got:?}"
        );
    }
    let got = strict.resolve_host("8.8.8.8").await.ok();
    assert_eq!(
        got,
        Some(vec!["8.8.8.8:0".parse().unwrap_or_else(|e| panic!("{e}"))])
    );
    // A lookup that fails is an error (a NUL byte fails inside libc's argument
    // conversion, so the test sends no DNS query).
    let got = strict.resolve_host("bad\0name").await;
    match got {
        Ok(a) => panic!("resolved to {a:?}"),
        // Not a refusal: the dispatcher retries lookup failures.
        Err(e) => assert!(matches!(e, ResolveError::Lookup { .. }), "{e}"),
    }
}

/// The refusal is found by its type in reqwest's error chain (not by its words), and a
/// connection failure is not one.
#[tokio::test]
async fn a_refusal_is_told_apart_in_the_http_clients_error_chain() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver::new(
            NetPolicy::PublicOnly,
        )))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = client
        .post("http://localhost:9/hook")
        .send()
        .await
        .err()
        .unwrap_or_else(|| panic!("localhost was reached"));
    assert!(is_refusal(&refused), "{refused:?}");
    // An allowed address where nobody listens: a network failure, retried, not refused.
    let allowed = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(GuardedResolver::new(NetPolicy::Allow(
            vec![cidr("127.0.0.1/32")],
        ))))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = allowed
        .post(format!("http://localhost:{}/hook", closed.port()))
        .send()
        .await
        .err()
        .unwrap_or_else(|| panic!("a closed port answered"));
    assert!(!is_refusal(&failed), "{failed:?}");
}

#[test]
fn resolver_is_usable_by_reqwest() {
    // Compiles only if GuardedResolver fits ClientBuilder::dns_resolver.
    fn takes<R: reqwest::dns::Resolve + 'static>(_: R) {}
    takes(GuardedResolver::new(NetPolicy::default()));
}
