//! Validation of the `msg:set_scheduling` value (spec §21).
//!
//! This crate only stores the scheduling constraints; the queue crate turns
//! them into due times. Validation happens here, at the point where the
//! policy sets the value, so that a typo fails the policy call with a clear
//! error instead of surfacing later in the queue.
//!
//! Fields: `first_attempt` and `expires` (RFC 3339 date-times), and the
//! delivery window `dow`, `tz`, `start`, `end`, which must be all present or
//! all absent. The IANA time zone name is checked for shape only; the queue
//! crate, which owns the tz database, reports unknown zones.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parsed scheduling parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn check_day(name: &str) -> Result<(), String> {
    let lower = name.trim().to_ascii_lowercase();
    let ok = DAYS
        .iter()
        .any(|day| *day == lower || (lower.len() == 3 && day.starts_with(&lower)));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid day of week '{name}'"))
    }
}

fn check_time_of_day(field: &str, text: &str) -> Result<(), String> {
    chrono::NaiveTime::parse_from_str(text, "%H:%M:%S")
        .map(|_| ())
        .map_err(|err| format!("{field} '{text}' is not HH:MM:SS: {err}"))
}

fn check_rfc3339(field: &str, text: &str) -> Result<(), String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| ())
        .map_err(|err| format!("{field} '{text}' is not an RFC 3339 date-time: {err}"))
}

impl Scheduling {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(text) = &self.first_attempt {
            check_rfc3339("first_attempt", text)?;
        }
        if let Some(text) = &self.expires {
            check_rfc3339("expires", text)?;
        }
        let window = [&self.dow, &self.tz, &self.start, &self.end];
        let present = window.iter().filter(|f| f.is_some()).count();
        if present != 0 && present != window.len() {
            return Err("dow, tz, start and end must be specified together".into());
        }
        if let (Some(dow), Some(tz), Some(start), Some(end)) =
            (&self.dow, &self.tz, &self.start, &self.end)
        {
            if dow.trim().is_empty() {
                return Err("dow must list at least one day".into());
            }
            for day in dow.split(',') {
                check_day(day)?;
            }
            let tz_shape_ok = !tz.is_empty()
                && tz
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
            if !tz_shape_ok {
                return Err(format!("tz '{tz}' is not an IANA time zone name"));
            }
            check_time_of_day("start", start)?;
            check_time_of_day("end", end)?;
        }
        Ok(())
    }
}

/// Validate a scheduling value and return it in normalised form.
pub fn validate(value: Value) -> Result<Value, String> {
    let parsed: Scheduling =
        serde_json::from_value(value).map_err(|err| format!("invalid scheduling: {err}"))?;
    parsed
        .validate()
        .map_err(|err| format!("invalid scheduling: {err}"))?;
    serde_json::to_value(&parsed).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_documented_forms() {
        for ok in [
            json!({"first_attempt": "2023-03-01T17:00:00-08:00"}),
            json!({"dow": "Mon,Wed", "tz": "America/Phoenix", "start": "09:00:00", "end": "17:00:00"}),
            json!({"dow": "Monday,tuesday", "tz": "UTC", "start": "00:00:00", "end": "23:59:59",
                   "expires": "2030-01-01T00:00:00Z"}),
        ] {
            assert_eq!(validate(ok.clone()).unwrap(), ok);
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for (bad, why) in [
            (json!({"dow": "Mon"}), "together"),
            (json!({"first_attempt": "tomorrow"}), "RFC 3339"),
            (
                json!({"dow": "Mo", "tz": "UTC", "start": "09:00:00", "end": "10:00:00"}),
                "day of week",
            ),
            (
                json!({"dow": "Mon", "tz": "UTC", "start": "9am", "end": "10:00:00"}),
                "HH:MM:SS",
            ),
            (
                json!({"dow": "Mon", "tz": "Bad Zone", "start": "09:00:00", "end": "10:00:00"}),
                "IANA",
            ),
            (json!({"bogus": 1}), "unknown field"),
        ] {
            let err = validate(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
