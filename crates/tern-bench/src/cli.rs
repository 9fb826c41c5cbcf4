//! Command-line front ends: the clap argument structs [`SendArgs`] and
//! [`SinkArgs`] and the functions that run them. The main `tern` binary
//! mounts them as `tern bench send` / `tern bench sink`; this crate's own
//! `tern-bench` binary exposes the same two subcommands.

use crate::send::{self, HttpOptions, SendConfig, SmtpOptions, Summary, Transport};
use crate::sink::{Sink, SinkConfig, SinkStats, TlsIdentity};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tern_types::ThrottleSpec;

/// Inject mail into an MTA and report throughput, reply codes and latency.
///
/// Runs until COUNT messages were sent or DURATION has passed, whichever
/// comes first (with neither, 1000 messages). Recipients are
/// `LOCAL@DOMAIN` with `{n}` in LOCAL replaced by the message number, or
/// spread over `d0.DOMAIN` ... `d<N-1>.DOMAIN` with `--domains N`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// host:port of the SMTP listener (or of the HTTP listener with --http).
    pub target: String,

    /// Inject over HTTP (`POST /api/inject/v1`) instead of SMTP; each
    /// request carries --batch-size recipients, one message each.
    #[arg(long)]
    pub http: bool,

    /// Number of concurrent connections.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub connections: usize,

    /// Number of messages (recipients in HTTP mode) to send.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,

    /// Send for this long, e.g. "30s" or "2m".
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Approximate message size including headers: bytes, or with a k/m
    /// suffix ("4k", "1m").
    #[arg(short = 's', long, default_value = "4k", value_parser = parse_size)]
    pub size: usize,

    /// Envelope sender (MAIL FROM and From:).
    #[arg(long, default_value = "bench@sender.tern.test")]
    pub from: String,

    /// Recipient local part; "{n}" becomes the message number. Use e.g.
    /// "tempfail" to provoke the test sink's failure replies.
    #[arg(long, default_value = "user{n}")]
    pub to_local: String,

    /// Recipient domain.
    #[arg(long, default_value = "example.test")]
    pub to_domain: String,

    /// Spread recipients round-robin over this many domains
    /// (d0.DOMAIN, d1.DOMAIN, ...); 1 sends everything to DOMAIN.
    #[arg(long, default_value_t = 1)]
    pub domains: u64,

    /// Cap the overall rate, e.g. "500/s", "10,000/m" (all connections
    /// together).
    #[arg(long)]
    pub rate: Option<ThrottleSpec>,

    /// SMTP: upgrade every connection with STARTTLS (the certificate is not
    /// verified; the run fails if STARTTLS is not offered).
    #[arg(long)]
    pub starttls: bool,

    /// SMTP: do not pipeline even if the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,

    /// SMTP: the name sent with EHLO.
    #[arg(long, default_value = "bench.tern.test")]
    pub ehlo: String,

    /// SMTP: QUIT and reconnect after this many messages per connection.
    #[arg(long)]
    pub messages_per_connection: Option<u64>,

    /// HTTP: recipients per inject request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: u64,

    /// HTTP: Basic authentication as USER:PASSWORD.
    #[arg(long)]
    pub http_auth: Option<String>,

    /// HTTP: request path.
    #[arg(long, default_value = "/api/inject/v1")]
    pub http_path: String,

    /// Timeout for each connect, read and write.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run an SMTP test sink that accepts and discards (or files) mail.
///
/// Replies by recipient local part: "tempfail" → 451, "permfail" → 550,
/// "450-..." → 450, "421-..." → 421 and close, "550-..." → 550; anything
/// else is accepted unless a random failure percentage applies. Prints
/// "sink listening on IP:PORT" when ready, and a summary on SIGINT/SIGTERM
/// or after --exit-after messages.
#[derive(Args, Debug, Clone)]
pub struct SinkArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub listen: SocketAddr,

    /// Host name for the greeting, EHLO reply and self-signed certificate.
    #[arg(long, default_value = "sink.tern.test")]
    pub hostname: String,

    /// Write accepted messages to this Maildir instead of discarding them.
    #[arg(long)]
    pub maildir: Option<PathBuf>,

    /// Answer this percentage of otherwise accepted recipients with 451.
    #[arg(long, default_value_t = 0.0)]
    pub tempfail_percent: f64,

    /// Answer this percentage of otherwise accepted recipients with 550.
    #[arg(long, default_value_t = 0.0)]
    pub permfail_percent: f64,

    /// Wait this many milliseconds before every reply.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,

    /// Wait this many milliseconds before answering the end of data.
    #[arg(long, default_value_t = 0)]
    pub data_delay_ms: u64,

    /// Do not offer STARTTLS.
    #[arg(long)]
    pub no_starttls: bool,

    /// Do not advertise 8BITMIME.
    #[arg(long = "no-8bitmime")]
    pub no_8bitmime: bool,

    /// Do not advertise SMTPUTF8.
    #[arg(long)]
    pub no_smtputf8: bool,

    /// Do not advertise PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,

    /// PEM certificate chain for STARTTLS (default: a self-signed
    /// certificate made at start). Needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,

    /// Print the summary and exit after this many accepted messages.
    #[arg(long)]
    pub exit_after: Option<u64>,

    /// Write the final counters as JSON to this file.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
}

/// "4096", "4k", "1m" → bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, multiplier) = if let Some(d) = lower.strip_suffix('k') {
        (d, 1024)
    } else if let Some(d) = lower.strip_suffix('m') {
        (d, 1024 * 1024)
    } else {
        (lower.as_str(), 1)
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("'{text}' is not a size (examples: 512, 4k, 1m)"))
}

impl SendArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> Result<SendConfig> {
        let transport = if self.http {
            let basic_auth = match &self.http_auth {
                Some(text) => {
                    let (user, pass) = text
                        .split_once(':')
                        .context("--http-auth must be USER:PASSWORD")?;
                    Some((user.to_string(), pass.to_string()))
                }
                None => None,
            };
            Transport::Http(HttpOptions {
                batch_size: self.batch_size,
                basic_auth,
                path: self.http_path.clone(),
            })
        } else {
            if self.http_auth.is_some() {
                bail!("--http-auth needs --http");
            }
            Transport::Smtp(SmtpOptions {
                starttls: self.starttls,
                pipelining: !self.no_pipelining,
                ehlo_name: self.ehlo.clone(),
                messages_per_connection: self.messages_per_connection,
            })
        };
        if self.http && self.starttls {
            bail!("--starttls applies to SMTP only");
        }
        let count = match (self.count, self.duration) {
            (None, None) => Some(1000),
            (count, _) => count,
        };
        Ok(SendConfig {
            target: self.target.clone(),
            transport,
            connections: self.connections,
            count,
            duration: self.duration,
            message_size: self.size,
            sender: self.from.clone(),
            recipient_local: self.to_local.clone(),
            recipient_domain: self.to_domain.clone(),
            domain_count: self.domains.max(1),
            rate: self.rate.clone(),
            timeout: self.timeout,
        })
    }
}

impl SinkArgs {
    pub fn to_config(&self) -> SinkConfig {
        SinkConfig {
            listen: self.listen,
            hostname: self.hostname.clone(),
            maildir: self.maildir.clone(),
            tempfail_percent: self.tempfail_percent,
            permfail_percent: self.permfail_percent,
            reply_delay: Duration::from_millis(self.delay_ms),
            data_delay: Duration::from_millis(self.data_delay_ms),
            starttls: !self.no_starttls,
            eight_bit_mime: !self.no_8bitmime,
            smtputf8: !self.no_smtputf8,
            pipelining: !self.no_pipelining,
            tls: match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => TlsIdentity::Pem {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => TlsIdentity::SelfSigned,
            },
            exit_after: self.exit_after,
        }
    }
}

/// `tern bench send`: run the load, draw a progress bar on a terminal,
/// print the summary (text or JSON). Fails if not a single message could
/// be attempted.
pub async fn run_send(args: SendArgs) -> Result<Summary> {
    let config = args.to_config()?;
    let progress = Arc::new(AtomicU64::new(0));
    let bar = if args.quiet || !std::io::stdout().is_terminal() {
        ProgressBar::hidden()
    } else {
        progress_bar(&config)
    };
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        let by_time = config.count.is_none();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = progress.load(Ordering::Relaxed);
                if by_time {
                    bar.set_position(started.elapsed().as_secs());
                    bar.set_message(format!("{done} messages"));
                } else {
                    bar.set_position(done);
                }
            }
        })
    };
    let result = send::run_with_progress(config, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.summary_text());
    }
    if summary.attempted == 0 {
        bail!(
            "no message could be sent: {}",
            summary
                .errors
                .first()
                .map_or("no error recorded", |e| e.as_str())
        );
    }
    Ok(summary)
}

fn progress_bar(config: &SendConfig) -> ProgressBar {
    let (length, template) = match (config.count, config.duration) {
        (Some(count), _) => (
            count,
            "{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta})",
        ),
        (None, Some(duration)) => (
            duration.as_secs().max(1),
            "{elapsed_precise} [{bar:40}] {pos}/{len}s {msg}",
        ),
        (None, None) => (0, "{elapsed_precise} {pos}"),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `tern bench sink`: start the sink, print `sink listening on ADDR`, run
/// until SIGINT/SIGTERM or --exit-after, then print the summary and write
/// --stats-json.
pub async fn run_sink(args: SinkArgs) -> Result<SinkStats> {
    let handle = Sink::start(args.to_config()).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "sink listening on {}", handle.local_addr)?;
        stdout.flush()?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
        _ = handle.exited() => {}
    }
    handle.shutdown();
    let stats = handle.stats();
    print!("{}", stats.summary_text());
    std::io::stdout().flush()?;
    if let Some(path) = &args.stats_json {
        std::fs::write(path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Send {
        #[command(flatten)]
        args: SendArgs,
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 * 1024 * 1024));
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn send_args_become_a_config() {
        let args = Send::parse_from([
            "send",
            "127.0.0.1:25",
            "--rate",
            "100/s",
            "--domains",
            "5",
            "-s",
            "1k",
        ])
        .args;
        let config = args.to_config().unwrap();
        assert_eq!(
            config.count,
            Some(1000),
            "default count when no end is given"
        );
        assert_eq!(config.rate.unwrap().limit, 100);
        assert_eq!(config.domain_count, 5);
        assert_eq!(config.message_size, 1024);
        let http = Send::parse_from(["send", "h:80", "--http", "--starttls"]).args;
        assert!(http.to_config().is_err());
        let bad_auth = Send::parse_from(["send", "h:80", "--http", "--http-auth", "x"]).args;
        assert!(bad_auth.to_config().is_err());
    }
}
