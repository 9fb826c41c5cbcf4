//! `tern logs`: print the records of a log folder as JSON lines, filtered,
//! optionally following the folder as new records are written.
//!
//! The binary crate mounts [`LogsArgs`] as a subcommand and calls [`run`].

use crate::reader::{LogFilter, LogReader};
use crate::record::RecordType;
use chrono::{DateTime, Utc};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `tern logs`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(
    about = "Print the records of a log folder as JSON lines, oldest first",
    long_about = "Print the records of a log folder (the log_dir of a \
        kumo.configure_local_logs call) as JSON lines on stdout, oldest first. \
        Every segment is decompressed, including the one being written and one \
        cut short by a crash. Records from segments with different suffixes are \
        merged by event time. Lines that are not JSON records (template output, \
        segment headers) are printed only when no filter is given."
)]
pub struct LogsArgs {
    /// Only records of this type (Reception, Delivery, TransientFailure,
    /// Bounce, Expiration, AdminBounce, OOB, Feedback, Rejection,
    /// AdminRebind, DeferredInjectionRebind, Delayed, XferOut, XferIn).
    /// Repeat to accept several types.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_record_type)]
    pub types: Vec<RecordType>,

    /// Only records of this scheduled queue (exact name, e.g.
    /// `campaign:tenant@example.com`).
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,

    /// Only records with a recipient in this domain (case-insensitive).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// Only records at or after this time: an RFC 3339 time
    /// (`2025-09-12T11:00:00Z`) or a duration meaning "that long ago"
    /// (`15m`, `2h`, `1 day`).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub since: Option<DateTime<Utc>>,

    /// Only records before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub until: Option<DateTime<Utc>>,

    /// Keep running and print new records as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// How often --follow looks for new data.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_interval)]
    pub poll_interval: Duration,

    /// The log directory to read.
    #[arg(value_name = "LOG_DIR")]
    pub log_dir: PathBuf,
}

fn parse_record_type(text: &str) -> Result<RecordType, String> {
    text.parse()
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = tern_types::parse_duration(text)?;
    if interval.is_zero() {
        return Err("the poll interval must be longer than zero".into());
    }
    Ok(interval)
}

/// An RFC 3339 time, or a duration before now.
pub fn parse_time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(time.with_timezone(&Utc));
    }
    match tern_types::parse_duration(text) {
        Ok(ago) => chrono::TimeDelta::from_std(ago)
            .ok()
            .and_then(|ago| Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("'{text}' reaches too far into the past")),
        Err(_) => Err(format!(
            "'{text}' is neither an RFC 3339 time (2025-09-12T11:00:00Z) \
             nor a duration (15m, 2h, 1 day)"
        )),
    }
}

impl LogsArgs {
    /// The reader filter these arguments describe.
    pub fn filter(&self) -> LogFilter {
        LogFilter {
            types: self.types.clone(),
            queue: self.queue.clone(),
            domain: self.domain.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// Run `tern logs`, writing to stdout.
pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match run_to(&args, &mut out, &mut || true) {
        Err(err) if is_broken_pipe(&err) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// The body of [`run`], writing to `out`. With `--follow`, `keep_following`
/// is asked after every poll; once it returns false the folder is read one
/// last time and the function returns (tests use this; [`run`] follows
/// until the process is stopped).
pub fn run_to(
    args: &LogsArgs,
    out: &mut impl Write,
    keep_following: &mut dyn FnMut() -> bool,
) -> anyhow::Result<()> {
    if !args.log_dir.is_dir() {
        anyhow::bail!("{} is not a directory", args.log_dir.display());
    }
    let mut reader = LogReader::open(&args.log_dir, args.filter()).map_err(|err| {
        anyhow::anyhow!(
            "cannot read log directory {}: {err}",
            args.log_dir.display()
        )
    })?;
    let mut last_round = !args.follow;
    loop {
        while let Some(line) = reader.next_available(args.follow)? {
            out.write_all(line.text.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        if last_round {
            return Ok(());
        }
        if keep_following() {
            std::thread::sleep(args.poll_interval);
        } else {
            last_round = true;
        }
        reader.rescan()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        logs: LogsArgs,
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "tern",
            "--type",
            "Delivery",
            "--type",
            "Bounce",
            "--queue",
            "q@example.com",
            "--domain",
            "example.com",
            "--since",
            "2025-09-12T11:00:00Z",
            "--until",
            "1h",
            "-f",
            "/var/log/tern",
        ])
        .unwrap();
        let args = cli.logs;
        assert_eq!(args.types, [RecordType::Delivery, RecordType::Bounce]);
        assert_eq!(
            args.since.unwrap().to_rfc3339(),
            "2025-09-12T11:00:00+00:00"
        );
        let hour_ago = Utc::now() - chrono::TimeDelta::hours(1);
        assert!((args.until.unwrap() - hour_ago).num_seconds().abs() < 5);
        assert!(args.follow);
        assert_eq!(args.poll_interval, Duration::from_millis(250));
        assert_eq!(args.log_dir, PathBuf::from("/var/log/tern"));
    }

    #[test]
    fn help_describes_every_option() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--type <TYPE>",
            "--queue <QUEUE>",
            "--domain <DOMAIN>",
            "--since <TIME>",
            "--until <TIME>",
            "--follow",
            "--poll-interval <DURATION>",
            "<LOG_DIR>",
            "RFC 3339",
            "Repeat",
        ] {
            assert!(help.contains(needle), "help lacks {needle}:\n{help}");
        }
    }

    #[test]
    fn bad_arguments_are_explained() {
        let err = Cli::try_parse_from(["tern", "--type", "Delay", "/x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("Delayed"), "{err}");
        let err = Cli::try_parse_from(["tern", "--since", "yesterday", "/x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RFC 3339"), "{err}");
        assert!(Cli::try_parse_from(["tern"]).is_err());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let cli = Cli::try_parse_from(["tern", "/definitely/not/here"]).unwrap();
        let err = run_to(&cli.logs, &mut Vec::new(), &mut || true).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
