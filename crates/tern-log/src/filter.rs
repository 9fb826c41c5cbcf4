//! `configure_local_logs { filter_event = 'name' }`: a policy event that
//! decides, message by message, whether a logger records it.
//!
//! KumoMTA calls the named event with the message the record is about and
//! logs the record when it returns `true`. tern-log has no Lua and no
//! message type, so the decision is made through [`RecordFilter`], which
//! the server implements by dispatching the event through the policy
//! engine. The server asks [`FilterDecisions::should_log`] once per logger
//! before capturing meta/headers and submitting:
//!
//! ```ignore
//! let mut decisions = FilterDecisions::default();
//! for logger in loggers {
//!     if !logger.is_enabled(record.kind)
//!         || !decisions.should_log(logger.config(), &filter, Some(msg), &record).await
//!     {
//!         continue;
//!     }
//!     // capture meta/headers for this logger, then logger.submit(copy)
//! }
//! ```
//!
//! Rules (Tern's choices where KumoMTA's documentation is silent):
//! * no `filter_event` configured: the record is logged;
//! * a record with no message (e.g. a `Rejection` before any message
//!   exists): the filter is not consulted and the record is logged;
//! * the event fails (a Lua error, no handler, a non-boolean result): the
//!   error is logged and the record is kept, because silently losing log
//!   records is worse than logging one too many;
//! * several loggers naming the same event for one record cause a single
//!   dispatch: [`FilterDecisions`] remembers the answer per event name.

use crate::config::LogConfig;
use crate::record::LogRecord;
use std::future::Future;
use std::pin::Pin;

/// The future a [`RecordFilter`] returns: `Ok(true)` to log, `Ok(false)`
/// to skip, `Err(text)` when the event could not give an answer.
pub type FilterFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;

/// Runs a `filter_event`. `M` is the server's message type.
pub trait RecordFilter<M: ?Sized>: Send + Sync {
    /// Dispatch `event` for `message` (KumoMTA passes the message as the
    /// only argument; `record` is available for implementations that want
    /// it, e.g. to pass the record as a second argument).
    fn keep<'a>(
        &'a self,
        event: &'a str,
        message: &'a M,
        record: &'a LogRecord,
    ) -> FilterFuture<'a>;
}

/// The answers given so far for one record, by event name.
#[derive(Debug, Default)]
pub struct FilterDecisions {
    decided: Vec<(String, bool)>,
}

impl FilterDecisions {
    /// Whether the logger configured by `config` records `record`, asking
    /// `filter` at most once per event name for this set of decisions.
    pub async fn should_log<M, F>(
        &mut self,
        config: &LogConfig,
        filter: &F,
        message: Option<&M>,
        record: &LogRecord,
    ) -> bool
    where
        M: ?Sized,
        F: RecordFilter<M> + ?Sized,
    {
        let Some(event) = config.filter_event.as_deref() else {
            return true;
        };
        let Some(message) = message else {
            return true;
        };
        if let Some((_, keep)) = self.decided.iter().find(|(name, _)| name == event) {
            return *keep;
        }
        let keep = match filter.keep(event, message, record).await {
            Ok(keep) => keep,
            Err(err) => {
                tracing::error!(
                    "filter_event '{event}' for the logger of {} failed, the {} record is kept: {err}",
                    config.log_dir.display(),
                    record.kind
                );
                true
            }
        };
        self.decided.push((event.to_string(), keep));
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageInfo, RecordType};
    use std::sync::Mutex;
    use tern_types::SpoolId;
    use uuid::Uuid;

    /// A stand-in message: its reception protocol.
    struct Msg(&'static str);

    /// Keeps ESMTP messages for `smtp_only`, everything else for
    /// `not_smtp`, fails for `broken`; records every call.
    #[derive(Default)]
    struct ByProtocol {
        calls: Mutex<Vec<String>>,
    }

    impl RecordFilter<Msg> for ByProtocol {
        fn keep<'a>(
            &'a self,
            event: &'a str,
            message: &'a Msg,
            _: &'a LogRecord,
        ) -> FilterFuture<'a> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(event.to_string());
                match event {
                    "smtp_only" => Ok(message.0 == "ESMTP"),
                    "not_smtp" => Ok(message.0 != "ESMTP"),
                    _ => Err(format!("no handler for {event}")),
                }
            })
        }
    }

    fn record() -> LogRecord {
        let recipients = ["r@example.com"];
        LogRecord::reception(
            Uuid::nil(),
            MessageInfo {
                id: SpoolId::new(),
                sender: "s@example.com",
                recipients: &recipients,
                queue: "example.com",
                size: 1,
                num_attempts: 0,
                reception_protocol: Some("ESMTP"),
            },
        )
    }

    fn config(event: Option<&str>) -> LogConfig {
        let mut config = LogConfig::new("/logs");
        config.filter_event = event.map(str::to_string);
        config
    }

    #[tokio::test]
    async fn the_event_decides_per_message() {
        let filter = ByProtocol::default();
        let record = record();
        let smtp = Msg("ESMTP");
        let http = Msg("HTTP");
        for (event, msg, expected) in [
            ("smtp_only", &smtp, true),
            ("smtp_only", &http, false),
            ("not_smtp", &smtp, false),
            ("not_smtp", &http, true),
        ] {
            let mut decisions = FilterDecisions::default();
            assert_eq!(
                decisions
                    .should_log(&config(Some(event)), &filter, Some(msg), &record)
                    .await,
                expected,
                "{event} / {}",
                msg.0
            );
        }
    }

    #[tokio::test]
    async fn no_event_or_no_message_logs_without_asking() {
        let filter = ByProtocol::default();
        let record = record();
        let mut decisions = FilterDecisions::default();
        assert!(
            decisions
                .should_log(&config(None), &filter, Some(&Msg("HTTP")), &record)
                .await
        );
        let mut rejection = record.clone();
        rejection.kind = RecordType::Rejection;
        assert!(
            decisions
                .should_log::<Msg, _>(&config(Some("smtp_only")), &filter, None, &rejection)
                .await
        );
        assert!(filter.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_event_keeps_the_record() {
        let filter = ByProtocol::default();
        let mut decisions = FilterDecisions::default();
        assert!(
            decisions
                .should_log(
                    &config(Some("broken")),
                    &filter,
                    Some(&Msg("HTTP")),
                    &record()
                )
                .await
        );
    }

    #[tokio::test]
    async fn one_dispatch_per_event_name_and_record() {
        let filter = ByProtocol::default();
        let record = record();
        let msg = Msg("HTTP");
        let mut decisions = FilterDecisions::default();
        for event in ["not_smtp", "smtp_only", "not_smtp", "smtp_only"] {
            decisions
                .should_log(&config(Some(event)), &filter, Some(&msg), &record)
                .await;
        }
        assert_eq!(*filter.calls.lock().unwrap(), ["not_smtp", "smtp_only"]);
    }
}
