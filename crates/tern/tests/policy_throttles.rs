//! `kumo.make_throttle` in a real server: the `throttle_insert_ready_queue`
//! event pacing promotion (messages sent back until the throttle allows
//! them, with `Delayed` records and no attempt counted), and a reception
//! throttle that refuses `MAIL FROM` once a sender's budget is spent.

mod common;

use common::*;
use std::time::Duration;
use tern_bench::sink::SinkConfig;

#[test]
fn throttle_insert_ready_queue_paces_promotion_without_counting_attempts() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = policy_head("LocalDisk");
    policy.push_str(&routed(sink.port(), "1m"));
    // One message every two seconds per tenant.
    policy.push_str(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', 'acme')
end)
kumo.on('throttle_insert_ready_queue', function(msg)
  local throttle = kumo.make_throttle('tenant-' .. msg:get_meta('tenant'), '30/minute,max_burst=1')
  if throttle:delay_message_if_throttled(msg) then
    return
  end
end)
"#,
    );
    let server = start_tern(policy);
    let logs = server.dir().join("logs");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    for i in 0..3 {
        let (code, text) = smtp
            .send_message(
                "s@sender.test",
                &format!("r{i}@example.com"),
                &body("paced"),
            )
            .unwrap();
        assert_eq!(code, 250, "{text}");
    }
    let records = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 3
    });
    let deliveries = of_type(&records, "Delivery");
    let mut times: Vec<f64> = deliveries.iter().map(|r| event_seconds(r)).collect();
    times.sort_by(f64::total_cmp);
    // Paced by the throttle: the three go out about two seconds apart
    // (the queue's timer ticks once a second, hence the margin).
    assert!(times[2] - times[0] >= 3.0, "{times:?}");
    for record in &deliveries {
        assert_eq!(
            record["num_attempts"], 0,
            "a throttle delay is not an attempt"
        );
    }
    let delayed = of_type(&records, "Delayed");
    assert!(delayed.len() >= 2, "{delayed:?}");
    for record in &delayed {
        let content = record["response"]["content"].as_str().unwrap();
        assert!(
            content.contains("ThrottledByThrottleInsertReadyQueue"),
            "{content}"
        );
    }
    assert_eq!(count(&records, "TransientFailure"), 0);
    assert_eq!(sink.stats().messages, 3);
}

/// A throttle faster than the queue's one-second timer: ten messages at
/// five a second (burst one) go out over about two seconds, neither all at
/// once (the throttle ignored) nor one a second (rounded up to the tick).
#[test]
fn a_sub_second_throttle_paces_promotion_at_its_own_rate() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = policy_head("LocalDisk");
    policy.push_str(&routed(sink.port(), "1m"));
    policy.push_str(
        r#"
kumo.on('throttle_insert_ready_queue', function(msg)
  kumo.make_throttle('fast', '5/s,max_burst=1'):delay_message_if_throttled(msg)
end)
"#,
    );
    let server = start_tern(policy);
    let logs = server.dir().join("logs");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    for i in 0..10 {
        let (code, text) = smtp
            .send_message("s@sender.test", &format!("r{i}@example.com"), &body("fast"))
            .unwrap();
        assert_eq!(code, 250, "{text}");
    }
    let records = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 10
    });
    let mut times: Vec<f64> = of_type(&records, "Delivery")
        .iter()
        .map(|r| event_seconds(r))
        .collect();
    times.sort_by(f64::total_cmp);
    let span = times[9] - times[0];
    assert!(span >= 1.5, "paced: {span:.2}s {times:?}");
    assert!(
        span < 6.0,
        "at the throttle's rate, not one a second: {span:.2}s"
    );
    for record in of_type(&records, "Delivery") {
        assert_eq!(record["num_attempts"], 0);
    }
}

#[test]
fn a_reception_throttle_refuses_a_sender_over_budget() {
    let mut policy = policy_head("LocalDisk");
    policy.push_str(
        r#"
kumo.on('smtp_server_mail_from', function(sender)
  local throttle = kumo.make_throttle('reception-' .. sender.email, '2/minute')
  local result = throttle:throttle()
  if result.throttled then
    kumo.reject(451, string.format('4.4.5 over budget, retry in %ds', math.ceil(result.retry_after)))
  end
end)
"#,
    );
    let server = start_tern(policy);
    let reply = |sender: &str| {
        let mut smtp = server.smtp().unwrap();
        smtp.read_reply().unwrap();
        smtp.command("EHLO client.test").unwrap();
        let (code, text) = smtp.command(&format!("MAIL FROM:<{sender}>")).unwrap();
        let _ = smtp.command("QUIT");
        (code, text)
    };
    // Separate connections, so separate pooled Lua states may serve them:
    // the count lives in the server, not in a state.
    assert_eq!(reply("busy@example.com").0, 250);
    assert_eq!(reply("busy@example.com").0, 250);
    let (code, text) = reply("busy@example.com");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.4.5 over budget, retry in 30s"), "{text}");
    assert_eq!(
        reply("quiet@example.com").0,
        250,
        "another sender has its own budget"
    );
}
