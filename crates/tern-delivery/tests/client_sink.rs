//! The client against the tern-bench sink, a separate SMTP implementation:
//! byte-exact delivery, pipelining on and off, mixed recipient outcomes,
//! 421 in the middle of a transaction, TLS modes, 8-bit checks and host
//! fail-over.

mod common;

use common::{addr, plan_to, settings, test_path};
use std::net::SocketAddr;
use tern_bench::sink::{Sink, SinkConfig, SinkHandle};
use tern_delivery::{ConnectError, ConnectStage, Outcome, SmtpConnection, TransportError};
use tern_queue::config::Tls;

async fn sink(config: SinkConfig) -> SinkHandle {
    Sink::start(config).await.unwrap()
}

fn read_single_maildir_file(dir: &std::path::Path) -> Vec<u8> {
    let entries: Vec<_> = std::fs::read_dir(dir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    std::fs::read(&entries[0]).unwrap()
}

/// The sink prefixes three headers of its own; return what follows.
fn strip_sink_headers(content: &[u8]) -> &[u8] {
    let mut rest = content;
    for _ in 0..3 {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        rest = &rest[end + 2..];
    }
    rest
}

const DOTTY: &[u8] =
    b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle . line\r\n. \r\nend\r\n";

#[tokio::test]
async fn byte_exact_delivery_with_and_without_pipelining() {
    for pipelining in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let handle = sink(SinkConfig {
            maildir: Some(dir.path().to_path_buf()),
            pipelining,
            ..SinkConfig::default()
        })
        .await;
        let settings = settings(test_path(Tls::Disabled));
        let (mut conn, index) =
            SmtpConnection::connect(&plan_to(&[handle.local_addr]), 0, &settings)
                .await
                .unwrap();
        assert_eq!(index, 0);
        assert_eq!(conn.capabilities().pipelining, pipelining);
        assert!(conn.tls().is_none());
        assert_eq!(conn.peer().addr, handle.local_addr);
        assert!(conn.source_address().unwrap().ip().is_loopback());
        let results = conn
            .send(
                &addr("sender@tern.test"),
                &[addr("user@example.com")],
                DOTTY,
            )
            .await
            .unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Delivered);
        assert_eq!(results[0].response.code, 250);
        assert_eq!(results[0].response.command.as_deref(), Some(".\r\n"));
        assert_eq!(results[0].response.content, "OK: queued");
        assert_eq!(conn.transactions(), 1);
        conn.quit().await;

        let content = read_single_maildir_file(dir.path());
        assert_eq!(
            strip_sink_headers(&content),
            DOTTY,
            "pipelining={pipelining}"
        );
        let stats = handle.stats();
        assert_eq!(stats.messages, 1);
        assert_eq!(stats.tls_sessions, 0, "Disabled must send clear text");
        handle.shutdown();
    }
}

#[tokio::test]
async fn missing_final_newline_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let handle = sink(SinkConfig {
        maildir: Some(dir.path().to_path_buf()),
        ..SinkConfig::default()
    })
    .await;
    let settings = settings(test_path(Tls::Disabled));
    let (mut conn, _) = SmtpConnection::connect(&plan_to(&[handle.local_addr]), 0, &settings)
        .await
        .unwrap();
    conn.send(
        &addr("s@tern.test"),
        &[addr("u@example.com")],
        b"Subject: x\r\n\r\n.no newline",
    )
    .await
    .unwrap();
    let content = read_single_maildir_file(dir.path());
    assert_eq!(
        strip_sink_headers(&content),
        b"Subject: x\r\n\r\n.no newline\r\n"
    );
}

#[tokio::test]
async fn mixed_recipients_in_one_transaction_and_reuse() {
    for pipelining in [true, false] {
        let handle = sink(SinkConfig {
            pipelining,
            ..SinkConfig::default()
        })
        .await;
        let settings = settings(test_path(Tls::Disabled));
        let (mut conn, _) = SmtpConnection::connect(&plan_to(&[handle.local_addr]), 0, &settings)
            .await
            .unwrap();
        let recipients = [
            addr("ok@example.com"),
            addr("tempfail@example.com"),
            addr("permfail@example.com"),
            addr("450-x@example.com"),
        ];
        let results = conn
            .send(
                &addr("s@tern.test"),
                &recipients,
                b"Subject: a\r\n\r\nbody\r\n",
            )
            .await
            .unwrap();
        let outcomes: Vec<_> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Delivered,
                Outcome::Transient,
                Outcome::Permanent,
                Outcome::Transient
            ],
            "pipelining={pipelining}"
        );
        assert_eq!(results[1].response.code, 451);
        assert_eq!(
            results[1].response.command.as_deref(),
            Some("RCPT TO:<tempfail@example.com>\r\n")
        );
        assert_eq!(
            results[2].response.to_single_line(),
            "550 5.1.1 Permanent failure (permfail)"
        );
        assert!(results.iter().all(|r| !r.too_many));

        // Every recipient refused: the DATA refusal is not a separate failure.
        let results = conn
            .send(
                &addr("s@tern.test"),
                &[addr("tempfail@example.com"), addr("permfail@example.com")],
                b"x\r\n",
            )
            .await
            .unwrap();
        assert_eq!(results[0].response.code, 451);
        assert_eq!(results[1].response.code, 550);
        assert!(conn.is_usable());

        // And the connection still delivers afterwards (RSET in between).
        let results = conn
            .send(&addr("s@tern.test"), &[addr("again@example.com")], b"x\r\n")
            .await
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::Delivered);
        assert_eq!(conn.transactions(), 3);
        assert_eq!(handle.stats().messages, 2);
        conn.quit().await;
        handle.shutdown();
    }
}

#[tokio::test]
async fn a_421_ends_the_session() {
    let handle = sink(SinkConfig::default()).await;
    let settings = settings(test_path(Tls::Disabled));
    let (mut conn, _) = SmtpConnection::connect(&plan_to(&[handle.local_addr]), 0, &settings)
        .await
        .unwrap();
    let err = conn
        .send(
            &addr("s@tern.test"),
            &[
                addr("ok@example.com"),
                addr("permfail@example.com"),
                addr("421-x@example.com"),
                addr("later@example.com"),
            ],
            b"x\r\n",
        )
        .await
        .unwrap_err();
    assert!(!err.is_permanent());
    let response = err.response();
    assert_eq!(response.code, 421);
    assert_eq!(
        response.command.as_deref(),
        Some("RCPT TO:<421-x@example.com>\r\n")
    );
    let results = err.recipient_results();
    assert_eq!(results.len(), 4);
    // Accepted but never sent: transient with the 421.
    assert_eq!(
        (results[0].outcome, results[0].response.code),
        (Outcome::Transient, 421)
    );
    // A permanent refusal already given stands.
    assert_eq!(
        (results[1].outcome, results[1].response.code),
        (Outcome::Permanent, 550)
    );
    assert_eq!(
        (results[2].outcome, results[2].response.code),
        (Outcome::Transient, 421)
    );
    assert_eq!(
        (results[3].outcome, results[3].response.code),
        (Outcome::Transient, 421)
    );
    assert!(!conn.is_usable());
    assert!(matches!(
        conn.send(&addr("s@tern.test"), &[addr("a@example.com")], b"x\r\n")
            .await,
        Err(TransportError::NotUsable)
    ));
    assert_eq!(handle.stats().messages, 0);
}

#[tokio::test]
async fn tls_modes_against_a_self_signed_sink() {
    let handle = sink(SinkConfig::default()).await;
    let plan = plan_to(&[handle.local_addr]);

    // Opportunistic verifies: a self-signed certificate fails the host.
    let err = SmtpConnection::connect(&plan, 0, &settings(test_path(Tls::Opportunistic)))
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::TlsHandshake);
    let text = err.response().to_single_line();
    assert!(
        text.starts_with("400 KumoMTA internal: failed to connect to any candidate hosts: "),
        "{text}"
    );
    assert!(
        text.contains("Opportunistic STARTTLS handshake failed"),
        "{text}"
    );

    // Required verifies too.
    let err = SmtpConnection::connect(&plan, 0, &settings(test_path(Tls::Required)))
        .await
        .unwrap_err();
    assert_eq!(err.last().unwrap().stage, ConnectStage::TlsHandshake);

    // OpportunisticInsecure encrypts without verifying.
    for mode in [Tls::OpportunisticInsecure, Tls::RequiredInsecure] {
        let (mut conn, _) = SmtpConnection::connect(&plan, 0, &settings(test_path(mode)))
            .await
            .unwrap();
        let tls = conn.tls().expect("TLS info").clone();
        assert_eq!(tls.protocol_version, "TLSv1_3");
        assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
        assert_eq!(
            tls.peer_subject_name,
            Some(vec!["CN=rcgen self signed cert".to_string()])
        );
        // STARTTLS is not offered again after the handshake.
        assert!(!conn.capabilities().starttls);
        let results = conn
            .send(&addr("s@tern.test"), &[addr("u@example.com")], b"x\r\n")
            .await
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::Delivered);
        conn.quit().await;
    }
    assert_eq!(handle.stats().tls_sessions, 2);

    // Opportunistic with reconnect_on_failed_handshake falls back to clear
    // text on the same host.
    let mut path = test_path(Tls::Opportunistic);
    path.opportunistic_tls_reconnect_on_failed_handshake = true;
    let (conn, index) = SmtpConnection::connect(&plan, 0, &settings(path))
        .await
        .unwrap();
    assert_eq!(index, 0);
    assert!(conn.tls().is_none());
    handle.shutdown();
}

#[tokio::test]
async fn required_tls_without_starttls_fails_and_opportunistic_goes_clear() {
    let handle = sink(SinkConfig {
        starttls: false,
        ..SinkConfig::default()
    })
    .await;
    let plan = plan_to(&[handle.local_addr]);
    for mode in [Tls::Required, Tls::RequiredInsecure] {
        let err = SmtpConnection::connect(&plan, 0, &settings(test_path(mode)))
            .await
            .unwrap_err();
        let last = err.last().unwrap();
        assert_eq!(last.stage, ConnectStage::StartTls);
        assert!(
            last.detail.contains("does not offer STARTTLS"),
            "{}",
            last.detail
        );
    }
    let (conn, _) = SmtpConnection::connect(&plan, 0, &settings(test_path(Tls::Opportunistic)))
        .await
        .unwrap();
    assert!(conn.tls().is_none());
    handle.shutdown();
}

#[tokio::test]
async fn eight_bit_content_bounces_without_8bitmime() {
    let handle = sink(SinkConfig {
        eight_bit_mime: false,
        smtputf8: false,
        ..SinkConfig::default()
    })
    .await;
    let plan = plan_to(&[handle.local_addr]);
    let (mut conn, _) = SmtpConnection::connect(&plan, 0, &settings(test_path(Tls::Disabled)))
        .await
        .unwrap();
    let body = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n".as_bytes();
    let err = conn
        .send(&addr("s@tern.test"), &[addr("u@example.com")], body)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::EightBitData));
    assert!(err.is_permanent());
    assert_eq!(
        err.response().to_single_line(),
        "554 5.6.3 KumoMTA internal: DATA is 8bit, destination does not support 8BITMIME. \
         Conversion via msg:check_fix_conformance during reception is required"
    );
    assert_eq!(err.response().command, None);

    let err = conn
        .send(
            &addr("s@tern.test"),
            &[addr("us\u{e9}r@example.com")],
            b"x\r\n",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::EightBitEnvelope));
    assert_eq!(
        err.response().to_single_line(),
        "554 5.6.7 KumoMTA internal: envelope is 8bit, destination does not support SMTPUTF8."
    );

    // Nothing was sent, the connection still works for ASCII mail.
    assert!(conn.is_usable());
    let results = conn
        .send(&addr("s@tern.test"), &[addr("u@example.com")], b"ascii\r\n")
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Delivered);
    conn.quit().await;

    // ignore_8bit_checks sends it anyway.
    let mut path = test_path(Tls::Disabled);
    path.ignore_8bit_checks = true;
    let (mut conn, _) = SmtpConnection::connect(&plan, 0, &settings(path))
        .await
        .unwrap();
    let results = conn
        .send(&addr("s@tern.test"), &[addr("u@example.com")], body)
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Delivered);
    assert_eq!(handle.stats().messages, 2);
    handle.shutdown();
}

async fn refused_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn first_host_refuses_second_succeeds() {
    let handle = sink(SinkConfig::default()).await;
    let refused = refused_address().await;
    let plan = plan_to(&[refused, handle.local_addr]);
    let settings = settings(test_path(Tls::Disabled));
    let (conn, index) = SmtpConnection::connect(&plan, 0, &settings).await.unwrap();
    assert_eq!(index, 1);
    assert_eq!(conn.peer().addr, handle.local_addr);

    // Starting past the sink leaves nothing.
    assert!(matches!(
        SmtpConnection::connect(&plan, 2, &settings).await,
        Err(ConnectError::NoHosts)
    ));

    // Every host refusing: the summary names them, the last one last.
    let other = refused_address().await;
    let err = SmtpConnection::connect(&plan_to(&[refused, other]), 0, &settings)
        .await
        .unwrap_err();
    assert!(err.no_answer_from_any_host());
    assert_eq!(err.last().unwrap().host.addr, other);
    assert_eq!(err.last().unwrap().stage, ConnectStage::Connect);
    let text = err.response().content;
    assert!(
        text.contains(&refused.to_string()) && text.contains(&other.to_string()),
        "{text}"
    );
    assert_eq!(err.response().code, 400);
    handle.shutdown();
}

#[tokio::test]
async fn auth_over_unverified_tls_needs_permission() {
    let handle = sink(SinkConfig::default()).await;
    let plan = plan_to(&[handle.local_addr]);
    let mut path = test_path(Tls::OpportunisticInsecure);
    path.smtp_auth_plain_username = Some("user".into());
    path.smtp_auth_plain_password = Some(tern_types::KeySource::Data {
        key_data: "pw".into(),
    });
    let err = SmtpConnection::connect(&plan, 0, &settings(path.clone()))
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Auth);
    assert!(last.reply.is_none(), "refused before sending anything");
    assert!(
        last.detail
            .contains("allow_smtp_auth_plain_without_valid_certificate"),
        "{}",
        last.detail
    );

    // Allowed: the credentials go out over TLS; this sink does not do
    // AUTH, so its refusal is what fails the host.
    path.allow_smtp_auth_plain_without_valid_certificate = true;
    let err = SmtpConnection::connect(&plan, 0, &settings(path))
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Auth);
    assert_eq!(last.reply.as_ref().unwrap().code, 502);
    handle.shutdown();
}

#[tokio::test]
async fn source_address_is_bound() {
    let handle = sink(SinkConfig::default()).await;
    let plan = plan_to(&[handle.local_addr]);
    let mut settings = settings(test_path(Tls::Disabled));
    let mut source = (*settings.source).clone();
    source.source_address = Some("127.0.0.1".parse().unwrap());
    settings.source = std::sync::Arc::new(source.clone());
    let (conn, _) = SmtpConnection::connect(&plan, 0, &settings).await.unwrap();
    assert_eq!(
        conn.source_address().unwrap().ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    conn.quit().await;

    // An address this machine does not have fails the host at bind time.
    source.source_address = Some("192.0.2.77".parse().unwrap());
    settings.source = std::sync::Arc::new(source);
    let err = SmtpConnection::connect(&plan, 0, &settings)
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Unplumbed);
    assert!(err.source_unplumbed());
    assert!(
        last.detail
            .starts_with("bind 192.0.2.77 for source test-source failed"),
        "{}",
        last.detail
    );
    handle.shutdown();
}
