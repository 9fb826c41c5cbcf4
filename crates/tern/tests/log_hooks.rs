//! Log hooks end to end: every record becomes a message for a custom Lua
//! queue that POSTs it to a webhook with `kumo.http`; a webhook that is
//! down at first gets every record once it is back. Also `filter_event`.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tern_bench::sink::SinkConfig;

/// A webhook receiver: appends each POSTed body as one line to `out`.
const WEBHOOK: &str = r#"
import http.server, sys
out = open(sys.argv[2], 'ab', buffering=0)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        out.write(body.replace(b'\n', b' ') + b'\n')
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_webhook(port: u16, out: &std::path::Path) -> Webhook {
    let child = Command::new("python3")
        .args(["-c", WEBHOOK, &port.to_string()])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Webhook(child)
}

fn posted(out: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(file) = std::fs::File::open(out) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[test]
fn webhook_hook_posts_every_record_and_catches_up_after_an_outage() {
    let sink = TestSink::start(SinkConfig::default());
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = format!(
        r#"{head}
kumo.on('pre_init', function()
  kumo.configure_log_hook {{ name = 'webhook' }}
end)
kumo.on('should_enqueue_log_record', function(msg, hook_name)
  if hook_name ~= 'webhook' then return false end
  msg:set_meta('queue', 'webhook')
  return true
end)
kumo.on('get_queue_config', function(domain)
  if domain == 'webhook' then
    return kumo.make_queue_config {{
      retry_interval = '1s', max_retry_interval = '1s',
      protocol = {{ custom_lua = {{ constructor = 'make.webhook' }} }},
    }}
  end
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
kumo.on('make.webhook', function(domain, tenant, campaign)
  local client = kumo.http.build_client {{}}
  return {{
    send = function(self, msg)
      local response = client:post('http://127.0.0.1:{hook_port}/log')
        :header('Content-Type', 'application/json')
        :body(msg:get_data())
        :send()
      if response:status_is_success() then
        return 'posted ' .. response:status_code()
      end
      kumo.reject(451, 'webhook answered ' .. response:status_code())
    end,
  }}
end)
"#,
        head = policy_head("RocksDB"),
        sink = sink.port()
    );
    let server = start_tern(policy);
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    let (code, text) = smtp
        .send_message("s@example.com", "someone@example.com", &body("hooked"))
        .unwrap();
    assert_eq!(code, 250, "{text}");
    smtp.command("QUIT").unwrap();

    // The webhook is down: its hook messages fail and wait.
    let logs = server.dir().join("logs");
    wait_for_records(&logs, Duration::from_secs(30), |r| {
        of_type(r, "TransientFailure")
            .iter()
            .any(|t| t["queue"] == "webhook")
    });
    let out = server.dir().join("posted.jsonl");
    assert!(posted(&out).is_empty());

    // Back up: both records (Reception and Delivery of the real message)
    // arrive, each once.
    let _webhook = start_webhook(hook_port, &out);
    let mut seen = Vec::new();
    for _ in 0..150 {
        seen = posted(&out);
        if seen.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut kinds: Vec<&str> = seen.iter().map(|r| r["type"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["Delivery", "Reception"], "{seen:#?}");
    for record in &seen {
        assert_eq!(record["recipient"], "someone@example.com");
        assert_eq!(record["sender"], "s@example.com");
    }
    // The hook messages themselves are logged, but never hooked again.
    let records = wait_for_records(&logs, Duration::from_secs(10), |r| {
        of_type(r, "Delivery")
            .iter()
            .filter(|d| d["queue"] == "webhook")
            .count()
            >= 2
    });
    let hook_delivery = of_type(&records, "Delivery")
        .into_iter()
        .find(|d| d["queue"] == "webhook")
        .unwrap();
    assert_eq!(hook_delivery["response"]["content"], "posted 200");
    assert_eq!(hook_delivery["reception_protocol"], "LogRecord");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        posted(&out).len(),
        2,
        "no record about a hook message is posted"
    );
}

#[test]
fn filter_event_decides_per_message() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s',
    filter_event = 'should_log' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
end)
kumo.on('should_log', function(msg)
  return tostring(msg:recipient()) ~= 'quiet@example.com'
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        sink = sink.port()
    );
    let server = start_tern(policy);
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    for rcpt in ["quiet@example.com", "loud@example.com"] {
        let (code, text) = smtp
            .send_message("s@example.com", rcpt, &body("filter"))
            .unwrap();
        assert_eq!(code, 250, "{text}");
    }
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    // Both were delivered, only one is in the log.
    for _ in 0..50 {
        if sink.stats().messages == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sink.stats().messages, 2);
    std::thread::sleep(Duration::from_secs(1));
    let seen = if seen.is_empty() {
        seen
    } else {
        records(&logs)
    };
    assert!(
        seen.iter().all(|r| r["recipient"] == "loud@example.com"),
        "{seen:#?}"
    );
    assert_eq!(count(&seen, "Reception"), 1);
    assert_eq!(count(&seen, "Delivery"), 1);
}

#[test]
fn webhook_hook_posts_batches_with_send_batch() {
    let sink = TestSink::start(SinkConfig::default());
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("posted.jsonl");
    let _webhook = start_webhook(hook_port, &out);
    let policy = format!(
        r#"{head}
kumo.on('pre_init', function()
  kumo.configure_log_hook {{ name = 'batched' }}
end)
kumo.on('should_enqueue_log_record', function(msg, hook_name)
  msg:set_meta('queue', 'webhook')
  return true
end)
kumo.on('get_queue_config', function(domain)
  if domain == 'webhook' then
    return kumo.make_queue_config {{
      protocol = {{ custom_lua = {{ constructor = 'make.webhook', batch_size = 10,
        min_batch_size = 2, max_batch_latency = '10s' }} }},
    }}
  end
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
kumo.on('make.webhook', function()
  local client = kumo.http.build_client {{}}
  return {{
    send_batch = function(self, messages)
      local parts = {{}}
      for _, msg in ipairs(messages) do table.insert(parts, msg:get_data()) end
      local response = client:post('http://127.0.0.1:{hook_port}/batch')
        :header('Content-Type', 'application/json')
        :body('[' .. table.concat(parts, ',') .. ']')
        :send()
      if not response:status_is_success() then
        kumo.reject(451, 'webhook answered ' .. response:status_code())
      end
      return 'posted ' .. #messages
    end,
  }}
end)
"#,
        head = policy_head("RocksDB"),
        sink = sink.port()
    );
    let server = start_tern(policy);
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    let (code, text) = smtp
        .send_message("s@example.com", "someone@example.com", &body("batched"))
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let mut posts = Vec::new();
    for _ in 0..150 {
        posts = posted(&out);
        if !posts.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One POST carrying both records (Reception, then Delivery) as an array.
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let batch = posts[0].as_array().expect("a JSON array");
    let kinds: Vec<&str> = batch.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 2, "{batch:#?}");
    assert!(
        kinds.contains(&"Reception") && kinds.contains(&"Delivery"),
        "{kinds:?}"
    );
}
