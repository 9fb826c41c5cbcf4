//! End-to-end: a configured hickory resolver talking to a real DNS server
//! (Debian's `dnsmasq`, serving records given on its command line) on a
//! loopback port, over UDP and over TCP.
//!
//! Skips with a message when the `dnsmasq` binary is not installed
//! (`apt-get install dnsmasq-base`).

use serde_json::json;
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_dns::{IpLookupStrategy, MxResolver, MxSettings, ResolverConfigParams};

fn find_dnsmasq() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/sbin".into());
    dirs.into_iter()
        .map(|dir| dir.join("dnsmasq"))
        .find(|candidate| candidate.is_file())
}

/// The dnsmasq child; killed (by its own handle) when dropped.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start_dnsmasq(binary: &PathBuf) -> Dnsmasq {
    for _attempt in 0..5 {
        let port = free_port();
        let mut child = Command::new(binary)
            .args([
                "--keep-in-foreground",
                &format!("--port={port}"),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                "--local=/example.test/",
                "--mx-host=example.test,mx2.example.test,20",
                "--mx-host=example.test,mx1.example.test,10",
                "--mx-host=example.test,mx0.example.test,10",
                "--host-record=mx0.example.test,127.0.0.3",
                "--host-record=mx1.example.test,127.0.0.1",
                "--host-record=mx2.example.test,127.0.0.2,::2",
                "--txt-record=txt.example.test,hello world",
                "--log-facility=-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dnsmasq");
        // Ready once its TCP listener accepts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_status)) = child.try_wait() {
                break; // exited early: most likely the port was taken
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Dnsmasq { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("dnsmasq output");
        eprintln!(
            "dnsmasq on port {port} did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    panic!("could not start dnsmasq");
}

fn resolver_for(port: u16, protocol: &str) -> MxResolver {
    let params: ResolverConfigParams = serde_json::from_value(json!({
        "name_servers": [{ "socket_addr": format!("127.0.0.1:{port}"), "protocol": protocol }],
        "options": { "use_hosts_file": "Never", "attempts": 1, "timeout": "2s" }
    }))
    .unwrap();
    MxResolver::new(Arc::new(params.build().unwrap()), MxSettings::default())
}

#[tokio::test]
async fn configured_resolver_against_dnsmasq() {
    let Some(binary) = find_dnsmasq() else {
        eprintln!("SKIPPED: dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    let server = start_dnsmasq(&binary);

    for protocol in ["udp_then_tcp", "udp", "tcp"] {
        let mx = resolver_for(server.port, protocol);

        let answer = mx.lookup_mx("Example.Test").await.unwrap();
        assert_eq!(answer.domain_name, "example.test.", "{protocol}");
        assert_eq!(
            answer.hosts,
            [
                "mx0.example.test.",
                "mx1.example.test.",
                "mx2.example.test."
            ],
            "{protocol}"
        );
        assert_eq!(
            answer.by_pref[&10],
            ["mx0.example.test.", "mx1.example.test."]
        );
        assert_eq!(answer.site_name, "(mx0|mx1|mx2).example.test", "{protocol}");
        assert!(answer.is_mx);
        assert!(answer.expires().is_some());

        let resolver = mx.resolver();
        let ips = resolver
            .resolve_ip("mx2.example.test", IpLookupStrategy::Ipv4AndIpv6)
            .await
            .unwrap();
        assert_eq!(
            ips.records,
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "::2".parse::<IpAddr>().unwrap()
            ],
            "{protocol}"
        );
        let v6 = resolver
            .resolve_ip("mx2.example.test", IpLookupStrategy::Ipv6Only)
            .await
            .unwrap();
        assert_eq!(v6.records, ["::2".parse::<IpAddr>().unwrap()]);

        let txt = resolver.resolve_txt("txt.example.test").await.unwrap();
        assert_eq!(txt.records, ["hello world"], "{protocol}");

        let err = mx.lookup_mx("nope.example.test").await.unwrap_err();
        assert!(err.is_nxdomain(), "{protocol}: {err:?}");

        // The name exists (it has an A record) but has no MX: implicit MX.
        let implicit = mx.lookup_mx("mx1.example.test").await.unwrap();
        assert!(!implicit.is_mx, "{protocol}");
        assert_eq!(implicit.hosts, ["mx1.example.test."]);
        assert_eq!(implicit.site_name, "mx1.example.test");

        let plan = answer
            .resolve_addresses(resolver, IpLookupStrategy::Ipv4Only)
            .await;
        let tern_dns::ResolvedAddresses::Addresses { plan, failures } = plan else {
            panic!("not a null MX");
        };
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[2].addr.to_string(), "127.0.0.2");
    }
}
