//! Per-message scheduling constraints set by `msg:set_scheduling` (spec §21).
//!
//! A [`Scheduling`] carries an optional `first_attempt` (earliest delivery
//! time), an optional `expires` (replaces the queue's `max_age` for this
//! message) and an optional delivery window: days of the week plus a daily
//! `start`..`end` time in an IANA time zone. [`Scheduling::adjust`] moves a
//! computed due time that falls outside the window to the next window start.
//!
//! It deserializes from the same table (or JSON header) policies pass, and
//! serializes back to that shape so it can be stored in message metadata.

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, FixedOffset, LocalResult, NaiveDate,
    NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::SystemTime;

/// A set of weekdays, as a bit mask (bit 0 = Monday).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DaysOfWeek(u8);

const DAY_NAMES: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Mon),
    ("tue", "tuesday", Weekday::Tue),
    ("wed", "wednesday", Weekday::Wed),
    ("thu", "thursday", Weekday::Thu),
    ("fri", "friday", Weekday::Fri),
    ("sat", "saturday", Weekday::Sat),
    ("sun", "sunday", Weekday::Sun),
];

impl DaysOfWeek {
    /// Parse `"Mon,Wed"` / `"Monday,Wednesday"` (case-insensitive).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut mask = 0u8;
        for word in text.split(',') {
            let word = word.trim().to_ascii_lowercase();
            let day = DAY_NAMES
                .iter()
                .find(|(short, long, _)| word == *short || word == *long)
                .ok_or_else(|| {
                    format!(
                        "invalid day of week '{}' in dow '{text}': use three-letter \
                         prefixes (Mon) or full English names (Monday)",
                        word
                    )
                })?;
            mask |= 1 << day.2.num_days_from_monday();
        }
        if mask == 0 {
            return Err("dow must name at least one day".to_string());
        }
        Ok(Self(mask))
    }

    pub fn contains(&self, day: Weekday) -> bool {
        self.0 & (1 << day.num_days_from_monday()) != 0
    }
}

impl fmt::Display for DaysOfWeek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (_, _, day) in DAY_NAMES {
            if self.contains(day) {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{day}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A daily delivery window in a time zone, on some days of the week.
/// When `end <= start` the window runs past midnight into the next day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryWindow {
    pub days: DaysOfWeek,
    pub tz: Tz,
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl DeliveryWindow {
    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// Is `when` inside a window (a window belongs to the day it starts on)?
    pub fn contains(&self, when: DateTime<Utc>) -> bool {
        let local = when.with_timezone(&self.tz).naive_local();
        let (date, time) = (local.date(), local.time());
        if self.crosses_midnight() {
            (self.days.contains(date.weekday()) && time >= self.start)
                || (time < self.end
                    && date
                        .pred_opt()
                        .is_some_and(|d| self.days.contains(d.weekday())))
        } else {
            self.days.contains(date.weekday()) && time >= self.start && time < self.end
        }
    }

    /// The earliest instant at or after `when` that lies in a window.
    pub fn next_open(&self, when: DateTime<Utc>) -> DateTime<Utc> {
        if self.contains(when) {
            return when;
        }
        let local_date = when.with_timezone(&self.tz).date_naive();
        // A week and a day always reaches an allowed day's start.
        for offset in 0..=8 {
            let Some(date) = local_date.checked_add_signed(ChronoDuration::days(offset)) else {
                break;
            };
            if !self.days.contains(date.weekday()) {
                continue;
            }
            let start = self.resolve_local(date, self.start);
            if start >= when {
                return start;
            }
        }
        when
    }

    /// Map a local wall-clock time to UTC; a time skipped by a DST jump
    /// moves forward to the first valid instant after the gap.
    fn resolve_local(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let mut naive = NaiveDateTime::new(date, time);
        for _ in 0..4 {
            match self.tz.from_local_datetime(&naive) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
                LocalResult::None => naive += ChronoDuration::minutes(30),
            }
        }
        Utc.from_utc_datetime(&naive)
    }
}

/// The parsed `msg:set_scheduling { ... }` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheduling {
    pub first_attempt: Option<DateTime<FixedOffset>>,
    pub expires: Option<DateTime<FixedOffset>>,
    pub window: Option<DeliveryWindow>,
}

/// The table exactly as policies write it.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_attempt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tz: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(default, rename = "end", skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(text.trim(), "%H:%M"))
        .map_err(|_| format!("invalid {field} '{text}': expected HH:MM:SS"))
}

fn parse_rfc3339(field: &str, text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map_err(|err| format!("invalid {field} '{text}': expected an RFC 3339 time ({err})"))
}

impl Scheduling {
    fn from_raw(raw: RawScheduling) -> Result<Self, String> {
        let first_attempt = raw
            .first_attempt
            .as_deref()
            .map(|t| parse_rfc3339("first_attempt", t))
            .transpose()?;
        let expires = raw
            .expires
            .as_deref()
            .map(|t| parse_rfc3339("expires", t))
            .transpose()?;
        let window = match (raw.dow, raw.tz, raw.start, raw.end) {
            (None, None, None, None) => None,
            (Some(dow), Some(tz), Some(start), Some(end)) => {
                let tz: Tz = tz.trim().parse().map_err(|_| {
                    format!(
                        "invalid tz '{tz}': must be an IANA time zone name such as America/Phoenix"
                    )
                })?;
                Some(DeliveryWindow {
                    days: DaysOfWeek::parse(&dow)?,
                    tz,
                    start: parse_time("start", &start)?,
                    end: parse_time("end", &end)?,
                })
            }
            _ => {
                return Err(
                    "dow, tz, start and end must be specified together (all four or none)"
                        .to_string(),
                );
            }
        };
        Ok(Self {
            first_attempt,
            expires,
            window,
        })
    }

    fn to_raw(&self) -> RawScheduling {
        let mut raw = RawScheduling {
            first_attempt: self.first_attempt.map(|t| t.to_rfc3339()),
            expires: self.expires.map(|t| t.to_rfc3339()),
            ..RawScheduling::default()
        };
        if let Some(window) = &self.window {
            raw.dow = Some(window.days.to_string());
            raw.tz = Some(window.tz.name().to_string());
            raw.start = Some(window.start.format("%H:%M:%S").to_string());
            raw.end = Some(window.end.format("%H:%M:%S").to_string());
        }
        raw
    }

    /// Parse a JSON value of the same shape (`msg:import_scheduling_header`).
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|err| format!("invalid scheduling header: {err}"))
    }

    /// Move `due` forward so that it is no earlier than `first_attempt`
    /// and falls inside the delivery window, if any.
    pub fn adjust(&self, due: SystemTime) -> SystemTime {
        let mut when: DateTime<Utc> = due.into();
        if let Some(first) = self.first_attempt {
            when = when.max(first.with_timezone(&Utc));
        }
        if let Some(window) = &self.window {
            when = window.next_open(when);
        }
        when.into()
    }

    /// When the first attempt is due for a message received at `now`.
    pub fn first_due(&self, now: SystemTime) -> SystemTime {
        self.adjust(now)
    }
}

impl<'de> Deserialize<'de> for Scheduling {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::from_raw(RawScheduling::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Scheduling {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_raw().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Scheduling, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn utc(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text).unwrap().into()
    }

    fn show(t: SystemTime) -> String {
        DateTime::<Utc>::from(t).to_rfc3339()
    }

    fn phoenix_weekdays() -> Scheduling {
        parse(json!({
            "dow": "Mon,Wed", "tz": "America/Phoenix", "start": "09:00:00", "end": "17:00:00"
        }))
        .unwrap()
    }

    #[test]
    fn parses_days_in_both_forms() {
        let short = DaysOfWeek::parse("Mon,Tue,Wed,Thu,Fri").unwrap();
        let long = DaysOfWeek::parse("Monday, Tuesday,Wednesday,Thursday,friday").unwrap();
        assert_eq!(short, long);
        assert!(short.contains(Weekday::Fri) && !short.contains(Weekday::Sat));
        assert_eq!(short.to_string(), "Mon,Tue,Wed,Thu,Fri");
        assert!(DaysOfWeek::parse("Funday").unwrap_err().contains("funday"));
    }

    #[test]
    fn window_fields_are_all_or_none() {
        let err = parse(json!({"dow": "Mon", "tz": "UTC"})).unwrap_err();
        assert!(err.contains("all four or none"), "{err}");
        assert!(parse(json!({})).unwrap().window.is_none());
    }

    #[test]
    fn rejects_abbreviated_tz_bad_times_and_unknown_keys() {
        let err =
            parse(json!({"dow":"Mon","tz":"PST","start":"09:00:00","end":"17:00:00"})).unwrap_err();
        assert!(err.contains("IANA"), "{err}");
        let err =
            parse(json!({"dow":"Mon","tz":"UTC","start":"9am","end":"17:00:00"})).unwrap_err();
        assert!(err.contains("start"), "{err}");
        let err = parse(json!({"first_attempt": "tomorrow"})).unwrap_err();
        assert!(err.contains("first_attempt"), "{err}");
        let err = parse(json!({"window": 1})).unwrap_err();
        assert!(err.contains("window"), "{err}");
    }

    #[test]
    fn due_inside_window_is_unchanged() {
        let sched = phoenix_weekdays();
        // 2024-01-01 is a Monday; Phoenix is UTC-7 all year.
        let due = utc("2024-01-01T17:30:00Z"); // 10:30 local
        assert_eq!(sched.adjust(due), due);
    }

    #[test]
    fn due_outside_window_moves_to_next_start() {
        let sched = phoenix_weekdays();
        // Monday 18:00 local -> Wednesday 09:00 local.
        assert_eq!(
            show(sched.adjust(utc("2024-01-02T01:00:00Z"))),
            "2024-01-03T16:00:00+00:00"
        );
        // Monday 07:00 local -> same day 09:00.
        assert_eq!(
            show(sched.adjust(utc("2024-01-01T14:00:00Z"))),
            "2024-01-01T16:00:00+00:00"
        );
        // Thursday -> next Monday.
        assert_eq!(
            show(sched.adjust(utc("2024-01-04T18:00:00Z"))),
            "2024-01-08T16:00:00+00:00"
        );
        // End is exclusive: Monday 17:00 local is already closed.
        assert_eq!(
            show(sched.adjust(utc("2024-01-02T00:00:00Z"))),
            "2024-01-03T16:00:00+00:00"
        );
    }

    #[test]
    fn overnight_window() {
        let sched = parse(json!({
            "dow": "Fri", "tz": "UTC", "start": "22:00:00", "end": "02:00:00"
        }))
        .unwrap();
        // 2024-01-05 is a Friday; Saturday 01:00 is still inside Friday's window.
        let inside = utc("2024-01-06T01:00:00Z");
        assert_eq!(sched.adjust(inside), inside);
        assert_eq!(
            show(sched.adjust(utc("2024-01-06T03:00:00Z"))),
            "2024-01-12T22:00:00+00:00"
        );
    }

    #[test]
    fn first_attempt_delays_and_round_trips() {
        let sched = parse(json!({
            "first_attempt": "2030-03-01T17:00:00-08:00",
            "expires": "2030-03-05T00:00:00Z",
        }))
        .unwrap();
        assert_eq!(
            show(sched.first_due(utc("2030-01-01T00:00:00Z"))),
            "2030-03-02T01:00:00+00:00"
        );
        let later = utc("2030-04-01T00:00:00Z");
        assert_eq!(sched.adjust(later), later);
        let again: Scheduling =
            serde_json::from_value(serde_json::to_value(&sched).unwrap()).unwrap();
        assert_eq!(again, sched);
        let window = phoenix_weekdays();
        let text = serde_json::to_string(&window).unwrap();
        assert_eq!(Scheduling::from_json(&text).unwrap(), window);
    }

    #[test]
    fn dst_gap_start_moves_past_the_gap() {
        // 2024-03-10 02:30 does not exist in New York (clocks jump 02:00 -> 03:00).
        let sched = parse(json!({
            "dow": "Sun", "tz": "America/New_York", "start": "02:30:00", "end": "04:00:00"
        }))
        .unwrap();
        assert_eq!(
            show(sched.adjust(utc("2024-03-10T05:00:00Z"))), // 00:00 EST
            "2024-03-10T07:00:00+00:00"                      // 03:00 EDT
        );
    }
}
