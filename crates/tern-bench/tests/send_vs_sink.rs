//! The generator's counts checked against the sink's (SMTP, pipelined and
//! not, with STARTTLS, with failures and 421 reconnects), and the HTTP mode
//! against a small axum server implementing the inject response shape.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Json, Router, routing::post};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tern_bench::send::{HttpOptions, SendConfig, SmtpOptions, Transport, run};
use tern_bench::sink::{Sink, SinkConfig};

fn smtp(target: String, count: u64, connections: usize, options: SmtpOptions) -> SendConfig {
    SendConfig {
        target,
        transport: Transport::Smtp(options),
        connections,
        count: Some(count),
        message_size: 2048,
        timeout: Duration::from_secs(10),
        ..SendConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_all_reach_the_sink() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let summary = run(smtp(
        sink.local_addr.to_string(),
        500,
        4,
        SmtpOptions::default(),
    ))
    .await
    .unwrap();
    let stats = sink.stats();
    assert_eq!(summary.attempted, 500);
    assert_eq!(summary.accepted, 500);
    assert_eq!(summary.codes.get("250"), Some(&500));
    assert_eq!(summary.connections_opened, 4);
    assert_eq!(summary.latency_ms.samples, 500);
    assert!(summary.latency_ms.p50 > 0.0 && summary.latency_ms.p99 >= summary.latency_ms.p50);
    assert_eq!(stats.messages, 500);
    assert_eq!(stats.recipients_accepted, 500);
    assert_eq!(stats.connections, 4);
    assert!(stats.max_concurrent_connections <= 4 && stats.max_concurrent_connections >= 1);
    // About 2 KB each (headers are per message, the body is shared).
    assert!(
        stats.bytes > 500 * 1800 && stats.bytes < 500 * 2200,
        "{}",
        stats.bytes
    );
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_sessions_deliver_every_message() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let options = SmtpOptions {
        starttls: true,
        ..SmtpOptions::default()
    };
    let summary = run(smtp(sink.local_addr.to_string(), 200, 3, options))
        .await
        .unwrap();
    assert_eq!(summary.transport, "smtp+starttls");
    assert_eq!(summary.accepted, 200, "{summary:?}");
    let stats = sink.stats();
    assert_eq!(stats.messages, 200);
    assert_eq!(stats.tls_sessions, 3);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pipelining_and_with_a_per_connection_limit() {
    // The sink does not offer PIPELINING: the client must go step by step.
    let sink = Sink::start(SinkConfig {
        pipelining: false,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let options = SmtpOptions {
        messages_per_connection: Some(10),
        ..SmtpOptions::default()
    };
    let summary = run(smtp(sink.local_addr.to_string(), 50, 1, options))
        .await
        .unwrap();
    assert_eq!(summary.accepted, 50);
    assert_eq!(summary.connections_opened, 5);
    assert_eq!(sink.stats().connections, 5);
    assert_eq!(sink.stats().messages, 50);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_are_counted_and_the_session_recovers() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    for pipelining in [true, false] {
        let mut config = smtp(
            sink.local_addr.to_string(),
            20,
            1,
            SmtpOptions {
                pipelining,
                ..SmtpOptions::default()
            },
        );
        config.recipient_local = "tempfail".into();
        let summary = run(config).await.unwrap();
        assert_eq!(summary.tempfailed, 20);
        assert_eq!(summary.codes.get("451"), Some(&20));
        assert_eq!(summary.io_errors, 0, "{:?}", summary.errors);
        assert_eq!(
            summary.connections_opened, 1,
            "RSET keeps the connection usable"
        );
    }
    // Pipelined DATA after the refused RCPT was answered 554 (20 times).
    assert_eq!(sink.stats().messages_rejected, 20);
    assert_eq!(sink.stats().messages, 0);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_makes_the_client_reconnect() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let mut config = smtp(sink.local_addr.to_string(), 5, 1, SmtpOptions::default());
    config.recipient_local = "421-n{n}".into();
    let summary = run(config).await.unwrap();
    assert_eq!(summary.codes.get("421"), Some(&5));
    assert_eq!(summary.tempfailed, 5);
    assert_eq!(summary.connections_opened, 5);
    assert_eq!(sink.stats().connections, 5);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_but_not_offered_is_a_clear_error() {
    let sink = Sink::start(SinkConfig {
        starttls: false,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let options = SmtpOptions {
        starttls: true,
        ..SmtpOptions::default()
    };
    let summary = run(smtp(sink.local_addr.to_string(), 5, 1, options))
        .await
        .unwrap();
    assert_eq!(summary.attempted, 0);
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.contains("does not offer STARTTLS")),
        "{:?}",
        summary.errors
    );
    assert_eq!(sink.stats().messages, 0);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_ends_with_errors_not_a_hang() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let summary = run(smtp(addr.to_string(), 5, 2, SmtpOptions::default()))
        .await
        .unwrap();
    assert_eq!(summary.attempted, 0);
    assert!(
        summary.errors.iter().any(|e| e.contains("connecting to")),
        "{:?}",
        summary.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_delay_shows_in_latency_and_the_rate_cap_holds() {
    let sink = Sink::start(SinkConfig {
        data_delay: Duration::from_millis(150),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let summary = run(smtp(
        sink.local_addr.to_string(),
        3,
        1,
        SmtpOptions::default(),
    ))
    .await
    .unwrap();
    assert!(summary.latency_ms.p50 >= 150.0, "{:?}", summary.latency_ms);
    sink.shutdown();

    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let mut config = smtp(sink.local_addr.to_string(), 21, 4, SmtpOptions::default());
    config.rate = Some("100/s".parse().unwrap());
    let summary = run(config).await.unwrap();
    assert_eq!(summary.accepted, 21);
    // 21 slots 10 ms apart: at least 200 ms whatever the connection count.
    assert!(summary.elapsed_secs >= 0.19, "{}", summary.elapsed_secs);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounded_runs_stop_on_time() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let mut config = smtp(sink.local_addr.to_string(), 0, 2, SmtpOptions::default());
    config.count = None;
    config.duration = Some(Duration::from_millis(400));
    let summary = run(config).await.unwrap();
    assert!(
        summary.elapsed_secs >= 0.4 && summary.elapsed_secs < 3.0,
        "{}",
        summary.elapsed_secs
    );
    assert!(summary.accepted > 0);
    assert_eq!(sink.stats().messages, summary.accepted);
    sink.shutdown();
}

/// What the fake inject endpoint saw.
#[derive(Default)]
struct InjectSeen {
    requests: AtomicU64,
    recipients: AtomicU64,
    bad_auth: AtomicU64,
    last_n: parking_lot::Mutex<Vec<u64>>,
    domains: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

async fn inject(
    State(seen): State<Arc<InjectSeen>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    // "bench:secret" in Basic form.
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic YmVuY2g6c2VjcmV0")
    {
        seen.bad_auth.fetch_add(1, Ordering::Relaxed);
    }
    assert!(body["content"].as_str().unwrap().contains("{{ n }}"));
    assert_eq!(body["envelope_sender"], "bench@sender.tern.test");
    let mut success = 0;
    let mut failed = Vec::new();
    for recipient in body["recipients"].as_array().unwrap() {
        seen.recipients.fetch_add(1, Ordering::Relaxed);
        let email = recipient["email"].as_str().unwrap().to_string();
        seen.last_n
            .lock()
            .push(recipient["substitutions"]["n"].as_u64().unwrap());
        seen.domains
            .lock()
            .insert(email.rsplit_once('@').unwrap().1.to_string());
        if email.starts_with("user7@") {
            failed.push(email);
        } else {
            success += 1;
        }
    }
    Json(serde_json::json!({
        "success_count": success,
        "fail_count": failed.len(),
        "failed_recipients": failed,
        "errors": failed.iter().map(|e| format!("{e}: refused by test")).collect::<Vec<_>>(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_injection_batches_recipients_with_substitutions() {
    let seen = Arc::new(InjectSeen::default());
    let app = Router::new()
        .route("/api/inject/v1", post(inject))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = SendConfig {
        target: addr.to_string(),
        transport: Transport::Http(HttpOptions {
            batch_size: 100,
            basic_auth: Some(("bench".into(), "secret".into())),
            ..HttpOptions::default()
        }),
        connections: 2,
        count: Some(250),
        domain_count: 3,
        timeout: Duration::from_secs(10),
        ..SendConfig::default()
    };
    let summary = run(config).await.unwrap();
    assert_eq!(summary.transport, "http");
    assert_eq!(summary.attempted, 250);
    assert_eq!(summary.accepted, 249);
    assert_eq!(summary.permfailed, 1);
    assert_eq!(summary.codes.get("http 200"), Some(&249));
    assert_eq!(summary.latency_unit, "request");
    assert_eq!(summary.latency_ms.samples, 3, "100 + 100 + 50");
    assert_eq!(summary.connections_opened, 2, "connections are kept alive");
    assert!(summary.errors.iter().any(|e| e.contains("refused by test")));
    assert_eq!(seen.requests.load(Ordering::Relaxed), 3);
    assert_eq!(seen.recipients.load(Ordering::Relaxed), 250);
    assert_eq!(seen.bad_auth.load(Ordering::Relaxed), 0);
    let mut numbers = seen.last_n.lock().clone();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..250).collect::<Vec<_>>());
    assert_eq!(seen.domains.lock().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_statuses_are_counted_by_status() {
    let app = Router::new().route(
        "/api/inject/v1",
        post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "load shedding") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = SendConfig {
        target: addr.to_string(),
        transport: Transport::Http(HttpOptions {
            batch_size: 10,
            ..HttpOptions::default()
        }),
        connections: 1,
        count: Some(30),
        timeout: Duration::from_secs(10),
        ..SendConfig::default()
    };
    let summary = run(config).await.unwrap();
    assert_eq!(summary.codes.get("http 503"), Some(&30));
    assert_eq!(summary.tempfailed, 30);
    assert!(
        summary.errors.iter().any(|e| e.contains("load shedding")),
        "{:?}",
        summary.errors
    );
}
