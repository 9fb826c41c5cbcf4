//! The client against a scripted server: disconnects at chosen points,
//! command ordering with and without PIPELINING, too-many-recipients,
//! HELO fallback, AUTH PLAIN rules, MAIL refusals and timeouts.

mod common;

use common::{Action, FakeServer, addr, handler_with, plan_to, settings, test_path};
use std::time::Duration;
use tern_delivery::{ConnectStage, Outcome, SmtpConnection, TransportError};
use tern_queue::config::Tls;
use tern_types::KeySource;

const BANNER: &str = "220 fake.test ESMTP\r\n";
const PIPELINED: &[&str] = &["PIPELINING", "8BITMIME", "AUTH PLAIN"];
const PLAIN: &[&str] = &["8BITMIME"];

async fn connect(
    server: &FakeServer,
    path: tern_queue::config::EgressPathConfig,
) -> SmtpConnection {
    SmtpConnection::connect(&plan_to(&[server.addr]), 0, &settings(path))
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn pipelined_batch_is_one_write_and_plain_mode_waits() {
    let server = FakeServer::start(BANNER, handler_with(PIPELINED, |_| None)).await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    conn.send(
        &addr("s@tern.test"),
        &[addr("a@x.test"), addr("b@x.test")],
        b"hi\r\n",
    )
    .await
    .unwrap();
    conn.quit().await;
    let t = server.transcript(0).await;
    assert_eq!(
        t.commands,
        [
            "EHLO client.tern.test",
            "MAIL FROM:<s@tern.test>",
            "RCPT TO:<a@x.test>",
            "RCPT TO:<b@x.test>",
            "DATA",
            "QUIT"
        ]
    );
    // MAIL and the RCPTs were followed by more input already buffered.
    assert_eq!(t.more_buffered[1..5], [true, true, true, false]);
    assert_eq!(t.data[0], b"hi\r\n.\r\n");

    // enable_pipelining = false: one command at a time even if offered.
    let server = FakeServer::start(BANNER, handler_with(PIPELINED, |_| None)).await;
    let mut path = test_path(Tls::Disabled);
    path.enable_pipelining = false;
    let mut conn = connect(&server, path).await;
    conn.send(
        &addr("s@tern.test"),
        &[addr("a@x.test"), addr("b@x.test")],
        b"hi\r\n",
    )
    .await
    .unwrap();
    let t = server.transcript(0).await;
    assert!(t.more_buffered.iter().all(|more| !more), "{t:?}");
}

#[tokio::test]
async fn rset_between_transactions_unless_disabled() {
    for enable_rset in [true, false] {
        let server = FakeServer::start(BANNER, handler_with(PLAIN, |_| None)).await;
        let mut path = test_path(Tls::Disabled);
        path.enable_rset = enable_rset;
        let mut conn = connect(&server, path).await;
        for _ in 0..2 {
            conn.send(&addr("s@tern.test"), &[addr("a@x.test")], b"hi\r\n")
                .await
                .unwrap();
        }
        let t = server.transcript(0).await;
        let rsets = t.commands.iter().filter(|c| *c == "RSET").count();
        assert_eq!(rsets, usize::from(enable_rset));
        assert_eq!(
            t.commands[1], "MAIL FROM:<s@tern.test>",
            "no RSET before the first"
        );
    }
}

#[tokio::test]
async fn disconnect_during_mail_is_a_transport_error() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PIPELINED, |line| {
            line.starts_with("MAIL").then_some(Action::Close)
        }),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    let err = conn
        .send(&addr("s@tern.test"), &[addr("a@x.test")], b"hi\r\n")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Io { .. }), "{err:?}");
    assert!(!err.is_permanent());
    let response = err.response();
    assert_eq!(response.code, 400);
    assert!(
        response
            .content
            .starts_with("KumoMTA internal: failed to send message to "),
        "{}",
        response.content
    );
    assert!(
        response
            .content
            .contains("Connection closed by peer reading response to cmd=MAIL FROM:<s@tern.test>"),
        "{}",
        response.content
    );
    assert_eq!(response.command, None);
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn disconnect_during_data_is_a_transport_error() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PLAIN, |line| (line == ".").then_some(Action::Close)),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    let err = conn
        .send(&addr("s@tern.test"), &[addr("a@x.test")], b"hi\r\n")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Io { .. }), "{err:?}");
    assert!(
        err.response().content.contains("cmd=."),
        "{}",
        err.response().content
    );
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn reply_timeout_is_a_transport_error() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PLAIN, |line| {
            // An empty reply: the client waits for the DATA reply in vain.
            (line == "DATA").then(|| Action::Reply(String::new()))
        }),
    )
    .await;
    let mut path = test_path(Tls::Disabled);
    path.data_timeout = Duration::from_millis(200);
    let mut conn = connect(&server, path).await;
    let err = conn
        .send(&addr("s@tern.test"), &[addr("a@x.test")], b"hi\r\n")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    assert!(
        err.response()
            .content
            .contains("Timed Out waiting 200ms for response to cmd=DATA")
    );
}

#[tokio::test]
async fn too_many_recipients_is_flagged_after_the_first() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PIPELINED, |line| {
            (line.starts_with("RCPT") && !line.contains("<a@"))
                .then(|| Action::Reply("452 4.5.3 Too many recipients\r\n".into()))
        }),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    let results = conn
        .send(
            &addr("s@tern.test"),
            &[addr("a@x.test"), addr("b@x.test"), addr("c@x.test")],
            b"hi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Delivered);
    assert!(!results[0].too_many);
    for result in &results[1..] {
        assert_eq!(result.outcome, Outcome::Transient);
        assert!(result.too_many);
    }
    // A 452 to the first recipient is an ordinary transient failure.
    let results = conn
        .send(&addr("s@tern.test"), &[addr("b@x.test")], b"hi\r\n")
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Transient);
    assert!(!results[0].too_many);
}

#[tokio::test]
async fn mail_from_refusal_applies_to_every_recipient() {
    for extensions in [PIPELINED, PLAIN] {
        let server = FakeServer::start(
            BANNER,
            handler_with(extensions, |line| {
                if line.starts_with("MAIL") {
                    Some(Action::Reply("550 5.7.1 sender blocked\r\n".into()))
                } else if line.starts_with("RCPT") || line == "DATA" {
                    Some(Action::Reply("503 5.5.1 MAIL first\r\n".into()))
                } else {
                    None
                }
            }),
        )
        .await;
        let mut conn = connect(&server, test_path(Tls::Disabled)).await;
        let results = conn
            .send(
                &addr("s@tern.test"),
                &[addr("a@x.test"), addr("b@x.test")],
                b"hi\r\n",
            )
            .await
            .unwrap();
        assert_eq!(results.len(), 2);
        for result in &results {
            assert_eq!(result.outcome, Outcome::Permanent);
            assert_eq!(result.response.to_single_line(), "550 5.7.1 sender blocked");
            assert_eq!(
                result.response.command.as_deref(),
                Some("MAIL FROM:<s@tern.test>\r\n")
            );
        }
        // Every reply of the batch was consumed: the session stays usable.
        assert!(conn.is_usable());
        let t = server.transcript(0).await;
        if extensions == PLAIN {
            assert!(!t.commands.iter().any(|c| c.starts_with("RCPT")), "{t:?}");
        }
    }
}

#[tokio::test]
async fn helo_fallback_when_ehlo_is_refused() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PIPELINED, |line| {
            line.starts_with("EHLO")
                .then(|| Action::Reply("502 5.5.1 EHLO not supported\r\n".into()))
        }),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    assert!(!conn.capabilities().pipelining);
    conn.send(&addr("s@tern.test"), &[addr("a@x.test")], b"hi\r\n")
        .await
        .unwrap();
    let t = server.transcript(0).await;
    assert_eq!(
        t.commands[..2],
        ["EHLO client.tern.test", "HELO client.tern.test"]
    );
}

#[tokio::test]
async fn ehlo_name_prefers_path_then_source() {
    let server = FakeServer::start(BANNER, handler_with(PLAIN, |_| None)).await;
    let mut path = test_path(Tls::Disabled);
    path.ehlo_domain = Some("path.example".into());
    connect(&server, path).await.quit().await;
    let mut settings = settings(test_path(Tls::Disabled));
    let mut source = (*settings.source).clone();
    source.ehlo_domain = Some("source.example".into());
    settings.source = std::sync::Arc::new(source);
    SmtpConnection::connect(&plan_to(&[server.addr]), 0, &settings)
        .await
        .unwrap()
        .0
        .quit()
        .await;
    assert_eq!(server.transcript(0).await.commands[0], "EHLO path.example");
    assert_eq!(
        server.transcript(1).await.commands[0],
        "EHLO source.example"
    );
}

#[tokio::test]
async fn bad_banner_fails_the_host() {
    let server = FakeServer::start("554 5.7.1 go away\r\n", handler_with(PLAIN, |_| None)).await;
    let err = SmtpConnection::connect(
        &plan_to(&[server.addr]),
        0,
        &settings(test_path(Tls::Disabled)),
    )
    .await
    .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Banner);
    assert_eq!(last.reply.as_ref().unwrap().code, 554);
    assert!(!err.no_answer_from_any_host());
}

fn auth_path(allow_without_tls: bool) -> tern_queue::config::EgressPathConfig {
    let mut path = test_path(Tls::Disabled);
    path.smtp_auth_plain_username = Some("user".into());
    path.smtp_auth_plain_password = Some(KeySource::Data {
        key_data: "secret".into(),
    });
    path.allow_smtp_auth_plain_without_tls = allow_without_tls;
    path
}

#[tokio::test]
async fn auth_plain_is_refused_without_tls_unless_allowed() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PIPELINED, |line| {
            line.starts_with("AUTH PLAIN ")
                .then(|| Action::Reply("235 2.7.0 Authentication successful\r\n".into()))
        }),
    )
    .await;
    let err = SmtpConnection::connect(&plan_to(&[server.addr]), 0, &settings(auth_path(false)))
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Auth);
    assert!(
        last.detail.contains("allow_smtp_auth_plain_without_tls"),
        "{}",
        last.detail
    );
    // The credentials never went over the wire.
    assert!(
        !server
            .transcript(0)
            .await
            .commands
            .iter()
            .any(|c| c.starts_with("AUTH"))
    );

    let conn = connect(&server, auth_path(true)).await;
    conn.quit().await;
    let t = server.transcript(1).await;
    // base64("\0user\0secret")
    assert_eq!(t.commands[1], "AUTH PLAIN AHVzZXIAc2VjcmV0");
}

#[tokio::test]
async fn auth_plain_refusal_fails_the_host() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PIPELINED, |line| {
            line.starts_with("AUTH")
                .then(|| Action::Reply("535 5.7.8 bad credentials\r\n".into()))
        }),
    )
    .await;
    let err = SmtpConnection::connect(&plan_to(&[server.addr]), 0, &settings(auth_path(true)))
        .await
        .unwrap_err();
    let last = err.last().unwrap();
    assert_eq!(last.stage, ConnectStage::Auth);
    assert_eq!(last.reply.as_ref().unwrap().code, 535);
}

#[tokio::test]
async fn a_421_to_data_dot_is_transient_for_everyone() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PLAIN, |line| {
            (line == ".").then(|| Action::ReplyAndClose("421 4.3.0 shutting down\r\n".into()))
        }),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    let err = conn
        .send(
            &addr("s@tern.test"),
            &[addr("a@x.test"), addr("b@x.test")],
            b"hi\r\n",
        )
        .await
        .unwrap_err();
    assert_eq!(err.response().command.as_deref(), Some(".\r\n"));
    assert!(
        err.recipient_results()
            .iter()
            .all(|r| r.outcome == Outcome::Transient && r.response.code == 421)
    );
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn final_reply_decides_for_accepted_recipients() {
    let server = FakeServer::start(
        BANNER,
        handler_with(PLAIN, |line| {
            if line == "." {
                Some(Action::Reply(
                    "554-5.6.0 message rejected\r\n554 5.6.0 second line\r\n".into(),
                ))
            } else if line.contains("<bad@") {
                Some(Action::Reply("550 5.1.1 unknown\r\n".into()))
            } else {
                None
            }
        }),
    )
    .await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    let results = conn
        .send(
            &addr("s@tern.test"),
            &[addr("a@x.test"), addr("bad@x.test")],
            b"hi\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        results[0].response.to_single_line(),
        "554 5.6.0 message rejected second line"
    );
    assert_eq!(results[0].response.command.as_deref(), Some(".\r\n"));
    assert_eq!(results[1].response.to_single_line(), "550 5.1.1 unknown");
    assert!(results.iter().all(|r| r.outcome == Outcome::Permanent));
}

#[tokio::test]
async fn eight_bit_body_gets_body_8bitmime() {
    let server = FakeServer::start(BANNER, handler_with(PLAIN, |_| None)).await;
    let mut conn = connect(&server, test_path(Tls::Disabled)).await;
    conn.send(
        &addr("s@tern.test"),
        &[addr("a@x.test")],
        "\u{e9}\r\n".as_bytes(),
    )
    .await
    .unwrap();
    let t = server.transcript(0).await;
    assert_eq!(t.commands[1], "MAIL FROM:<s@tern.test> BODY=8BITMIME");
}
