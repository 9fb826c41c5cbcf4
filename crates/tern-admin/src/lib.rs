//! `tern admin`: a command-line client for the admin HTTP API that
//! `tern serve` offers on its HTTP listeners (docs/http-api.md), so an
//! operator can bounce, suspend, rebind and inspect without writing JSON
//! by hand. It plays the part of KumoMTA's `kcli` (`tern kcli` is an
//! alias), with subcommands named after kcli's.
//!
//! Each subcommand is one request; the answer is printed as indented JSON
//! (or as the server's text for `metrics`). A refusal by the server is
//! printed to stderr with its status and the exit code is 1; a server that
//! cannot be reached is named in the error.
//!
//! [`AdminClient`] is the reusable part: one HTTP request with a JSON body
//! and a JSON (or text) answer; [`run`] maps the command line onto it.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// `tern admin [--endpoint URL] <command>`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Base URL of one of the server's HTTP listeners. The admin API only
    /// answers trusted hosts (loopback by default).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8000",
        env = "KUMO_KCLI_ENDPOINT",
        global = true
    )]
    pub endpoint: String,
    /// With an https endpoint: accept any certificate (for the server's
    /// self-signed one). The connection is still encrypted.
    #[arg(long, global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Which scheduled queues a bounce, suspension or rebind applies to.
#[derive(Args, Debug, Default)]
pub struct Criteria {
    /// The recipient domain of the queues.
    #[arg(long)]
    pub domain: Option<String>,
    /// The routing domain (`!routing_domain` in queue names).
    #[arg(long)]
    pub routing_domain: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub campaign: Option<String>,
    /// An exact scheduled queue name (repeat for several); replaces the
    /// other criteria on the server.
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Apply to every queue. Required when no other criterion is given,
    /// so that "everything" is never an accident.
    #[arg(long)]
    pub everything: bool,
}

impl Criteria {
    fn fill(&self, body: &mut Map<String, Value>) -> anyhow::Result<()> {
        let given = [
            ("domain", &self.domain),
            ("routing_domain", &self.routing_domain),
            ("tenant", &self.tenant),
            ("campaign", &self.campaign),
        ];
        let mut any = false;
        for (key, value) in given {
            if let Some(value) = value {
                body.insert(key.into(), json!(value));
                any = true;
            }
        }
        if !self.queues.is_empty() {
            body.insert("queue_names".into(), json!(self.queues));
            any = true;
        }
        if !any && !self.everything {
            bail!(
                "no criteria given: name --domain, --tenant, --campaign or --routing-domain, or pass --everything to mean every queue"
            );
        }
        if any && self.everything {
            bail!("--everything cannot be combined with other criteria");
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Bounce the messages of the matching queues, and new ones while the rule lasts.
    Bounce {
        #[command(flatten)]
        criteria: Criteria,
        /// Logged in each AdminBounce record.
        #[arg(long)]
        reason: String,
        /// How long the rule lasts (default on the server: 5m).
        #[arg(long)]
        duration: Option<String>,
        /// Do not log AdminBounce records.
        #[arg(long)]
        suppress_logging: bool,
    },
    /// List the active bounce rules, with the messages bounced so far.
    BounceList,
    /// End a bounce rule.
    BounceCancel {
        #[arg(long)]
        id: String,
    },
    /// Promote nothing from the matching queues while the rule lasts.
    Suspend {
        #[command(flatten)]
        criteria: Criteria,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        duration: Option<String>,
    },
    /// List the active suspensions.
    SuspendList,
    /// End a suspension.
    SuspendCancel {
        #[arg(long)]
        id: String,
    },
    /// Suspend one ready queue (an egress source towards a site).
    SuspendReadyQ {
        /// The ready queue, as in the `site` field of delivery records.
        #[arg(long)]
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        duration: Option<String>,
    },
    /// List the active ready-queue suspensions.
    SuspendReadyQList,
    /// End a ready-queue suspension.
    SuspendReadyQCancel {
        #[arg(long)]
        id: String,
    },
    /// Move the messages of the matching queues by changing their metadata.
    Rebind {
        #[command(flatten)]
        criteria: Criteria,
        #[arg(long)]
        reason: String,
        /// A meta key to set, as KEY=VALUE (repeat for several).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Call the policy's rebind_message event instead of setting meta.
        #[arg(long)]
        trigger_rebind_event: bool,
        /// Make every matched message due now, not only the moved ones.
        #[arg(long)]
        always_flush: bool,
        #[arg(long)]
        suppress_logging: bool,
    },
    /// Show a message as the spool holds it.
    InspectMessage {
        /// The spool id (as in `ids=` replies and log records).
        id: String,
        /// Include the message content.
        #[arg(long)]
        want_body: bool,
    },
    /// Show a scheduled queue and a sample of its messages.
    InspectSchedQ {
        /// The scheduled queue (`campaign:tenant@domain`).
        queue_name: String,
        /// Include each message's content.
        #[arg(long)]
        want_body: bool,
        /// At most this many messages.
        #[arg(long, default_value_t = 5)]
        limit: usize,
        /// Every message of the queue (can be slow and large on a big
        /// queue: each one is read back from the spool).
        #[arg(long, conflicts_with = "limit")]
        no_limit: bool,
    },
    /// Bump the configuration epoch (reload the policy in new Lua states).
    BumpConfigEpoch,
    /// Show facts about the server's host.
    MachineInfo,
    /// Change the server's diagnostic log filter (KUMOD_LOG syntax) without a restart.
    SetLogFilter {
        /// For example `tern_server=debug,info`.
        filter: String,
    },
    /// Print the server's metrics (Prometheus text, or JSON with --json).
    Metrics {
        #[arg(long)]
        json: bool,
    },
}

/// One admin request and its answer.
pub struct AdminClient {
    endpoint: String,
    http: reqwest::Client,
}

/// What the server answered.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl AdminClient {
    pub fn new(endpoint: &str, insecure: bool) -> anyhow::Result<Self> {
        let tls = tern_luahttp::client_config(&tern_luahttp::TrustRoots::default(), insecure)
            .map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the Tern server at {} ({method} {path})",
                self.endpoint
            )
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.context("reading the answer")?;
        Ok(Answer { status, body })
    }
}

/// Run one command; the process exit code.
pub async fn run(args: AdminArgs) -> anyhow::Result<i32> {
    let client = AdminClient::new(&args.endpoint, args.insecure)?;
    let (method, path, body) = request_for(args.command)?;
    let answer = client.request(method, &path, body.as_ref()).await?;
    if !(200..300).contains(&answer.status) {
        let detail = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| answer.body.trim().to_string());
        eprintln!(
            "tern admin: the server answered {}: {detail}",
            answer.status
        );
        return Ok(1);
    }
    match serde_json::from_str::<Value>(&answer.body) {
        Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
        Err(_) if answer.body.is_empty() => {}
        Err(_) => print!("{}", answer.body),
    }
    Ok(0)
}

/// The request a command makes: method, path with query, JSON body.
pub fn request_for(command: AdminCommand) -> anyhow::Result<(Method, String, Option<Value>)> {
    // The body every rule shares: criteria (when the rule takes them),
    // reason and duration.
    let rule = |criteria: Option<&Criteria>, reason: String, duration: Option<String>| {
        let mut body = Map::new();
        if let Some(criteria) = criteria {
            criteria.fill(&mut body)?;
        }
        body.insert("reason".into(), json!(reason));
        if let Some(duration) = duration {
            body.insert("duration".into(), json!(duration));
        }
        Ok::<_, anyhow::Error>(body)
    };
    let post = |path: &str, body: Map<String, Value>| {
        (Method::POST, path.to_string(), Some(Value::Object(body)))
    };
    let cancel =
        |path: &str, id: String| (Method::DELETE, path.to_string(), Some(json!({ "id": id })));
    Ok(match command {
        AdminCommand::Bounce {
            criteria,
            reason,
            duration,
            suppress_logging,
        } => {
            let mut body = rule(Some(&criteria), reason, duration)?;
            if suppress_logging {
                body.insert("suppress_logging".into(), json!(true));
            }
            post("/api/admin/bounce/v1", body)
        }
        AdminCommand::BounceList => (Method::GET, "/api/admin/bounce/v1".into(), None),
        AdminCommand::BounceCancel { id } => cancel("/api/admin/bounce/v1", id),
        AdminCommand::Suspend {
            criteria,
            reason,
            duration,
        } => post(
            "/api/admin/suspend/v1",
            rule(Some(&criteria), reason, duration)?,
        ),
        AdminCommand::SuspendList => (Method::GET, "/api/admin/suspend/v1".into(), None),
        AdminCommand::SuspendCancel { id } => cancel("/api/admin/suspend/v1", id),
        AdminCommand::SuspendReadyQ {
            name,
            reason,
            duration,
        } => {
            let mut body = rule(None, reason, duration)?;
            body.insert("name".into(), json!(name));
            post("/api/admin/suspend-ready-q/v1", body)
        }
        AdminCommand::SuspendReadyQList => {
            (Method::GET, "/api/admin/suspend-ready-q/v1".into(), None)
        }
        AdminCommand::SuspendReadyQCancel { id } => cancel("/api/admin/suspend-ready-q/v1", id),
        AdminCommand::Rebind {
            criteria,
            reason,
            set,
            trigger_rebind_event,
            always_flush,
            suppress_logging,
        } => {
            let mut body = rule(Some(&criteria), reason, None)?;
            let mut data = Map::new();
            for pair in set {
                let Some((key, value)) = pair.split_once('=') else {
                    bail!("--set {pair:?}: expected KEY=VALUE");
                };
                data.insert(key.to_string(), json!(value));
            }
            body.insert("data".into(), Value::Object(data));
            for (key, on) in [
                ("trigger_rebind_event", trigger_rebind_event),
                ("always_flush", always_flush),
                ("suppress_logging", suppress_logging),
            ] {
                if on {
                    body.insert(key.into(), json!(true));
                }
            }
            post("/api/admin/rebind/v1", body)
        }
        AdminCommand::InspectMessage { id, want_body } => (
            Method::GET,
            format!(
                "/api/admin/inspect-message/v1?id={}&want_body={want_body}",
                query_escape(&id)
            ),
            None,
        ),
        AdminCommand::InspectSchedQ {
            queue_name,
            want_body,
            limit,
            no_limit,
        } => {
            let limit = if no_limit {
                String::new()
            } else {
                format!("&limit={limit}")
            };
            (
                Method::GET,
                format!(
                    "/api/admin/inspect-sched-q/v1?queue_name={}&want_body={want_body}{limit}",
                    query_escape(&queue_name)
                ),
                None,
            )
        }
        AdminCommand::BumpConfigEpoch => {
            (Method::POST, "/api/admin/bump-config-epoch".into(), None)
        }
        AdminCommand::MachineInfo => (Method::GET, "/api/machine-info".into(), None),
        AdminCommand::SetLogFilter { filter } => (
            Method::POST,
            "/api/admin/set_diagnostic_log_filter/v1".into(),
            Some(json!({ "filter": filter })),
        ),
        AdminCommand::Metrics { json } => {
            let path = if json { "/metrics.json" } else { "/metrics" };
            (Method::GET, path.into(), None)
        }
    })
}

/// Percent-encode a query value (queue names hold `@`, `:` and `!`).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_are_required_unless_everything_is_meant() {
        let mut body = Map::new();
        let err = Criteria::default().fill(&mut body).unwrap_err().to_string();
        assert!(err.contains("--everything"), "{err}");
        let everything = Criteria {
            everything: true,
            ..Default::default()
        };
        everything.fill(&mut body).unwrap();
        assert!(body.is_empty(), "no criteria: every queue");
        let both = Criteria {
            everything: true,
            domain: Some("example.com".into()),
            ..Default::default()
        };
        assert!(both.fill(&mut Map::new()).is_err());
    }

    #[test]
    fn queue_names_are_escaped_in_queries() {
        assert_eq!(query_escape("c:t@example.com!r"), "c%3At%40example.com%21r");
    }

    #[test]
    fn rebind_pairs_become_the_data_object() {
        let (method, path, body) = request_for(AdminCommand::Rebind {
            criteria: Criteria {
                tenant: Some("acme".into()),
                ..Default::default()
            },
            reason: "move".into(),
            set: vec!["tenant=acme-warm".into(), "campaign=a=b".into()],
            trigger_rebind_event: false,
            always_flush: true,
            suppress_logging: false,
        })
        .unwrap();
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/api/admin/rebind/v1");
        let body = body.unwrap();
        assert_eq!(body["tenant"], "acme");
        assert_eq!(body["data"]["tenant"], "acme-warm");
        assert_eq!(body["data"]["campaign"], "a=b");
        assert_eq!(body["always_flush"], true);
        assert!(body.get("suppress_logging").is_none());
    }
}
