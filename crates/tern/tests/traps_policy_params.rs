//! Part V.1 #19 (and §0.1): every parameter table rejects unknown keys.
//! One `tern serve --validate` run calls each table-taking `kumo.*`
//! function from `init`, once with a valid table and once with the same
//! table plus an unknown key (at top level or in a nested table), and
//! prints what happened.

use std::process::Command;

/// (case name, Lua call with `@@` where the unknown key goes).
const CASES: &[(&str, &str)] = &[
    (
        "define_spool",
        "kumo.define_spool { name = 'data', path = '{dir}/spool/data' @@ }",
    ),
    (
        "start_esmtp_listener",
        "kumo.start_esmtp_listener { listen = '127.0.0.1:0' @@ }",
    ),
    (
        "start_esmtp_listener.trace_headers",
        "kumo.start_esmtp_listener { listen = '127.0.0.1:0', trace_headers = { received_header = false @@ } }",
    ),
    (
        "start_http_listener",
        "kumo.start_http_listener { listen = '127.0.0.1:0' @@ }",
    ),
    (
        "configure_local_logs",
        "kumo.configure_local_logs { log_dir = '{dir}/logs' @@ }",
    ),
    (
        "configure_local_logs.per_record",
        "kumo.configure_local_logs { log_dir = '{dir}/logs', per_record = { Reception = { suffix = '_r' @@ } } }",
    ),
    (
        "configure_log_hook",
        "kumo.configure_log_hook { name = 'hook' @@ }",
    ),
    (
        "make_queue_config",
        "kumo.make_queue_config { retry_interval = '1m' @@ }",
    ),
    (
        "make_egress_path",
        "kumo.make_egress_path { connection_limit = 5 @@ }",
    ),
    (
        "make_egress_source",
        "kumo.make_egress_source { name = 'ip-1' @@ }",
    ),
    (
        "make_egress_pool",
        "kumo.make_egress_pool { name = 'pool', entries = { { name = 'ip-1' } } @@ }",
    ),
    (
        "make_egress_pool.entries",
        "kumo.make_egress_pool { name = 'pool', entries = { { name = 'ip-1' @@ } } }",
    ),
    (
        "make_listener_domain",
        "kumo.make_listener_domain { relay_to = true @@ }",
    ),
    (
        "memoize",
        "kumo.memoize(function() end, { name = 'cache', ttl = '1 minute', capacity = 10 @@ })",
    ),
    (
        "dkim.rsa_sha256_signer",
        "kumo.dkim.rsa_sha256_signer { domain = 'example.com', selector = 's1', headers = { 'From' }, key = '{dir}/rsa.pem' @@ }",
    ),
    (
        "dkim.ed25519_signer",
        "kumo.dkim.ed25519_signer { domain = 'example.com', selector = 's2', headers = { 'From' }, key = '{dir}/ed.pem' @@ }",
    ),
    (
        "dns.configure_resolver",
        "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' } @@ }",
    ),
    (
        "dns.configure_resolver.options",
        "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' }, options = { attempts = 2 @@ } }",
    ),
    (
        "dns.define_resolver",
        "kumo.dns.define_resolver('other', { name_servers = { '127.0.0.1:53' } @@ })",
    ),
    ("http.build_client", "kumo.http.build_client { @@ }"),
];

const BOGUS: &str = "tern_bogus_key";

#[test]
fn every_parameter_table_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (args, file) in [
        (vec!["genrsa", "-out"], "rsa.pem"),
        (vec!["genpkey", "-algorithm", "ed25519", "-out"], "ed.pem"),
    ] {
        let out = Command::new("openssl")
            .args(args)
            .arg(dir.path().join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let root = dir.path().display().to_string();
    let mut calls = String::new();
    for (name, call) in CASES {
        for (variant, extra) in [("good", ""), ("bad", ", tern_bogus_key = 1")] {
            // `{ @@ }` has no key before the unknown one
            let extra = if call.contains("{ @@") {
                extra.trim_start_matches(", ")
            } else {
                extra
            };
            let code = call.replace("@@", extra).replace("{dir}", &root);
            calls.push_str(&format!(
                "  report('{name}', '{variant}', pcall(function() return {code} end))\n"
            ));
        }
    }
    let policy = format!(
        r#"local kumo = require 'kumo'
local function report(name, variant, ok, err)
  local text = tostring(err or ''):gsub('\n', ' ')
  print('CASE|' .. name .. '|' .. variant .. '|' .. tostring(ok) .. '|' .. text)
end
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{root}/spool/data' }}
  kumo.define_spool {{ name = 'meta', path = '{root}/spool/meta' }}
{calls}end)
"#
    );
    let path = dir.path().join("init.lua");
    std::fs::write(&path, policy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--validate", "--policy"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut problems = Vec::new();
    for (name, _) in CASES {
        let find = |variant: &str| -> Option<(bool, String)> {
            stdout.lines().find_map(|line| {
                let mut parts = line.splitn(5, '|');
                (parts.next() == Some("CASE")
                    && parts.next() == Some(name)
                    && parts.next() == Some(variant))
                .then(|| {
                    (
                        parts.next() == Some("true"),
                        parts.next().unwrap_or("").to_string(),
                    )
                })
            })
        };
        match (find("good"), find("bad")) {
            (Some((true, _)), Some((false, err))) => {
                // the function named: the case name without a nested part
                let function = match name.split_once('.') {
                    Some((ns @ ("dkim" | "dns" | "http"), rest)) => {
                        format!("kumo.{ns}.{}", rest.split('.').next().unwrap())
                    }
                    _ => format!("kumo.{}", name.split('.').next().unwrap()),
                };
                if !err.contains(&function) {
                    problems.push(format!("{name}: the error does not name {function}: {err}"));
                }
                if !err.contains(BOGUS) {
                    problems.push(format!("{name}: the error does not name the key: {err}"));
                }
            }
            (Some((false, err)), _) => {
                problems.push(format!("{name}: the valid table failed: {err}"))
            }
            (_, Some((true, _))) => problems.push(format!("{name}: the unknown key was accepted")),
            other => problems.push(format!("{name}: no report ({other:?})")),
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- stdout\n{stdout}\n--- stderr\n{}",
        problems.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}
