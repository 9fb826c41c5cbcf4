//! MX lookup, caching and address resolution through the in-memory test
//! resolver (no sockets).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_dns::{
    IpLookupStrategy, MxResolver, MxSettings, NULL_MX_RESPONSE, ResolvedAddresses, Resolver,
    TestResolver, TestResolverParams, TestZone,
};

const ZONE: &str = r#"
$ORIGIN example.com.
@        600 MX 20 Backup.Example.com.
@        600 MX 10 mx2.example.com.
@        600 MX 10 MX1.example.com.
mx1      300 A    192.0.2.1
mx2      300 A    192.0.2.2
mx2      300 AAAA 2001:db8::2
backup   300 A    192.0.2.3
noexist-mx 60 MX 10 ghost.example.com.
v6only   300 AAAA 2001:db8::6
txt      300 TXT  "v=spf1 " "-all"

$ORIGIN example.net.
@        300 A    192.0.2.10

$ORIGIN nullmx.example.
@        300 MX 0 .

$ORIGIN gmail.example.
@ 1620 MX 30 alt3.gmail-smtp-in.l.google.com.
@ 1620 MX 40 alt4.gmail-smtp-in.l.google.com.
@ 1620 MX 5 gmail-smtp-in.l.google.com.
@ 1620 MX 10 alt1.gmail-smtp-in.l.google.com.
@ 1620 MX 20 alt2.gmail-smtp-in.l.google.com.

$ORIGIN short.example.
@        2 MX 10 mx.short.example.

$ORIGIN 2.0.192.in-addr.arpa.
1        300 PTR  mx1.example.com.
"#;

fn test_resolver() -> TestResolver {
    let params = TestResolverParams {
        zones: vec![TestZone {
            zone: ZONE.to_string(),
            secure: false,
        }],
        servfail: vec!["broken.example".to_string()],
    };
    TestResolver::new(&params).unwrap()
}

fn mx_resolver(settings: MxSettings) -> MxResolver {
    MxResolver::new(Arc::new(Resolver::Test(test_resolver())), settings)
}

fn query_count(mx: &MxResolver) -> usize {
    match mx.resolver().as_ref() {
        Resolver::Test(test) => test.query_count(),
        _ => unreachable!("test resolver"),
    }
}

#[tokio::test]
async fn mx_hosts_grouped_by_preference_and_sorted() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("Example.COM").await.unwrap();
    assert_eq!(answer.domain_name, "example.com.");
    assert_eq!(
        answer.hosts,
        [
            "mx1.example.com.",
            "mx2.example.com.",
            "backup.example.com."
        ]
    );
    assert_eq!(answer.by_pref.len(), 2);
    assert_eq!(
        answer.by_pref[&10],
        ["mx1.example.com.", "mx2.example.com."]
    );
    assert_eq!(answer.by_pref[&20], ["backup.example.com."]);
    assert_eq!(answer.site_name, "(mx1|mx2|backup).example.com");
    assert!(answer.is_mx);
    assert!(!answer.is_domain_literal);
    assert!(!answer.is_secure);
    assert!(!answer.is_null_mx());
}

#[tokio::test]
async fn gmail_shape_matches_upstream_example() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("gmail.example").await.unwrap();
    assert_eq!(
        answer.hosts,
        [
            "gmail-smtp-in.l.google.com.",
            "alt1.gmail-smtp-in.l.google.com.",
            "alt2.gmail-smtp-in.l.google.com.",
            "alt3.gmail-smtp-in.l.google.com.",
            "alt4.gmail-smtp-in.l.google.com.",
        ]
    );
    assert_eq!(
        answer.site_name,
        "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
    );
    let json = serde_json::to_value(&*answer).unwrap();
    assert_eq!(json["domain_name"], "gmail.example.");
    assert_eq!(json["by_pref"]["5"][0], "gmail-smtp-in.l.google.com.");
    assert_eq!(json["mta_sts"], "None");
}

#[tokio::test]
async fn implicit_mx_when_name_has_no_mx() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("example.net").await.unwrap();
    assert_eq!(answer.hosts, ["example.net."]);
    assert_eq!(answer.by_pref[&1], ["example.net."]);
    assert_eq!(answer.site_name, "example.net");
    assert!(!answer.is_mx);
}

#[tokio::test]
async fn null_mx() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("nullmx.example").await.unwrap();
    assert_eq!(answer.hosts, ["."]);
    assert_eq!(answer.site_name, "");
    assert!(answer.is_null_mx());
    assert!(answer.is_mx);
    let plan = answer
        .resolve_addresses(mx.resolver(), IpLookupStrategy::Ipv4AndIpv6)
        .await;
    assert_eq!(plan, ResolvedAddresses::NullMx);
    assert!(NULL_MX_RESPONSE.starts_with("556 5.1.10"));
}

#[tokio::test]
async fn nxdomain_is_an_error() {
    let mx = mx_resolver(MxSettings::default());
    let err = mx.lookup_mx("nowhere.example").await.unwrap_err();
    assert!(err.is_nxdomain(), "{err:?}");
    assert!(err.to_string().contains("NXDOMAIN"), "{err}");
}

#[tokio::test]
async fn servfail_is_transient() {
    let mx = mx_resolver(MxSettings::default());
    let err = mx.lookup_mx("broken.example").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.is_nxdomain());
}

#[tokio::test]
async fn port_suffix_is_kept_on_hosts() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("example.com:2525").await.unwrap();
    assert_eq!(answer.port, Some(2525));
    assert_eq!(answer.hosts[0], "mx1.example.com.:2525");
    assert_eq!(answer.site_name, "(mx1|mx2|backup).example.com:2525");
    // The portless name is a separate cache entry with portless hosts.
    let plain = mx.lookup_mx("example.com").await.unwrap();
    assert_eq!(plain.hosts[0], "mx1.example.com.");
}

#[tokio::test]
async fn domain_literals_need_no_dns() {
    let mx = mx_resolver(MxSettings::default());
    for (input, site, host, port) in [
        ("[127.0.0.1]", "127.0.0.1", "127.0.0.1", None),
        ("[IPv6:::1]", "::1", "::1", None),
        ("[ipv6:::1]", "::1", "::1", None),
        ("[::1]", "::1", "::1", None),
        (
            "[127.0.0.1]:2525",
            "127.0.0.1",
            "127.0.0.1:2525",
            Some(2525),
        ),
        (
            "[127.0.0.1:2525]",
            "127.0.0.1",
            "127.0.0.1:2525",
            Some(2525),
        ),
        ("[IPv6:::1]:2525", "::1", "[::1]:2525", Some(2525)),
    ] {
        let answer = mx.lookup_mx(input).await.unwrap();
        assert_eq!(answer.site_name, site, "{input}");
        assert_eq!(answer.hosts, [host], "{input}");
        assert_eq!(answer.port, port, "{input}");
        assert_eq!(answer.domain_name, input);
        assert!(answer.is_domain_literal);
        assert!(!answer.is_mx);
    }
    assert_eq!(query_count(&mx), 0, "literals must not query DNS");
    for bad in [
        "[127.0.0.1:25]:25",
        "[127.0.0.1",
        "[not-an-ip]",
        "[1.2.3.4]x",
    ] {
        let err = mx.lookup_mx(bad).await.unwrap_err();
        assert!(
            matches!(err, tern_dns::DnsError::InvalidName { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cache_respects_record_ttl() {
    let mx = mx_resolver(MxSettings::default());
    let first = mx.lookup_mx("short.example").await.unwrap();
    assert_eq!(query_count(&mx), 1);
    let again = mx.lookup_mx("SHORT.example.").await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "served from cache");
    assert_eq!(query_count(&mx), 1);
    tokio::time::advance(Duration::from_millis(2100)).await;
    assert!(first.has_expired());
    let fresh = mx.lookup_mx("short.example").await.unwrap();
    assert_eq!(
        query_count(&mx),
        2,
        "TTL of 2 s expired, so DNS is asked again"
    );
    assert!(!Arc::ptr_eq(&first, &fresh));
}

#[tokio::test(start_paused = true)]
async fn failures_are_cached_for_the_negative_ttl() {
    let settings = MxSettings {
        negative_cache_ttl: Duration::from_secs(60),
        transient_negative_cache_ttl: Duration::from_secs(5),
        ..MxSettings::default()
    };
    let mx = mx_resolver(settings);
    assert!(mx.lookup_mx("nowhere.example").await.is_err());
    assert!(mx.lookup_mx("broken.example").await.is_err());
    assert_eq!(query_count(&mx), 2);
    assert!(
        mx.lookup_mx("nowhere.example")
            .await
            .unwrap_err()
            .is_nxdomain()
    );
    assert!(mx.lookup_mx("broken.example").await.is_err());
    assert_eq!(query_count(&mx), 2, "both failures cached");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(mx.lookup_mx("nowhere.example").await.is_err());
    assert!(mx.lookup_mx("broken.example").await.is_err());
    assert_eq!(query_count(&mx), 3, "only the transient failure expired");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(mx.lookup_mx("nowhere.example").await.is_err());
    assert_eq!(query_count(&mx), 4);
}

#[tokio::test(start_paused = true)]
async fn concurrent_lookups_share_one_query() {
    let resolver = test_resolver().with_delay(Duration::from_millis(500));
    let mx = MxResolver::new(Arc::new(Resolver::Test(resolver)), MxSettings::default());
    let (a, b, c) = tokio::join!(
        mx.lookup_mx("example.com"),
        mx.lookup_mx("example.com"),
        mx.lookup_mx("EXAMPLE.com.")
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&b, &c));
    assert_eq!(query_count(&mx), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_and_concurrency_limit() {
    let settings = MxSettings {
        timeout: Duration::from_secs(5),
        concurrency_limit: 1,
        ..MxSettings::default()
    };
    let slow = test_resolver().with_delay(Duration::from_secs(2));
    let mx = MxResolver::new(Arc::new(Resolver::Test(slow)), settings);
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(mx.lookup_mx("example.com"), mx.lookup_mx("example.net"));
    assert!(a.is_ok() && b.is_ok());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "one slot means the two queries ran one after the other"
    );

    let too_slow = test_resolver().with_delay(Duration::from_secs(10));
    let mx = MxResolver::new(Arc::new(Resolver::Test(too_slow)), MxSettings::default());
    let err = mx.lookup_mx("example.com").await.unwrap_err();
    assert!(matches!(err, tern_dns::DnsError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn ip_lookup_strategies() {
    let resolver = Resolver::Test(test_resolver());
    let v4: IpAddr = "192.0.2.2".parse().unwrap();
    let v6: IpAddr = "2001:db8::2".parse().unwrap();
    let ips = |strategy| {
        let resolver = &resolver;
        async move {
            resolver
                .resolve_ip("mx2.example.com", strategy)
                .await
                .map(|answer| answer.records)
        }
    };
    assert_eq!(ips(IpLookupStrategy::Ipv4AndIpv6).await.unwrap(), [v4, v6]);
    assert_eq!(ips(IpLookupStrategy::Ipv4Only).await.unwrap(), [v4]);
    assert_eq!(ips(IpLookupStrategy::Ipv6Only).await.unwrap(), [v6]);
    assert_eq!(ips(IpLookupStrategy::Ipv6ThenIpv4).await.unwrap(), [v6]);
    assert_eq!(ips(IpLookupStrategy::Ipv4ThenIpv6).await.unwrap(), [v4]);

    let only6: IpAddr = "2001:db8::6".parse().unwrap();
    let answer = resolver
        .resolve_ip("v6only.example.com", IpLookupStrategy::Ipv4ThenIpv6)
        .await
        .unwrap();
    assert_eq!(answer.records, [only6]);
    let answer = resolver
        .resolve_ip("v6only.example.com", IpLookupStrategy::Ipv4AndIpv6)
        .await
        .unwrap();
    assert_eq!(answer.records, [only6]);
    let err = resolver
        .resolve_ip("v6only.example.com", IpLookupStrategy::Ipv4Only)
        .await
        .unwrap_err();
    assert!(err.is_nodata(), "{err:?}");
    let err = resolver
        .resolve_ip("missing.example.com", IpLookupStrategy::Ipv4AndIpv6)
        .await
        .unwrap_err();
    assert!(err.is_nxdomain(), "{err:?}");
    let err = resolver
        .resolve_ip("broken.example", IpLookupStrategy::Ipv4AndIpv6)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // An address in text form needs no DNS.
    let answer = resolver
        .resolve_ip("10.1.2.3", IpLookupStrategy::Ipv6Only)
        .await
        .unwrap();
    assert_eq!(answer.records, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
}

#[tokio::test]
async fn txt_and_ptr() {
    let resolver = Resolver::Test(test_resolver());
    let txt = resolver.resolve_txt("txt.example.com").await.unwrap();
    assert_eq!(txt.records, ["v=spf1 -all"]);
    assert_eq!(txt.ttl, Duration::from_secs(300));
    let ptr = resolver
        .resolve_ptr("192.0.2.1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(ptr.records, ["mx1.example.com."]);
    let err = resolver
        .resolve_ptr("192.0.2.99".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_nxdomain(), "{err:?}");
}

#[tokio::test]
async fn connection_plan_orders_preferences() {
    let mx = mx_resolver(MxSettings::default());
    let answer = mx.lookup_mx("example.com:2525").await.unwrap();
    let ResolvedAddresses::Addresses { plan, failures } = answer
        .resolve_addresses(mx.resolver(), IpLookupStrategy::Ipv4Only)
        .await
    else {
        panic!("not a null MX");
    };
    assert!(failures.is_empty());
    assert_eq!(plan.len(), 3);
    let mut first_two: Vec<String> = plan[..2].iter().map(|a| a.addr.to_string()).collect();
    first_two.sort();
    assert_eq!(first_two, ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(plan[2].addr.to_string(), "192.0.2.3");
    assert_eq!(plan[2].name, "backup.example.com.");
    assert!(plan.iter().all(|a| a.port == Some(2525)));

    // A host that does not resolve is skipped and reported.
    let answer = mx.lookup_mx("noexist-mx.example.com").await.unwrap();
    let ResolvedAddresses::Addresses { plan, failures } = answer
        .resolve_addresses(mx.resolver(), IpLookupStrategy::Ipv4AndIpv6)
        .await
    else {
        panic!("not a null MX");
    };
    assert!(plan.is_empty());
    assert_eq!(failures.len(), 1);
    assert!(failures[0].1.is_nxdomain());
}

#[tokio::test]
async fn secure_zone_marks_mx_secure_and_aggregate_falls_through() {
    let secure = TestResolver::new(&TestResolverParams {
        zones: vec![TestZone {
            zone:
                "$ORIGIN dane.example.\n@ 3600 IN MX 10 mx.dane.example.\nmx 3600 IN A 127.0.0.1\n"
                    .to_string(),
            secure: true,
        }],
        servfail: vec![],
    })
    .unwrap();
    let aggregate = Resolver::Aggregate(vec![
        Resolver::Test(secure),
        Resolver::Test(test_resolver()),
    ]);
    let mx = MxResolver::new(Arc::new(aggregate), MxSettings::default());
    let dane = mx.lookup_mx("dane.example").await.unwrap();
    assert!(dane.is_secure);
    assert_eq!(dane.site_name, "mx.dane.example");
    // Not in the first resolver: answered by the second.
    let other = mx.lookup_mx("example.com").await.unwrap();
    assert!(!other.is_secure);
    assert_eq!(other.hosts.len(), 3);
    // In neither: NXDOMAIN.
    assert!(
        mx.lookup_mx("nowhere.example")
            .await
            .unwrap_err()
            .is_nxdomain()
    );
}

#[tokio::test]
async fn dns_config_builds_the_mx_layer() {
    let spec: tern_dns::ResolverSpec = serde_json::from_value(serde_json::json!({
        "Test": { "zones": [ZONE], "servfail": ["broken.example"] }
    }))
    .unwrap();
    let config = tern_dns::DnsConfig {
        resolver: Some(spec),
        mx: MxSettings {
            concurrency_limit: 4,
            ..MxSettings::default()
        },
    };
    let mx = config.build().unwrap();
    assert_eq!(mx.settings().concurrency_limit, 4);
    assert_eq!(mx.lookup_mx("example.com").await.unwrap().hosts.len(), 3);
    assert_eq!(mx.cached_len(), 1);
    // Swapping the resolver keeps the settings and starts a fresh cache.
    let swapped = mx.with_resolver(Arc::new(Resolver::Test(
        TestResolver::from_zones(&["$ORIGIN example.com.\n@ 60 MX 1 other.example.org.\n"])
            .unwrap(),
    )));
    assert_eq!(swapped.settings().concurrency_limit, 4);
    assert_eq!(swapped.cached_len(), 0);
    assert_eq!(
        swapped.lookup_mx("example.com").await.unwrap().hosts,
        ["other.example.org."]
    );
}

#[tokio::test]
async fn null_mx_mixed_with_hosts_is_left_out_of_the_site_name() {
    let resolver = TestResolver::from_zones(&[
        "$ORIGIN mixed.example.\n@ 60 MX 0 .\n@ 60 MX 10 mx.mixed.example.\n",
    ])
    .unwrap();
    let mx = MxResolver::new(Arc::new(Resolver::Test(resolver)), MxSettings::default());
    let answer = mx.lookup_mx("mixed.example").await.unwrap();
    assert_eq!(answer.hosts, [".", "mx.mixed.example."]);
    assert!(!answer.is_null_mx());
    assert_eq!(answer.site_name, "mx.mixed.example");
}
