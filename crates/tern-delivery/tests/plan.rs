//! Connection plans from MX answers and mx_lists, resolved through
//! in-memory test zones.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tern_delivery::{PlanError, plan_for_mx, plan_for_mx_list};
use tern_dns::{MxResolver, MxSettings, Resolver, TestResolver};
use tern_queue::config::{
    EgressPathConfig, EgressSource, IpLookupStrategy, LabeledMx, MxListEntry,
};
use tern_types::CidrSet;

const ZONES: &[&str] = &[
    "$ORIGIN example.com.
@       600 MX 10 mx1.example.com.
@       600 MX 10 mx2.example.com.
@       600 MX 20 backup.example.com.
mx1     600 A 10.0.0.1
mx1     600 A 10.0.0.2
mx2     600 A 10.0.0.3
mx2     600 AAAA 2001:db8::3
backup  600 A 10.0.1.1
",
    "$ORIGIN null.example.
@ 600 MX 0 .
",
    "$ORIGIN loop.example.
@  600 MX 10 mx.loop.example.
mx 600 A 10.9.9.9
mx 600 A 127.0.0.1
",
    "$ORIGIN partial.example.
@  600 MX 10 gone.partial.example.
@  600 MX 20 mx.partial.example.
mx 600 A 10.2.2.2
",
    "$ORIGIN dead.example.
@  600 MX 10 nowhere.dead.example.
",
    "$ORIGIN many.example.
@  600 MX 10 mx.many.example.
mx 600 A 10.3.0.1
mx 600 A 10.3.0.2
mx 600 A 10.3.0.3
mx 600 A 10.3.0.4
",
];

fn resolver() -> MxResolver {
    let test = TestResolver::from_zones(ZONES).unwrap();
    MxResolver::new(Arc::new(Resolver::Test(test)), MxSettings::default())
}

fn path() -> EgressPathConfig {
    EgressPathConfig::default()
}

fn ips(plan: &tern_delivery::ConnectionPlan) -> Vec<IpAddr> {
    plan.hosts.iter().map(|h| h.addr.ip()).collect()
}

#[tokio::test]
async fn preference_groups_in_order_and_shuffled_within() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("example.com").await.unwrap();
    let source = EgressSource::unspecified();
    let mut first_seen = HashSet::new();
    for _ in 0..40 {
        let plan = plan_for_mx(&mx, &resolver, &path(), &source).await.unwrap();
        assert_eq!(plan.len(), 5);
        let ips = ips(&plan);
        let top: HashSet<String> = ips[..4].iter().map(ToString::to_string).collect();
        assert_eq!(
            top,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::3"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert_eq!(ips[4].to_string(), "10.0.1.1");
        assert!(plan.hosts.iter().all(|h| h.addr.port() == 25));
        let backup = &plan.hosts[4];
        assert_eq!(backup.name, "backup.example.com.");
        first_seen.insert(ips[0]);
    }
    assert!(
        first_seen.len() > 1,
        "addresses within a preference are shuffled"
    );
}

#[tokio::test]
async fn lookup_strategy_limits_families() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("example.com").await.unwrap();
    let mut path = path();
    path.ip_lookup_strategy = IpLookupStrategy::Ipv4Only;
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert!(ips(&plan).iter().all(IpAddr::is_ipv4));
    assert_eq!(plan.len(), 4);
    path.ip_lookup_strategy = IpLookupStrategy::Ipv6Only;
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(ips(&plan), ["2001:db8::3".parse::<IpAddr>().unwrap()]);
}

#[tokio::test]
async fn null_mx_bounces() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("null.example").await.unwrap();
    let err = plan_for_mx(&mx, &resolver, &path(), &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert_eq!(err, PlanError::NullMx);
    assert!(err.is_permanent());
    assert_eq!(
        err.response().to_single_line(),
        "556 5.1.10 Recipient address has a null MX"
    );
}

#[tokio::test]
async fn prohibited_address_bounces_the_whole_plan() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("loop.example").await.unwrap();
    let err = plan_for_mx(&mx, &resolver, &path(), &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    let response = err.response();
    assert_eq!(response.code, 550);
    assert_eq!(response.enhanced.unwrap().to_string(), "5.4.4");
    assert!(
        response
            .content
            .starts_with("127.0.0.1 is on the list of prohibited_hosts ["),
        "{}",
        response.content
    );
    // With the list emptied, loopback is fine.
    let mut path = path();
    path.prohibited_hosts = CidrSet::default();
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(plan.len(), 2);
}

#[tokio::test]
async fn skip_hosts_remove_addresses() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("loop.example").await.unwrap();
    let mut path = path();
    path.prohibited_hosts = CidrSet::default();
    path.skip_hosts = CidrSet::new(["127.0.0.0/8"]).unwrap();
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(ips(&plan), ["10.9.9.9".parse::<IpAddr>().unwrap()]);

    path.skip_hosts = CidrSet::new(["127.0.0.1", "10.9.9.9"]).unwrap();
    let err = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert_eq!(err, PlanError::AllSkipped);
    assert!(!err.is_permanent());
    assert_eq!(
        err.response().to_single_line(),
        "451 4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list"
    );
}

#[tokio::test]
async fn unresolvable_hosts_are_skipped() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("partial.example").await.unwrap();
    let plan = plan_for_mx(&mx, &resolver, &path(), &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(ips(&plan), ["10.2.2.2".parse::<IpAddr>().unwrap()]);

    let mx = resolver.lookup_mx("dead.example").await.unwrap();
    let err = plan_for_mx(&mx, &resolver, &path(), &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert_eq!(err, PlanError::NoAddresses);
    assert_eq!(
        err.response().to_single_line(),
        "451 4.4.4 MX didn't resolve to any hosts"
    );
}

#[tokio::test]
async fn address_caps() {
    let resolver = resolver();
    let mx = resolver.lookup_mx("many.example").await.unwrap();
    let mut path = path();
    path.max_mx_addresses_per_host = 2;
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(plan.len(), 2);
    path.max_mx_addresses_per_host = 10;
    path.max_mx_plan_size = 3;
    let plan = plan_for_mx(&mx, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    assert_eq!(plan.len(), 3);
}

#[tokio::test]
async fn port_precedence() {
    let resolver = resolver();
    let mut path = path();
    path.smtp_port = 2525;
    let source = EgressSource::unspecified();

    // smtp_port when nothing else says.
    let mx = resolver.lookup_mx("many.example").await.unwrap();
    let plan = plan_for_mx(&mx, &resolver, &path, &source).await.unwrap();
    assert!(plan.hosts.iter().all(|h| h.addr.port() == 2525));

    // A port on the routing domain beats smtp_port.
    let mx = resolver.lookup_mx("many.example:1025").await.unwrap();
    let plan = plan_for_mx(&mx, &resolver, &path, &source).await.unwrap();
    assert!(plan.hosts.iter().all(|h| h.addr.port() == 1025));

    // The source's remote_port beats both.
    let mut forced = EgressSource::named("forced");
    forced.remote_port = Some(587);
    let plan = plan_for_mx(&mx, &resolver, &path, &forced).await.unwrap();
    assert!(plan.hosts.iter().all(|h| h.addr.port() == 587));

    // Literal domains carry their port too.
    let mx = resolver.lookup_mx("[10.7.7.7]:8025").await.unwrap();
    let plan = plan_for_mx(&mx, &resolver, &path, &source).await.unwrap();
    assert_eq!(
        plan.hosts[0].addr,
        "10.7.7.7:8025".parse::<SocketAddr>().unwrap()
    );
}

#[tokio::test]
async fn mx_list_entries_in_order() {
    let resolver = resolver();
    let mut path = path();
    path.ip_lookup_strategy = IpLookupStrategy::Ipv4Only;
    let list = vec![
        MxListEntry::Labeled(LabeledMx {
            name: "smart.local".into(),
            addr: "10.5.5.5:2526".into(),
        }),
        MxListEntry::Name("[10.6.6.6]:2527".into()),
        MxListEntry::Name("backup.example.com".into()),
        MxListEntry::Name("nowhere.dead.example".into()),
    ];
    let plan = plan_for_mx_list(&list, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap();
    let hosts: Vec<(String, String)> = plan
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.addr.to_string()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("smart.local".to_string(), "10.5.5.5:2526".to_string()),
            ("10.6.6.6".to_string(), "10.6.6.6:2527".to_string()),
            ("backup.example.com.".to_string(), "10.0.1.1:25".to_string()),
        ]
    );

    let bad = vec![MxListEntry::Labeled(LabeledMx {
        name: "x".into(),
        addr: "not-an-ip".into(),
    })];
    let err = plan_for_mx_list(&bad, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert!(matches!(err, PlanError::Dns(_)));
    assert!(err.response().content.contains("not-an-ip"));

    let prohibited = vec![MxListEntry::Name("[127.0.0.1]".into())];
    let err = plan_for_mx_list(&prohibited, &resolver, &path, &EgressSource::unspecified())
        .await
        .unwrap_err();
    assert!(matches!(err, PlanError::Prohibited { .. }));
}
